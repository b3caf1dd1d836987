"""What a run reports: the JSONL metrics log (and TensorBoard when installed), the progress bar, seeding."""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .distributed import DistEnv, gather_objects


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def reduce_logs(logs: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Mean of each logged value over the ranks that logged it (rank-local losses average to the
    global batch's)."""
    everyone = gather_objects(logs, env)
    keys = sorted({k for d in everyone for k in d})
    out = {}
    for k in keys:
        vals = [float(d[k]) for d in everyone if k in d]
        out[k] = sum(vals) / len(vals)
    return out


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended and flushed as it is written (rank 0 only).
    ``truncate_after``: on resume, drop lines logged after the checkpoint's step (they will be redone)."""

    def __init__(self, path: Path, enabled: bool, truncate_after: int | None = None):
        self.path, self.enabled = path, enabled
        self._tb: Any = None
        if not enabled:
            return
        if truncate_after is not None and path.exists():
            keep = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step(line) <= truncate_after]
            path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        try:  # optional: TensorBoard event files next to the JSONL log
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(path.parent / "tensorboard"))
        except (ImportError, ModuleNotFoundError):
            self._tb = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean, sort_keys=True) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, row["step"])
            self._tb.flush()


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 0


class Progress:
    """tqdm bar on stderr (rank 0) with the loss and samples/s, and the time left when the run has a step
    count (tqdm's ETA); returns the current samples/s.

    Once `ESTIMATE_STEPS` steps after the first (which pays one-off costs: allocation, lazy init) are timed,
    one line says how long the remaining steps should take on this machine, e.g. ``train: 0.55 s/step
    (steps 2-6): about 8 min on this machine for the 894 steps left``."""

    ESTIMATE_STEPS = 5

    def __init__(self, total: int | None, initial: int, enabled: bool, announce: bool | None = None):
        self._bar: Any = None
        self._t = time.perf_counter()
        self._seen: int | None = None
        self.total, self.step = total, initial
        self._first: float | None = None  # clock at the end of this process's first step
        self._first_step = initial
        self.estimate: str | None = None
        self._announce = enabled if announce is None else announce  # the estimate line, bar or not
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr,
                             dynamic_ncols=True)

    def update(self, loss: float, samples_seen: int) -> float:
        now = time.perf_counter()
        rate = 0.0 if self._seen is None else (samples_seen - self._seen) / max(now - self._t, 1e-9)
        self._t, self._seen = now, samples_seen
        self.step += 1
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.0f}", refresh=False)
            self._bar.update(1)
        if self._announce:
            self._estimate(now)
        return rate

    def _estimate(self, now: float) -> None:
        if self._first is None:
            self._first, self._first_step = now, self.step
            return
        timed = self.step - self._first_step
        if self.estimate is not None or timed < self.ESTIMATE_STEPS or self.total is None:
            return
        per_step = (now - self._first) / timed
        left = self.total - self.step
        self.estimate = (f"train: {per_step:.2f} s/step (steps {self._first_step + 1}-{self.step}): about "
                         f"{format_duration(per_step * left)} on this machine for the {left} steps left")
        if left <= 0:
            return
        if self._bar is not None:
            self._bar.write(self.estimate, file=sys.stderr)
        else:
            print(self.estimate, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def format_duration(seconds: float) -> str:
    """``42 s``, ``8 min``, ``1 h 05 min``: a rough duration for estimates."""
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
