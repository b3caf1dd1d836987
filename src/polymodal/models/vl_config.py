"""The ``model`` section of an ``arch: "vl_encoder"`` recipe (`polymodal.models.vl_encoder`, docs/architectures.md):
the family, the visual tokens, sizes, objective and task weights, and ALBEF's momentum/queue settings, checked
on load so a bad value is a ConfigError naming its dotted key before anything is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..registry import require_ints
from .lm import check_langs
from .registry import MODEL_CONFIGS
from .vl_backbones import FAMILIES

OBJECTIVES: tuple[str, ...] = ("itm", "mlm", "mrm", "itc")
TASKS: tuple[str, ...] = ("pretrain", "vqa")


@dataclass(frozen=True)
class VLSizes:
    hidden: int = 128
    layers: int = 2  # text layers (visualbert: all layers; blip: text/fusion encoder)
    cross_layers: int = 2  # lxmert: cross-modality layers; vilbert: co-attention blocks
    visual_layers: int = 1  # lxmert: object-relationship layers; blip: ViT layers (0 -> layers)
    heads: int = 4
    dropout: float = 0.0
    max_text: int = 40

    def __post_init__(self) -> None:
        require_ints(self, ("hidden", "layers", "heads", "max_text"), "model.sizes")
        require_ints(self, ("cross_layers", "visual_layers"), "model.sizes", low=0)
        if self.hidden % self.heads:
            raise ConfigError(f"hidden {self.hidden} does not split into {self.heads} heads", field="model.sizes.heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.dropout}", field="model.sizes.dropout")


@dataclass(frozen=True)
class VLEncoderConfig:
    arch: str = "vl_encoder"
    family: str = "visualbert"
    visual: str = "regions"  # "regions" | "patches" (blip reads patches)
    image_size: int = 64
    patch: int = 8  # patch side (patches) / crop side (regions: crops are resized to 2 * patch)
    max_regions: int = 3  # regions: the global one + objects
    langs: list[str] = field(default_factory=lambda: ["en"])
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"vocab_size": 1024})
    sizes: VLSizes = field(default_factory=VLSizes)
    objectives: dict[str, float] = field(default_factory=lambda: {"itm": 1.0, "mlm": 1.0, "mrm": 1.0})
    tasks: dict[str, float] = field(default_factory=lambda: {"pretrain": 1.0})
    task_mode: str = "sum"
    mask_prob: float = 0.15
    embed_dim: int = 64  # blip: contrastive embedding size
    momentum: float = 0.995  # blip: EMA of the teacher (0 = no teacher, no distillation)
    alpha: float = 0.4  # blip: the teacher's share of the contrastive targets
    alpha_warmup: int = 500  # blip: steps over which alpha ramps up from 0 (ALBEF: the first epoch), the teacher
    # tracking the student meanwhile (momentum 0)
    queue: int = 256  # blip: queued features per modality (0 = in-batch negatives only)
    max_classes: int = 64  # region label classes (head size)
    max_answers: int = 64  # VQA answers (head size)
    classes: list[str] = field(default_factory=list)  # filled by fit_data
    answers: list[str] = field(default_factory=list)  # filled by fit_data

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"must be one of {list(FAMILIES)}, got {self.family!r}", field="model.family")
        if self.visual not in ("regions", "patches"):
            raise ConfigError(f"must be 'regions' or 'patches', got {self.visual!r}", field="model.visual")
        if self.family == "blip" and self.visual != "patches":
            raise ConfigError("blip reads patches (its ViT embeds the picture)", field="model.visual")
        if self.image_size % self.patch:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch {self.patch}",
                              field="model.patch")
        check_langs(self.langs, allow_none=False)
        for section, known in (("objectives", OBJECTIVES), ("tasks", TASKS)):
            weights = getattr(self, section)
            for k, w in weights.items():
                if k not in known:
                    raise ConfigError(f"unknown {section[:-1]} {k!r} (known: {list(known)})", field=f"model.{section}")
                if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
                    raise ConfigError(f"must be a number >= 0, got {w!r}", field=f"model.{section}.{k}")
            if not any(w > 0 for w in weights.values()) and (section == "tasks" or self.tasks.get("pretrain", 0)):
                raise ConfigError("give at least one a weight > 0", field=f"model.{section}")
        if self.objectives.get("itc", 0) and self.family != "blip":
            raise ConfigError("itc needs unimodal encoders: only the blip family has them", field="model.objectives.itc")
        if self.objectives.get("mrm", 0) and self.family == "blip":
            raise ConfigError("mrm needs visual tokens the fusion encoder outputs: not blip", field="model.objectives.mrm")
        if self.task_mode not in ("sum", "sample"):
            raise ConfigError(f"must be 'sum' or 'sample', got {self.task_mode!r}", field="model.task_mode")
        if not 0.0 < self.mask_prob < 1.0 or not 0.0 <= self.momentum < 1.0 or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError("mask_prob in (0, 1), momentum in [0, 1), alpha in [0, 1]", field="model")
        if self.max_regions < 1 or self.queue < 0 or self.max_classes < 1 or self.max_answers < 1 \
                or self.alpha_warmup < 0:
            raise ConfigError("max_regions, max_classes, max_answers >= 1; queue >= 0", field="model")


MODEL_CONFIGS.register("vl_encoder")(VLEncoderConfig)


__all__ = ["OBJECTIVES", "TASKS", "VLEncoderConfig", "VLSizes"]
