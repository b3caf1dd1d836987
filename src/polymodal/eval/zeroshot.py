"""Zero-shot classification with prompt ensembles (CLIP_benchmark's definitions).

For every class, each prompt template is embedded and normalised, the embeddings are averaged and the
mean renormalised. ``logits = scale * x @ classes.T (+ bias)``; ``acc1``, ``acc5`` (NaN with fewer than 5 classes) and
``mean_per_class_recall`` (balanced accuracy) depend only on the ranking, so not on the scale. The scale is the
model's own temperature (a checkpoint's ``logit_scale``; CLIP_benchmark's fixed 100 when a model has none), and it
sets the probabilities: ``nll`` is the mean negative log-likelihood of the true class, under a softmax over the
classes (CLIP), or, when the model has a ``bias`` (SigLIP), under its independent sigmoids (binary cross-entropy
summed over the classes, as SigLIP's loss scores a pair)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import InvalidInput


def class_embeddings(embed_text: Callable[[list[str]], np.ndarray], classnames: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
    """(C, D) normalised class matrix. Templates use ``{}`` for the class name."""
    if not templates or not classnames:
        raise InvalidInput("need at least one class name and one template", field="templates")
    rows = []
    for name in classnames:
        e = np.asarray(embed_text([t.format(name) for t in templates]), dtype=np.float32)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        m = e.mean(axis=0)
        rows.append(m / np.linalg.norm(m))
    return np.stack(rows)


def zeroshot_metrics(features: np.ndarray, classes: np.ndarray, labels: Sequence[int], scale: float = 100.0,
                     bias: float | None = None) -> dict[str, float]:
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if x.shape[0] != y.shape[0]:
        raise InvalidInput(f"{x.shape[0]} features but {y.shape[0]} labels", field="labels")
    if not (np.isfinite(scale) and scale > 0) or (bias is not None and not np.isfinite(bias)):
        raise InvalidInput(f"the logit scale must be a positive number (got {scale}) and the bias finite "
                           f"(got {bias})", field="scale")
    logits = (float(scale) * (x @ classes.T)).astype(np.float64) + (0.0 if bias is None else float(bias))
    order = np.argsort(-logits, axis=1, kind="stable")
    acc1 = float((order[:, 0] == y).mean())
    c = classes.shape[0]
    acc5 = float((order[:, :5] == y[:, None]).any(axis=1).mean()) if c >= 5 else float("nan")
    recalls = [float((order[y == k, 0] == k).mean()) for k in range(c) if (y == k).any()]
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": float(np.mean(recalls)), "n": int(y.shape[0]),
            "nll": _nll(logits, y, sigmoid=bias is not None), "logit_scale": float(scale)}


def _nll(logits: np.ndarray, y: np.ndarray, sigmoid: bool) -> float:
    """Mean negative log-likelihood of the true classes (see the module docstring), computed stably."""
    if not len(y):
        return float("nan")
    rows = np.arange(len(y))
    if sigmoid:
        sign = -np.ones_like(logits)
        sign[rows, y] = 1.0
        return float(np.logaddexp(0.0, -sign * logits).sum(axis=1).mean())  # -log sigmoid(sign * z)
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float((log_z - logits[rows, y]).mean())
