"""Modality attribution: exact Shapley values over the modalities of a fusion classifier.

How much does each modality contribute to what a fusion model gets right? Removing one at a time (the
``removed`` rows of `evaluate_classification`) answers a different question and does not add up when
modalities are redundant or complementary. The Shapley value does: with players = modalities and
``v(S)`` = a score of the model that sees only the modalities in ``S``,

    phi_i = sum over S ⊆ N \\ {i} of |S|! (n - |S| - 1)! / n! * (v(S ∪ {i}) - v(S)),

and ``sum_i phi_i = v(N) - v(∅)`` (efficiency). With 2-4 modalities every one of the ``2^n`` coalitions is
evaluated exactly (no sampling); `shapley_values` refuses more than `MAX_PLAYERS`.

`modality_attribution` plays two games on a fusion run (or model) and a sample list: accuracy and the mean
log-probability of the true class (natural log). A coalition is evaluated the way a missing modality arrives:
the modalities outside it are masked in ``batch.mask`` (`polymodal.eval.robustness.mask_out`), so the model's
own missing-modality path (learned placeholders, renormalised weights, ...) stands in for them. A sample that
lacks a modality in the data lacks it in every coalition: for that sample the modality is a null player
(Shapley value 0). Both games are linear in the per-sample scores, so the per-sample Shapley values average
to the data-set ones, and per-class values are the mean over the samples of each class.

The empty coalition ``v(∅)`` is the model with every modality missing (every built-in fusion gives a
learned "all missing" output). A model that cannot run with nothing (it raises, or returns non-finite
logits), or ``empty="uniform"``, gets the uninformed guess instead: a uniform distribution over the classes,
i.e. log-probability ``-log C`` and accuracy ``1/C`` (the expected accuracy of a uniform random guess). The
report says which one was used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInput
from .classification import Source, _Evaluator, load_samples, resolve_model
from .robustness import Condition

MAX_PLAYERS = 6
GAMES: tuple[str, ...] = ("acc", "log_prob")
EMPTY_CHOICES: tuple[str, ...] = ("model", "uniform")


def coalitions(players: Sequence[str]) -> list[frozenset[str]]:
    """Every subset of ``players``, smallest first."""
    return [frozenset(c) for k in range(len(players) + 1) for c in combinations(players, k)]


def _check_players(players: Sequence[str]) -> list[str]:
    names = list(players)
    if len(set(names)) != len(names):
        raise InvalidInput(f"players must be distinct, got {names}", field="players")
    if len(names) > MAX_PLAYERS:
        raise InvalidInput(f"exact Shapley values evaluate 2^n coalitions; {len(names)} players is more than "
                           f"{MAX_PLAYERS}", field="players")
    return names


def _shapley_table(table: Mapping[frozenset[str], Any], players: Sequence[str]) -> dict[str, Any]:
    """The classic weighted formula over a table of coalition values (floats, or arrays scored per sample)."""
    n = len(players)
    out: dict[str, Any] = {}
    for i in players:
        others = [p for p in players if p != i]
        total: Any = 0.0
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for s in combinations(others, k):
                coalition = frozenset(s)
                total = total + weight * (table[coalition | {i}] - table[coalition])
        out[i] = total
    return out


def shapley_values(value: Callable[[frozenset[str]], float], players: Sequence[str]) -> dict[str, float]:
    """Exact Shapley value of every player of the game ``value(coalition) -> float``.

    ``value`` is called once per coalition (``2^n`` calls, the empty one included). Raises `InvalidInput`
    for repeated players or more than `MAX_PLAYERS` of them."""
    names = _check_players(players)
    table = {c: float(value(c)) for c in coalitions(names)}
    return {p: float(v) for p, v in _shapley_table(table, names).items()}


def modality_attribution(model_or_run: Any, samples_or_dataset: Source, *, empty: str = "model",
                         per_sample: bool = False, transform: Any = None, split: str | None = "test",
                         batch_size: int = 64, progress: bool = False) -> dict[str, Any]:
    """Shapley values of each modality of a fusion classifier (run dir or `FusionModel`) on samples.

    Returns ``{"n", "modalities", "empty": "model" | "uniform", "empty_reason"?, "coalitions": {name:
    {acc, log_prob}}, "full": {acc, log_prob}, "none": {acc, log_prob}, "shapley": {acc: {m: phi},
    log_prob: {m: phi}}, "per_class": {class: {n, acc: {m: phi}, log_prob: {m: phi}}}}`` and, with
    ``per_sample``, ``"per_sample": {ids, acc: {m: [..]}, log_prob: {m: [..]}}``. A coalition's name is its
    modalities joined by ``+`` (``"none"`` for the empty one). ``empty``: ``"model"`` (every modality masked;
    the uniform guess when the model cannot run that way) or ``"uniform"`` (see the module docstring)."""
    if empty not in EMPTY_CHOICES:
        raise InvalidInput(f"empty must be one of {EMPTY_CHOICES}, got {empty!r}", field="empty")
    model, tf = resolve_model(model_or_run, transform)
    samples = load_samples(samples_or_dataset, split)
    ev = _Evaluator(model, tf, samples, 0, batch_size)
    players = _check_players(ev.modalities)
    scores, reason = _coalition_scores(ev, players, empty, progress)
    per_row = {g: _shapley_table({c: s[g] for c, s in scores.items()}, players) for g in GAMES}
    full, none = scores[frozenset(players)], scores[frozenset()]
    report: dict[str, Any] = {
        "n": len(samples), "modalities": players, "empty": "model" if reason is None else "uniform",
        "coalitions": {_name(c): {g: float(s[g].mean()) for g in GAMES} for c, s in scores.items()},
        "full": {g: float(full[g].mean()) for g in GAMES}, "none": {g: float(none[g].mean()) for g in GAMES},
        "shapley": {g: {m: float(v.mean()) for m, v in per_row[g].items()} for g in GAMES},
        "per_class": _per_class(per_row, ev.y_true, getattr(model, "classes", None))}
    if reason is not None:
        report["empty_reason"] = reason
    if per_sample:
        report["per_sample"] = {"ids": [s.id for s in samples],
                                **{g: {m: v.tolist() for m, v in per_row[g].items()} for g in GAMES}}
    return report


def _name(coalition: Iterable[str]) -> str:
    return "+".join(sorted(coalition)) or "none"


def _coalition_scores(ev: _Evaluator, players: list[str], empty: str, progress: bool
                      ) -> tuple[dict[frozenset[str], dict[str, np.ndarray]], str | None]:
    """Per-sample ``{acc: 0/1, log_prob}`` of every coalition, and why the empty one is the uniform guess
    (None: it is the model with every modality masked)."""
    from tqdm import tqdm

    out: dict[frozenset[str], dict[str, np.ndarray]] = {}
    reason: str | None = "requested (empty='uniform')" if empty == "uniform" else None
    for c in tqdm(coalitions(players), desc="attribution", disable=not progress):
        if not c and reason is not None:
            out[c] = _uniform(len(ev.y_true), int(ev.model.num_classes))
            continue
        try:
            logits = _logits(ev, Condition(removed=tuple(m for m in players if m not in c)))
        except (InvalidInput, RuntimeError, ValueError) as exc:
            if c:
                raise
            reason = f"the model cannot run with no modality: {exc}"
            out[c] = _uniform(len(ev.y_true), int(ev.model.num_classes))
            continue
        if not c and not bool(torch.isfinite(logits).all()):
            reason = "the model gives non-finite logits with no modality"
            out[c] = _uniform(len(ev.y_true), int(ev.model.num_classes))
            continue
        out[c] = _scores(logits, ev.y_true)
    return out, reason


def _logits(ev: _Evaluator, cond: Condition) -> torch.Tensor:
    device = next((p.device for p in ev.model.parameters()), torch.device("cpu"))
    parts = [ev.model.predict(b.to(device)).to(torch.float64).cpu() for b in ev.batches(cond)]
    return torch.cat(parts)


def _scores(logits: torch.Tensor, y_true: np.ndarray) -> dict[str, np.ndarray]:
    y = torch.as_tensor(y_true, dtype=torch.long)
    logp = torch.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    correct = (logits.argmax(dim=1) == y).to(torch.float64)
    return {"acc": correct.numpy(), "log_prob": logp.numpy()}


def _uniform(n: int, num_classes: int) -> dict[str, np.ndarray]:
    return {"acc": np.full(n, 1.0 / num_classes), "log_prob": np.full(n, -math.log(num_classes))}


def _per_class(per_row: Mapping[str, Mapping[str, np.ndarray]], y_true: np.ndarray,
               classes: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in np.unique(y_true):
        rows = y_true == k
        name = classes[int(k)] if classes else str(int(k))
        out[name] = {"n": int(rows.sum()),
                     **{g: {m: float(v[rows].mean()) for m, v in per_row[g].items()} for g in GAMES}}
    return out


def format_attribution(r: Mapping[str, Any]) -> list[str]:
    """The attribution report as a small table: Shapley value per modality for both games, their sum, and
    the full and empty coalitions they are the difference of."""
    sh = r["shapley"]
    lines = ["modality attribution: exact Shapley values over modalities (they sum to all - none)",
             f"{'modality':<12}{'acc':>9}{'log-prob':>10}"]
    rows = [(m, sh["acc"][m], sh["log_prob"][m]) for m in r["modalities"]]
    rows += [("sum", sum(sh["acc"].values()), sum(sh["log_prob"].values())),
             ("all", r["full"]["acc"], r["full"]["log_prob"]), ("none", r["none"]["acc"], r["none"]["log_prob"])]
    lines += [f"{name:<12}{a:>9.3f}{lp:>10.3f}" for name, a, lp in rows]
    if r["empty"] == "model":
        lines.append("none: the model with every modality missing")
    else:
        lines.append(f"none: a uniform guess over the classes ({r.get('empty_reason', '')})")
    lines.append("log-prob: mean log-probability of the true class")
    return lines


__all__ = ["MAX_PLAYERS", "coalitions", "format_attribution", "modality_attribution", "shapley_values"]
