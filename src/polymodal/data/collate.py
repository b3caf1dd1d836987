"""`collate`: samples -> `Batch`, missing modalities masked (never zero-filled silently), variable lengths padded
with a padding mask. Without a transform, samples become raw tensors (`raw_tensors`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import InvalidInput
from .sample import MODALITIES, TIME_AXIS, Batch, Sample
from .transforms.text import ByteTokenizer

TransformFn = Callable[[Sample], Mapping[str, torch.Tensor]]  # a SampleTransform, or any such function


def raw_tensors(sample: Sample) -> dict[str, torch.Tensor]:
    """Default per-sample conversion: image -> float (3,H,W) in [0,1]; audio -> waveform (N,);
    video -> float (T,3,H,W) in [0,1]; text -> UTF-8 byte ids (L,) (see transforms.text)."""
    out: dict[str, torch.Tensor] = {}
    if sample.image is not None:
        out["image"] = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1).float() / 255.0
    if sample.audio is not None:
        out["audio"] = torch.from_numpy(sample.audio)
    if sample.video is not None:
        out["video"] = torch.from_numpy(np.ascontiguousarray(sample.video)).permute(0, 3, 1, 2).float() / 255.0
    if sample.text is not None:
        out["text"] = torch.tensor(ByteTokenizer().encode(sample.text), dtype=torch.long)
    return out


def collate(samples: Sequence[Sample], transform: TransformFn | None = None) -> Batch:
    """Collate samples into a `Batch`. Missing modalities are normal: their rows are zero and masked."""
    if not samples:
        raise InvalidInput("cannot collate an empty list of samples", field="samples")
    transform = transform or raw_tensors
    per_sample = [dict(transform(s)) for s in samples]
    data: dict[str, torch.Tensor] = {}
    mask: dict[str, torch.Tensor] = {}
    pad_mask: dict[str, torch.Tensor] = {}
    for m in MODALITIES:
        present = [i for i, d in enumerate(per_sample) if m in d]
        if not present:
            continue
        mask[m] = torch.tensor([m in d for d in per_sample], dtype=torch.bool)
        values, lengths = _stack_padded([per_sample[i][m] for i in present], m, [samples[i] for i in present])
        full = values.new_zeros((len(samples),) + tuple(values.shape[1:]))
        full[present] = values
        data[m] = full
        if lengths is not None:
            pm = torch.zeros(len(samples), max(lengths), dtype=torch.bool)
            for row, n in zip(present, lengths, strict=True):
                pm[row, :n] = True
            pad_mask[m] = pm
    return Batch(
        ids=[s.id for s in samples], data=data, mask=mask, pad_mask=pad_mask,
        texts=[s.text for s in samples], metadata=[s.metadata for s in samples],
        targets=[s.targets for s in samples],
    )


def _stack_padded(tensors: list[torch.Tensor], m: str, samples: list[Sample]) -> tuple[torch.Tensor, list[int] | None]:
    axis = TIME_AXIS.get(m)
    if axis is None:
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise InvalidInput(
                f"{m} tensors differ in shape {sorted(shapes)}; add a resize transform before collating",
                field=m, source=samples[0].source)
        return torch.stack(tensors), None
    ax = axis % tensors[0].dim()
    lengths = [int(t.shape[ax]) for t in tensors]
    other = {tuple(s for i, s in enumerate(t.shape) if i != ax) for t in tensors}
    if len(other) > 1:
        raise InvalidInput(f"{m} tensors differ in a non-time axis: {sorted(other)}", field=m, source=samples[0].source)
    L = max(lengths)
    out = []
    for t, n in zip(tensors, lengths, strict=True):
        if n < L:
            pad_shape = list(t.shape)
            pad_shape[ax] = L - n
            t = torch.cat([t, t.new_zeros(pad_shape)], dim=ax)
        out.append(t)
    return torch.stack(out), lengths

