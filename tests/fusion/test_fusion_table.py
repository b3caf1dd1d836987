"""The fusion results table in CI size: bench/fusion_table.py's main() on a tiny generated digits set;
the markdown has one row per fusion and its numbers are the JSON's."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from polymodal.fusion import FUSIONS


@pytest.fixture(scope="module")
def bench(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("fusion_table")


@pytest.fixture(autouse=True)
def keep_threads() -> Iterator[None]:
    before = torch.get_num_threads()  # main() sets its own thread count
    yield
    torch.set_num_threads(before)


def _rows(markdown: str, head: str) -> dict[str, list[str]]:
    """Cells of the first markdown table whose header starts with ``head``, by first cell."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {head}"))
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


def test_small_table(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md, js = tmp_path / "fusion.md", tmp_path / "fusion.json"
    assert bench.main(["--small", "--quiet", "--workdir", str(tmp_path / "work"), "--out", str(md),
                       "--json-out", str(js)]) == 0
    printed = capsys.readouterr().out.splitlines()
    result = json.loads(js.read_text())
    assert json.loads(printed[0]) == result  # the JSON line comes first
    rows = {r["fusion"]: r for r in result["rows"]}
    assert set(rows) == set(FUSIONS.names())  # every registered fusion has a packaged recipe and a row
    assert result["rows"][0]["fusion"] == "late"
    markdown = md.read_text()
    table = _rows(markdown, "fusion | clean acc")
    assert set(table) == set(rows)
    for name, cells in table.items():
        r = rows[name]
        want = [f"{100 * r[k]:.1f}" for k in ("clean_acc", "clean_macro_f1", "image_missing_acc",
                                               "audio_missing_acc")]
        want += [f"{100 * r['noise_auc']['all']:.1f}", f"{round(r['effective_robustness']['all'], 3) + 0.0:+.3f}",
                 f"{r['params']:,}", f"{r['train_s']:.0f}"]
        assert cells == want, name
        assert r["steps"] == 10 and r["n_test"] == 6
        assert 0.0 <= r["clean_acc"] <= 1.0 and len(r["noise_acc"]["all"]) == 3
    assert rows["late"]["effective_robustness"] == {"audio": 0.0, "image": 0.0, "all": 0.0}
    noise = _rows(markdown, "fusion | AUC % image")
    for name, cells in noise.items():
        assert cells[2] == f"{100 * rows[name]['noise_auc']['all']:.1f}"
    # the markdown is a pure function of the JSON: re-rendering from the file gives the same text
    again = tmp_path / "again.md"
    assert bench.main(["--from-json", str(js), "--out", str(again)]) == 0
    assert again.read_text() == markdown
    assert result["targets"]["best_clean"]["acc"] == max(r["clean_acc"] for r in rows.values())
