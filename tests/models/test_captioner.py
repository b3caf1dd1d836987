"""``arch: "captioner"`` and ``arch: "vqa"`` (one VisionEncoderDecoderModel class): what is trained on (one target
per sample, media and language matching; VQA loss on the answer only), parity with transformers' own
``from_pretrained`` + ``generate``, batched == one-by-one decoding with left-padded decoder prompts, the streamer,
seeded sampling, video (VideoMAE encoder), the blind baseline, and a trainer run that reloads exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import genkit as g
import pytest
import torch

from polymodal.errors import ConfigError, InvalidInput
from polymodal.lm.decoding import DecodingOptions
from polymodal.lm.tokenizer import BOS, EOS, SEP
from polymodal.models import build_model, load_model
from polymodal.models.captioner import VisionTextGenerator
from polymodal.models.gen_batch import teacher_forcing
from polymodal.train.trainer import Trainer

transformers = pytest.importorskip("transformers")


def _model(arch: str, samples: list[Any], steps: int = 6, **cfg: Any) -> VisionTextGenerator:
    torch.manual_seed(0)
    enc = g.VIDEO_ENCODER if cfg.get("input") == "video" else g.ENCODER
    model = g.fitted(build_model(arch, {"tokenizer": g.TOKENIZER, "encoder": enc, "decoder": g.DECODER, **cfg}),
                     samples)
    if steps:
        g.train_steps(model, g.batch_for(model, samples), steps, lr=1e-2)
    return model


@pytest.fixture(scope="module")
def samples() -> list[Any]:
    return g.shape_samples(10, langs=("en", "zh"), modalities=("image", "video"))


@pytest.fixture(scope="module")
def vqa(samples: list[Any]) -> VisionTextGenerator:
    return _model("vqa", samples, steps=15)


@pytest.fixture(scope="module")
def captioner(samples: list[Any]) -> VisionTextGenerator:
    return _model("captioner", samples, steps=15)


def _questions(model: VisionTextGenerator, samples: list[Any]) -> list[str]:
    """Each sample's questions in turn, so the batch mixes lengths."""
    out = []
    for i, s in enumerate(samples):
        qs = [q for _, _, q in model.candidates(s.targets)]
        out.append(str(qs[i % len(qs)]))
    return out


def test_config_checks() -> None:
    base = {"tokenizer": g.TOKENIZER}
    for arch, cfg, field in (("captioner", {"input": "audio"}, "input"), ("captioner", {"blind": True}, "blind"),
                             ("vqa", {"encoder": {"image_size": 60}}, "patch_size"),
                             ("vqa", {"langs": ["en", "en"]}, "langs"),
                             ("captioner", {"decoder": {"hidden": 30, "heads": 4}}, "decoder.heads")):
        with pytest.raises(ConfigError, match=field):
            build_model(arch, {**base, **cfg})


def test_training_targets(samples: list[Any]) -> None:
    cap = _model("captioner", samples, steps=0, langs=["en", "zh"])
    t = samples[0].targets
    assert {text for _, text, _ in cap.candidates(t)} == {c.text for c in t.captions if c.media == "image"}
    video = _model("vqa", samples, steps=0, input="video", langs=["zh"])
    assert {(q, a) for _, a, q in video.candidates(t)} == {(x.question, x.answer) for x in t.qa
                                                            if x.media == "video" and x.lang == "zh"}
    batch = g.batch_for(cap, samples)
    cap.train()
    torch.manual_seed(1)
    first = cap.sequences(batch)
    torch.manual_seed(1)
    assert cap.sequences(batch) == first and cap.sequences(batch) != first  # seeded, and drawn anew
    tok = cap.tokenizer
    assert first[0] == list(range(len(samples)))  # one target per sample by default
    assert {tuple(p) for p in first[1]} <= {(BOS, *tok.encode("en:")), (BOS, *tok.encode("zh:"))}
    cap.eval()
    assert cap.sequences(batch) == cap.sequences(batch)  # evaluation draws nothing


