"""`polymodal data` CLI: help, inspect (--json checked against values computed from the samples),
bad input in both modes, make (argument errors; end to end when the synth module is present), convert."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from polymodal.commands import main as polymodal_main
from polymodal.commands.data import main
from polymodal.data.formats import ShardWriter, open_dataset, write_folder, write_jsonl
from polymodal.data.sample import MODALITIES, Sample


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def write(fmt: str, samples: list[Sample], root: Path) -> Path:
    if fmt == "jsonl":
        write_jsonl(samples, root / "d.jsonl")
        return root / "d.jsonl"
    if fmt == "folder":
        write_folder(samples, root / "f")
        return root / "f"
    with ShardWriter(root / "w", shard_size=3) as w:
        for s in samples:
            w.write(s)
    return root / "w"


def expected_summary(samples: list[Sample]) -> dict:
    """The inspect numbers, computed directly and plainly from the samples."""
    def stats(xs: list[float]) -> dict | None:
        return {"min": min(xs), "mean": sum(xs) / len(xs), "max": max(xs)} if xs else None

    texts = [s.text for s in samples if s.text is not None]
    images = [s.image.shape[:2] for s in samples if s.image is not None]
    videos = [s.video.shape for s in samples if s.video is not None]
    audio = [(len(s.audio), s.sample_rate) for s in samples if s.audio is not None]
    is_zh = [any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in texts]
    langs = {"zh": sum(is_zh), "en": len(texts) - sum(is_zh)}  # every non-Chinese test caption has Latin letters
    rates = sorted({sr for _, sr in audio})

    def extent(hw: list[tuple[int, int]]) -> dict:
        if not hw:
            return {"min_hw": None, "max_hw": None}
        return {"min_hw": [min(h for h, _ in hw), min(w for _, w in hw)],
                "max_hw": [max(h for h, _ in hw), max(w for _, w in hw)]}

    return {
        "samples": len(samples),
        "modalities": {m: sum(m in s.modalities for s in samples) for m in MODALITIES},
        "text": {"chars": stats([len(t) for t in texts]), "langs": {k: v for k, v in sorted(langs.items()) if v}},
        "image": extent(images),
        "audio": {"duration_s": stats([n / sr for n, sr in audio]),
                  "sample_rates": {str(r): sum(sr == r for _, sr in audio) for r in rates}},
        "video": {"frames": stats([v[0] for v in videos]), **extent([v[1:3] for v in videos])},
        "metadata_keys": sorted({k for s in samples for k in s.metadata}),
    }


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["--help"], capsys)
    assert rc == 0 and all(c in out for c in ("inspect", "make", "convert"))
    rc, out, _ = run(["inspect", "--help"], capsys)
    assert rc == 0 and all(o in out for o in ("--split", "--json", "--on-error", "--sample-rate"))
    rc, out, _ = run(["make", "--help"], capsys)
    assert rc == 0 and all(o in out for o in ("--out", "--n", "--seed", "--lang", "--modalities", "--shard-size",
                                                  "--workers", "--json"))
    rc, out, _ = run(["convert", "--help"], capsys)
    assert rc == 0 and "--to" in out
    assert polymodal_main(["data", "--help"]) == 0 and "inspect" in capsys.readouterr().out
    assert run([], capsys)[0] == 2


@pytest.mark.parametrize("fmt", ["jsonl", "folder", "webdataset"])
def test_inspect_json_matches_samples(fmt: str, tmp_path: Path, tiny_samples: list[Sample],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = write(fmt, tiny_samples, tmp_path)
    rc, out, _ = run(["inspect", str(path), "--json", "--no-progress"], capsys)
    assert rc == 0
    got = json.loads(out)
    want = expected_summary(tiny_samples)
    assert got["format"] == fmt and got["stored"] == len(tiny_samples)
    assert got["skipped"]["count"] == 0
    for key in ("samples", "modalities", "image", "metadata_keys"):
        assert got[key] == want[key], key
    assert got["text"]["langs"] == want["text"]["langs"] and set(want["text"]["langs"]) == {"en", "zh"}
    assert got["audio"]["sample_rates"] == want["audio"]["sample_rates"]
    assert got["video"]["min_hw"] == want["video"]["min_hw"] and got["video"]["max_hw"] == want["video"]["max_hw"]
    for section, key in (("text", "chars"), ("audio", "duration_s"), ("video", "frames")):
        assert got[section][key] == pytest.approx(want[section][key]), section


def test_inspect_text_output(tmp_path: Path, tiny_samples: list[Sample], capsys: pytest.CaptureFixture[str]) -> None:
    path = write("jsonl", tiny_samples, tmp_path)
    rc, out, err = run(["inspect", str(path)], capsys)
    assert rc == 0
    assert "samples:    6 read of 6 stored; skipped 0 items" in out
    counts = ", ".join(f"{m} {sum(m in s.modalities for s in tiny_samples)}" for m in MODALITIES)
    assert f"modalities: {counts}" in out and counts == "audio 3, image 4, text 5, video 2"
    assert "16000 Hz (2)" in out and "8000 Hz (1)" in out and "langs en" in out


def test_inspect_bad_input_both_modes(tmp_path: Path, tiny_samples: list[Sample],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = write("folder", tiny_samples, tmp_path)
    (path / "s002.png").write_bytes(b"broken")
    rc, out, err = run(["inspect", str(path), "--no-progress"], capsys)
    assert rc == 1 and "s002.png" in err and "error" in err and out == ""
    rc, out, _ = run(["inspect", str(path), "--json", "--no-progress", "--on-error", "skip"], capsys)
    got = json.loads(out)
    assert rc == 0 and got["samples"] == 5 and got["skipped"]["count"] == 1
    assert "s002" in got["skipped"]["first"][0] and "s002.png" in got["skipped"]["errors"][0]
    rc, out, err = run(["inspect", str(path), "--on-error", "skip", "--sample-rate", "16000"], capsys)
    assert rc == 0 and "skipped 2 item(s)" in out and "expected 16000 Hz" in out
    rc, _, err = run(["inspect", str(tmp_path / "missing"), "--no-progress"], capsys)
    assert rc == 1 and "missing" in err
    assert run(["inspect", str(path), "--on-error", "ignore"], capsys)[0] == 2


@pytest.mark.parametrize("argv,needle", [
    (["make", "shapes", "--out", "X", "--modalities", "text,smell"], "smell"),
    (["make", "shapes", "--out", "X", "--n", "0"], "--n"),
    (["make", "shapes", "--out", "X", "--lang", "en,fr"], "fr"),
    (["make", "shapes", "--out", "X", "--workers", "0"], "--workers"),
    (["make", "no-such-set", "--out", "X", "--n", "3"], "no-such-set"),
])
def test_make_argument_errors(argv: list[str], needle: str, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / a) if a == "X" else a for a in argv]
    rc, _, err = run(argv, capsys)
    assert rc == 1 and needle in err
    assert not (tmp_path / "X").exists()
    assert run(["make", "shapes", "--n", "3"], capsys)[0] == 2  # --out is required


def test_make_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "shapes"
    rc, out, _ = run(["make", "shapes", "--out", str(out_dir), "--n", "12", "--seed", "3", "--lang", "en,zh",
                      "--modalities", "text,image", "--shard-size", "4", "--workers", "1", "--json",
                      "--no-progress"], capsys)
    assert rc == 0
    got = json.loads(out)
    manifest, info = got["manifest"], got["inspect"]
    assert manifest["n"] == 12 and sum(v["count"] for v in manifest["splits"].values()) == 12
    samples = list(open_dataset(out_dir))
    want = expected_summary(samples)
    assert info["format"] == "dataset" and info["samples"] == 12 and info["modalities"] == want["modalities"]
    assert want["modalities"]["audio"] == 0 and want["modalities"]["text"] == 12
    assert info["image"] == want["image"] and info["text"]["chars"] == pytest.approx(want["text"]["chars"])
    assert [s.id for s in open_dataset(out_dir, split="train")] == [
        s.id for s in samples if s.metadata.get("split", "train") == "train"]


@pytest.mark.parametrize("to", ["webdataset", "jsonl", "folder"])
def test_convert_round_trip(to: str, tmp_path: Path, tiny_samples: list[Sample], same_sample: Callable,
                            capsys: pytest.CaptureFixture[str]) -> None:
    src = write("folder", tiny_samples, tmp_path)
    dest = tmp_path / ("out.jsonl" if to == "jsonl" else "out")
    rc, out, _ = run(["convert", str(src), "--to", to, "--out", str(dest), "--shard-size", "4"], capsys)
    assert rc == 0 and "wrote 6 samples" in out
    ds = open_dataset(dest)
    assert ds.format == to
    # against what convert read (audio is compared with the source after one decode: see AUDIO_TOL)
    for a, b in zip(open_dataset(src), ds, strict=True):
        same_sample(a, b)
    assert np.array_equal(next(iter(ds)).image, tiny_samples[0].image)
