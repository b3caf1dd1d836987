"""Recipes as frozen dataclasses <-> JSON, and type-checked dotted overrides.

A recipe is JSON with an explicit ``"arch"`` (never inferred from which keys exist)::

    {"arch": "alignment",
     "model": {... the model builder's config ...},
     "data":  {"modalities": [...], "split": "train", "val_split": "val", "transform": {...}},
     "train": {"batch_size": 64, "lr": 1e-3, "steps": 300, ...}}

``model`` (and ``data.transform``) are free-form: the model builder / transform validate them. The
``data`` and ``train`` sections are dataclasses, so every key and type is checked here.

Overrides (``--set key=value``) are dotted paths into that JSON: ``train.lr=1e-3``,
``model.encoders.text.layers=4``. A key must already exist (``+key=value`` adds a new one inside a free-form
section); the value must have the type of the field (dataclass sections) or of the existing value
(free-form sections): int, float (an int is accepted), bool, str, list (JSON or comma-separated), null.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import ConfigError

ARCHS: tuple[str, ...] = ("alignment", "fusion")
OPTIMIZERS: tuple[str, ...] = ("adamw", "lamb")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


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
        if self.shuffle_buffer < 1 or self.stream_above < 1:
            raise ConfigError("shuffle_buffer and stream_above must be >= 1", field="data.shuffle_buffer")


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
    modality_dropout: float = 0.0  # chance to drop one modality of a multi-modality training sample

    def __post_init__(self) -> None:
        _choice(self.optimizer, OPTIMIZERS, "train.optimizer")
        _choice(self.precision, PRECISIONS, "train.precision")
        for name in ("batch_size", "accum_freq", "log_every", "keep_checkpoints", "val_max_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", field=f"train.{name}")
        for name in ("warmup_steps", "ckpt_every", "val_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", field=f"train.{name}")
        if not self.lr > 0:
            raise ConfigError(f"must be > 0, got {self.lr}", field="train.lr")
        if self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("weight_decay must be >= 0 and min_lr_ratio in [0, 1]", field="train.weight_decay")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"expected two values in [0, 1), got {self.betas}", field="train.betas")
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("give steps or epochs, not both", field="train.steps")
        for name in ("steps", "epochs", "minutes", "grad_clip"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"must be > 0 (or null), got {value}", field=f"train.{name}")
        if not 0 <= self.modality_dropout < 1:
            raise ConfigError(f"must be in [0, 1), got {self.modality_dropout}", field="train.modality_dropout")

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
        _choice(self.arch, ARCHS, "arch")
        if self.model.get("arch", self.arch) != self.arch:
            raise ConfigError(f"model.arch {self.model['arch']!r} differs from arch {self.arch!r}", field="model.arch")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, obj: Any, source: str | None = None) -> Recipe:
        if not isinstance(obj, dict):
            raise ConfigError("a recipe must be a JSON object", source=source)
        if "arch" not in obj:
            raise ConfigError(f"missing \"arch\" (one of {', '.join(ARCHS)})", field="arch", source=source)
        if "model" not in obj:
            raise ConfigError("missing \"model\"", field="model", source=source)
        try:
            return from_dict(cls, obj)
        except ConfigError as err:
            if source and not err.source:
                raise ConfigError(err.message, field=err.field, source=source) from None
            raise

    def with_overrides(self, overrides: list[str]) -> Recipe:
        return apply_overrides(self, overrides)


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ConfigError(f"must be one of {', '.join(allowed)}, got {value!r}", field=name)


# ------------------------------------------------------------------------------------ dataclass <-> JSON

def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain JSON values; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


T = typing.TypeVar("T")


def from_dict(cls: type[T], obj: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from JSON, checking every key and type (errors name the dotted key)."""
    if not isinstance(obj, dict):
        raise ConfigError(f"expected an object, got {_jtype(obj)}", field=path or cls.__name__)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in obj.items():
        full = f"{path}.{key}" if path else key
        if key not in names:
            raise ConfigError(f"unknown key{_suggest(key, names)}", field=full)
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)  # type: ignore[arg-type]
    if not _matches(value, hint):
        raise ConfigError(f"expected {_hint_name(hint)}, got {_jtype(value)} {json.dumps(value)}", field=path)
    if value is not None and _base(hint) is float:
        return float(value)
    return value


