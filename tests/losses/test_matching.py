"""Hard-negative sampling for ITM against an independently computed distribution, and the ITM loss against
F.cross_entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from polymodal.errors import InvalidInput
from polymodal.losses.matching import itm_accuracy, itm_loss, sample_hard_negatives


def _sim(b: int = 5, n: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, b if n is None else n, generator=g) * 2.0


def _expected(sim: torch.Tensor, invalid: torch.Tensor) -> list[list[float]]:
    """The restricted softmax written as Python float loops."""
    out = []
    for i in range(sim.shape[0]):
        w = [0.0 if invalid[i, j] else math.exp(float(sim[i, j])) for j in range(sim.shape[1])]
        total = sum(w)
        out.append([x / total for x in w])
    return out


def _counts(sim: torch.Tensor, draws: int, **kw: object) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    counts = torch.zeros(sim.shape, dtype=torch.long)
    rows = torch.arange(sim.shape[0])
    for _ in range(draws):
        j = sample_hard_negatives(sim, generator=g, **kw)  # type: ignore[arg-type]
        counts[rows, j] += 1
    return counts


def _assert_follows(counts: torch.Tensor, expected: list[list[float]], draws: int) -> None:
    for i, row in enumerate(expected):
        cells = [(int(counts[i, j]), p) for j, p in enumerate(row) if p > 0]
        chi2 = sum((c - draws * p) ** 2 / (draws * p) for c, p in cells)
        df = len(cells) - 1
        assert chi2 < df + 5 * math.sqrt(2 * df) + 5, (i, chi2, df)  # far beyond the 0.999 quantile
        for c, p in cells:  # and every cell within 5 binomial standard deviations
            assert abs(c - draws * p) < 5 * math.sqrt(draws * p * (1 - p)) + 1


def test_never_a_positive_and_frequencies_follow_softmax() -> None:
    sim = _sim(5)
    draws = 3000
    counts = _counts(sim, draws)
    assert counts.diagonal().sum() == 0
    assert (counts.sum(dim=1) == draws).all()
    _assert_follows(counts, _expected(sim, torch.eye(5, dtype=torch.bool)), draws)


def test_same_mask_excludes_duplicates() -> None:
    sim = _sim(5, seed=1)
    same = torch.zeros(5, 5, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True  # rows 0 and 1 share a caption
    same[3, [0, 2, 4]] = True
    draws = 3000
    counts = _counts(sim, draws, same=same)
    invalid = same | torch.eye(5, dtype=torch.bool)
    assert counts[invalid].sum() == 0
    assert (counts[3] == torch.tensor([0, draws, 0, 0, 0])).all()  # row 3 has one candidate left
    _assert_follows(counts, _expected(sim, invalid), draws)


def test_positive_columns_for_gathered_candidates() -> None:
    sim = _sim(3, n=9, seed=2)  # rank 1 of 3: its rows' partners are columns 3..5
    positive = torch.arange(3) + 3
    draws = 2000
    counts = _counts(sim, draws, positive=positive)
    invalid = torch.zeros(3, 9, dtype=torch.bool)
    invalid[torch.arange(3), positive] = True
    assert counts[invalid].sum() == 0
    _assert_follows(counts, _expected(sim, invalid), draws)


def test_dominant_positive_does_not_break_sampling() -> None:
    sim = torch.eye(4) * 200.0  # softmax(sim) with positives zeroed underflows to an all-zero row in float32
    j = sample_hard_negatives(sim, generator=torch.Generator().manual_seed(0))
    assert ((j >= 0) & (j != torch.arange(4))).all()


def test_deterministic_with_seeded_generator() -> None:
    sim = _sim(8, seed=3)
    a = sample_hard_negatives(sim, generator=torch.Generator().manual_seed(7))
    b = sample_hard_negatives(sim, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert a.dtype == torch.long and a.shape == (8,)


def test_no_candidate_gives_minus_one() -> None:
    sim = _sim(3, seed=4)
    same = torch.zeros(3, 3, dtype=torch.bool)
    same[1] = True
    j = sample_hard_negatives(sim, same=same, generator=torch.Generator().manual_seed(0))
    assert int(j[1]) == -1 and int(j[0]) in (1, 2) and int(j[2]) in (0, 1)
    assert int(sample_hard_negatives(torch.zeros(1, 1))[0]) == -1


def test_no_gradient_and_input_errors() -> None:
    sim = _sim(4).requires_grad_(True)
    assert not sample_hard_negatives(sim).requires_grad
    with pytest.raises(InvalidInput) as err:
        sample_hard_negatives(sim.detach(), same=torch.zeros(4, 3, dtype=torch.bool))
    assert err.value.field == "same"
    with pytest.raises(InvalidInput):
        sample_hard_negatives(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(InvalidInput):
        sample_hard_negatives(torch.zeros(4, 2))


def test_itm_loss_equals_cross_entropy_and_grad_flows() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 2, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 0, 0, -100, 1, 0, -100, 1, 0, 0])
    loss = itm_loss(logits, labels)
    keep = labels != -100
    ref = F.cross_entropy(logits.detach()[keep], labels[keep])
    assert torch.allclose(loss, ref)
    loss.backward()
    assert logits.grad is not None and logits.grad[keep].abs().sum() > 0
    assert logits.grad[~keep].abs().sum() == 0


def test_itm_loss_zero_when_nothing_counts() -> None:
    logits = torch.randn(3, 2, requires_grad=True)
    loss = itm_loss(logits, torch.full((3,), -100))
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0


def test_itm_accuracy_and_label_checks() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, -100])
    assert itm_accuracy(logits, labels) == pytest.approx(2 / 3)
    assert itm_accuracy(logits, torch.full((4,), -100)) == 0.0
    with pytest.raises(InvalidInput) as err:
        itm_loss(logits, torch.tensor([0, 1, 2, 0]))
    assert err.value.field == "labels"
    with pytest.raises(InvalidInput):
        itm_loss(torch.zeros(4, 3), labels)
