"""CapFilt (`polymodal.jobs.capfilt`, ``polymodal data capfilt``): every decision follows the rule for the scores an
injected filter gives the (picture, text) pairs, rewritten samples carry the synthetic caption, other splits are
copied byte for byte, the output reads back, the noise accounting matches a count over the data, a non-empty
--out is refused and a failure leaves nothing behind; end to end, the CLI on tiny trained runs writes what the
runs themselves generate and score."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from jobkit import make_samples

from polymodal.commands.data import main
from polymodal.config import Recipe
from polymodal.data.collate import collate
from polymodal.data.formats import ShardWriter, open_dataset
from polymodal.data.sample import Sample
from polymodal.data.synth.make import make_dataset
from polymodal.errors import InvalidInput
from polymodal.jobs.capfilt import capfilt
from polymodal.models.generative import load_generative_model
from polymodal.models.loading import load_model

# tiny runs (sizes as tests/models/genkit.py makes them)
CAPTIONER = {"tokenizer": {"vocab_size": 320, "min_frequency": 2},
             "encoder": {"image_size": 64, "patch_size": 16, "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
             "decoder": {"hidden": 32, "layers": 1, "heads": 2, "max_len": 48}}
VL = {"family": "visualbert", "visual": "regions", "tokenizer": {"vocab_size": 320, "min_frequency": 2},
      "sizes": {"hidden": 32, "layers": 1, "cross_layers": 1, "visual_layers": 1, "heads": 2}, "patch": 16}


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shapes, 40 samples (train 32, val 4, test 4), 40% of train with noisy alt-text, shards of 8."""
    root = tmp_path_factory.mktemp("capfilt") / "data"
    make_dataset("shapes", root, n=40, modalities=("text", "image"), caption_noise=0.4, shard_size=8, workers=1,
                 progress=False)
    return root


def _hash_score(s: Sample, text: str) -> float:
    """A score that only the right (sample, text) pairing reproduces."""
    return (zlib.crc32(f"{s.id}|{text}".encode()) % 1000) / 999.0


class FakeCaptioner:
    lang = "en"

    def __init__(self, empty_every: int = 5):
        self.empty_every, self.calls = empty_every, 0

    def __call__(self, samples: Sequence[Sample]) -> list[str]:
        self.calls += 1
        return ["" if int(s.metadata["index"]) % self.empty_every == 0 else f"a synthetic caption of {s.id}"
                for s in samples]


def _expected(s: Sample, synthetic: str, threshold: float) -> str:
    """The rule, written out on its own."""
    o = _hash_score(s, str(s.text))
    sy = _hash_score(s, synthetic) if synthetic else -1.0
    return "original" if o >= threshold else "synthetic" if sy >= threshold else "dropped"


def _train(root: Path) -> list[Sample]:
    return list(open_dataset(root, split="train"))


def test_decide_at_the_threshold() -> None:
    from polymodal.jobs.capfilt import decide

    assert decide(0.5, 0.0, 0.5) == "original"  # >= keeps
    assert decide(0.5 - 1e-9, 0.5, 0.5) == "synthetic"
    assert decide(0.9, 0.99, 0.5) == "original"  # the original first, however good the synthetic one
    assert decide(0.1, 0.49, 0.5) == decide(None, None, 0.5) == decide(0.2, None, 0.5) == "dropped"
    assert decide(None, 0.7, 0.5) == "synthetic" and decide(0.0, 0.0, 0.0) == "original"


def test_decisions_follow_the_rule(noisy: Path, tmp_path: Path) -> None:
    cap = FakeCaptioner()
    result = capfilt(noisy, tmp_path / "out", captioner=cap, filter=lambda ss, ts: [_hash_score(s, t)
                     for s, t in zip(ss, ts, strict=True)], threshold=0.4, batch_size=7, progress=False)
    assert cap.calls == 5  # 32 train samples in batches of 7
    written = {s.id: s for s in _train(tmp_path / "out")}
    want = {"original": 0, "synthetic": 0, "dropped": 0}
    for s in _train(noisy):
        syn = cap([s])[0]
        decision = _expected(s, syn, 0.4)
        want[decision] += 1
        if decision == "dropped":
            assert s.id not in written
            continue
        w = written[s.id]
        rec = w.metadata.pop("capfilt")
        assert rec["decision"] == decision and rec["synthetic"] == syn
        assert rec["original_score"] == pytest.approx(_hash_score(s, str(s.text)))
        assert rec["synthetic_score"] == (pytest.approx(_hash_score(s, syn)) if syn else None)
        assert w.metadata == s.metadata and np.array_equal(w.image, s.image)
        image_caps = [c.text for c in w.targets.captions if c.media == "image"]
        if decision == "original":
            assert w.text == s.text and w.targets == s.targets
        else:
            assert w.text == syn and image_caps == [syn] and w.targets.qa == s.targets.qa
    assert min(want.values()) > 0, want  # the data exercises every branch
    assert {k: result[k] for k in want} == want and result["samples"] == 32
    assert list(written) == [s.id for s in _train(noisy) if s.id in written]  # order kept


