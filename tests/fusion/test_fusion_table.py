"""The fusion results table (bench/fusion_table.py).

- The CI-size run of main() on a tiny generated digits set: its numbers are checked against a recomputation made
  here from the saved runs' own predictions on the test split (accuracy, macro-F1, each modality removed), and
  the robustness summaries against their definitions applied to the reported curves.
- The markdown rendering on a hand-built result whose cells, targets and notes are known in advance.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np
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


@pytest.fixture(scope="module")
def small(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--small`` run of main(), shared by the tests below: its work dir, JSON, markdown and stdout."""
    tmp = tmp_path_factory.mktemp("fusion_table")
    md, js = tmp / "fusion.md", tmp / "fusion.json"
    before = torch.get_num_threads()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = bench.main(["--small", "--quiet", "--workdir", str(tmp / "work"), "--out", str(md),
                           "--json-out", str(js)])
    torch.set_num_threads(before)
    assert code == 0
    return {"tmp": tmp, "work": tmp / "work", "json": js, "result": json.loads(js.read_text()),
            "markdown": md.read_text(), "stdout": out.getvalue().splitlines()}


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


# ------------------------------------------------------------------------------------------ the small run
def test_small_run_covers_every_fusion(small: dict[str, Any], bench: ModuleType) -> None:
    result = small["result"]
    assert json.loads(small["stdout"][0]) == result  # the JSON line comes first
    rows = {r["fusion"]: r for r in result["rows"]}
    assert set(rows) == set(FUSIONS.names())  # every registered fusion has a packaged recipe and a row
    assert result["rows"][0]["fusion"] == "late"
    assert set(_rows(small["markdown"], "fusion | clean acc")) == set(rows)
    for r in rows.values():
        assert r["steps"] == 10 and r["n_test"] == 6 and len(r["noise_acc"]["all"]) == 3
    # re-rendering from the saved JSON gives the same text (the table is generated, never typed)
    again = small["tmp"] / "again.md"
    assert bench.main(["--from-json", str(small["json"]), "--out", str(again)]) == 0
    assert again.read_text() == small["markdown"]


def _labels(model: Any, samples: list) -> np.ndarray:
    index = {c: i for i, c in enumerate(model.classes or ())}
    values = [s.metadata[model.label_field] for s in samples]
    return np.array([index[v] if isinstance(v, str) else int(v) for v in values])


def _macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    """From the confusion matrix: per class 2 C[c,c] / (row sum + column sum), over classes seen in y or p."""
    k = int(max(y.max(), p.max())) + 1
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (y, p), 1)
    seen = (conf.sum(0) + conf.sum(1)) > 0
    f1 = 2 * np.diag(conf) / np.maximum(conf.sum(0) + conf.sum(1), 1)
    return float(f1[seen].mean())


def test_numbers_match_a_recomputation_from_the_runs_predictions(small: dict[str, Any]) -> None:
    from polymodal.data.collate import collate
    from polymodal.data.formats.dataset import open_dataset
    from polymodal.models import load_model

    test = list(open_dataset(small["work"] / "digits", split="test"))
    table = _rows(small["markdown"], "fusion | clean acc")
    for row in small["result"]["rows"]:
        model, tf, _ = load_model(small["work"] / f"run_{row['fusion']}")
        batch = collate(test, tf.eval())
        y = _labels(model, test)
        pred = {"clean": model.predict(batch).argmax(1).numpy()}
        for m in ("image", "audio"):
            removed = {**batch.mask, m: torch.zeros_like(batch.mask[m])}
            pred[m] = model.predict(batch, removed).argmax(1).numpy()
        expect = {"clean_acc": float(np.mean(pred["clean"] == y)), "clean_macro_f1": _macro_f1(y, pred["clean"]),
                  "image_missing_acc": float(np.mean(pred["image"] == y)),
                  "audio_missing_acc": float(np.mean(pred["audio"] == y))}
        assert {k: row[k] for k in expect} == pytest.approx(expect, abs=1e-9), row["fusion"]
        cells = table[row["fusion"]]
        assert cells[:4] == [f"{100 * expect[k]:.1f}" for k in expect], row["fusion"]
        assert cells[6] == f"{row['params']:,}"
        assert row["params"] == sum(p.numel() for p in model.parameters())


def test_robustness_summaries_follow_their_definitions(small: dict[str, Any]) -> None:
    """Area under the accuracy-vs-noise curve (trapezoids) and effective robustness against late fusion's curve,
    ``sum_i (f_i - (lf_i + f_0 - lf_0))``, applied here to the reported curves; and the noise table's cells."""
    rows = {r["fusion"]: r for r in small["result"]["rows"]}
    levels = np.array(small["result"]["config"]["levels"])
    late = rows["late"]["noise_acc"]
    noise_table = _rows(small["markdown"], "fusion | AUC % image")
    for name, r in rows.items():
        for k in ("image", "audio", "all"):
            f = np.array(r["noise_acc"][k])
            auc = float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(levels)))
            assert r["noise_auc"][k] == pytest.approx(auc, abs=1e-9), (name, k)
            lf = np.array(late[k])
            er = float(np.sum(f - (lf + f[0] - lf[0])))
            assert r["effective_robustness"][k] == pytest.approx(er, abs=1e-9), (name, k)
        assert noise_table[name][:3] == [f"{100 * r['noise_auc'][k]:.1f}" for k in ("image", "audio", "all")]


