"""Shared helpers for the index tests: clustered data and an independent exact reference (numpy)."""

from __future__ import annotations

import numpy as np


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 50, spread: float = 0.6, centres_seed: int = 0
              ) -> np.ndarray:
    """Unit vectors around random centres: neighbours are meaningful, like real embeddings. The centres depend
    only on ``centres_seed``, so data and held-out queries (other ``seed``) share one distribution."""
    centres = np.random.default_rng(10_000 + centres_seed).standard_normal((clusters, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_topk(base: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip") -> np.ndarray:
    """Reference top-k ids by plain numpy (float64), independent of FAISS."""
    b, q = base.astype(np.float64), queries.astype(np.float64)
    if metric == "l2":
        d = (q**2).sum(1)[:, None] - 2 * q @ b.T + (b**2).sum(1)[None, :]
        order = np.argsort(d, axis=1, kind="stable")
    else:
        order = np.argsort(-(q @ b.T), axis=1, kind="stable")
    return ids[order[:, :k]]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth, strict=True)]))


# ------------------------------------------------------------------ a replayable sequence of writes (crash tests)

CRASH_DIM = 8
CRASH_BASE = 100


def crash_vec(item: int, step: int) -> np.ndarray:
    return np.random.default_rng(item * 1000 + step).standard_normal(CRASH_DIM).astype(np.float32)


def crash_step(step: int, present: set[int]) -> tuple[list[int], int, int]:
    """(ids added, id upserted, id deleted) by write step ``step`` >= 1, given the ids present before it."""
    added = list(range(CRASH_BASE + 5 * (step - 1), CRASH_BASE + 5 * step))
    candidates = sorted(i for i in present if i > 0)
    deleted = candidates[(step * 37) % len(candidates)]
    return added, 0, deleted


def crash_replay(step: int) -> dict[int, tuple[np.ndarray, dict]]:
    """The exact content (id -> (vector, metadata)) after steps 0..step, computed plainly."""
    state = {i: (crash_vec(i, 0), {"v": 0}) for i in range(CRASH_BASE)}
    state[0] = (crash_vec(0, 0), {"step": 0})
    for s in range(1, step + 1):
        added, upserted, deleted = crash_step(s, set(state))
        for i in added:
            state[i] = (crash_vec(i, s), {"v": s})
        state[upserted] = (crash_vec(upserted, s), {"step": s})
        del state[deleted]
    return state


def crash_apply(coll, step: int) -> None:  # noqa: ANN001 - a Collection; kept import-free for the child
    added, upserted, deleted = crash_step(step, set(coll.ids().tolist()))
    coll.add(added, np.stack([crash_vec(i, step) for i in added]), [{"v": step}] * len(added))
    coll.upsert([upserted], crash_vec(upserted, step)[None], [{"step": step}])
    coll.delete([deleted])