def test_other_splits_are_copied_byte_for_byte_and_the_output_reads_back(noisy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = capfilt(noisy, out, captioner=FakeCaptioner(), filter=lambda ss, ts: [0.0] * len(ts),
                     decoding={"num_beams": 2}, progress=False)
    assert result["dropped"] == 32 and result["original"] == result["synthetic"] == 0
    for split in ("val", "test"):
        src = sorted(p.name for p in (noisy / split).iterdir())
        assert sorted(p.name for p in (out / split).iterdir()) == src
        for name in src:
            assert (out / split / name).read_bytes() == (noisy / split / name).read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    source = json.loads((noisy / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 0 and manifest["splits"]["val"] == source["splits"]["val"]
    assert manifest["capfilt"]["counts"] == result and manifest["capfilt"]["threshold"] == 0.5
    assert manifest["capfilt"]["decoding"]["num_beams"] == 2 and manifest["labels"] == source["labels"]
    ds = open_dataset(out)
    assert len(ds) == 8 and [s.id for s in ds] == [s.id for s in open_dataset(noisy) if s.metadata["split"] != "train"]
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no temp folder left


def test_noise_accounting_matches_a_count_over_the_data(noisy: Path, tmp_path: Path) -> None:
    def truthful(ss: Sequence[Sample], ts: Sequence[str]) -> list[float]:
        """High for the scene's own caption (but misses every 4th clean sample) and for 'good' captions."""
        return [0.9 if (t == s.metadata["captions"]["en"] and int(s.metadata["index"]) % 4) or t.startswith("good")
                else 0.1 for s, t in zip(ss, ts, strict=True)]

    def captioner(ss: Sequence[Sample]) -> list[str]:
        return ["good caption" if int(s.metadata["index"]) % 2 else "bad caption" for s in ss]

    result = capfilt(noisy, tmp_path / "out", captioner=captioner, filter=truthful, progress=False)
    train = _train(noisy)
    kinds = [s.metadata.get("caption_noise") for s in train]
    source_noise = json.loads((noisy / "manifest.json").read_text())["caption_noise"]
    assert sum(k is not None for k in kinds) == source_noise["noisy"] > 0
    removed = [not (s.text == s.metadata["captions"]["en"] and int(s.metadata["index"]) % 4) for s in train]
    noise = result["noise"]
    assert noise["noisy"] == source_noise["noisy"]
    assert noise["noisy_removed"] == sum(r for r, k in zip(removed, kinds, strict=True) if k is not None)
    assert noise["clean_removed"] == sum(r for r, k in zip(removed, kinds, strict=True) if k is None) > 0
    assert noise["clean"] == len(train) - noise["noisy"]
    assert noise["recall"] == pytest.approx(noise["noisy_removed"] / noise["noisy"])
    for kind in ("wrong", "unrelated"):
        assert noise["by_kind"][kind]["noisy"] == source_noise[kind]
    assert result["synthetic"] == sum(r and int(s.metadata["index"]) % 2 == 1 for r, s in zip(removed, train, strict=True))


def test_refuses_a_non_empty_out_and_leaves_nothing_on_failure(noisy: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for out in (taken, tmp_path / "file"):
        with pytest.raises(InvalidInput, match="out"):
            capfilt(noisy, out, captioner=FakeCaptioner(), filter=lambda ss, ts: [1.0] * len(ts), progress=False)
        assert main(["capfilt", str(noisy), "--captioner", "c", "--filter", "f", "--out", str(out)]) == 1
    assert (taken / "x").read_text() == "mine"

    def broken(ss: Sequence[Sample]) -> list[str]:
        raise RuntimeError("captioner crashed")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError):
        capfilt(noisy, empty, captioner=broken, filter=lambda ss, ts: [1.0] * len(ts), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "taken"] and not any(empty.iterdir())
    capfilt(noisy, empty, captioner=FakeCaptioner(), filter=lambda ss, ts: [1.0] * len(ts), progress=False)
    assert (empty / "manifest.json").is_file()  # an empty folder is fine
    with pytest.raises(InvalidInput, match="threshold"):
        capfilt(noisy, tmp_path / "o2", captioner=FakeCaptioner(), filter=lambda ss, ts: [], threshold=1.5)
    with pytest.raises(InvalidInput, match="split"):
        capfilt(noisy, tmp_path / "o3", captioner=FakeCaptioner(), filter=lambda ss, ts: [], split="nope")


def test_a_shard_dir_without_pictures_everywhere(tmp_path: Path) -> None:
    """A plain WebDataset dir is read whole as the split; samples without a picture pass unchanged."""
    samples = make_samples(12, 3, text_every=3)
    with ShardWriter(tmp_path / "wds", 5) as w:
        for s in samples:
            w.write(s)
    result = capfilt(tmp_path / "wds", tmp_path / "out", captioner=lambda ss: ["x"] * len(ss),
                     filter=lambda ss, ts: [1.0 if t == "x" else 0.0 for t in ts], progress=False)
    assert result["without_image"] == 4 and result["synthetic"] == 8 and "noise" not in result
    out = list(open_dataset(tmp_path / "out"))
    assert [s.id for s in out] == [s.id for s in samples]
    for before, after in zip(samples, out, strict=True):
        if before.image is None:
            assert after.text == before.text and after.metadata == before.metadata
        else:
            assert after.text == "x" and [c.text for c in after.targets.captions] == ["x"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["splits"] == {
        "train": {"path": "train", "count": 12}}


# ----------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def runs(noisy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("transformers")
    from polymodal.train.trainer import Trainer

    root = tmp_path_factory.mktemp("capfilt_runs")
    for name, arch, model in (("cap", "captioner", CAPTIONER), ("vl", "vl_encoder", VL)):
        recipe = Recipe.from_dict({"arch": arch, "model": model, "data": {"split": "train", "val_split": "val"},
                                   "train": {"batch_size": 8, "lr": 3e-3, "weight_decay": 0.0, "warmup_steps": 0,
                                             "steps": 2, "log_every": 1, "seed": 0}})
        Trainer(recipe, noisy, root / name, progress=False).fit()
    return root / "cap", root / "vl"


def test_cli_end_to_end_on_tiny_runs(noisy: Path, runs: tuple[Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cap_run, vl_run = runs
    out = tmp_path / "clean"
    code = main(["capfilt", str(noisy), "--captioner", str(cap_run), "--filter", str(vl_run), "--out", str(out),
                 "--threshold", "0.5", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "capfilt train" in captured.err  # the progress bar
    result = json.loads(captured.out)
    assert result["original"] + result["synthetic"] + result["dropped"] == result["samples"] == 32
    assert result["noise"]["noisy"] == json.loads((noisy / "manifest.json").read_text())["caption_noise"]["noisy"]

    # reference: the runs' own greedy captions and ITM scores, one picture at a time
    gm = load_generative_model(cap_run)
    model, tf, _ = load_model(vl_run)

    def itm(s: Sample, text: str) -> float:
        batch = collate([s], lambda x: {k: v for k, v in tf(x).items() if k == "image"})
        with torch.no_grad():
            return float(model.itm_scores(batch, [text])[0])

    written = {s.id: s for s in open_dataset(out, split="train")}
    assert len(written) == 32 - result["dropped"]
    for s in _train(noisy)[:8]:
        syn = gm.generate(image=s.image)[0].strip()
        o, sy = itm(s, str(s.text)), (itm(s, syn) if syn else None)
        decision = "original" if o >= 0.5 else "synthetic" if sy is not None and sy >= 0.5 else "dropped"
        if decision == "dropped":
            assert s.id not in written
            continue
        rec: dict[str, Any] = written[s.id].metadata["capfilt"]
        assert rec["synthetic"] == syn and rec["decision"] == decision
        assert rec["original_score"] == pytest.approx(o, abs=1e-5)
        assert rec["synthetic_score"] == (None if sy is None else pytest.approx(sy, abs=1e-5))

    with pytest.raises(InvalidInput, match="filter"):  # a captioner is no filter
        capfilt(noisy, tmp_path / "other", captioner=cap_run, filter=cap_run, progress=False)
    assert main(["capfilt", str(noisy), "--captioner", str(vl_run), "--filter", str(vl_run),
                 "--out", str(tmp_path / "o4"), "--no-progress"]) == 1
