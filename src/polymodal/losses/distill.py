"""ALBEF's momentum distillation (Li et al., 2021): a momentum (EMA) teacher, feature queues and the image-text
contrastive loss (ITC) with soft targets.

- Momentum model: ``theta_t <- m * theta_t + (1 - m) * theta_s`` after every step (ALBEF: m = 0.995), buffers
  copied from the student; the teacher never receives gradients (`make_teacher`, `ema_update`).
- Queues (MoCo-style, as in ALBEF): the teacher's L2-normalised image and text features of the last ``size``
  samples, with an int64 id per row so that queued samples of the same image count as positives (BLIP/ALBEF's
  ``idx_queue``). Under DDP, gather the batch features and ids of every rank (`gather_no_grad`) before
  `FeatureQueue.enqueue`, as ALBEF's ``concat_all_gather`` does, so every rank holds the same queue.
- ITC with momentum distillation: with ``img_all``/``txt_all`` the teacher features of the batch followed by the
  queue, ``s_i2t = img @ txt_all.T / temp`` and ``s_t2i = txt @ img_all.T / temp``, targets
  ``y = alpha * softmax(teacher_sim) + (1 - alpha) * pos / pos.sum(1)`` and

      L_itc = ( mean_i  -sum_j log_softmax(s_i2t)_ij y_i2t_ij  +  mean_i  -sum_j log_softmax(s_t2i)_ij y_t2i_ij ) / 2

  ALBEF uses alpha = 0.4 (ramped up over the first epoch by the trainer, not here).

Ours: explicit positive masks (any number of positives per row, ALBEF's later ``idx``-based version),
typed errors for mismatched modules and rows without a positive, and a queue whose ``filled`` count makes the
first steps use only real features (ALBEF starts from a randomly filled queue). ``temp`` may be a learnable
tensor (ALBEF learns it) and receives gradient; ``img_all``, ``txt_all`` and the teacher similarities are
detached, so among the features only ``img`` and ``txt`` get gradient.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.errors import InvalidInput


def _pairs(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor], kind: str
           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Tensors matched by name; an error naming the first name missing on either side or of another shape."""
    for name in list(teacher) + [n for n in student if n not in teacher]:
        if name not in teacher or name not in student:
            side = "teacher" if name not in teacher else "student"
            raise InvalidInput(f"{kind} missing from the {side}", field=name)
        if teacher[name].shape != student[name].shape:
            raise InvalidInput(f"{kind} shape {tuple(teacher[name].shape)} in the teacher, "
                               f"{tuple(student[name].shape)} in the student", field=name)
    return [(teacher[name], student[name]) for name in teacher]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher_p = m * teacher_p + (1 - m) * student_p`` for every parameter (matched by name), buffers
    copied. Raises InvalidInput naming the first parameter or buffer that does not match."""
    if not 0.0 <= momentum <= 1.0:
        raise InvalidInput(f"must lie in [0, 1], got {momentum}", field="momentum")
    params = _pairs(dict(teacher.named_parameters()), dict(student.named_parameters()), "parameter")
    buffers = _pairs(dict(teacher.named_buffers()), dict(student.named_buffers()), "buffer")
    for t, s in params:
        if t.numel() and t.data_ptr() == s.data_ptr():
            raise InvalidInput("teacher and student share a parameter; build the teacher with make_teacher",
                               field="teacher")
        t.mul_(momentum).add_(s.detach().to(t), alpha=1.0 - momentum)
    for t, s in buffers:
        t.copy_(s)


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` with ``requires_grad`` False on every parameter (the momentum model)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class FeatureQueue(nn.Module):
    """FIFO of the last ``size`` L2-normalised feature rows (dim D) and an int64 id per row. Buffers (saved in
    the checkpoint): ``queue`` (size, D) float32, ``ids`` (size,) (-1 in empty slots), ``ptr`` () the next slot
    to write, ``filled`` () how many slots hold features."""

    queue: torch.Tensor
    ids: torch.Tensor
    ptr: torch.Tensor
    filled: torch.Tensor

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise InvalidInput(f"must be positive, got {size}", field="size")
        if dim < 1:
            raise InvalidInput(f"must be positive, got {dim}", field="dim")
        self.size, self.dim = size, dim
        self.register_buffer("queue", torch.zeros(size, dim))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, feats: torch.Tensor, ids: torch.Tensor) -> None:
        """Append feats (n, D) (L2-normalised here) with their ids (n,), overwriting the oldest rows; of a batch
        larger than ``size`` only its last ``size`` rows are kept."""
        if feats.dim() != 2 or feats.shape[1] != self.dim:
            raise InvalidInput(f"expected (n, {self.dim}) features, got {tuple(feats.shape)}", field="feats")
        if ids.shape != feats.shape[:1]:
            raise InvalidInput(f"expected ({feats.shape[0]},) ids, got {tuple(ids.shape)}", field="ids")
        feats, ids = feats[-self.size:], ids[-self.size:]
        n = feats.shape[0]
        slots = (self.ptr + torch.arange(n, device=self.queue.device)) % self.size
        self.queue.index_copy_(0, slots, F.normalize(feats.detach().to(self.queue), dim=-1))
        self.ids.index_copy_(0, slots, ids.to(self.ids))
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_((self.filled + n).clamp(max=self.size))

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(feats (F, D), ids (F,)) of the F filled rows, oldest first; copies, safe to keep across enqueues."""
        filled = int(self.filled)
        if filled < self.size:  # not wrapped yet: slots 0..F-1 in the order they were written
            return self.queue[:filled].clone(), self.ids[:filled].clone()
        order = (self.ptr + torch.arange(self.size, device=self.queue.device)) % self.size
        return self.queue[order], self.ids[order]

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"


