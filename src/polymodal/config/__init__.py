"""Recipes as frozen dataclasses <-> JSON, and type-checked dotted overrides.

A recipe is JSON with an explicit ``"arch"`` (never inferred from which keys exist)::

    {"arch": "alignment",
     "model": {... the arch's model config ...},
     "data":  {"modalities": [...], "split": "train", "val_split": "val", "transform": {...}},
     "train": {"batch_size": 64, "lr": 1e-3, "steps": 300, ...}}

The ``data`` and ``train`` sections are dataclasses, so every key and type is checked here. ``model`` stays a
JSON object in the recipe: its arch's frozen config dataclass (``AlignmentConfig``, ``FusionModelConfig``, ...,
registered by arch in `polymodal.models.registry`) checks it when the model is built, through the same
`from_dict`. This module knows no arch: config and recipes sit below the models (an import-linter contract).
``data.transform`` is free-form too (the transform validates it).

Overrides (``--set key=value``) are dotted paths into that JSON: ``train.lr=1e-3``,
``model.encoders.text.layers=4``. A key must already exist (``+key=value`` adds a new one inside a free-form
section); the value must have the type of the field (dataclass sections) or of the existing value
(free-form sections): int, float (an int is accepted), bool, str, list (JSON or comma-separated), null.
Python callers may pass ``(key, value)`` pairs instead of strings: the value is type-checked, never parsed.
A dataclass section is changed with `dataclasses.replace`, once per section, so its checks run on the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._io import deep_merge
from ..errors import ConfigError
from .convert import from_dict, to_dict
from .overrides import Override, apply_overrides

OPTIMIZERS: tuple[str, ...] = ("adamw", "lamb")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
PARALLEL: tuple[str, ...] = ("ddp", "fsdp", "tp")  # how several processes share the model (polymodal.train.parallel)


@dataclass(frozen=True)
class DataConfig:
    modalities: list[str] = field(default_factory=list)  # [] = every modality the model has
    split: str | None = "train"  # None = the whole data dir (a plain shard dir has no splits)
    val_split: str | None = "val"  # None or missing in the data = no validation loss
    transform: dict[str, Any] = field(default_factory=dict)  # SampleTransform dict (partial is fine)
    on_error: str = "raise"  # "raise" | "skip" bad samples
    stream: bool | None = None  # read through a shuffle buffer instead of memory; None: when > stream_above
    stream_above: int = 200_000  # samples
    shuffle_buffer: int = 10_000

    def __post_init__(self) -> None:
        _choice(self.on_error, ("raise", "skip"), "data.on_error")
        _at_least(self.shuffle_buffer, 1, "data.shuffle_buffer")
        _at_least(self.stream_above, 1, "data.stream_above")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64  # GLOBAL samples per optimizer step, whatever the process count / accum_freq
    lr: float = 1e-3
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    optimizer: str = "adamw"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 0
    steps: int | None = None  # schedule length: steps, or epochs, or (neither) minutes
    epochs: float | None = None
    minutes: float | None = None  # wall-clock cap; alone, the cosine follows elapsed time
    accum_freq: int = 1  # micro-batches per step (contrastive loss still over the whole step batch)
    grad_clip: float | None = 1.0
    precision: str = "fp32"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 0  # 0 = only the final checkpoint
    keep_checkpoints: int = 1
    val_every: int = 0  # 0 = validation loss at the end only (when the data has val_split)
    val_max_samples: int = 1024
    parallel: str = "ddp"  # several processes: "ddp" | "fsdp" (params, grads, optimizer sharded) | "tp" (tensor par.)
    activation_checkpointing: bool = False  # recompute transformer layers' activations in backward

    # Keys that were fields once: a recipe setting one to anything but its old default is an error that says
    # what to use instead; the old default itself is accepted (run dirs saved before the removal still resume).
    REMOVED: ClassVar[dict[str, tuple[Any, str]]] = {
        "modality_dropout": (0.0, "removed: modality dropout is a model setting now, model.modality_dropout of "
                                  "a fusion model (each modality of a sample dropped with probability p, never "
                                  "all of them; see docs/fusion.md)"),
    }

    def __post_init__(self) -> None:
        _choice(self.optimizer, OPTIMIZERS, "train.optimizer")
        _choice(self.precision, PRECISIONS, "train.precision")
        _choice(self.parallel, PARALLEL, "train.parallel")
        for name in ("batch_size", "accum_freq", "log_every", "keep_checkpoints", "val_max_samples"):
            _at_least(getattr(self, name), 1, f"train.{name}")
        for name in ("warmup_steps", "ckpt_every", "val_every", "seed"):
            _at_least(getattr(self, name), 0, f"train.{name}")
        for name in ("lr", "eps"):
            _positive(getattr(self, name), f"train.{name}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"must be >= 0 and finite, got {self.weight_decay}", field="train.weight_decay")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"must be in [0, 1], got {self.min_lr_ratio}", field="train.min_lr_ratio")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"must be two values in [0, 1), got {self.betas}", field="train.betas")
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("give steps or epochs, not both", field="train.steps")
        for name in ("steps", "epochs", "minutes", "grad_clip"):
            value = getattr(self, name)
            if value is not None:
                _positive(value, f"train.{name}", " (or null)")

    @property
    def has_length(self) -> bool:
        return self.steps is not None or self.epochs is not None or self.minutes is not None


@dataclass(frozen=True)
class Recipe:
    arch: str
    model: dict[str, Any]
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        # Which archs exist is the models' registry's business (checked when the model is built).
        if not self.arch.strip():
            raise ConfigError('must name the model architecture, e.g. "alignment"', field="arch")
        if self.model.get("arch", self.arch) != self.arch:
            raise ConfigError(f"model.arch {self.model['arch']!r} differs from arch {self.arch!r}", field="model.arch")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = to_dict(self)
        return out

    @classmethod
    def from_dict(cls, obj: Any, source: str | None = None) -> Recipe:
        if not isinstance(obj, dict):
            raise ConfigError("a recipe must be a JSON object", source=source)
        if "arch" not in obj:
            raise ConfigError('missing "arch" (the model architecture, e.g. "alignment")', field="arch",
                              source=source)
        if "model" not in obj:
            raise ConfigError("missing \"model\"", field="model", source=source)
        try:
            return from_dict(cls, obj)
        except ConfigError as err:
            if source and not err.source:
                raise ConfigError(err.message, field=err.field, source=source) from None
            raise

    def with_overrides(self, overrides: Iterable[Override]) -> Recipe:
        return apply_overrides(self, overrides)


def _at_least(value: int, low: int, name: str) -> None:
    if value < low:
        raise ConfigError(f"must be >= {low}, got {value}", field=name)


def _positive(value: float, name: str, alt: str = "") -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"must be > 0 and finite{alt}, got {value}", field=name)


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ConfigError(f"must be one of {', '.join(allowed)}, got {value!r}", field=name)


__all__ = ["OPTIMIZERS", "PARALLEL", "PRECISIONS", "DataConfig", "Override", "Recipe", "TrainConfig", "apply_overrides",
           "deep_merge", "from_dict", "to_dict"]
