"""ALBEF momentum distillation: EMA teacher against the formula, the feature queue (order, wrap-around,
safetensors round trip) and the ITC loss against CLIP InfoNCE and loop-written soft-target references."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from polymodal.errors import InvalidInput
from polymodal.losses.contrastive import clip_loss
from polymodal.losses.distill import FeatureQueue, ema_update, itc_momentum_loss, make_teacher


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_ema_update_follows_formula_and_copies_buffers() -> None:
    student = _net(0)
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student.train()(torch.randn(8, 3))  # moves the BatchNorm running stats
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    buffers = {k for k, _ in student.named_buffers()}
    for name, s in student.state_dict().items():
        t = teacher.state_dict()[name]
        expected = s if name in buffers else 0.9 * before[name] + 0.1 * s
        assert torch.allclose(t, expected), name
    assert any(not torch.equal(before[n], student.state_dict()[n]) for n in buffers if "running" in n)


def test_make_teacher_has_no_grad_and_own_storage() -> None:
    student = _net(1)
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for (n, t), s in zip(teacher.named_parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s) and t.data_ptr() != s.data_ptr(), n
    out = teacher(torch.randn(4, 3))
    assert not out.requires_grad


def test_ema_update_names_the_mismatch() -> None:
    student = _net(2)
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 5))
    with pytest.raises(InvalidInput) as err:
        ema_update(make_teacher(other), student, 0.5)
    assert err.value.field == "2.weight"
    with pytest.raises(InvalidInput) as err:
        ema_update(make_teacher(nn.Sequential(*list(student.children())[:2])), student, 0.5)
    assert err.value.field == "2.weight"
    with pytest.raises(InvalidInput) as err:
        ema_update(student, student, 0.5)
    with pytest.raises(InvalidInput):
        ema_update(make_teacher(student), student, 1.5)


def _rows(start: int, n: int, dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(start, start + n)
    feats = ids[:, None].float() * torch.ones(n, dim) + torch.arange(dim).float()
    return feats, ids


def test_queue_fills_wraps_and_keeps_order() -> None:
    q = FeatureQueue(5, 3)
    feats, ids = q.features()
    assert feats.shape == (0, 3) and ids.shape == (0,)
    q.enqueue(*_rows(1, 3))
    feats, ids = q.features()
    assert ids.tolist() == [1, 2, 3]
    assert torch.allclose(feats, F.normalize(_rows(1, 3)[0], dim=-1))
    q.enqueue(*_rows(4, 3))  # wraps: slots 3, 4, 0
    feats, ids = q.features()
    assert ids.tolist() == [2, 3, 4, 5, 6] and int(q.filled) == 5 and int(q.ptr) == 1
    assert torch.allclose(feats, F.normalize(_rows(2, 5)[0], dim=-1))
    assert torch.allclose(feats.norm(dim=-1), torch.ones(5))


def test_queue_oversize_batch_keeps_its_last_rows() -> None:
    q = FeatureQueue(4, 3)
    q.enqueue(*_rows(1, 2))
    q.enqueue(*_rows(10, 7))
    feats, ids = q.features()
    assert ids.tolist() == [13, 14, 15, 16]
    assert torch.allclose(feats, F.normalize(_rows(13, 4)[0], dim=-1))


def test_queue_features_are_copies_and_input_is_checked() -> None:
    q = FeatureQueue(4, 3)
    q.enqueue(*_rows(1, 2))
    feats, _ = q.features()
    q.enqueue(*_rows(1, 2))
    assert torch.allclose(feats, F.normalize(_rows(1, 2)[0], dim=-1)) and int(q.filled) == 4
    with pytest.raises(InvalidInput) as err:
        q.enqueue(torch.ones(2, 5), torch.arange(2))
    assert err.value.field == "feats"


def test_queue_survives_safetensors_round_trip(tmp_path: Path) -> None:
    q = FeatureQueue(5, 3)
    q.enqueue(*_rows(1, 7))
    save_file(q.state_dict(), str(tmp_path / "q.safetensors"))
    fresh = FeatureQueue(5, 3)
    fresh.load_state_dict(load_file(str(tmp_path / "q.safetensors")))
    for a, b in zip(q.features(), fresh.features(), strict=True):
        assert torch.equal(a, b)
    q.enqueue(*_rows(20, 2))
    fresh.enqueue(*_rows(20, 2))
    assert fresh.features()[1].tolist() == q.features()[1].tolist() == [5, 6, 7, 20, 21]


def _feats(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def test_no_queue_one_positive_alpha_zero_is_clip() -> None:
    img, txt = _feats(6, 4, 0), _feats(6, 4, 1)
    eye = torch.eye(6, dtype=torch.bool)
    loss = itc_momentum_loss(img, txt, img, txt, eye, eye, 0.07, alpha=0.0,
                             teacher_i2t=torch.randn(6, 6, dtype=torch.float64),
                             teacher_t2i=torch.randn(6, 6, dtype=torch.float64))
    assert torch.allclose(loss, clip_loss(img, txt, 1 / 0.07))
    assert torch.allclose(itc_momentum_loss(img, txt, img, txt, eye, eye, 0.07), loss)


def _soft_reference(sim: torch.Tensor, targets: list[list[float]]) -> float:
    total = 0.0
    for i, row in enumerate(sim.tolist()):
        top = max(row)
        lse = top + math.log(sum(math.exp(x - top) for x in row))
        total += sum(-(x - lse) * t for x, t in zip(row, targets[i], strict=True))
    return total / sim.shape[0]


def _softmax_rows(sim: torch.Tensor) -> list[list[float]]:
    out = []
    for row in sim.tolist():
        e = [math.exp(x - max(row)) for x in row]
        out.append([x / sum(e) for x in e])
    return out


def test_alpha_one_teacher_equal_student_is_soft_target_ce() -> None:
    img, txt = _feats(4, 5, 2), _feats(4, 5, 3)
    q_img, q_txt = _feats(3, 5, 4), _feats(3, 5, 5)
    img_all, txt_all = torch.cat([img, q_img]), torch.cat([txt, q_txt])
    pos = torch.zeros(4, 7, dtype=torch.bool)
    pos[torch.arange(4), torch.arange(4)] = True
    temp = 0.1
    s_i2t, s_t2i = img @ txt_all.T / temp, txt @ img_all.T / temp
    loss = itc_momentum_loss(img, txt, img_all, txt_all, pos, pos, temp, teacher_i2t=s_i2t, teacher_t2i=s_t2i,
                             alpha=1.0)
    ref = (_soft_reference(s_i2t, _softmax_rows(s_i2t)) + _soft_reference(s_t2i, _softmax_rows(s_t2i))) / 2
    assert float(loss) == pytest.approx(ref, rel=1e-9)


def test_mixed_targets_with_several_positives() -> None:
    img, txt = _feats(3, 4, 6), _feats(3, 4, 7)
    img_all, txt_all = torch.cat([img, _feats(4, 4, 8)]), torch.cat([txt, _feats(4, 4, 9)])
    pos = torch.zeros(3, 7, dtype=torch.bool)
    pos[torch.arange(3), torch.arange(3)] = True
    pos[0, 4] = pos[2, 5] = pos[2, 6] = True  # queued samples of the same image
    t_i2t, t_t2i = _feats(3, 7, 10) * 5, _feats(3, 7, 11) * 5
    temp, alpha = 0.2, 0.4
    loss = itc_momentum_loss(img, txt, img_all, txt_all, pos, pos, torch.tensor(temp, dtype=torch.float64),
                             teacher_i2t=t_i2t, teacher_t2i=t_t2i, alpha=alpha)
    refs = []
    for sim, teacher in ((img @ txt_all.T / temp, t_i2t), (txt @ img_all.T / temp, t_t2i)):
        soft = _softmax_rows(teacher)
        targets = [[alpha * soft[i][j] + (1 - alpha) * float(pos[i, j]) / int(pos[i].sum()) for j in range(7)]
                   for i in range(3)]
        refs.append(_soft_reference(sim, targets))
    assert float(loss) == pytest.approx(sum(refs) / 2, rel=1e-9)


def test_gradient_reaches_img_txt_and_temp_only() -> None:
    img = _feats(4, 5, 12).requires_grad_(True)
    txt = _feats(4, 5, 13).requires_grad_(True)
    img_all = torch.cat([img.detach(), _feats(2, 5, 14)]).requires_grad_(True)
    txt_all = torch.cat([txt.detach(), _feats(2, 5, 15)]).requires_grad_(True)
    t_i2t = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    t_t2i = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    temp = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    pos = torch.zeros(4, 6, dtype=torch.bool)
    pos[torch.arange(4), torch.arange(4)] = True
    itc_momentum_loss(img, txt, img_all, txt_all, pos, pos, temp, teacher_i2t=t_i2t, teacher_t2i=t_t2i).backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert txt.grad is not None and txt.grad.abs().sum() > 0
    assert temp.grad is not None
    assert img_all.grad is None and txt_all.grad is None and t_i2t.grad is None and t_t2i.grad is None


def test_itc_input_errors() -> None:
    img, txt = _feats(3, 4, 16), _feats(3, 4, 17)
    eye = torch.eye(3, dtype=torch.bool)
    with pytest.raises(InvalidInput) as err:
        itc_momentum_loss(img, txt, img, txt, eye, eye, 0.1, teacher_i2t=torch.zeros(3, 3))
    assert err.value.field == "teacher_t2i"
    no_pos = eye.clone()
    no_pos[1, 1] = False
    with pytest.raises(InvalidInput) as err:
        itc_momentum_loss(img, txt, img, txt, no_pos, eye, 0.1)
    assert err.value.field == "pos_i2t"
    with pytest.raises(InvalidInput) as err:
        itc_momentum_loss(img, txt, img, txt, eye, eye[:, :2], 0.1)
    assert err.value.field == "pos_t2i"