def _targets(pos: torch.Tensor, sim: torch.Tensor, teacher: torch.Tensor | None, alpha: float,
             name: str) -> torch.Tensor:
    if pos.shape != sim.shape or pos.dtype != torch.bool:
        raise InvalidInput(f"expected a bool tensor of shape {tuple(sim.shape)}, got "
                           f"{pos.dtype} {tuple(pos.shape)}", field=name)
    counts = pos.sum(dim=1, keepdim=True)
    if not (counts > 0).all():
        raise InvalidInput("every row needs at least one positive", field=name)
    hard = pos.to(sim.dtype) / counts
    if teacher is None:
        return hard
    if teacher.shape != sim.shape:
        raise InvalidInput(f"expected shape {tuple(sim.shape)}, got {tuple(teacher.shape)}",
                           field=f"teacher_{name[4:]}")
    return alpha * torch.softmax(teacher.detach().to(sim.dtype), dim=1) + (1.0 - alpha) * hard


def _soft_ce(sim: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(F.log_softmax(sim, dim=1) * targets).sum(dim=1).mean()


def itc_momentum_loss(img: torch.Tensor, txt: torch.Tensor, img_all: torch.Tensor, txt_all: torch.Tensor,
                      pos_i2t: torch.Tensor, pos_t2i: torch.Tensor, temp: torch.Tensor | float, *,
                      teacher_i2t: torch.Tensor | None = None, teacher_t2i: torch.Tensor | None = None,
                      alpha: float = 0.4) -> torch.Tensor:
    """ALBEF's ITC: img, txt (B, D) student features; img_all, txt_all (N, D) teacher features of the batch
    then the queue; pos_i2t / pos_t2i (B, N) bool positives; temp the temperature (divides). Without teacher
    similarities the targets are the hard ones (``alpha`` unused); teacher_i2t and teacher_t2i (B, N), already
    divided by temp, come together."""
    if img.dim() != 2 or txt.shape != img.shape:
        raise InvalidInput(f"expected img and txt of one (B, D) shape, got {tuple(img.shape)} and "
                           f"{tuple(txt.shape)}", field="txt")
    for name, x in (("img_all", img_all), ("txt_all", txt_all)):
        if x.dim() != 2 or x.shape[1] != img.shape[1]:
            raise InvalidInput(f"expected (N, {img.shape[1]}), got {tuple(x.shape)}", field=name)
    if (teacher_i2t is None) != (teacher_t2i is None):
        raise InvalidInput("give both teacher similarities or neither",
                           field="teacher_t2i" if teacher_t2i is None else "teacher_i2t")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInput(f"must lie in [0, 1], got {alpha}", field="alpha")
    sim_i2t = img @ txt_all.detach().T / temp
    sim_t2i = txt @ img_all.detach().T / temp
    t_i2t = _targets(pos_i2t, sim_i2t, teacher_i2t, alpha, "pos_i2t")
    t_t2i = _targets(pos_t2i, sim_t2i, teacher_t2i, alpha, "pos_t2i")
    return (_soft_ce(sim_i2t, t_i2t) + _soft_ce(sim_t2i, t_t2i)) / 2
