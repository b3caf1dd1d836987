"""Image-text matching (ITM) with hard negatives, as in ALBEF (Li et al., 2021) and BLIP (Li et al., 2022).

The ITM head sees (image, text) pairs through the fusion encoder and says "matching" (1) or not (0). Random
negatives are too easy, so for each image ALBEF draws one text of the batch with probability proportional to
the contrastive similarity, excluding its positives (and likewise a hard image for each text):

    w_ij = softmax_j(sim_i)  with  w_ij = 0  for j = i  or  same[i, j];   j_i ~ Multinomial(w_i / sum_j w_ij)

`sample_hard_negatives` computes exactly that distribution, but as ``softmax`` over the valid candidates
(the similarities of positives set to -inf): the same numbers, and it never turns into an all-zero row when
the positive dominates the softmax in float32. ALBEF adds 1e-4 to every weight (so no candidate has zero
probability); BLIP masks positives of the same image id; we follow BLIP's masking through ``same`` and do not
add the 1e-4. Ours: a row with no valid candidate gets -1 instead of an error (the caller drops it), and the
positive column of each row may be given (``positive``) so the local rows of a DDP rank can be scored against
the gathered batch (default: row i's positive is column i).

`itm_loss` is the cross-entropy of the two-way head with ignored rows (label -100); `itm_accuracy` the share
of counted rows whose arg-max is the label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polymodal.errors import InvalidInput

IGNORE = -100


def _check_2d(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2:
        raise InvalidInput(f"expected a 2-d tensor, got shape {tuple(x.shape)}", field=name)


@torch.no_grad()
def sample_hard_negatives(sim: torch.Tensor, *, same: torch.Tensor | None = None,
                          generator: torch.Generator | None = None,
                          positive: torch.Tensor | None = None) -> torch.Tensor:
    """For each row of ``sim`` (B, N), one candidate column drawn with probability softmax(sim[i]) restricted
    to the non-positives: j != positive[i] (default i) and not ``same[i, j]`` when ``same`` (B, N) bool is
    given. A row without a valid candidate gets -1. Returns (B,) long, on sim's device; no gradient."""
    _check_2d(sim, "sim")
    b, n = sim.shape
    if not torch.isfinite(sim).all():
        raise InvalidInput("similarities must be finite", field="sim")
    rows = torch.arange(b, device=sim.device)
    if positive is None:
        if n < b:
            raise InvalidInput(f"{b} rows but only {n} candidates; pass `positive`", field="positive")
        positive = rows
    elif positive.shape != (b,):
        raise InvalidInput(f"expected shape ({b},), got {tuple(positive.shape)}", field="positive")
    elif not ((positive >= 0) & (positive < n)).all():
        raise InvalidInput(f"positive columns must lie in [0, {n})", field="positive")
    invalid = torch.zeros(b, n, dtype=torch.bool, device=sim.device)
    invalid[rows, positive.to(sim.device, torch.long)] = True
    if same is not None:
        if same.shape != sim.shape or same.dtype != torch.bool:
            raise InvalidInput(f"expected a bool tensor of shape {tuple(sim.shape)}, got "
                               f"{same.dtype} {tuple(same.shape)}", field="same")
        invalid |= same.to(sim.device)
    has = ~invalid.all(dim=1)
    logits = sim.float().masked_fill(invalid, float("-inf"))
    logits = logits.masked_fill(~has[:, None], 0.0)  # rows without a candidate: any valid distribution
    probs = torch.softmax(logits, dim=1)
    picked = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return torch.where(has, picked, torch.full_like(picked, -1))


def _check_head(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] != 2:
        raise InvalidInput(f"expected ITM logits (N, 2), got {tuple(logits.shape)}", field="logits")
    if labels.shape != logits.shape[:1]:
        raise InvalidInput(f"expected labels ({logits.shape[0]},), got {tuple(labels.shape)}", field="labels")
    if labels.dtype != torch.long:
        raise InvalidInput(f"expected int64 labels, got {labels.dtype}", field="labels")
    if not ((labels == 0) | (labels == 1) | (labels == IGNORE)).all():
        raise InvalidInput("ITM labels must be 0, 1 or -100", field="labels")


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (N, 2) against labels (N,) in {0, 1}, rows labelled -100 ignored;
    0 (with gradient) when no row counts."""
    _check_head(logits, labels)
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    return total / (labels != IGNORE).sum().clamp(min=1)


def itm_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the counted rows (label != -100) whose arg-max is the label; 0.0 when none counts."""
    _check_head(logits, labels)
    keep = labels != IGNORE
    count = int(keep.sum())
    if count == 0:
        return 0.0
    return float(((logits.argmax(dim=1) == labels) & keep).sum()) / count
