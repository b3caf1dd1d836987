"""Learning-rate schedule: linear warmup, then cosine decay to ``base_lr * min_ratio``.

Stateless: the rate is a pure function of the step (and, for a time-budgeted run, of the elapsed
fraction of the budget), so a resumed run gets exactly the rates of an uninterrupted one."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    base_lr: float
    warmup_steps: int
    total_steps: int | None  # None: the decay follows ``progress`` (fraction of a time budget) instead
    min_ratio: float = 0.0

    def lr(self, step: int, progress: float | None = None) -> float:
        """Rate for optimizer step ``step`` (0-based). ``progress`` in [0, 1] overrides the step-based
        decay position (used when the run length is a time budget)."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if progress is None:
            if self.total_steps is None:
                return self.base_lr
            span = max(1, self.total_steps - self.warmup_steps)
            progress = (step - self.warmup_steps) / span
        progress = min(max(progress, 0.0), 1.0)
        cos = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.base_lr * (self.min_ratio + (1.0 - self.min_ratio) * cos)