def test_several_targets_per_sample(samples: list[Any]) -> None:
    vqa = _model("vqa", samples, steps=0, targets_per_sample=3)
    batch = g.batch_for(vqa, samples[:4])
    batch.mask["image"][2] = False  # a row without its input has nothing to learn, but still takes part
    vqa.train()
    torch.manual_seed(2)
    rows, prefixes, outs = vqa.sequences(batch)
    assert rows == [0, 0, 0, 1, 1, 1, 2, 3, 3, 3] and outs[6] == [] and prefixes[6] == [BOS]
    for r in (0, 1, 3):  # distinct questions of that sample
        mine = [tuple(p) for p, row in zip(prefixes, rows, strict=True) if row == r]
        assert len(set(mine)) == 3
    torch.manual_seed(2)
    loss, logs = vqa(batch)  # the same draw
    loss.backward()
    assert logs["tokens"] == sum(len(o) for o in outs)
    with pytest.raises(ConfigError, match="targets_per_sample"):
        build_model("vqa", {"tokenizer": g.TOKENIZER, "targets_per_sample": 0})


def test_vqa_loss_counts_the_answer_only(vqa: VisionTextGenerator, samples: list[Any]) -> None:
    vqa.eval()
    _, prefixes, outs = vqa.sequences(g.batch_for(vqa, samples))
    _, q, a = (lambda c: (c[0], c[2], c[1]))(vqa.candidates(samples[0].targets)[0])
    tok = vqa.tokenizer
    assert prefixes[0] == [BOS, *tok.encode(str(q)), SEP] and outs[0] == [*tok.encode(a), EOS]
    ids, _, loss_mask = teacher_forcing(prefixes, outs, 48, torch.device("cpu"))
    counted = ids[:, 1:][loss_mask]
    assert counted.tolist() == [t for o in outs for t in o]


def test_loss_falls(samples: list[Any]) -> None:
    torch.manual_seed(0)
    model = g.fitted(build_model("captioner", {"tokenizer": g.TOKENIZER, "encoder": g.ENCODER,
                                               "decoder": g.DECODER}), samples)
    losses = g.train_steps(model, g.batch_for(model, samples), 10, lr=1e-2)
    assert min(losses[-3:]) < 0.75 * losses[0]


@pytest.mark.parametrize("opts", [{}, {"use_cache": False}, {"num_beams": 3}, {"repetition_penalty": 1.4}])
def test_batched_equals_one_by_one(vqa: VisionTextGenerator, captioner: VisionTextGenerator, samples: list[Any],
                                   opts: dict[str, Any]) -> None:
    o = DecodingOptions(max_new_tokens=12, **opts)
    starts = ["A", None, "The small", "Two shapes: a little", "There is a", None, "A big red", "T", "A", None]
    for model, prompts in ((vqa, _questions(vqa, samples)), (captioner, starts)):
        assert len({len(model.prefix(question=p) if model.vqa else model.tokenizer.encode(p or ""))
                    for p in prompts}) > 2  # the decoder prompts differ in length: left padding is exercised
        together = model.generate(g.batch_for(model, samples), prompts, o)
        alone = [model.generate(g.batch_for(model, [s]), [p], o)[0] for s, p in zip(samples, prompts, strict=True)]
        assert together == alone


def _hf_parity(model: VisionTextGenerator, samples: list[Any], folder: Path, questions: list[str] | None) -> None:
    model.save_hf(folder)
    hf = transformers.VisionEncoderDecoderModel.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    batch = g.batch_for(model, samples[:3])
    pixels = batch.data[model.input]
    ours = model.generate(batch, questions, DecodingOptions(max_new_tokens=10))
    for i in range(3):
        start = model.prefix(question=questions[i] if questions else None)
        ids = torch.tensor([start])
        with torch.no_grad():
            want = model.model(pixel_values=pixels[i:i + 1], decoder_input_ids=ids).logits
            torch.testing.assert_close(hf(pixel_values=pixels[i:i + 1], decoder_input_ids=ids).logits, want)
        out = hf.generate(pixel_values=pixels[i:i + 1], decoder_input_ids=ids, max_new_tokens=10, do_sample=False)
        assert tok.decode(out[0, len(start):], skip_special_tokens=True) == ours[i]


