"""Robustness of classifiers to missing and noisy modalities (MultiBench-style), and its metrics.

- :func:`relative_robustness`: trapezoid area under accuracy-vs-noise-level (levels 0..1 -> an
  accuracy-like number; a flat curve at ``a`` gives ``a``).
- :func:`effective_robustness`: ``sum_i (f_i - (lf_i + f_0 - lf_0))``, the accuracy kept relative to
  the late-fusion reference curve shifted to start at this model's clean accuracy (late fusion itself: 0).
- :func:`robustness_report`: runs the clean condition, each modality removed, a noise sweep per modality
  and one with all modalities noisy together, and returns accuracy and macro-F1 for each, plus both
  robustness numbers per sweep.

The model is reached only through ``eval_fn(condition) -> (y_true, y_pred)``; apply a
:class:`Condition` with :func:`polymodal.eval.noise.noisy_sample` (noise, per sample) and
:func:`mask_out` (removal, per batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.sample import Batch
from ..errors import InvalidInput

DEFAULT_LEVELS: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))


@dataclass(frozen=True)
class Condition:
    """One evaluation condition: noise level per modality, and modalities removed (masked) entirely."""

    noise: Mapping[str, float] = field(default_factory=dict)
    removed: tuple[str, ...] = ()


EvalFn = Callable[[Condition], tuple[Sequence[int] | np.ndarray, Sequence[int] | np.ndarray]]


def mask_out(batch: Batch, modalities: Sequence[str]) -> Batch:
    """A copy of ``batch`` in which ``modalities`` are missing for every row (values kept, masks False)."""
    mask = {m: (v.new_zeros(v.shape) if m in modalities else v) for m, v in batch.mask.items()}
    return Batch(batch.ids, batch.data, mask, batch.pad_mask, batch.texts, batch.metadata, batch.targets)


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    t, p = _labels(y_true, y_pred)
    return float(np.mean(t == p))


def macro_f1(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
             labels: Sequence[int] | None = None) -> float:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN) over ``labels`` (default: every label in
    ``y_true`` or ``y_pred``); a class with no true, predicted or correct sample scores 0 (as scikit-learn)."""
    t, p = _labels(y_true, y_pred)
    classes = np.unique(np.concatenate([t, p])) if labels is None else np.asarray(labels)
    scores = []
    for c in classes:
        tp = int(np.sum((t == c) & (p == c)))
        fp = int(np.sum((t != c) & (p == c)))
        fn = int(np.sum((t == c) & (p != c)))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def _labels(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if t.shape != p.shape or t.size == 0:
        raise InvalidInput(f"y_true and y_pred must be equal-length and non-empty, got {t.size} and {p.size}",
                           field="y_pred")
    return t, p


def relative_robustness(levels: Sequence[float], accs: Sequence[float]) -> float:
    """Trapezoid area under ``accs`` over increasing ``levels``."""
    x, y = np.asarray(levels, dtype=np.float64), np.asarray(accs, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise InvalidInput(f"need >= 2 levels and as many accuracies, got {x.size} and {y.size}", field="accs")
    if np.any(np.diff(x) <= 0):
        raise InvalidInput("levels must be strictly increasing", field="levels")
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def effective_robustness(accs: Sequence[float], late_fusion_accs: Sequence[float]) -> float:
    """``sum_i (f_i - (lf_i + f_0 - lf_0))`` over the levels of two curves measured at the same levels."""
    f, lf = np.asarray(accs, dtype=np.float64), np.asarray(late_fusion_accs, dtype=np.float64)
    if f.shape != lf.shape or f.size == 0:
        raise InvalidInput(f"curves differ in length: {f.size} vs {lf.size}", field="late_fusion_accs")
    return float(np.sum(f - (lf + f[0] - lf[0])))


def robustness_report(eval_fn: EvalFn, modalities: Sequence[str], levels: Sequence[float] = DEFAULT_LEVELS,
                      late_fusion: Mapping[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """Evaluate every condition and summarise it.

    Returns ``{"levels", "clean": {acc, macro_f1}, "removed": {m: {acc, macro_f1}},
    "noise": {m | "all": {acc: [..], macro_f1: [..], relative_robustness, effective_robustness}}}``.
    ``effective_robustness`` is present only when ``late_fusion`` (a report of the late-fusion model over
    the same levels) is given. Level 0 of each sweep reuses the clean result (noise at 0 is the identity).
    """
    levels = [float(v) for v in levels]
    mods = sorted(modalities)
    if late_fusion is not None and [float(v) for v in late_fusion["levels"]] != levels:
        raise InvalidInput("the late-fusion report was measured at different levels", field="late_fusion")
    sweeps: dict[str, list[str]] = {m: [m] for m in mods}
    if len(mods) > 1:
        sweeps["all"] = mods
    total = 1 + len(mods) + sum(1 for v in levels if v > 0) * len(sweeps)
    bar = tqdm(total=total, desc="robustness", disable=not progress)

    def run(cond: Condition) -> dict[str, float]:
        y_true, y_pred = eval_fn(cond)
        bar.update(1)
        return {"acc": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred)}

    clean = run(Condition())
    report: dict[str, Any] = {"levels": levels, "clean": clean,
                              "removed": {m: run(Condition(removed=(m,))) for m in mods}, "noise": {}}
    for name, noisy in sweeps.items():
        points = [clean if v == 0 else run(Condition(noise={m: v for m in noisy})) for v in levels]
        curve: dict[str, Any] = {"acc": [p["acc"] for p in points], "macro_f1": [p["macro_f1"] for p in points]}
        if len(levels) > 1:
            curve["relative_robustness"] = relative_robustness(levels, curve["acc"])
        if late_fusion is not None and name in late_fusion["noise"]:
            curve["effective_robustness"] = effective_robustness(curve["acc"], late_fusion["noise"][name]["acc"])
        report["noise"][name] = curve
    bar.close()
    return report
