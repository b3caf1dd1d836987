"""Architectures as a registry, like encoders and fusions. An arch is two entries under one name:

- its builder, ``@ARCHS.register("alignment")`` on ``cfg dict -> nn.Module``; `build_model(arch, cfg)` is the
  one way a recipe or a run becomes a model;
- its config, ``@register_model_config("alignment")`` on a frozen dataclass for the recipe's ``model``
  section, loaded with the generic `polymodal.config.from_dict` (every key and type checked, errors name the
  dotted key; what types cannot express is checked in ``__post_init__``). Encoder and fusion specs stay
  free-form ``{"name": ..., **kwargs}`` objects, checked by their registries when the parts are built.
  `model_config(arch, cfg)` checks a model section without building anything (the CLI, before a run).
- `check_spec` range-checks the sizes and counts of an encoder or fusion spec by key name (``layers >= 0``,
  ``width``/``heads``/``hidden``/... ``>= 1``, ``dropout`` in [0, 1), ...), so a negative layer count is a
  ConfigError naming the dotted key before anything is built, not a model that silently has no layers.

A new architecture is a module in this package that registers both and which `polymodal.models` imports (so
registration happens by a normal import, never by importlib). The registries live here, not in
`polymodal.config`, because config and recipes sit below the models: the models know their configs, the
recipes do not."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from ..config import from_dict
from ..errors import ConfigError, NotFound
from ..registry import Registry

Builder = Callable[[Mapping[str, Any]], nn.Module]
ARCHS: Registry[Builder] = Registry("arch")


def build_model(arch: str, model_cfg: Mapping[str, Any]) -> nn.Module:
    """Build a model from its arch and config (the ``model`` section of a recipe or a run config)."""
    try:
        builder = ARCHS.get(arch)
    except NotFound as err:
        raise ConfigError(err.message, field="arch") from None
    return builder({**model_cfg, "arch": arch})


MODEL_CONFIGS: Registry[type[Any]] = Registry("arch")
C = TypeVar("C")


def register_model_config(arch: str) -> Callable[[type[C]], type[C]]:
    """Class decorator: ``cls`` is the config dataclass of ``arch``'s ``model`` section."""
    return MODEL_CONFIGS.register(arch)


def load_config(cls: type[C], cfg: Any) -> C:
    """``cfg`` (a model section, JSON) as config dataclass ``cls``."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"expected a JSON object, got {type(cfg).__name__}", field="model")
    return from_dict(cls, dict(cfg))


def model_config(arch: str, cfg: Mapping[str, Any]) -> Any:
    """The typed config of ``arch``'s model section ``cfg`` (its ``"arch"`` key may be left out)."""
    try:
        cls = MODEL_CONFIGS.get(arch)
    except NotFound as err:
        raise ConfigError(err.message, field="arch") from None
    return load_config(cls, {**cfg, "arch": arch})


# ------------------------------------------------------------------------------------ spec ranges

def _show(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _int_at_least(low: int) -> Callable[[Any, str], None]:
    def check(value: Any, field: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"must be an integer >= {low}, got {_show(value)}", field=field)
    return check


def _number(low: float, high: float | None, text: str) -> Callable[[Any, str], None]:
    """A finite number in [low, high) (no upper bound when ``high`` is None)."""
    def check(value: Any, field: str) -> None:
        ok = (not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
              and value >= low and (high is None or value < high))
        if not ok:
            raise ConfigError(f"must be {text}, got {_show(value)}", field=field)
    return check


def _positive_number(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"must be a number > 0, got {_show(value)}", field=field)


def _channels(value: Any, field: str) -> None:
    if not (isinstance(value, list) and value and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise ConfigError(f"must be a non-empty list of integers >= 1, got {_show(value)}", field=field)


_SIZE = _int_at_least(1)
_COUNT = _int_at_least(0)
# Keys of encoder/fusion specs with a known range, wherever they appear in a spec (a nested spec such as a
# video encoder's "frame" included). null is always accepted: it means the component's default.
SPEC_RANGES: dict[str, Callable[[Any, str], None]] = {
    **{k: _SIZE for k in ("width", "heads", "dim", "hidden", "d_model", "out_dim", "output_dim", "proj_dim",
                          "rank", "max_len", "vocab_size", "n_mels", "max_frames", "patch", "patch_size",
                          "image_size", "groups", "ffn_mult", "num_classes")},
    **{k: _COUNT for k in ("layers", "cross_layers", "self_layers")},
    "dropout": _number(0.0, 1.0, "a number in [0, 1)"),
    "mlp_ratio": _positive_number,
    **{k: _number(0.0, None, "a number >= 0") for k in ("diff_weight", "sim_weight", "recon_weight")},
    "channels": _channels,
}


def check_spec(spec: Any, path: str) -> None:
    """Range-check the known size/count keys of an encoder or fusion spec (``{"name": ..., **kwargs}``);
    errors name the dotted key under ``path``. Other keys, and the spec's shape, are the registries' to check
    when the part is built."""
    if not isinstance(spec, Mapping):
        return
    for key, value in spec.items():
        field = f"{path}.{key}"
        if isinstance(value, Mapping):
            check_spec(value, field)
        elif value is not None and key in SPEC_RANGES:
            SPEC_RANGES[key](value, field)
