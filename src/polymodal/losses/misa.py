"""MISA's auxiliary losses (Hazarika et al., 2020): similarity (CMD), difference (soft orthogonality) and
reconstruction, for modality-invariant (shared) and modality-specific (private) representations.

- ``cmd(x, y, K=5) = ||E x - E y|| + sum_{k=2..K} ||C_k(x) - C_k(y)||`` with ``C_k`` the k-th central
  moment per feature and ``||.||`` the L2 norm (MISA's ``matchnorm``).
- ``difference_loss(a, b)``: centre columns over the batch, L2-normalise rows (the norm is detached, as
  in MISA), ``mean((A^T B)^2)``.
- ``reconstruction_loss``: mean squared error.

:func:`misa_losses` applies them to a batch where modalities may be missing: every term uses only the
rows where the modalities it compares are present. Similarity is averaged over modality pairs,
difference is summed over private-shared and private-private pairs (as MISA does), reconstruction is
averaged over modalities. Total (MISA's weights): ``task + 0.3 diff + 1.0 sim + 1.0 recon``.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

import torch
from torch import nn

DEFAULT_WEIGHTS: dict[str, float] = {"diff": 0.3, "sim": 1.0, "recon": 1.0}
MIN_ROWS = 2  # moments and batch centring need at least two rows


def cmd(x: torch.Tensor, y: torch.Tensor, n_moments: int = 5) -> torch.Tensor:
    """Central moment discrepancy between the rows of ``x`` (N, D) and ``y`` (M, D)."""
    mx, my = x.mean(dim=0), y.mean(dim=0)
    sx, sy = x - mx, y - my
    total: torch.Tensor = torch.linalg.vector_norm(mx - my)
    for k in range(2, n_moments + 1):
        total = total + torch.linalg.vector_norm(sx.pow(k).mean(dim=0) - sy.pow(k).mean(dim=0))
    return total


def difference_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft orthogonality between two (N, D) representations of the same rows."""
    a = a.flatten(1)
    b = b.flatten(1)
    a = a - a.mean(dim=0, keepdim=True)
    b = b - b.mean(dim=0, keepdim=True)
    a = a / (a.norm(dim=1, keepdim=True).detach() + eps)
    b = b / (b.norm(dim=1, keepdim=True).detach() + eps)
    return (a.t() @ b).pow(2).mean()


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (recon - target).pow(2).mean()


def misa_losses(shared: Mapping[str, torch.Tensor], private: Mapping[str, torch.Tensor],
                recon: Mapping[str, torch.Tensor], orig: Mapping[str, torch.Tensor],
                present: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw (unweighted) ``sim``, ``diff`` and ``recon`` over present rows. All dicts are keyed by modality
    (the keys of ``shared``); ``present[m]`` is a BoolTensor (B,). A term with no eligible rows is 0."""
    mods = sorted(shared)
    zero = next(iter(shared.values())).new_zeros(()) if mods else torch.zeros(())
    sims, diff, recons = [], zero, []
    for m in mods:
        rows = present[m]
        if int(rows.sum()) >= MIN_ROWS:
            diff = diff + difference_loss(private[m][rows], shared[m][rows])
        if bool(rows.any()):
            recons.append(reconstruction_loss(recon[m][rows], orig[m][rows]))
    for m1, m2 in combinations(mods, 2):
        rows = present[m1] & present[m2]
        if int(rows.sum()) < MIN_ROWS:
            continue
        sims.append(cmd(shared[m1][rows], shared[m2][rows]))
        diff = diff + difference_loss(private[m1][rows], private[m2][rows])
    return {
        "sim": torch.stack(sims).mean() if sims else zero,
        "diff": diff,
        "recon": torch.stack(recons).mean() if recons else zero,
    }


def weighted_total(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """``sum_k weights[k] * terms[k]`` (MISA's weights by default)."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    total = next(iter(terms.values())).new_zeros(())
    for k, v in terms.items():
        total = total + float(weights[k]) * v
    return total


class MISALoss(nn.Module):
    """Thin module over :func:`misa_losses` + :func:`weighted_total`; returns the weighted sum."""

    def __init__(self, diff: float = 0.3, sim: float = 1.0, recon: float = 1.0):
        super().__init__()
        self.weights = {"diff": diff, "sim": sim, "recon": recon}

    def forward(self, shared: Mapping[str, torch.Tensor], private: Mapping[str, torch.Tensor],
                recon: Mapping[str, torch.Tensor], orig: Mapping[str, torch.Tensor],
                present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return weighted_total(misa_losses(shared, private, recon, orig, present), self.weights)