def test_saved_hf_folder_matches_ours(vqa: VisionTextGenerator, samples: list[Any], tmp_path: Path) -> None:
    _hf_parity(vqa, samples, tmp_path / "vqa", _questions(vqa, samples[:3]))
    cap = _model("captioner", samples, steps=4, input="video")
    _hf_parity(cap, samples, tmp_path / "cap", None)


def test_streamer_and_seeded_sampling(vqa: VisionTextGenerator, samples: list[Any]) -> None:
    batch = g.batch_for(vqa, samples[:4])
    qs = _questions(vqa, samples[:4])
    rec = g.Recorder()
    out = vqa.generate(batch, qs, DecodingOptions(max_new_tokens=6), streamer=rec)
    assert rec.ended == 1 and [vqa.tokenizer.decode(r) for r in rec.new_tokens()] == out
    o = DecodingOptions(do_sample=True, temperature=2.0, top_k=40, top_p=0.9, seed=5, max_new_tokens=8)
    state = torch.get_rng_state()
    a = vqa.generate(batch, qs, o)
    assert vqa.generate(batch, qs, o) == a and torch.equal(torch.get_rng_state(), state)
    draws = {tuple(vqa.generate(batch, qs, DecodingOptions(**{**o.to_dict(), "seed": s, "stop": ()})))
             for s in range(4)}
    assert len(draws) > 1


def test_generate_errors_and_languages(vqa: VisionTextGenerator, samples: list[Any]) -> None:
    batch = g.batch_for(vqa, samples[:2])
    with pytest.raises(InvalidInput, match="question"):
        vqa.generate(batch, None)
    with pytest.raises(InvalidInput, match="2 prompts"):
        vqa.generate(batch, ["a?"])
    batch.mask["image"][1] = False
    with pytest.raises(InvalidInput, match="input 1 has no image"):
        vqa.generate(batch, ["a?", "b?"])
    cap = _model("captioner", samples, steps=0, langs=["en", "zh"])
    cb = g.batch_for(cap, samples[:2])
    assert len(cap.generate(cb, ["A", None], DecodingOptions(max_new_tokens=4), lang="zh")) == 2
    with pytest.raises(InvalidInput, match="lang"):
        cap.generate(cb, None, lang="fr")


def test_blind_baseline_reads_no_image(samples: list[Any]) -> None:
    blind = _model("vqa", samples, steps=4, blind=True)
    assert blind.modalities == () and blind.preprocess() == {}
    assert all(not p.requires_grad for p in blind.model.encoder.parameters())
    batch = g.batch_for(blind, samples[:3])
    assert batch.data == {}
    qs = _questions(blind, samples[:3])
    assert blind.generate(batch, qs) == [blind.generate(g.batch_for(blind, [s]), [q])[0]
                                         for s, q in zip(samples[:3], qs, strict=True)]


def test_trainer_run_reloads_to_the_same_generations(samples: list[Any], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = g.write_data(tmp_path / "data", {"train": samples, "val": samples[:4]}, ["image", "video"])
    model_cfg = {"input": "video", "encoder": g.VIDEO_ENCODER, "decoder": g.DECODER}
    with g.attach_targets(monkeypatch):
        trainer = Trainer(g.recipe("vqa", model_cfg, steps=3, batch_size=5), data, tmp_path / "run", progress=False)
        result = trainer.fit()
    assert result.step == 3 and result.val_loss is not None
    model, tf, cfg = load_model(tmp_path / "run")
    assert cfg["model"]["input"] == "video" and cfg["model"]["tokenizer"]["json"]
    assert (tmp_path / "run" / "hf" / "config.json").is_file() and tf.video is not None and tf.image is None
    qs = _questions(model, samples[:4])
    o = DecodingOptions(max_new_tokens=5)
    before = trainer.model.eval().generate(g.batch_for(model, samples[:4]), qs, o)
    assert model.generate(g.batch_for(model, samples[:4]), qs, o) == before
