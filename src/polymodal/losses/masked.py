"""Masked modelling objectives: BERT's masked language modelling (MLM) and the masked region modelling (MRM) of
LXMERT (Tan & Bansal, 2019) and UNITER (Chen et al., 2020), used by VisualBERT/ViLBERT/LXMERT/ALBEF pretraining.

MLM (Devlin et al., 2019): each maskable token is chosen with probability ``prob`` (0.15); a chosen token
becomes ``mask_id`` with probability 0.8, a uniform random id in ``[vocab_low, vocab_high)`` with 0.1 and stays
unchanged with 0.1. The loss is the cross-entropy at the chosen positions only:

    L_mlm = sum_{chosen} -log softmax(logits)[label] / #chosen

MRM: each valid region (detector box or patch) is chosen with probability ``prob`` and its feature zeroed
(LXMERT, UNITER). Two terms over the chosen regions:

- feature regression (LXMERT "RoI-feature regression", UNITER "MRFR"): ``mean_chosen ||pred - target||^2 / D``,
  the element-wise mean squared error, with the target detached;
- label classification (LXMERT "detected-label classification"): cross-entropy of ``logits`` against the
  detector's hard labels (-100 = unknown). UNITER's MRC-kl variant (KL to the detector's distribution) is not
  implemented here.

Ours: every row with at least one maskable token (valid region) gets at least one chosen position, one picked
uniformly when the Bernoulli draw chose none, so short captions and small images always train (BERT draws
``round(prob * L)`` positions per sequence instead); every loss is 0 with gradient when nothing counts, and
never a NaN; all random draws go through an optional ``torch.Generator`` for reproducibility.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polymodal.errors import InvalidInput

IGNORE = -100
MASK_FRAC, RANDOM_FRAC = 0.8, 0.1  # BERT's split of the chosen tokens; the remaining 0.1 stay unchanged


def _rand(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, device=device, generator=generator)


def _choose(maskable: torch.Tensor, prob: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, L) bool: Bernoulli(prob) over the maskable positions, plus one uniform pick in every row that has a
    maskable position but drew none."""
    if not 0.0 <= prob <= 1.0:
        raise InvalidInput(f"must lie in [0, 1], got {prob}", field="prob")
    chosen = (_rand(maskable.shape, maskable.device, generator) < prob) & maskable
    scores = _rand(maskable.shape, maskable.device, generator).masked_fill(~maskable, -1.0)
    pick = F.one_hot(scores.argmax(dim=1), maskable.shape[1]).bool()
    needs = maskable.any(dim=1) & ~chosen.any(dim=1)
    return chosen | (pick & maskable & needs[:, None])


