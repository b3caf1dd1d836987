"""The trainer: one recipe, one data dir, one run dir; one process or ``torchrun`` (DDP, FSDP, TP: `.parallel`).

``Trainer(recipe, data_dir, run_dir).fit()`` builds the model from the recipe's arch, the transform from
the encoders' needs, holds the training split in memory, and runs the optimizer steps (see
`polymodal.train.step` for accumulation). It is generic over models that return ``(loss, logs)`` from a
`Batch`; alignment models additionally get contrastive accumulation, the distributed gather and the
temperature clamp. A resumed run continues exactly: same batches, rates, RNG streams and optimizer state.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import rundir
from .._version import __version__
from ..config import Recipe
from ..data.sample import Batch
from ..data.transforms.compose import SampleTransform
from ..data.transforms.resolve import transform_config
from ..errors import ConfigError, InvalidInput, NotFound, TrainingError
from ..models import build_model, load_model
from . import checkpoint as ck
from .data import MemoryData, SkippedItems, StreamData, load_samples, open_checked
from .distributed import DistEnv, StepSampler, all_mean, barrier, cleanup, gather_objects, init_distributed
from .monitor import MetricsLog, Progress, reduce_logs, seed_everything
from .optim import build_optimizer
from .parallel import Parallel, rank_memory
from .schedule import WarmupCosine
from .step import StepModule, forward_backward


@dataclass
class TrainResult:
    run_dir: str
    step: int
    samples_seen: int
    loss: float | None
    val_loss: float | None
    elapsed_s: float
    samples_per_s: float
    checkpoint: str | None
    stopped_by: str  # "steps" | "minutes" | "stop_after"
    # bad data items skipped (data.on_error="skip"): {"count": n, "first": [names], "errors": [messages]}
    skipped: dict[str, Any] = field(default_factory=lambda: {"count": 0, "first": [], "errors": []})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Trainer:
    def __init__(self, recipe: Recipe, data_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str], *,
                 resume: bool = False, device: str | None = None, progress: bool = True,
                 stop_after: int | None = None):
        """``stop_after``: stop (with a checkpoint) once this many steps are done, without changing the
        schedule; continue later with ``resume=True`` (preemptible jobs; the resume test)."""
        if not recipe.train.has_length:
            raise ConfigError("the recipe sets no run length: give train.steps, train.epochs or train.minutes",
                              field="train.steps")
        if stop_after is not None and (isinstance(stop_after, bool) or stop_after < 1):
            raise ConfigError(f"must be >= 1 (steps done before stopping), got {stop_after}", field="stop_after")
        self.recipe, self.cfg = recipe, recipe.train
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.resume, self.device_name, self.show_progress, self.stop_after = resume, device, progress, stop_after
        self.step = self.samples_seen = 0
        self.elapsed_before = 0.0
        self.last_ckpt: Path | None = None
        self.skipped = SkippedItems()

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        self.env: DistEnv = init_distributed(self.device_name)
        self.parallel = Parallel.from_config(self.cfg, self.env)  # ddp, fsdp or tp (train/parallel.py)
        seed_everything(self.cfg.seed)
        self.model = build_model(self.recipe.arch, self.recipe.model)
        if self.parallel.data_rank:  # same initial weights everywhere; each data-parallel rank its own dropout
            seed_everything(self.cfg.seed + 1_000_003 * self.env.rank)
        preprocess = getattr(self.model, "preprocess", None)
        needs = preprocess() if callable(preprocess) else {}
        mods = list(self.recipe.data.modalities or getattr(self.model, "modalities", needs))
        self.transform_cfg = SampleTransform.from_dict(transform_config(needs, self.recipe.data.transform)).to_dict()
        transform = SampleTransform.from_dict(self.transform_cfg)
        self.data = self._train_data(transform, mods)
        self.val = self._val_data(transform, mods)
        self._fit_data()
        self.total_steps = self._total_steps()
        self.model.to(self.env.device)
        self.parallel.apply(self.model)  # activation checkpointing, sharding: before the optimizer sees the params
        self.optimizer = build_optimizer(self.model, self.cfg.optimizer, self.cfg.lr, self.cfg.weight_decay,
                                         self.cfg.betas, self.cfg.eps)
        self.schedule = WarmupCosine(self.cfg.lr, self.cfg.warmup_steps, self.total_steps, self.cfg.min_lr_ratio)
        self.run_config = self._run_config()
        self._prepare_run_dir()
        self.core = StepModule(self.model, gather=self.parallel.data_world > 1)
        self.wrapped: torch.nn.Module = self.core
        if self.parallel.strategy == "ddp":
            # a tower sits idle in a step only when some samples lack its modality
            unused = not self.data.complete
            self.wrapped = DDP(self.core, device_ids=None, find_unused_parameters=unused)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", self.env.is_main, truncate_after=self.step)
        memory = rank_memory(self.model, self.optimizer, planned=True)  # per rank: params + grads + optimizer
        self.metrics.write({"step": self.step, "parallel": self.parallel.strategy, "world": self.env.world,
                            **memory.to_log()})
        if self.env.distributed and self.env.is_main:
            print(f"polymodal train: {self.parallel.describe(memory)}", file=sys.stderr, flush=True)
        self._warn_skipped()

    def _warn_skipped(self) -> None:
        """One console line for the bad items skipped since the last warning (count, first files, why)."""
        data = getattr(self, "data", None)
        if isinstance(data, StreamData):
            self.skipped.note(data.skipped.items())
        line = self.skipped.warning()
        if line is not None and self.env.is_main:
            print(f"polymodal train: warning: {line}", file=sys.stderr, flush=True)

    def _train_data(self, transform: SampleTransform, mods: list[str]) -> MemoryData | StreamData:
        dc = self.recipe.data
        ds = open_checked(self.data_dir, dc.split, mods, dc.on_error)
        n = len(ds)
        world, rank = self.parallel.data_world, self.parallel.data_rank  # tensor parallel: the whole batch
        self.sampler = StepSampler(n, self.cfg.batch_size, world, rank, self.cfg.accum_freq, self.cfg.seed)
        if dc.stream or (dc.stream is None and n > dc.stream_above):
            return StreamData(ds, transform, self.cfg.seed, mods, rank, world, self.cfg.batch_size // world,
                              self.sampler.steps_per_epoch, dc.shuffle_buffer)
        samples = load_samples(ds)
        self.skipped.note(ds.policy.skipped)
        if len(samples) != n:  # bad items skipped (on_error="skip"): index what was read
            self.sampler = StepSampler(len(samples), self.cfg.batch_size, world, rank, self.cfg.accum_freq,
                                       self.cfg.seed)
        return MemoryData(samples, transform, self.cfg.seed, mods)

    def _fit_data(self) -> None:
        """Models that learn something from the data before training (a generative model's BPE tokenizer) see
        the training samples here, before the run config is written; every rank computes the same."""
        fit = getattr(self.model, "fit_data", None)
        if not callable(fit):
            return
        if isinstance(self.data, MemoryData):
            fit(self.data.samples)
        else:
            dc = self.recipe.data
            fit(iter(open_checked(self.data_dir, dc.split, [], dc.on_error)))

    def _save_hf(self) -> None:
        """A generative run also saves its transformers model + tokenizer under RUN/hf (``from_pretrained``
        loads it), written beside and renamed into place so a reader never sees half a folder."""
        if not callable(getattr(self.model, "save_hf", None)) or not self.env.is_main:
            return
        # a sharded model holds DTensors: save an unsharded copy read back from the run's full weights
        source: Any = load_model(self.run_dir)[0] if self.parallel.sharded else self.model
        save = source.save_hf
        final = self.run_dir / "hf"
        stage = self.run_dir / f".hf.tmp-{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        save(stage)
        old = self.run_dir / f".hf.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        stage.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def _step_batches(self) -> list[Batch]:
        if isinstance(self.data, StreamData):
            micro = self.data.step_batches(self.step, self.cfg.accum_freq)
        else:
            epoch = self.sampler.epoch_of(self.step)
            micro = [self.data.batch(ix, epoch) for ix in self.sampler.micro_batches(self.step)]
        return [b.to(self.env.device) for b in micro]

    def _val_data(self, transform: SampleTransform, mods: list[str]) -> MemoryData | None:
        split = self.recipe.data.val_split
        if split is None or not (self.env.is_main or self.parallel.sharded):  # sharded: forward is collective
            return None
        try:
            ds = open_checked(self.data_dir, split, mods, self.recipe.data.on_error)
        except NotFound:
            return None
        if split == self.recipe.data.split or not ds.splits:
            return None  # no separate validation split in this data
        samples = load_samples(ds, self.cfg.val_max_samples)
        self.skipped.note(ds.policy.skipped)
        return MemoryData(samples, transform.eval(), self.cfg.seed, mods) if len(samples) >= 2 else None

    def _total_steps(self) -> int | None:
        if self.cfg.steps is not None:
            return self.cfg.steps
        if self.cfg.epochs is not None:
            return max(1, math.ceil(self.cfg.epochs * self.sampler.steps_per_epoch))
        return None  # time budget only

    def _run_config(self) -> dict[str, Any]:
        model_cfg = getattr(self.model, "config", None) or {**self.recipe.model, "arch": self.recipe.arch}
        return {"format": rundir.RUN_FORMAT, "version": rundir.RUN_VERSION, "polymodal_version": __version__,
                "arch": self.recipe.arch, "model": model_cfg, "transform": self.transform_cfg,
                "recipe": self.recipe.to_dict(), "world_size": self.env.world}

    def _prepare_run_dir(self) -> None:
        candidates = rundir.checkpoint_candidates(self.run_dir)
        if not self.resume:
            if candidates or (self.run_dir / rundir.CONFIG).exists():
                raise ConfigError("the run directory already holds a run; pass --resume to continue it or "
                                  "choose a new --out", source=str(self.run_dir))
            if self.env.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            barrier(self.env)
            return
        if not candidates:
            raise NotFound("nothing to resume: no checkpoint under checkpoints/", source=str(self.run_dir))
        self._load_checkpoint(self._newest_good_checkpoint(candidates))

    def _newest_good_checkpoint(self, candidates: list[Path]) -> ck.Checkpoint:
        """The first of ``candidates`` that reads back and verifies; each one skipped is a warning saying why.
        Only damage skips one (`rundir.DAMAGE`); an OS error reading it propagates."""
        skipped: list[str] = []

        def on_skip(path: Path, err: Exception) -> None:
            skipped.append(f"{path.name} ({err})")
            if self.env.is_main:
                print(f"polymodal train: warning: skipping checkpoint {path.name}: {err}", file=sys.stderr)

        found = rundir.first_verified(candidates, ck.read_checkpoint, on_skip)
        if found is None:
            raise InvalidInput("nothing to resume: no checkpoint under checkpoints/ verifies: " + "; ".join(skipped),
                               source=str(self.run_dir))
        path, checkpoint = found
        if skipped and self.env.is_main:
            print(f"polymodal train: resuming from {path.name}, the newest checkpoint that verifies", file=sys.stderr)
        return checkpoint

    def _load_checkpoint(self, loaded: ck.Checkpoint) -> None:
        path, saved, state, tensors = loaded.path, loaded.config, loaded.state, loaded.state_tensors
        for key in ("arch", "model", "transform"):
            diff = _first_diff(saved.get(key), self.run_config[key], key)
            if diff:
                raise ConfigError(f"cannot resume: the checkpoint was trained with a different {diff}",
                                  source=str(path))
        rundir.check_model_state(self.model, loaded.model_state, str(path / rundir.MODEL))
        self.parallel.load_model_state(self.model, loaded.model_state)  # full tensors, sharded or not
        ck.restore_optimizer(self.optimizer, self.parallel.optimizer_tensors(self.optimizer, tensors),
                             state["optimizer"], str(path))
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])
        self.elapsed_before = float(state["elapsed_s"])
        self.last_ckpt = path
        rank = self.parallel.data_rank  # tensor parallel: every rank continues rank 0's streams
        if int(state["world"]) == self.env.world:
            own = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"rng.{rank}.")}
            self._rng_to_restore: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = (own, state["rng"][rank])
        else:  # other process count: batches are unchanged, per-rank RNG streams cannot be
            print(f"polymodal train: resuming with {self.env.world} processes instead of {state['world']}; "
                  "per-process random streams are re-seeded", file=sys.stderr)
            self._rng_to_restore = None
            seed_everything(self.cfg.seed + 1_000_003 * self.step + rank)

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainResult:
        self._rng_to_restore = None
        try:
            self._setup()
            if self._rng_to_restore is not None:  # last thing before the first step
                ck.set_rng_state(*self._rng_to_restore)
            return self._loop()
        finally:
            env = getattr(self, "env", None)
            if env is not None:
                cleanup(env)

    def _autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self._t0

    def _loop(self) -> TrainResult:
        self._t0 = time.perf_counter()
        budget = self.cfg.minutes * 60 if self.cfg.minutes is not None else None
        progress = Progress(self.total_steps, self.step, self.env.is_main and self.show_progress,
                            announce=self.env.is_main, budget_s=budget, elapsed=self.elapsed_before)
        loss_value: float | None = None
        stopped_by = "steps"
        window = (time.perf_counter(), self.samples_seen)
        while self.total_steps is None or self.step < self.total_steps:
            elapsed = self._shared_elapsed()
            if budget is not None and elapsed >= budget:
                stopped_by = "minutes"
                break
            if self.stop_after is not None and self.step >= self.stop_after:
                stopped_by = "stop_after"
                break
            frac = elapsed / budget if budget is not None and self.total_steps is None else None
            lr = self.schedule.lr(self.step, frac)
            loss, logs = self._train_step(lr)
            loss_value = float(loss)
            self.step += 1
            self.samples_seen += self.cfg.batch_size
            speed = progress.update(loss_value, self.samples_seen, self._elapsed())
            if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                now = time.perf_counter()
                rate = (self.samples_seen - window[1]) / max(now - window[0], 1e-9)
                window = (now, self.samples_seen)
                self._log(loss_value, lr, reduce_logs(logs, self.env), rate or speed)
            if self.cfg.val_every and self.step % self.cfg.val_every == 0:
                self._validate()
            if self.cfg.ckpt_every and self.step % self.cfg.ckpt_every == 0:
                self._save()
        progress.close()
        self._warn_skipped()  # what streaming met during the run
        val = self._validate() if stopped_by != "stop_after" else None
        if self.last_ckpt is None or self.last_ckpt.name != rundir.checkpoint_name(self.step):
            self._save()
        self._save_hf()
        elapsed = self._elapsed()
        return TrainResult(str(self.run_dir), self.step, self.samples_seen, loss_value, val, elapsed,
                           self.samples_seen / max(elapsed, 1e-9), str(self.last_ckpt) if self.last_ckpt else None,
                           stopped_by, self.skipped.report())

    def _shared_elapsed(self) -> float:
        """Rank 0's clock, so every rank takes the same time-based decisions (rate, stopping)."""
        value = self._elapsed()
        if self.env.distributed and self.cfg.minutes is not None:
            t = torch.tensor([value], dtype=torch.float64, device=self.env.device)
            torch.distributed.broadcast(t, src=0)
            value = float(t.item())
        return value

    def _train_step(self, lr: float) -> tuple[torch.Tensor, dict[str, float]]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = self._step_batches()
        loss, logs = forward_backward(self.wrapped, self.core, micro, self._autocast, self.env.device)
        loss = all_mean(loss, self.env)
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip is not None else math.inf
        norm = self.parallel.clip_grad_norm(params, max_norm)  # DTensor gradients too
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            self._diverged(float(loss), float(norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        clamp = getattr(self.model, "clamp_logit_scale", None)
        if callable(clamp):
            clamp()
        return loss, logs

    def _diverged(self, loss: float, norm: float) -> None:
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
        keep = (f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt is not None
                else "no checkpoint was written yet")
        raise TrainingError(f"training stopped at step {self.step + 1}: {what} is not finite (try a lower "
                            f"train.lr or precision fp32); {keep}", source=str(self.run_dir))

    # ------------------------------------------------------------------ logging, validation, checkpoints
    def _log(self, loss: float, lr: float, logs: dict[str, float], rate: float) -> None:
        row = {"step": self.step, "epoch": self.sampler.epoch_of(max(0, self.step - 1)), "loss": loss, "lr": lr,
               "samples_seen": self.samples_seen, "samples_per_s": round(rate, 2),
               "elapsed_s": round(self._elapsed(), 3)}
        row.update({k: v for k, v in logs.items() if k != "loss"})
        self.metrics.write(row)

    @torch.no_grad()
    def _validate(self) -> float | None:
        """Mean loss over the validation samples (rank 0, no gather); logged as val_loss."""
        val_loss = None
        if self.val is not None:  # rank 0, or every rank of a sharded model (only rank 0 writes)
            self.model.eval()
            total, count = 0.0, 0
            sums: dict[str, float] = {}
            size = min(self.cfg.batch_size, len(self.val))
            for start in range(0, len(self.val), size):
                idx = list(range(start, min(start + size, len(self.val))))
                if len(idx) < 2:  # a contrastive loss needs two rows
                    break
                with self._autocast():
                    loss, logs = self.core.local_loss(self.val.batch(idx, 0).to(self.env.device))
                total += float(loss) * len(idx)
                count += len(idx)
                for k, v in logs.items():  # per-pair losses, accuracy, ...: sample-weighted means
                    if k != "loss" and not k.startswith(("pairs/", "logit_")):
                        sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
            self.model.train()
            val_loss = total / max(count, 1)
            self.metrics.write({"step": self.step, "val_loss": val_loss,
                                **{f"val/{k}": v / max(count, 1) for k, v in sums.items()}})
        barrier(self.env)
        return val_loss

    def _save(self) -> None:
        rng = ck.rng_state()
        everyone = gather_objects(rng, self.env)
        model_state = self.parallel.model_state(self.model)  # full tensors on rank 0 (collective when sharded)
        opt_tensors, opt_meta = self.parallel.optimizer_state(self.optimizer)
        if self.env.is_main:
            tensors = dict(opt_tensors)
            for r, (t, _) in enumerate(everyone):
                tensors.update({f"rng.{r}.{k}": v for k, v in t.items()})
            state = {"step": self.step, "samples_seen": self.samples_seen, "elapsed_s": self._elapsed(),
                     "world": self.env.world, "optimizer": opt_meta, "rng": [m for _, m in everyone]}
            config = {**self.run_config, "step": self.step, "samples_seen": self.samples_seen}
            self.last_ckpt = ck.write_checkpoint(self.run_dir, self.step, model_state, config,
                                                 tensors, state, keep=self.cfg.keep_checkpoints)
        else:
            self.last_ckpt = self.run_dir / "checkpoints" / rundir.checkpoint_name(self.step)
        barrier(self.env)


def _first_diff(a: Any, b: Any, path: str) -> str | None:
    """The first dotted key where two JSON values differ, as 'key (a vs b)'."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_diff(a.get(k), b.get(k), f"{path}.{k}")
            if d:
                return d
        return None
    if a != b:
        return f"{path} ({_short(a)} vs now {_short(b)})"
    return None


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def train(recipe: Recipe, data_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str],
          **kwargs: Any) -> TrainResult:
    """Train ``recipe`` on ``data_dir`` into ``run_dir`` (see `Trainer`)."""
    return Trainer(recipe, data_dir, run_dir, **kwargs).fit()
