"""Multi-stream classifier: per-modality encoders -> fusion -> head, composed by injection.

``FusionClassifier(encoders, fusion, head, num_classes, modality_dropout)``:

- ``encoders``: ``{modality: Encoder}`` (``forward(Batch.part(m)) -> (B, D)``); may be empty, then the
  model takes precomputed features ``{modality: (B, D)}``. A modality with an input but no encoder is
  used as a precomputed feature too.
- ``fusion``: a :class:`polymodal.fusion.Fusion`; it decides which modalities are used.
- ``head``: maps the fused vector to logits; ``None`` builds ``Linear(fusion.out_dim, num_classes)``, or
  nothing when the fusion already produces logits (late fusion).
- ``modality_dropout``: in training, each present modality of each sample is dropped (masked) with this
  probability, but a sample never loses all of its modalities (one of them, chosen at random, is kept).

Missing modalities travel as masks; an encoder runs on the whole batch (missing rows are zeros in a
``Batch``) and the fusion ignores the rows the mask marks missing.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sample import Batch
from ..errors import ConfigError, InvalidInput
from ..fusion.base import Fusion

Inputs = Batch | Mapping[str, torch.Tensor]


class FusionClassifier(nn.Module):
    def __init__(self, encoders: Mapping[str, nn.Module], fusion: Fusion, head: nn.Module | None = None,
                 num_classes: int | None = None, modality_dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= modality_dropout < 1.0:
            raise ConfigError(f"modality_dropout must be in [0, 1), got {modality_dropout}", field="modality_dropout")
        unknown = sorted(set(encoders) - set(fusion.modalities))
        if unknown:
            raise ConfigError(f"encoder for {unknown[0]!r}, which the fusion does not take "
                              f"({list(fusion.modalities)})", field="encoders")
        for m, enc in encoders.items():
            out = getattr(enc, "output_dim", None)
            if out is not None and out != fusion.dims[m]:
                raise ConfigError(f"encoder '{m}' outputs {out} dims but the fusion expects {fusion.dims[m]}",
                                  field="encoders")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.fusion = fusion
        self.head = _make_head(fusion, head, num_classes)
        self.num_classes = num_classes if num_classes is not None else fusion.out_dim
        self.modality_dropout = float(modality_dropout)

    def forward(self, inputs: Inputs, mask: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (B, num_classes). ``inputs``: a ``Batch`` (its masks are used unless ``mask`` is given) or
        ``{modality: tensor}`` (features, or encoder inputs for modalities that have an encoder)."""
        features, masks, pad = self.encode(inputs, mask)
        if self.training and self.modality_dropout > 0:
            masks = drop_modalities(masks, self.fusion.modalities, self.modality_dropout, _batch_size(features, masks))
        kwargs = {"pad_mask": pad} if pad and self.fusion.accepts_sequences else {}
        return self.head(self.fusion(features, masks, **kwargs))

    def encode(self, inputs: Inputs, mask: Mapping[str, torch.Tensor] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run the encoders: (features, presence masks, sequence padding masks) for the fusion's modalities."""
        if isinstance(inputs, Batch):
            parts = {m: inputs.part(m) for m in self.fusion.modalities if m in inputs.data}
            masks = dict(inputs.mask if mask is None else mask)
        else:
            unknown = sorted(set(inputs) - set(self.fusion.modalities))
            if unknown:
                raise InvalidInput(f"unknown modality {unknown[0]!r} (model takes {list(self.fusion.modalities)})",
                                   field="inputs")
            masks = dict(mask or {})
            parts = {m: {"values": x, **({"mask": masks[m]} if m in masks else {})} for m, x in inputs.items()}
        features: dict[str, torch.Tensor] = {}
        pad: dict[str, torch.Tensor] = {}
        for m, part in parts.items():
            if m not in self.encoders:
                features[m] = part["values"]
                continue
            enc = self.encoders[m]
            if "mask" not in part:
                part = {**part, "mask": torch.ones(part["values"].shape[0], dtype=torch.bool,
                                                   device=part["values"].device)}
            seq_fn = getattr(enc, "forward_sequence", None)
            if self.fusion.accepts_sequences and callable(seq_fn):
                # optional encoder hook: (B, L, D) states + (B, L) padding mask, for mid-level fusion
                features[m], pad[m] = seq_fn(part)
            else:
                features[m] = enc(part)
        masks = {m: v for m, v in masks.items() if m in self.fusion.dims}
        for m, x in features.items():  # a feature without a mask is present in every row
            masks.setdefault(m, torch.ones(x.shape[0], dtype=torch.bool, device=x.device))
        return features, masks, pad

    def loss_terms(self, inputs: Inputs, labels: torch.Tensor,
                   mask: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``{"loss": total, "task": cross-entropy, **raw fusion aux terms}``."""
        logits = self(inputs, mask)
        task = F.cross_entropy(logits, labels)
        terms = {"task": task, **self.fusion.aux_losses()}
        aux = self.fusion.aux_loss()
        terms["loss"] = task if aux is None else task + aux
        return terms

    def loss(self, inputs: Inputs, labels: torch.Tensor, mask: Mapping[str, torch.Tensor] | None = None
             ) -> torch.Tensor:
        """Cross-entropy plus the fusion's weighted auxiliary losses (MISA)."""
        return self.loss_terms(inputs, labels, mask)["loss"]


def drop_modalities(mask: Mapping[str, torch.Tensor], modalities: tuple[str, ...], p: float, batch: int,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Mask each present (sample, modality) with probability ``p``, never all of a sample's modalities."""
    device = next(iter(mask.values())).device if mask else torch.device("cpu")
    has = torch.stack([mask[m].to(torch.bool) if m in mask else torch.zeros(batch, dtype=torch.bool, device=device)
                       for m in modalities], dim=1)  # (B, M)
    drop = (torch.rand(has.shape, generator=generator).to(device) < p) & has
    kept = has & ~drop
    lost_all = has.any(dim=1) & ~kept.any(dim=1)
    # for those rows keep one present modality, uniformly at random
    scores = torch.rand(has.shape, generator=generator).to(device).masked_fill(~has, -1.0)
    rescue = F.one_hot(scores.argmax(dim=1), len(modalities)).to(torch.bool) & lost_all.unsqueeze(1)
    kept = kept | rescue
    out = dict(mask)
    for i, m in enumerate(modalities):
        if m in mask:
            out[m] = kept[:, i]
    return out


def _batch_size(features: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> int:
    for t in list(features.values()) + list(masks.values()):
        return int(t.shape[0])
    raise InvalidInput("no features and no masks: cannot tell the batch size", field="inputs")


def _make_head(fusion: Fusion, head: nn.Module | None, num_classes: int | None) -> nn.Module:
    if fusion.produces_logits:
        if head is not None:
            raise ConfigError("this fusion already produces logits; pass head=None", field="head")
        if num_classes is not None and num_classes != fusion.out_dim:
            raise ConfigError(f"fusion produces {fusion.out_dim} logits but num_classes={num_classes}",
                              field="num_classes")
        return nn.Identity()
    if head is not None:
        return head
    if not num_classes:
        raise ConfigError("num_classes is required when no head is given", field="num_classes")
    return nn.Linear(fusion.out_dim, num_classes)