# ------------------------------------------------------------------------------------------ the markdown
def _row(fusion: str, acc: tuple[float, float, float, float], auc: tuple[float, float, float],
         er: tuple[float, float, float], params: int, train_s: float, noise: dict[str, list[float]],
         completion: tuple[float, float, float, float]) -> dict[str, Any]:
    return {"fusion": fusion, "clean_acc": acc[0], "clean_macro_f1": acc[1], "image_missing_acc": acc[2],
            "audio_missing_acc": acc[3], "noise_auc": dict(zip(("image", "audio", "all"), auc, strict=True)),
            "effective_robustness": dict(zip(("image", "audio", "all"), er, strict=True)),
            "noise_acc": {**noise, "all": noise["audio"]}, "params": params, "train_s": train_s,
            "steps": 10, "batch_size": 16, "n_test": 6,
            "completion": {"n_train": 40,
                           "image": {"class_R@1": completion[0], "item": {"R@1": completion[1]}},
                           "audio": {"class_R@1": completion[2], "item": {"R@1": completion[3]},
                                     "chance": {"class_R@1": 0.1, "item_R@1": 0.0124}}}}


HAND_ROWS = [
    _row("late", (0.98765, 0.5, 0.123449, 0.95), (0.9, 0.8, 0.55555), (0.0, 0.0, 0.0), 1234567, 12.4,
         {"image": [0.9, 0.9, 0.9], "audio": [0.9, 0.5, 0.1]}, (0.25, 0.0124, 1.0, 0.05)),
    _row("attention", (0.9951, 0.99, 0.96, 0.97), (0.91, 0.7, 0.6), (-0.0004, -0.5, 0.01234), 987, 7.6,
         {"image": [0.8, 0.8, 0.8], "audio": [0.99, 0.6, 0.2]}, (0.5, 0.1, 0.75, 0.0)),
    # near chance with a flat curve: a positive effective robustness that must not count as a win
    _row("early", (0.2, 0.1, 0.2, 0.2), (0.2, 0.2, 0.2), (0.0, 0.0, 0.3), 10, 0.4,
         {"image": [0.2, 0.2, 0.2], "audio": [0.2, 0.2, 0.2]}, (0.0, 0.0, 0.0, 0.0)),
]


def test_targets_of_hand_built_rows(bench: ModuleType) -> None:
    assert bench.targets(HAND_ROWS) == {
        "best_clean": {"fusion": "attention", "acc": 0.9951, "met": True},
        "best_one_missing": {"fusion": "attention", "acc": 0.96, "met": True},  # the worse of its two
        "beat_late_effective_robustness": {"fusions": ["attention"], "met": True},
    }
    low = [dict(r, clean_acc=0.5) for r in HAND_ROWS]
    assert bench.targets(low)["beat_late_effective_robustness"] == {"fusions": [], "met": False}
    assert bench.targets(low)["best_clean"]["met"] is False


def test_markdown_of_a_hand_built_result(bench: ModuleType) -> None:
    result = {"rows": HAND_ROWS, "total_s": 61.4, "targets": bench.targets(HAND_ROWS),
              "config": {"n_data": 60, "seed": 3, "levels": [0.0, 0.5, 1.0]},
              "machine": {"cpus": 2, "platform": "Linux-x", "torch": "2.x", "threads": 1, "loadavg_at_end": [1.5]}}
    md = bench.render_markdown(result)
    lines = md.splitlines()
    assert _rows(md, "fusion | clean acc") == {
        "late": ["98.8", "50.0", "12.3", "95.0", "55.6", "+0.000", "1,234,567", "12"],
        "attention": ["99.5", "99.0", "96.0", "97.0", "60.0", "+0.012", "987", "8"],
        "early": ["20.0", "10.0", "20.0", "20.0", "20.0", "+0.300", "10", "0"],
    }
    assert _rows(md, "fusion | AUC % image") == {  # -0.0004 rounds to +0.000, never "-0.000"
        "late": ["90.0", "80.0", "55.6", "+0.000", "+0.000", "+0.000"],
        "attention": ["91.0", "70.0", "60.0", "+0.000", "-0.500", "+0.012"],
        "early": ["20.0", "20.0", "20.0", "+0.000", "+0.000", "+0.300"],
    }
    assert _rows(md, "fusion | image from audio") == {
        "late": ["25.0 / 1.2", "100.0 / 5.0"], "attention": ["50.0 / 10.0", "75.0 / 0.0"],
        "early": ["0.0 / 0.0", "0.0 / 0.0"],
    }
    assert "n=60, test split 6 samples" in md and "10 steps of batch 16, seed 3" in md
    assert "## Noise robustness (levels 0.0, 0.5, 1.0)" in lines and "chance 10.0 / 1.2" in md
    targets = next(line for line in lines if line.startswith("Targets:"))
    assert "best clean accuracy >= 99%: met (attention, 99.5%)" in targets
    assert ">= 95%: met (attention, 96.0%)" in targets and targets.endswith(": met (attention).")
    # notes: the image sweep is flat for every row (the audio one is not); who fails without a modality
    notes = [line for line in lines if line.startswith("- ")]
    assert len(notes) == 4
    assert notes[0].startswith("- Image noise changes no fusion's accuracy")
    assert notes[1].startswith("- `late` with image missing (audio alone): 12.3%")
    assert notes[2].startswith("- `early` with audio missing (image alone): 20.0%")
    assert notes[3].startswith("- `early` with image missing (audio alone): 20.0%")
