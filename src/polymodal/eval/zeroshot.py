"""Zero-shot classification with prompt ensembles (CLIP_benchmark's definitions).

For every class, each prompt template is embedded and normalised, the embeddings are averaged and the
mean renormalised. ``logits = 100 * x @ classes.T``; ``acc1``, ``acc5`` (NaN with fewer than 5 classes) and
``mean_per_class_recall`` (balanced accuracy)."""

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


def zeroshot_metrics(features: np.ndarray, classes: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if x.shape[0] != y.shape[0]:
        raise InvalidInput(f"{x.shape[0]} features but {y.shape[0]} labels", field="labels")
    logits = 100.0 * x @ classes.T
    order = np.argsort(-logits, axis=1, kind="stable")
    acc1 = float((order[:, 0] == y).mean())
    c = classes.shape[0]
    acc5 = float((order[:, :5] == y[:, None]).any(axis=1).mean()) if c >= 5 else float("nan")
    recalls = [float((order[y == k, 0] == k).mean()) for k in range(c) if (y == k).any()]
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": float(np.mean(recalls)), "n": int(y.shape[0])}
