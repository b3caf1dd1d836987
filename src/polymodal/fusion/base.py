"""The fusion contract, shared by every fusion module.

``forward(features, mask) -> (B, out_dim)``:

- ``features``: ``dict[str, Tensor]``, one ``(B, D_m)`` tensor per modality (``crossmodal`` also takes
  ``(B, L_m, D_m)`` sequences). Keys are processed in sorted order, whatever order the dict has.
- ``mask``: ``dict[str, BoolTensor(B)]``, True where the row has that modality. A modality whose key is
  absent from ``features`` is missing for every row; a feature without a mask entry is present for every
  row (``mask`` may be ``None`` when every given feature is complete).

A missing modality is *masked*: its values never reach the output (it is replaced with ``torch.where``,
so even NaN in a missing row cannot leak), and it is never silently zero-filled — each fusion documents
what stands in for it (a learned placeholder, a renormalised weight, the appended 1 of tensor fusion).
A row with no modality at all still gets a finite, learned output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InvalidInput
from ..registry import Registry

Features = Mapping[str, torch.Tensor]
Masks = Mapping[str, torch.Tensor] | None


class Fusion(nn.Module):
    """Base class: holds the sorted modality names and their input dims, and resolves masks."""

    #: True when the output is already class logits (late fusion); a classifier then adds no head.
    produces_logits: bool = False
    #: True when ``forward`` accepts (B, L, D) sequences and a ``pad_mask`` keyword.
    accepts_sequences: bool = False

    def __init__(self, dims: Mapping[str, int]):
        super().__init__()
        if not dims:
            raise ConfigError("a fusion needs at least one modality", field="dims")
        for m, d in dims.items():
            if not isinstance(d, int) or d <= 0:
                raise ConfigError(f"input dim of '{m}' must be a positive int, got {d!r}", field="dims")
        self.modalities: tuple[str, ...] = tuple(sorted(dims))
        self.dims: dict[str, int] = {m: int(dims[m]) for m in self.modalities}
        self.out_dim: int = 0

    # -- helpers every fusion uses -------------------------------------------------------------------

    def resolve(self, features: Features, mask: Masks) -> tuple[int, dict[str, torch.Tensor]]:
        """Check inputs and return (batch size, presence mask (B,) for every modality in sorted order)."""
        unknown = sorted(set(features) - set(self.dims))
        if unknown:
            raise InvalidInput(f"unknown modality {unknown[0]!r} (fusion expects {list(self.modalities)})",
                               field="features")
        mask = mask or {}
        sizes = {int(t.shape[0]) for t in features.values()}
        sizes |= {int(mask[m].shape[0]) for m in self.modalities if m in mask}
        if not sizes:
            raise InvalidInput("no features and no masks: cannot tell the batch size", field="features")
        if len(sizes) != 1:
            raise InvalidInput(f"features and masks disagree on the batch size: {sorted(sizes)}", field="features")
        batch = sizes.pop()
        device = self._device()
        present: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            if m not in features:
                present[m] = torch.zeros(batch, dtype=torch.bool, device=device)
                continue
            self._check_feature(m, features[m])
            mm = mask.get(m)
            present[m] = (torch.ones(batch, dtype=torch.bool, device=device) if mm is None
                          else mm.to(device=device, dtype=torch.bool))
        return batch, present

    def _check_feature(self, m: str, x: torch.Tensor) -> None:
        ok_rank = x.dim() in ((2, 3) if self.accepts_sequences else (2,))
        if not ok_rank or x.shape[-1] != self.dims[m]:
            want = f"(B, {self.dims[m]})" + (f" or (B, L, {self.dims[m]})" if self.accepts_sequences else "")
            raise InvalidInput(f"expected {want}, got {tuple(x.shape)}", field=m)

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def gather(self, features: Features, present: Mapping[str, torch.Tensor], m: str,
               fill: torch.Tensor, batch: int) -> torch.Tensor:
        """(B, D) tensor: ``features[m]`` where present, ``fill`` (D,) or (B, D) elsewhere — never the raw values."""
        if m not in features:
            return fill.expand(batch, fill.shape[-1])
        x = features[m]
        return torch.where(present[m].unsqueeze(-1), x, fill.to(x.dtype))

    # -- auxiliary losses (MISA); empty by default -----------------------------------------------------

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Raw auxiliary loss terms of the last forward (unweighted); {} for most fusions."""
        return {}

    def aux_loss(self) -> torch.Tensor | None:
        """The weighted sum of :meth:`aux_losses` of the last forward, or None."""
        return None

    def missing_only_parameters(self) -> set[str]:
        """Names of parameters used only when some modality is missing (placeholders); they get no
        gradient from a batch where every modality is present."""
        return set()


FUSIONS: Registry[Callable[..., Fusion]] = Registry("fusion")


def register_fusion(name: str) -> Callable[[Callable[..., Fusion]], Callable[..., Fusion]]:
    """Register a fusion factory ``f(dims: dict[str, int], **cfg) -> Fusion`` under ``name``."""
    return FUSIONS.register(name)


def create_fusion(name: str, dims: Mapping[str, int], **cfg: Any) -> Fusion:
    """The one front door: build a registered fusion by name for modalities with input dims ``dims``."""
    return FUSIONS.get(name)(dict(dims), **cfg)
