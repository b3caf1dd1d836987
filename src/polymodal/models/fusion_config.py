"""`FusionModelConfig`: the ``model`` section of an ``arch: "fusion"`` recipe (built by
`polymodal.models.classifier.build_fusion_model`; docs/fusion.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .registry import check_spec, register_model_config


@dataclass(frozen=True)
class InitFrom:
    """Start encoders from an alignment run's (architecture and weights)."""

    run: str  # the alignment run dir
    freeze: bool = False  # keep those encoders fixed (no gradient, eval mode)
    modalities: list[str] | None = None  # None: every modality the run has
    weights_in_checkpoint: bool = False  # a resolved config: the weights are in this model's own checkpoint


@register_model_config("fusion")
@dataclass(frozen=True)
class FusionModelConfig:
    arch: str = "fusion"
    num_classes: int | None = None  # None: len(classes)
    label_field: str = "label"  # dotted key into Sample.metadata, e.g. "labels.color"
    classes: list[str] | None = None  # class names: string labels map to their index
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)  # {modality: {"name": ..., **kwargs}}
    fusion: dict[str, Any] = field(default_factory=dict)  # {"name": <registered fusion>, **kwargs}
    modality_dropout: float = 0.0  # training: each present modality of a sample dropped with this probability
    init_from: InitFrom | None = None

    def __post_init__(self) -> None:
        if self.arch != "fusion":
            raise ConfigError(f"arch must be 'fusion', got {self.arch!r}", field="arch")
        if self.classes is not None and (not self.classes or len(set(self.classes)) < len(self.classes)):
            raise ConfigError("must be a non-empty list of distinct class names", field="classes")
        n = self.n_classes
        if n is None or n < 2:
            raise ConfigError(f"must be an int >= 2 (or give classes), got {n!r}", field="num_classes")
        if self.classes is not None and len(self.classes) != n:
            raise ConfigError(f"{len(self.classes)} classes listed but num_classes is {n}", field="num_classes")
        if not self.label_field:
            raise ConfigError("must be a dotted metadata key, got ''", field="label_field")
        if not isinstance(self.fusion.get("name"), str):
            raise ConfigError('expected {"name": <fusion>, ...kwargs}', field="fusion")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.modality_dropout}", field="modality_dropout")
        for m, spec in self.encoders.items():
            check_spec(spec, f"encoders.{m}")
        check_spec(self.fusion, "fusion")
        init = self.init_from
        if init is None and not self.encoders:
            raise ConfigError("a fusion model needs at least one encoder", field="encoders")
        if init is not None and init.weights_in_checkpoint:
            missing = [m for m in init.modalities or [] if m not in self.encoders]
            if missing:
                raise ConfigError(f"no encoder spec for {missing} in a resolved config", field="init_from")

    @property
    def n_classes(self) -> int | None:
        """``num_classes``, or the number of ``classes`` when it is not given."""
        if self.num_classes is None and self.classes is not None:
            return len(self.classes)
        return self.num_classes
