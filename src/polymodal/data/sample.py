"""The multimodal data model: `Sample` (one item, any modality missing) and `Batch` (collated tensors
with a presence mask per modality and padding masks for variable-length modalities)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInput
from .targets import EMPTY, Targets, targets_field

MODALITIES: tuple[str, ...] = ("audio", "image", "text", "video")  # sorted, the order every module uses
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000
_ID_RE = re.compile(r"^[^\s./\\]+$")  # ids become WebDataset keys: no dots, slashes or whitespace


@dataclass(frozen=True, eq=False)
class Sample:
    """One item. Every modality is optional, but a sample must carry at least one.

    - ``text``: non-empty ``str``
    - ``image``: ``uint8`` array ``H x W x 3``
    - ``audio``: ``float32`` mono waveform ``(N,)`` in [-1, 1] with ``sample_rate`` (Hz)
    - ``video``: ``uint8`` array ``T x H x W x 3``
    - ``metadata``: JSON-serialisable ``dict`` (labels, split, ...)
    - ``targets``: what a generator should produce (`polymodal.data.targets.Targets`: reference captions,
      question/answer pairs, transcript, dialog); a JSON dict is accepted and converted
    - ``source``: where the sample came from (file or shard), used in error messages only
    """

    id: str
    text: str | None = None
    image: np.ndarray | None = None
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    video: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    targets: Targets = EMPTY

    def __post_init__(self) -> None:
        src = self.source
        if not isinstance(self.id, str) or not _ID_RE.match(self.id):
            raise InvalidInput(
                f"id must be a non-empty string without dots, slashes or whitespace, got {self.id!r}",
                field="id", source=src)
        if self.text is not None:
            if not isinstance(self.text, str):
                raise InvalidInput(f"expected str, got {type(self.text).__name__}", field="text", source=src)
            if not self.text.strip():
                raise InvalidInput("text is empty", field="text", source=src)
        if self.image is not None:
            _check_pixels(self.image, 3, "image", src)
        if self.video is not None:
            _check_pixels(self.video, 4, "video", src)
        self._check_audio(src)
        if not isinstance(self.metadata, dict):
            raise InvalidInput(f"expected dict, got {type(self.metadata).__name__}", field="metadata", source=src)
        try:
            json.dumps(self.metadata, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"not JSON-serialisable ({exc})", field="metadata", source=src) from None
        object.__setattr__(self, "targets", targets_field(self.targets, src))
        if not self.modalities:
            raise InvalidInput("sample has no modality (text, image, audio or video)", field="id", source=src)

    def _check_audio(self, src: str | None) -> None:
        a = self.audio
        if a is None:
            if self.sample_rate is not None:
                raise InvalidInput("sample_rate given without audio", field="sample_rate", source=src)
            return
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise InvalidInput(f"expected a float32 numpy waveform, got {got}", field="audio", source=src)
        if a.ndim != 1 or a.shape[0] == 0:
            raise InvalidInput(f"expected a non-empty mono waveform (N,), got shape {a.shape}", field="audio", source=src)
        if not np.isfinite(a).all():
            raise InvalidInput("waveform contains NaN or inf", field="audio", source=src)
        sr = self.sample_rate
        if not isinstance(sr, int | np.integer) or not MIN_SAMPLE_RATE <= int(sr) <= MAX_SAMPLE_RATE:
            raise InvalidInput(
                f"expected an integer sample rate in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz, got {sr!r}",
                field="sample_rate", source=src)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)

    @property
    def duration(self) -> float | None:
        """Audio duration in seconds (None without audio)."""
        if self.audio is None or self.sample_rate is None:
            return None
        return int(self.audio.shape[0]) / float(self.sample_rate)

    def replace(self, **changes: Any) -> Sample:
        """A copy with some fields changed (validated again)."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        values.update(changes)
        return Sample(**values)


def _check_pixels(x: Any, ndim: int, name: str, src: str | None) -> None:
    shape_doc = "H x W x 3" if ndim == 3 else "T x H x W x 3"
    if not isinstance(x, np.ndarray):
        raise InvalidInput(f"expected a numpy array {shape_doc}, got {type(x).__name__}", field=name, source=src)
    if x.dtype != np.uint8:
        raise InvalidInput(f"expected dtype uint8, got {x.dtype}", field=name, source=src)
    if x.ndim != ndim or x.shape[-1] != 3 or min(x.shape) == 0:
        raise InvalidInput(f"expected shape {shape_doc} (RGB), got {x.shape}", field=name, source=src)


# --------------------------------------------------------------------------------------------------- Batch

# Axis (of the per-sample tensor) that may vary in length and is padded; None = must match exactly.
TIME_AXIS: dict[str, int | None] = {"text": 0, "audio": -1, "video": 0, "image": None}


@dataclass
class Batch:
    """Collated samples.

    ``data[m]`` is a tensor with one row per sample (zeros where the sample lacks ``m``);
    ``mask[m]`` (bool, B) says which rows have ``m``; ``pad_mask[m]`` (bool, B x L, True = real
    position) exists for variable-length modalities (text tokens, audio frames/samples, video frames).
    A modality that no sample has is absent from ``data``.
    """

    ids: list[str]
    data: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    pad_mask: dict[str, torch.Tensor]
    texts: list[str | None]
    metadata: list[dict[str, Any]]
    targets: list[Targets] = field(default_factory=list)  # per sample (empty Targets when it has none)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.data)

    def to(self, device: torch.device | str) -> Batch:
        mv = {k: v.to(device) for k, v in self.data.items()}
        return Batch(self.ids, mv, {k: v.to(device) for k, v in self.mask.items()},
                     {k: v.to(device) for k, v in self.pad_mask.items()}, self.texts, self.metadata,
                     self.targets)

    def part(self, modality: str) -> dict[str, torch.Tensor]:
        """What an encoder of ``modality`` receives: values, presence mask and (if any) padding mask."""
        out = {"values": self.data[modality], "mask": self.mask[modality]}
        if modality in self.pad_mask:
            out["pad_mask"] = self.pad_mask[modality]
        return out
