"""Architectures as a registry, like encoders and fusions. An arch is two entries under one name:

- its builder, ``@ARCHS.register("alignment")`` on ``cfg dict -> nn.Module``; `build_model(arch, cfg)` is the
  one way a recipe or a run becomes a model;
- its config, ``@register_model_config("alignment")`` on a frozen dataclass for the recipe's ``model``
  section, loaded with the generic `polymodal.config.from_dict` (every key and type checked, errors name the
  dotted key; what types cannot express is checked in ``__post_init__``). Encoder and fusion specs stay
  free-form ``{"name": ..., **kwargs}`` objects, checked by their registries when the parts are built.
  `model_config(arch, cfg)` checks a model section without building anything (the CLI, before a run).

A new architecture is a module in this package that registers both and which `polymodal.models` imports (so
registration happens by a normal import, never by importlib). The registries live here, not in
`polymodal.config`, because config and recipes sit below the models: the models know their configs, the
recipes do not."""

from __future__ import annotations

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
