"""Architectures as a registry, like encoders and fusions: ``@ARCHS.register("alignment")`` on a builder
``cfg dict -> nn.Module``; `build_model(arch, cfg)` is the one way a recipe or a run becomes a model.

A new architecture is a module in this package whose builder is registered here and which
`polymodal.models` imports (so registration happens by a normal import, never by importlib)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

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
