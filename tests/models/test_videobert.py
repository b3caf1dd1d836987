"""VideoBERT (``arch: "videobert"``) and its visual words: hierarchical k-means against a brute-force descent
and the blobs it must find, hierarchy consistency, determinism; flow features against clips whose motion is
known by construction; the model's loss goes down, ``save_hf`` reloads with the same logits, zero-shot motion
equals the restricted argmax computed from transformers' own logits and never reads the label; config errors
name the field; a trainer run reloads; `evaluate_videobert` agrees with its own predictions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import genkit as g
import numpy as np
import pytest
import torch

from polymodal.data.targets import Targets
from polymodal.errors import ConfigError
from polymodal.eval.videobert import evaluate_videobert
from polymodal.models import build_model, load_model
from polymodal.models.videobert import DIRECTIONS, VideoBert
from polymodal.models.visual_words import (
    VisualWordsSpec,
    assign_words,
    codebook_rows,
    fit_hierarchical_kmeans,
    level_offset,
    segment_features,
)
from polymodal.train.trainer import Trainer

transformers = pytest.importorskip("transformers")

TINY = {"tokenizer": {"vocab_size": 320, "min_frequency": 1},
        "video": {"k": 3, "depth": 2, "iters": 10},
        "bert": {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64, "max_len": 32, "dropout": 0.0}}


# ----------------------------------------------------------------------------------------------- k-means

def _brute_descent(x: np.ndarray, book: np.ndarray, k: int, depth: int) -> list[int]:
    """Each point's word by explicit loops: at each level, the nearest of the current node's k children."""
    words = []
    for p in x:
        node, start = 0, 0
        for level in range(depth):
            start = sum(k ** (j + 1) for j in range(level))
            children = [start + node * k + j for j in range(k)]
            d = [float(((p - book[c]) ** 2).sum()) for c in children]
            node = node * k + int(np.argmin(d))
        words.append(node)
    return words


def test_assignment_matches_brute_force() -> None:
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
    book = fit_hierarchical_kmeans(x, k=3, depth=3, iters=20, seed=0)
    assert book.shape == (codebook_rows(3, 3), 4) == (3 + 9 + 27, 4)
    words = assign_words(x, book, 3, 3)
    assert words.tolist() == _brute_descent(x.double().numpy(), book.double().numpy(), 3, 3)
    assert int(words.min()) >= 0 and int(words.max()) < 27
    flat = fit_hierarchical_kmeans(x, k=5, depth=1, iters=20, seed=0)  # depth 1: the global nearest centroid
    d = ((x.double().numpy()[:, None, :] - flat.double().numpy()[None]) ** 2).sum(-1)
    assert assign_words(x, flat, 5, 1).tolist() == d.argmin(1).tolist()


def test_kmeans_finds_separated_blobs() -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = np.repeat(np.arange(3), 40)
    x = centers[labels] + rng.normal(0, 0.5, (120, 2))
    book = fit_hierarchical_kmeans(torch.tensor(x, dtype=torch.float32), k=3, depth=1, iters=50, seed=3)
    words = assign_words(torch.tensor(x, dtype=torch.float32), book, 3, 1).numpy()
    for blob in range(3):  # each blob is exactly one cluster, and its centroid is the blob's mean
        ids = set(words[labels == blob].tolist())
        assert len(ids) == 1
        np.testing.assert_allclose(book[ids.pop()].numpy(), x[labels == blob].mean(0), atol=1e-4)


def test_hierarchy_is_consistent() -> None:
    x = torch.rand(400, 3, generator=torch.Generator().manual_seed(2))
    k, depth = 3, 3
    book = fit_hierarchical_kmeans(x, k, depth, iters=100, seed=0)
    words = assign_words(x, book, k, depth)
    for level in range(depth):
        prefix = words // k ** (depth - 1 - level)  # the node at this level
        # a codebook cut after this level assigns the same nodes: the word's digits are its path
        assert torch.equal(assign_words(x, book[:codebook_rows(k, level + 1)], k, level + 1), prefix)
        for node in prefix.unique().tolist():  # Lloyd's fixed point: a centroid is the mean of its points
            np.testing.assert_allclose(book[level_offset(k, level) + node].numpy(),
                                       x[prefix == node].mean(0).numpy(), atol=1e-5)


def test_fit_is_deterministic_and_handles_few_points() -> None:
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(4))
    a = fit_hierarchical_kmeans(x, 4, 2, seed=7)
    torch.manual_seed(123)  # the global RNG plays no part
    torch.rand(10)
    assert torch.equal(a, fit_hierarchical_kmeans(x, 4, 2, seed=7))
    few = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # fewer points than nodes: empty nodes copy parents
    book = fit_hierarchical_kmeans(few, 3, 2)
    assert book.shape == (12, 3) and bool(torch.isfinite(book).all())
    assert assign_words(few, book, 3, 2).unique().numel() == 2


# ----------------------------------------------------------------------------------------------- features

def _moving_square(dx: int, dy: int, frames: int = 6, size: int = 32) -> torch.Tensor:
    """A bright square moving (dx, dy) pixels per frame on a dark background: (1, T, 3, S, S) in [0, 1]."""
    clip = torch.full((frames, 3, size, size), 0.15)
    for t in range(frames):
        x0, y0 = 10 + dx * t, 10 + dy * t
        clip[t, :, y0:y0 + 8, x0:x0 + 8] = torch.tensor([0.9, 0.3, 0.2]).view(3, 1, 1)
    return clip.unsqueeze(0)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_flow_features_carry_the_direction(direction: str) -> None:
    spec = VisualWordsSpec(feature_size=32, pool=2)
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
    f = segment_features(_moving_square(dx, dy), spec)
    assert f.shape == (1, 5, spec.dim)
    motion = f[0, :, :2]
    assert bool((torch.sign(motion[:, 0]) == dx).all() if dx else (motion[:, 0].abs() < 0.2).all())
    assert bool((torch.sign(motion[:, 1]) == dy).all() if dy else (motion[:, 1].abs() < 0.2).all())
    np.testing.assert_allclose(f[0, :, 2:5].numpy(), np.tile([0.9, 0.3, 0.2], (5, 1)), atol=1e-5)
    still = segment_features(_moving_square(0, 0), spec)
    assert float(still[..., :5].abs().max()) == 0.0  # nothing moves: no flow, no color of a change


# ----------------------------------------------------------------------------------------------- model

@pytest.fixture(scope="module")
def samples() -> list[Any]:
    return g.shape_samples(12, modalities=("video",))


@pytest.fixture(scope="module")
def model(samples: list[Any]) -> VideoBert:
    torch.manual_seed(0)
    m = build_model("videobert", TINY)
    assert isinstance(m, VideoBert)
    m.fit_data(samples)
    return m


def _eval_loss(m: VideoBert, batch: Any) -> float:
    m.eval()
    with torch.no_grad():
        return float(m(batch)[0])


def test_codebook_shape_comes_from_the_config(model: VideoBert, samples: list[Any]) -> None:
    fresh = build_model("videobert", TINY)
    assert fresh.words.codebook.shape == model.words.codebook.shape == (3 + 9, model.spec.dim)
    assert model.words.is_fitted and not fresh.words.is_fitted
    assert model.bert.config.vocab_size == 320 + 9 + 1 == model.mask_id + 1
    words = model.clip_words(g.batch_for(model, samples[:3]))
    assert words.shape == (3, 7) and int(words.min()) >= 0 and int(words.max()) < 9


def test_loss_decreases(model: VideoBert, samples: list[Any]) -> None:
    m = build_model("videobert", {**TINY, "tokenizer": model.config["tokenizer"]})
    m.load_state_dict(model.state_dict())
    batch = g.batch_for(m, samples)
    before = _eval_loss(m, batch)
    assert _eval_loss(m, batch) == before  # evaluation masks from a fixed generator
    torch.manual_seed(0)
    g.train_steps(m, batch, 25, lr=1e-2)
    assert _eval_loss(m, batch) < 0.8 * before


def test_save_hf_parity(model: VideoBert, samples: list[Any], tmp_path: Path) -> None:
    model.save_hf(tmp_path)
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    batch = g.batch_for(model, samples[:4])
    texts = model._tok().encode_batch([s.targets.captions[0].text for s in samples[:4]])
    ids, types, attn, _ = model._sequences(texts, model.clip_words(batch))
    model.eval()
    with torch.no_grad():
        ours = model.bert(input_ids=ids, token_type_ids=types, attention_mask=attn).logits
        theirs = hf(input_ids=ids, token_type_ids=types, attention_mask=attn).logits
    torch.testing.assert_close(theirs, ours)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "The big red star moves to the left."
    assert tok(text, add_special_tokens=False)["input_ids"] == model._tok().encode(text)
    assert (tmp_path / "visual_words.safetensors").exists() and (tmp_path / "videobert.json").exists()


def test_zero_shot_is_the_restricted_argmax_and_reads_no_label(model: VideoBert, samples: list[Any]) -> None:
    batch = g.batch_for(model, samples[:6])
    got = model.predict_motion(batch)
    assert set(got) <= set(DIRECTIONS)
    # reference: a word of n tokens gets n [MASK]s after "moves"; its score is the sum of its tokens' log-probs
    # over the text vocabulary (transformers' logits), a direction's the logsumexp of its words'
    tok, mask, words = model._tok(), model.mask_id, model.clip_words(batch)
    scores: dict[str, list[torch.Tensor]] = {d: [] for d in DIRECTIONS}
    for d, options in DIRECTIONS.items():
        for w in options:
            toks = tok.encode(" " + w)
            text = tok.encode("The") + [mask] * 3 + tok.encode(" moves") + [mask] * len(toks) + tok.encode(".")
            ids, types, attn, _ = model._sequences([text] * 6, words)
            with torch.no_grad():
                logits = model.bert(input_ids=ids, token_type_ids=types, attention_mask=attn).logits
            logp = logits[..., :model.word_offset].log_softmax(-1)
            first = 1 + text.index(mask) + 3
            scores[d].append(sum(logp[:, first + t, toks[t]] for t in range(len(toks))))
    best = torch.stack([torch.stack(scores[d]).logsumexp(0) for d in DIRECTIONS]).argmax(0)
    want = [list(DIRECTIONS)[int(b)] for b in best]
    assert got == want
    # no label: wipe the motion from metadata and targets, the answers stay
    batch.metadata = [{k: v for k, v in m.items() if k not in ("motion", "video_caption", "video_captions")}
                      for m in batch.metadata]
    batch.targets = [Targets() for _ in batch.targets]
    assert model.predict_motion(batch) == got
    named = model.predict_motion(batch, ["large red star"] * 6)
    assert set(named) <= set(DIRECTIONS)
    described = model.describe(batch)
    assert [d.split()[-1] for d in described] == got  # the same prompt: "The [M] [M] [M] moves [M]."


@pytest.mark.parametrize(("cfg", "field"), [
    ({"video": {"k": 1}}, "video.k"),
    ({"video": {"depth": 0}}, "video.depth"),
    ({"video": {"pool": 40}}, "video.pool"),
    ({"video": {"motion_weight": -1.0}}, "video.motion_weight"),
    ({"video": {"kk": 3}}, "video.kk"),
    ({"bert": {"heads": 3}}, "bert.heads"),
    ({"bert": {"max_len": 8}}, "bert.max_len"),
    ({"bert": {"dropout": 1.0}}, "bert.dropout"),
    ({"mismatch_prob": 1.5}, "mismatch_prob"),
    ({"text_weight": 0.0, "video_weight": 0.0, "align_weight": 0.0}, "text_weight"),
    ({"langs": []}, "langs"),
])
def test_bad_config_names_the_field(cfg: dict[str, Any], field: str) -> None:
    merged = {**TINY, **cfg, **{k: {**TINY[k], **v} for k, v in cfg.items() if k in ("video", "bert")}}
    with pytest.raises(ConfigError) as err:
        build_model("videobert", merged)
    assert err.value.field == field


def test_trainer_run_reloads_and_evaluates(samples: list[Any], tmp_path: Path) -> None:
    data = g.write_data(tmp_path / "data", {"train": samples[:8], "val": samples[8:]}, ["video"])
    recipe = g.recipe("videobert", {**TINY, "tokenizer": {"vocab_size": 320, "min_frequency": 1}}, steps=2)
    Trainer(recipe, data, tmp_path / "run", progress=False).fit()
    loaded, _, cfg = load_model(tmp_path / "run")
    assert isinstance(loaded, VideoBert) and loaded.words.is_fitted and cfg["arch"] == "videobert"
    report = evaluate_videobert(loaded, samples, batch_size=5)
    preds = report.pop("predictions")
    gold = [s.metadata["motion"] for s in samples]
    assert report["motion_zero_shot"]["accuracy"] == pytest.approx(
        np.mean([p["zero_shot"] == y for p, y in zip(preds, gold, strict=True)]))
    top = Counter(gold).most_common(1)[0]
    assert report["majority_baseline"]["accuracy"] == pytest.approx(top[1] / len(gold))
    colors = [s.metadata["objects"][0]["color"] for s in samples]
    assert report["video_to_text"]["color"]["accuracy"] == pytest.approx(
        np.mean([p["description"].split()[2] == c for p, c in zip(preds, colors, strict=True)]))
    assert (tmp_path / "run" / "hf" / "config.json").exists()


def test_eval_cli_motion(samples: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from polymodal.commands import eval as eval_cmd
    from polymodal.errors import InvalidInput

    data = g.write_data(tmp_path / "data", {"train": samples[:8], "val": samples[8:], "test": samples}, ["video"])
    recipe = g.recipe("videobert", {**TINY, "tokenizer": {"vocab_size": 320, "min_frequency": 1}}, steps=2)
    Trainer(recipe, data, tmp_path / "run", progress=False).fit()
    out = tmp_path / "preds.jsonl"
    assert eval_cmd.main([str(tmp_path / "run"), "--data", str(data), "--task", "motion", "--json", "--no-progress",
                          "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    direct = evaluate_videobert(load_model(tmp_path / "run")[0], samples)
    assert report["motion_zero_shot"] == direct["motion_zero_shot"] and "predictions" not in report
    assert [json.loads(x) for x in out.read_text().splitlines()] == direct["predictions"]
    assert eval_cmd.main([str(tmp_path / "run"), "--data", str(data), "--task", "motion", "--no-progress"]) == 0
    assert "object masked" in capsys.readouterr().out
    with pytest.raises(InvalidInput, match="--task motion"):
        eval_cmd.main([str(tmp_path / "run"), "--data", str(data), "--task", "retrieval"])


def test_front_door(samples: list[Any], tmp_path: Path) -> None:
    import polymodal
    from polymodal.errors import InvalidInput
    from polymodal.models.vl_front import VideoBertModel

    data = g.write_data(tmp_path / "data", {"train": samples[:8], "val": samples[8:]}, ["video"])
    recipe = g.recipe("videobert", {**TINY, "tokenizer": {"vocab_size": 320, "min_frequency": 1}}, steps=2)
    Trainer(recipe, data, tmp_path / "run", progress=False).fit()
    v = polymodal.load(tmp_path / "run")
    assert isinstance(v, VideoBertModel)
    clips = [s.video for s in samples[:5]]
    report = evaluate_videobert(load_model(tmp_path / "run")[0], samples[:5])
    assert v.predict_motion(clips) == [p["zero_shot"] for p in report["predictions"]]
    assert v.describe(clips) == [p["description"] for p in report["predictions"]]
    with pytest.raises(InvalidInput, match="phrases"):
        v.predict_motion(clips, ["red star"])
