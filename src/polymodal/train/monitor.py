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
    """tqdm bar on stderr (rank 0) with the loss and samples/s; returns the current samples/s.

    With a step count the bar counts steps (tqdm's ETA gives the time left). A time-budget run (``budget_s``
    and no step count) has the budget as its total instead: the bar shows the percentage of the budget spent,
    ``elapsed/budget`` and the ETA (the budget left: the run stops when it is spent), plus the step and loss.
    ``elapsed`` (passed in by the trainer, which owns the clock and counts time before a resume) drives it.

    Once `ESTIMATE_STEPS` steps after the first (which pays one-off costs: allocation, lazy init) are timed,
    one line says how long the remaining steps should take on this machine, e.g. ``train: 0.55 s/step
    (steps 2-6): about 8 min on this machine for the 894 steps left`` (with a budget: how many more steps fit
    in it)."""

    ESTIMATE_STEPS = 5
    BUDGET_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {budget}"

    def __init__(self, total: int | None, initial: int, enabled: bool, announce: bool | None = None,
                 budget_s: float | None = None, elapsed: float = 0.0):
        self._bar: Any = None
        self._t = time.perf_counter()
        self._seen: int | None = None
        self.total, self.step = total, initial
        self.budget = budget_s if total is None else None  # a step count, when there is one, drives the bar
        self.elapsed = elapsed
        self._first: float | None = None  # clock at the end of this process's first step
        self._first_step = initial
        self.estimate: str | None = None
        self._announce = enabled if announce is None else announce  # the estimate line, bar or not
        if enabled:
            from tqdm import tqdm

            if self.budget is not None:
                self._bar = _budget_bar(total=self.budget, initial=min(elapsed, self.budget), desc="train",
                                        unit="s", file=sys.stderr, dynamic_ncols=True, bar_format=self.BUDGET_FORMAT)
                self._bar.budget = self._budget_text(None, None)
                self._bar.refresh()
            else:
                self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr,
                                 dynamic_ncols=True)

    def _budget_text(self, loss: float | None, rate: float | None) -> str:
        from tqdm import tqdm

        assert self.budget is not None
        spent = min(self.elapsed, self.budget)
        text = (f"{tqdm.format_interval(spent)}/{tqdm.format_interval(self.budget)}, "
                f"ETA {tqdm.format_interval(self.budget - spent)}, step {self.step}")
        if loss is not None:
            text += f", loss {loss:.4f}"
        if rate is not None:
            text += f", samples/s {rate:.0f}"
        return text

    def update(self, loss: float, samples_seen: int, elapsed: float | None = None) -> float:
        now = time.perf_counter()
        rate = 0.0 if self._seen is None else (samples_seen - self._seen) / max(now - self._t, 1e-9)
        self._t, self._seen = now, samples_seen
        self.step += 1
        if elapsed is not None:
            self.elapsed = elapsed
        if self._bar is not None and self.budget is not None:
            self._bar.n = min(self.elapsed, self.budget)
            self._bar.budget = self._budget_text(loss, rate)
            self._bar.refresh()
        elif self._bar is not None:
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
        if self.estimate is not None or timed < self.ESTIMATE_STEPS or (self.total is None and self.budget is None):
            return
        per_step = (now - self._first) / timed
        head = f"train: {per_step:.2f} s/step (steps {self._first_step + 1}-{self.step}): about "
        if self.total is not None:
            left = self.total - self.step
            self.estimate = f"{head}{format_duration(per_step * left)} on this machine for the {left} steps left"
        else:
            assert self.budget is not None
            left = int(max(self.budget - self.elapsed, 0.0) / per_step)
            self.estimate = (f"{head}{left} more steps fit in the {format_duration(self.budget)} budget on this "
                             "machine")
        if left <= 0:
            return
        if self._bar is not None:
            self._bar.write(self.estimate, file=sys.stderr)
        else:
            print(self.estimate, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _budget_bar(**kwargs: Any) -> Any:
    """A tqdm bar whose format may use ``{budget}``: the text in its ``budget`` attribute (tqdm would put a
    postfix after a comma)."""
    from tqdm import tqdm

    class BudgetBar(tqdm):  # type: ignore[misc]
        budget = ""

        @property
        def format_dict(self) -> dict[str, Any]:
            return {**super().format_dict, "budget": self.budget}

    return BudgetBar(**kwargs)


def format_duration(seconds: float) -> str:
    """``42 s``, ``8 min``, ``1 h 05 min``: a rough duration for estimates."""
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
