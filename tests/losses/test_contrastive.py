"""CLIP and SigLIP losses against plain-loop references, and the local-loss decomposition (simulated
ranks of unequal size in one process)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from polymodal.losses.contrastive import (
    ClipLoss,
    SigLipLoss,
    clip_loss,
    clip_loss_gathered,
    siglip_loss,
    siglip_loss_gathered,
)


def _pair(n: int = 7, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return a, b


def clip_reference(a: torch.Tensor, b: torch.Tensor, s: float) -> float:
    """OpenCLIP's definition, written as loops over Python floats."""
    A, Bm = a.tolist(), b.tolist()
    n = len(A)

    def dot(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    def ce(rows: list[list[float]], cols: list[list[float]]) -> float:
        total = 0.0
        for i in range(n):
            logits = [s * dot(rows[i], cols[j]) for j in range(n)]
            total += math.log(sum(math.exp(v) for v in logits)) - logits[i]
        return total / n

    return (ce(A, Bm) + ce(Bm, A)) / 2


def siglip_reference(a: torch.Tensor, b: torch.Tensor, s: float, bias: float) -> float:
    A, Bm = a.tolist(), b.tolist()
    n, total = len(A), 0.0
    for i in range(n):
        for j in range(n):
            z = s * sum(p * q for p, q in zip(A[i], Bm[j], strict=True)) + bias
            y = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-y * z))  # -log sigmoid(y z)
    return total / n


@pytest.mark.parametrize("scale", [1.0, 1 / 0.07, 100.0])
def test_clip_loss_matches_loop(scale: float) -> None:
    a, b = _pair()
    assert clip_loss(a, b, scale).item() == pytest.approx(clip_reference(a, b, scale), rel=1e-10)
    assert ClipLoss()(a, b, scale).item() == pytest.approx(clip_reference(a, b, scale), rel=1e-10)


@pytest.mark.parametrize(("scale", "bias"), [(10.0, -10.0), (3.0, 0.5)])
def test_siglip_loss_matches_loop(scale: float, bias: float) -> None:
    a, b = _pair()
    ref = siglip_reference(a, b, scale, bias)
    assert siglip_loss(a, b, scale, bias).item() == pytest.approx(ref, rel=1e-10)
    assert SigLipLoss()(a, b, scale, bias).item() == pytest.approx(ref, rel=1e-10)


def test_gathered_variants_are_identity_without_process_group() -> None:
    a, b = _pair()
    torch.testing.assert_close(clip_loss_gathered(a, b, 5.0), clip_loss(a, b, 5.0))
    torch.testing.assert_close(siglip_loss_gathered(a, b, 5.0, -2.0), siglip_loss(a, b, 5.0, -2.0))


def test_perfect_alignment_gives_low_clip_loss() -> None:
    a = torch.eye(4, dtype=torch.float64)
    assert clip_loss(a, a, 100.0).item() < 1e-30 + 4 * math.exp(-100) * 2
    assert clip_loss(a, a.roll(1, 0), 100.0).item() > 50


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_local_loss_decomposition_with_unequal_ranks(loss: str) -> None:
    """Simulated ranks holding 3, 1 and 5 rows: the mean of the rank losses and the mean of their gradients
    (what DDP averaging yields) equal the loss and gradient on the whole batch."""
    a0, b0 = _pair(n=9, d=4, seed=3)
    sizes, world, n = [3, 1, 5], 3, 9

    def full(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return clip_loss(a, b, 7.0) if loss == "clip" else siglip_loss(a, b, 7.0, -3.0)

    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    ref = full(a, b)
    ref.backward()
    ref_grads = (a.grad.clone(), b.grad.clone())

    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    rank_losses, offset = [], 0
    for size in sizes:
        rows = slice(offset, offset + size)
        labels = torch.arange(size) + offset
        if loss == "clip":
            rl = clip_loss(a[rows], b[rows], 7.0, a_all=a, b_all=b, labels=labels, denom=n / world)
        else:
            rl = siglip_loss(a[rows], b[rows], 7.0, -3.0, b_all=b, labels=labels, denom=n / world)
        rank_losses.append(rl)
        offset += size
    mean = torch.stack(rank_losses).mean()
    mean.backward()
    assert mean.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close((a.grad, b.grad), ref_grads, rtol=1e-10, atol=1e-12)
