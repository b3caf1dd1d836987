"""BERT token masking and LXMERT/UNITER region masking (rates checked statistically with a fixed generator),
and the MLM / MRM losses against F.cross_entropy and loop-written formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from polymodal.errors import InvalidInput
from polymodal.losses.masked import mask_regions, mask_tokens, mlm_accuracy, mlm_loss, mrm_loss

MASK, LOW, HIGH = 3, 1000, 31000  # ids below 900, so a random replacement is recognisable


def _batch(b: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 900, (b, length), generator=g)
    lengths = torch.randint(1, length + 1, (b,), generator=g)
    pos = torch.arange(length)
    maskable = (pos[None] >= 1) & (pos[None] < lengths[:, None] - 1)  # [CLS] ... [SEP] then padding
    ids[pos[None] >= lengths[:, None]] = 0
    return ids, maskable


def _within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) < sigmas * math.sqrt(n * p * (1 - p))


def test_rates_and_80_10_10_split() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 900, (400, 64), generator=g)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False
    inputs, labels = mask_tokens(ids, maskable, mask_id=MASK, vocab_low=LOW, vocab_high=HIGH,
                                 generator=torch.Generator().manual_seed(1))
    chosen = labels != -100
    n_maskable, n_chosen = int(maskable.sum()), int(chosen.sum())
    assert _within(n_chosen, n_maskable, 0.15)  # P(row drew none) = 0.85^63 ~ 4e-5: forcing is negligible here
    masked = int((inputs[chosen] == MASK).sum())
    random = inputs[chosen & (inputs >= LOW)]
    kept = int((inputs[chosen] == ids[chosen]).sum())
    assert masked + random.numel() + kept == n_chosen
    assert _within(masked, n_chosen, 0.8) and _within(random.numel(), n_chosen, 0.1)
    assert _within(kept, n_chosen, 0.1)
    assert int(random.min()) >= LOW and int(random.max()) < HIGH
    mean, sd = (LOW + HIGH - 1) / 2, (HIGH - LOW) / math.sqrt(12)
    assert abs(float(random.double().mean()) - mean) < 5 * sd / math.sqrt(random.numel())
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_specials_untouched_labels_hold_originals_and_every_row_trains() -> None:
    ids, maskable = _batch(300, 12, seed=2)
    original = ids.clone()
    inputs, labels = mask_tokens(ids, maskable, mask_id=MASK, vocab_low=LOW, vocab_high=HIGH,
                                 generator=torch.Generator().manual_seed(3))
    assert torch.equal(ids, original)
    assert torch.equal(inputs[~maskable], ids[~maskable])
    assert (labels[~maskable] == -100).all()
    chosen = labels != -100
    assert torch.equal(labels[chosen], ids[chosen])
    has = maskable.any(dim=1)
    assert (chosen.sum(dim=1)[has] >= 1).all() and not chosen[~has].any()
    assert (~has).any()  # the batch does include rows with nothing to mask


def test_prob_zero_picks_exactly_one_uniformly() -> None:
    ids = torch.arange(6).repeat(3000, 1) + 10
    maskable = torch.tensor([False, True, True, False, True, False]).repeat(3000, 1)
    _, labels = mask_tokens(ids, maskable, mask_id=MASK, vocab_low=LOW, vocab_high=HIGH, prob=0.0,
                            generator=torch.Generator().manual_seed(4))
    chosen = labels != -100
    assert (chosen.sum(dim=1) == 1).all() and not chosen[~maskable].any()
    for j in (1, 2, 4):
        assert _within(int(chosen[:, j].sum()), 3000, 1 / 3)


def test_deterministic_and_checked() -> None:
    ids, maskable = _batch(8, 10, seed=5)
    a = mask_tokens(ids, maskable, mask_id=MASK, vocab_low=LOW, vocab_high=HIGH,
                    generator=torch.Generator().manual_seed(9))
    b = mask_tokens(ids, maskable, mask_id=MASK, vocab_low=LOW, vocab_high=HIGH,
                    generator=torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(InvalidInput) as err:
        mask_tokens(ids, maskable.long(), mask_id=MASK, vocab_low=LOW, vocab_high=HIGH)
    assert err.value.field == "maskable"
    with pytest.raises(InvalidInput):
        mask_tokens(ids, maskable, mask_id=MASK, vocab_low=LOW, vocab_high=HIGH, prob=1.5)


def test_mlm_loss_equals_cross_entropy() -> None:
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[torch.rand(3, 7, generator=g) < 0.6] = -100
    loss = mlm_loss(logits, labels)
    ref = F.cross_entropy(logits.detach().reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(loss, ref)
    loss.backward()
    assert logits.grad is not None and logits.grad[labels == -100].abs().sum() == 0
    keep = labels != -100
    hits = int((logits.detach().argmax(-1)[keep] == labels[keep]).sum())
    assert mlm_accuracy(logits.detach(), labels) == pytest.approx(hits / int(keep.sum()))


def test_mlm_loss_zero_with_gradient_when_nothing_counts() -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 3), -100))
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    assert mlm_accuracy(logits.detach(), torch.full((2, 3), -100)) == 0.0
    with pytest.raises(InvalidInput):
        mlm_loss(logits, torch.full((2, 3), 5))


def test_mask_regions_zeroes_exactly_the_chosen_valid_regions() -> None:
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(200, 20, 4, generator=g) + 3.0
    valid = torch.rand(200, 20, generator=g) < 0.7
    valid[0] = False
    masked, chosen = mask_regions(feats, valid, generator=torch.Generator().manual_seed(8))
    assert not chosen[~valid].any()
    assert (masked[chosen] == 0).all()
    assert torch.equal(masked[~chosen], feats[~chosen])
    has = valid.any(dim=1)
    assert (chosen.sum(dim=1)[has] >= 1).all() and not chosen[0].any()
    # forced picks raise the rate a little above 0.15; count only the Bernoulli-sized rows
    big = valid.sum(dim=1) >= 12
    assert _within(int(chosen[big].sum()), int(valid[big].sum()), 0.15, sigmas=6.0)


def _mrm_reference(pred: torch.Tensor, target: torch.Tensor, chosen: torch.Tensor, logits: torch.Tensor,
                   labels: torch.Tensor) -> tuple[float, float]:
    sq, n_sq, ce, n_ce = 0.0, 0, 0.0, 0
    b, k, d = pred.shape
    for i in range(b):
        for j in range(k):
            if not chosen[i, j]:
                continue
            sq += sum((float(pred[i, j, c]) - float(target[i, j, c])) ** 2 for c in range(d)) / d
            n_sq += 1
            if int(labels[i, j]) != -100:
                row = [float(x) for x in logits[i, j]]
                top = max(row)
                lse = top + math.log(sum(math.exp(x - top) for x in row))
                ce += lse - row[int(labels[i, j])]
                n_ce += 1
    return sq / max(n_sq, 1), ce / max(n_ce, 1)


def test_mrm_loss_against_formula_and_gradients() -> None:
    g = torch.Generator().manual_seed(9)
    pred = torch.randn(3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    chosen = torch.rand(3, 5, generator=g) < 0.5
    logits = torch.randn(3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 6, (3, 5), generator=g)
    labels[0, :] = -100
    regress, classify = mrm_loss(pred, target, chosen, logits=logits, labels=labels)
    ref_r, ref_c = _mrm_reference(pred.detach(), target.detach(), chosen, logits.detach(), labels)
    assert float(regress.detach()) == pytest.approx(ref_r, rel=1e-9)
    assert float(classify.detach()) == pytest.approx(ref_c, rel=1e-9)
    (regress + classify).backward()
    assert target.grad is None
    assert pred.grad is not None and pred.grad[~chosen].abs().sum() == 0 and pred.grad[chosen].abs().sum() > 0
    assert logits.grad is not None and logits.grad[~chosen].abs().sum() == 0


def test_mrm_loss_without_logits_and_with_nothing_chosen() -> None:
    pred = torch.randn(2, 3, 4, requires_grad=True)
    none = torch.zeros(2, 3, dtype=torch.bool)
    regress, classify = mrm_loss(pred, torch.randn(2, 3, 4), none)
    assert float(regress.detach()) == 0.0 and regress.requires_grad and float(classify) == 0.0
    logits = torch.randn(2, 3, 5, requires_grad=True)
    _, classify = mrm_loss(pred, pred.detach(), none, logits=logits, labels=torch.zeros(2, 3, dtype=torch.long))
    assert float(classify.detach()) == 0.0 and classify.requires_grad
    with pytest.raises(InvalidInput) as err:
        mrm_loss(pred, pred.detach(), none, logits=logits)
    assert err.value.field == "labels"
