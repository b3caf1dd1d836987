"""data.on_error=skip in training: the skipped items are counted and named, on the console (one warning line
with the count, the first files and why) and in the result (`--json`), never dropped without a word."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainkit import make_samples, tiny_recipe

from polymodal.commands import main as polymodal_main
from polymodal.data.formats import write_jsonl
from polymodal.train.trainer import train


def _data_with_bad_items(root: Path, bad: tuple[int, ...] = (3,)) -> Path:
    """A JSONL data set of 12 text+image samples whose images ``bad`` are corrupt files."""
    path = root / "data" / "d.jsonl"
    write_jsonl(make_samples(12, 0), path)
    for i in bad:
        (path.parent / "media" / f"s0_{i:04d}.png").write_bytes(b"not a png")
    return path


@pytest.mark.parametrize("stream", [False, True])
def test_train_reports_skipped_items(tmp_path: Path, capsys: pytest.CaptureFixture[str], stream: bool) -> None:
    data = _data_with_bad_items(tmp_path, (3, 7))
    recipe = tiny_recipe(steps=2).with_overrides([("data.on_error", "skip"), ("data.stream", stream)])
    result = train(recipe, data, tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "skipped 2 bad item(s)" in line]
    assert len(warning) == 1, err
    assert "s0_0003.png" in warning[0] and "s0_0007.png" in warning[0] and "field 'image'" in warning[0]
    assert result.skipped["count"] == 2
    assert [Path(n.split(":")[0]).name for n in result.skipped["first"]] == ["d.jsonl", "d.jsonl"]
    assert "s0_0003.png" in result.skipped["errors"][0] and "s0_0007.png" in result.skipped["errors"][1]


def test_train_cli_json_and_summary_carry_the_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _data_with_bad_items(tmp_path)
    recipe_file = tmp_path / "r.json"
    recipe_file.write_text(json.dumps(tiny_recipe(steps=1).with_overrides([("data.on_error", "skip")]).to_dict()))
    args = ["train", str(recipe_file), "--data", str(data), "--no-progress"]
    assert polymodal_main([*args, "--out", str(tmp_path / "a"), "--json"]) == 0
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert got["skipped"]["count"] == 1 and "s0_0003.png" in got["skipped"]["errors"][0]
    assert "skipped 1 bad item(s)" in err
    assert polymodal_main([*args, "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 bad item(s)" in out


def test_nothing_skipped_nothing_said(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = train(tiny_recipe(steps=1).with_overrides([("data.on_error", "skip")]), tiny_data, tmp_path / "r",
                   progress=False)
    assert result.skipped == {"count": 0, "first": [], "errors": []}
    assert "skipped" not in capsys.readouterr().err