def _options(hint: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(hint)
    return (hint,)


def _base(hint: Any) -> Any:
    opts = [h for h in _options(hint) if h is not type(None)]
    return typing.get_origin(opts[0]) or opts[0] if len(opts) == 1 else None


def _matches(value: Any, hint: Any) -> bool:
    for opt in _options(hint):
        base = typing.get_origin(opt) or opt
        if opt is Any or (opt is type(None) and value is None):
            return True
        if base is bool and isinstance(value, bool):
            return True
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if base is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if base is str and isinstance(value, str):
            return True
        if base is list and isinstance(value, list):
            args = typing.get_args(opt)
            return not args or all(_matches(v, args[0]) for v in value)
        if base is dict and isinstance(value, dict):
            return True
    return False


def _hint_name(hint: Any) -> str:
    names = []
    for opt in _options(hint):
        base = typing.get_origin(opt) or opt
        names.append("null" if opt is type(None) else getattr(base, "__name__", str(base)))
    return " or ".join(names)


def _jtype(value: Any) -> str:
    for t, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (list, "list"), (dict, "object")):
        if isinstance(value, t):
            return name
    return "null" if value is None else type(value).__name__


def _suggest(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    if close:
        return f" (did you mean {', '.join(close)}?)"
    return f" (known: {', '.join(sorted(candidates))})" if candidates else ""


# ------------------------------------------------------------------------------------------- overrides

def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """Apply ``key=value`` overrides (see the module doc) and re-validate the whole recipe."""
    obj = recipe.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.lstrip("+"):
            raise ConfigError(f"expected key=value, got {item!r}", field="--set")
        _set_path(obj, key, raw)
    return Recipe.from_dict(obj)


def _set_path(obj: dict[str, Any], key: str, raw: str) -> None:
    add = key.startswith("+")
    parts = key.lstrip("+").split(".")
    full = ".".join(parts)
    node: Any = obj
    hint_cls: Any = Recipe  # the dataclass that declares the current node's keys, or None when free-form
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if not isinstance(node, dict):
            raise ConfigError(f"'{'.'.join(parts[:i])}' is a {_jtype(node)}, not an object", field=full)
        last = i == len(parts) - 1
        if part not in node:
            if not (add and last and hint_cls is None):
                how = " (prefix the key with + to add a new one)" if hint_cls is None and last else ""
                raise ConfigError(f"unknown key{_suggest(part, list(node))}{how}", field=where)
            node[part] = _parse_free(raw, None, full)
            return
        hint = typing.get_type_hints(hint_cls)[part] if hint_cls is not None else None
        if last:
            node[part] = _parse_typed(raw, hint, full) if hint is not None else _parse_free(raw, node[part], full)
            return
        node = node[part]
        hint_cls = hint if hint is not None and dataclasses.is_dataclass(hint) else None


def _json_or_str(raw: str) -> Any:
    text = raw.strip()
    if text.lower() in ("null", "none"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return raw


def _as_list(raw: str) -> Any:
    value = _json_or_str(raw)
    if isinstance(value, str):  # comma-separated convenience: a,b,c
        return [_json_or_str(v) for v in value.split(",") if v.strip()]
    return value


def _parse_typed(raw: str, hint: Any, path: str) -> Any:
    base = _base(hint)
    if base is str and raw.strip().lower() not in ("null", "none"):
        value: Any = raw
    elif base is list:
        value = _as_list(raw)
    else:
        value = _json_or_str(raw)
    if not _matches(value, hint):
        raise ConfigError(f"expected {_hint_name(hint)}, got {raw!r}", field=path)
    return float(value) if base is float and value is not None else value


def _parse_free(raw: str, existing: Any, path: str) -> Any:
    """Type-check against the existing value of a free-form section (None = anything goes)."""
    if existing is None:
        return _json_or_str(raw)
    hint: Any = type(existing)
    if isinstance(existing, float):
        hint = float
    elif isinstance(existing, list):
        hint = list
    elif isinstance(existing, dict):
        hint = dict
    return _parse_typed(raw, hint, path)