def mask_tokens(ids: torch.Tensor, maskable: torch.Tensor, *, mask_id: int, vocab_low: int, vocab_high: int,
                prob: float = 0.15, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of ids (B, L) long where ``maskable`` (B, L) bool (False at padding and special tokens).
    Returns (input ids, labels): labels hold the original id at chosen positions and -100 elsewhere; ``ids``
    is not modified."""
    if ids.dim() != 2 or ids.dtype != torch.long:
        raise InvalidInput(f"expected (B, L) int64 ids, got {ids.dtype} {tuple(ids.shape)}", field="ids")
    if maskable.shape != ids.shape or maskable.dtype != torch.bool:
        raise InvalidInput(f"expected a bool tensor of shape {tuple(ids.shape)}, got "
                           f"{maskable.dtype} {tuple(maskable.shape)}", field="maskable")
    if not vocab_low < vocab_high:
        raise InvalidInput(f"empty range [{vocab_low}, {vocab_high})", field="vocab_high")
    chosen = _choose(maskable.to(ids.device), prob, generator)
    how = _rand(ids.shape, ids.device, generator)
    to_mask = chosen & (how < MASK_FRAC)
    to_random = chosen & (how >= MASK_FRAC) & (how < MASK_FRAC + RANDOM_FRAC)
    random_ids = torch.randint(vocab_low, vocab_high, ids.shape, device=ids.device, generator=generator)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    return inputs, labels


def _check_logits(logits: torch.Tensor, labels: torch.Tensor, lead: int, name: str) -> None:
    if logits.dim() != lead + 1 or logits.shape[:-1] != labels.shape:
        raise InvalidInput(f"expected logits {tuple(labels.shape)} + (V,), got {tuple(logits.shape)}",
                           field=name)
    if labels.dtype != torch.long:
        raise InvalidInput(f"expected int64 labels, got {labels.dtype}", field="labels")
    counted = labels != IGNORE
    if not (~counted | ((labels >= 0) & (labels < logits.shape[-1]))).all():
        raise InvalidInput(f"labels must be -100 or lie in [0, {logits.shape[-1]})", field="labels")


def _masked_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropies over labels != -100 divided by their count (1 when none)."""
    flat = logits.reshape(-1, logits.shape[-1])
    total = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return total / (labels != IGNORE).sum().clamp(min=1)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, L, V) over the positions with labels (B, L) != -100; 0 with gradient
    when there are none."""
    _check_logits(logits, labels, 2, "logits")
    return _masked_ce(logits, labels)


def mlm_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the labelled positions whose arg-max is the label; 0.0 when none is labelled."""
    _check_logits(logits, labels, 2, "logits")
    keep = labels != IGNORE
    count = int(keep.sum())
    if count == 0:
        return 0.0
    return float(((logits.argmax(dim=-1) == labels) & keep).sum()) / count


def mask_regions(feats: torch.Tensor, valid: torch.Tensor, *, prob: float = 0.15,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the chosen valid regions of feats (B, K, D); valid (B, K) bool. Each valid region is chosen with
    probability ``prob``, at least one per row that has a valid region. Returns (masked feats, chosen (B, K))."""
    if feats.dim() != 3:
        raise InvalidInput(f"expected (B, K, D) features, got {tuple(feats.shape)}", field="feats")
    if valid.shape != feats.shape[:2] or valid.dtype != torch.bool:
        raise InvalidInput(f"expected a bool tensor of shape {tuple(feats.shape[:2])}, got "
                           f"{valid.dtype} {tuple(valid.shape)}", field="valid")
    chosen = _choose(valid.to(feats.device), prob, generator)
    return feats.masked_fill(chosen[..., None], 0.0), chosen


def mrm_loss(pred: torch.Tensor, target: torch.Tensor, chosen: torch.Tensor, *, logits: torch.Tensor | None = None,
             labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature regression, label classification) over the chosen regions: the mean over chosen regions of
    ``||pred - target||^2 / D`` (pred, target (B, K, D), target detached), and the mean cross-entropy of logits
    (B, K, C) against labels (B, K) at chosen regions whose label is not -100 (0 when ``logits`` is None).
    Each term is 0 with gradient when nothing counts."""
    if pred.dim() != 3 or target.shape != pred.shape:
        raise InvalidInput(f"expected pred and target of one (B, K, D) shape, got {tuple(pred.shape)} and "
                           f"{tuple(target.shape)}", field="target")
    if chosen.shape != pred.shape[:2] or chosen.dtype != torch.bool:
        raise InvalidInput(f"expected a bool tensor of shape {tuple(pred.shape[:2])}, got "
                           f"{chosen.dtype} {tuple(chosen.shape)}", field="chosen")
    per_region = (pred - target.detach()).pow(2).mean(dim=-1)
    regress = torch.where(chosen, per_region, torch.zeros_like(per_region)).sum() / chosen.sum().clamp(min=1)
    if logits is None:
        return regress, pred.new_zeros(())
    if labels is None:
        raise InvalidInput("labels are required with logits", field="labels")
    _check_logits(logits, labels, 2, "logits")
    if labels.shape != chosen.shape:
        raise InvalidInput(f"expected labels {tuple(chosen.shape)}, got {tuple(labels.shape)}", field="labels")
    return regress, _masked_ce(logits, torch.where(chosen, labels, torch.full_like(labels, IGNORE)))
