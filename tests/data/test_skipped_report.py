"""on_error=skip is never silent: the data commands say on the console (stderr) how many items were skipped,
the first files and why, also when stdout carries JSON; `ErrorPolicy.warning` gives that line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polymodal.commands.data import main
from polymodal.data.formats import open_dataset, write_folder
from polymodal.data.formats.common import ErrorPolicy
from polymodal.data.sample import Sample
from polymodal.errors import InvalidInput


def _broken(tmp_path: Path, samples: list[Sample], bad: tuple[str, ...] = ("s002",)) -> Path:
    path = tmp_path / "f"
    write_folder(samples, path)
    for stem in bad:
        (path / f"{stem}.png").write_bytes(b"broken")
    return path


def test_policy_warning_line() -> None:
    policy = ErrorPolicy("skip")
    assert policy.warning() is None
    for i in range(5):
        policy.handle(InvalidInput("cannot decode image", source=f"/d/s{i}.png"), f"/d/s{i}")
    line = policy.warning(first=2)
    assert line is not None and "\n" not in line
    assert line.startswith("skipped 5 bad item(s)") and "/d/s1.png: cannot decode image" in line
    assert "/d/s2.png" not in line and "+3 more" in line


def test_inspect_json_warns_on_stderr(tmp_path: Path, tiny_samples: list[Sample],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = _broken(tmp_path, tiny_samples)
    assert main(["inspect", str(path), "--json", "--no-progress", "--on-error", "skip"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["skipped"]["count"] == 1
    assert "warning: skipped 1 bad item(s)" in err and "s002.png" in err and "field 'image'" in err
    write_folder(tiny_samples, tmp_path / "good")
    assert main(["inspect", str(tmp_path / "good"), "--json", "--no-progress", "--on-error", "skip"]) == 0
    assert "skipped" not in capsys.readouterr().err


def test_convert_warns_with_reasons(tmp_path: Path, tiny_samples: list[Sample],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = _broken(tmp_path, tiny_samples)
    assert main(["convert", str(path), "--to", "jsonl", "--out", str(tmp_path / "o.jsonl"), "--on-error",
                 "skip"]) == 0
    out, err = capsys.readouterr()
    assert "wrote 5 samples" in out and "skipped 1 item(s)" in out
    assert "warning: skipped 1 bad item(s)" in err and "field 'image'" in err
    assert len(list(open_dataset(tmp_path / "o.jsonl"))) == 5
