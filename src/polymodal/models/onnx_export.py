"""Towers of an `EmbeddingModel` as ONNX graphs: one graph per modality computing exactly what
`AlignmentModel.encode(modality, part)` does (encoder, projection, L2 normalisation) from the collated part
``{"values", "pad_mask"?}``, with dynamic batch and time axes. Every graph is checked against torch right after
export (on the traced shapes and on a second batch of other sizes), so a tower that does not trace faithfully
fails here, not in a collection. Needs the ``[onnx]`` extra."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.collate import collate
from ..data.sample import TIME_AXIS, Sample
from ..data.transforms.compose import SampleTransform
from ..errors import InvalidInput, require
from .alignment import AlignmentModel
from .onnx_session import feeds, input_names, new_session

DEFAULT_OPSET = 17
MIN_OPSET = 14             # scaled_dot_product_attention exports from opset 14 on
EXPORT_ATOL = 1e-4         # the parity every fp32 graph must reach against torch at export


class Tower(nn.Module):
    """One modality of an alignment model as a module of plain tensors (what torch.onnx traces)."""

    def __init__(self, model: AlignmentModel, modality: str):
        super().__init__()
        self.model, self.modality = model, modality

    def forward(self, values: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        part = {"values": values}
        if pad_mask is not None:
            part["pad_mask"] = pad_mask
        return self.model.encode(self.modality, part)


def example_samples(modality: str, transform: SampleTransform, varied: bool, seed: int = 0) -> list[Sample]:
    """Samples to trace (``varied=False``: two rows at the longest length the transform produces -- a length
    a trace bakes in as a slice bound is then never shorter than a real input) or to check the graph with
    (``varied=True``: three rows of different lengths)."""
    rng = np.random.default_rng(seed)
    n = 3 if varied else 2
    out = []
    for i in range(n):
        if modality == "text":
            words = "a red circle left of a blue square moves up " * (1 + (i * 3 if varied else 200))
            out.append(Sample(id=f"x{i}", text=words[: 7 + 11 * i] if varied else words))
        elif modality == "image":
            out.append(Sample(id=f"x{i}", image=rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)))
        elif modality == "audio":
            audio = transform.audio
            rate = audio.sample_rate if audio is not None else 16000
            seconds = (0.3 + 0.4 * i) if varied else (audio.max_seconds if audio and audio.max_seconds else 2.0)
            wave = (0.3 * rng.standard_normal(int(rate * seconds))).astype(np.float32)
            out.append(Sample(id=f"x{i}", audio=wave, sample_rate=rate))
        elif modality == "video":
            video = transform.video
            frames = video.frames if video is not None else 8
            t = max(1, frames - 2 * i) if varied else frames
            out.append(Sample(id=f"x{i}", video=rng.integers(0, 256, (t, 36, 40, 3), dtype=np.uint8)))
        else:  # pragma: no cover - MODALITIES are the four above
            raise InvalidInput(f"unknown modality {modality!r}", field="modality")
    return out


def export_tower(model: AlignmentModel, transform: SampleTransform, modality: str, opset: int = DEFAULT_OPSET
                 ) -> bytes:
    """The fp32 ONNX graph (serialized) of one tower, checked against torch (`check_tower`)."""
    require("onnx", "onnx")
    if opset < MIN_OPSET:
        raise InvalidInput(f"opset must be >= {MIN_OPSET}, got {opset}", field="opset")
    names = input_names(modality)
    batch = collate(example_samples(modality, transform, varied=False), transform)
    feed = feeds(batch, modality)
    assert feed is not None
    device = model.logit_scale.device
    args = tuple(torch.from_numpy(feed[n]).to(device) for n in names)
    axes: dict[str, dict[int, str]] = {"values": {0: "batch"}, "embedding": {0: "batch"}}
    axis = TIME_AXIS.get(modality)
    if axis is not None:
        axes["values"][axis + 1 if axis >= 0 else args[0].dim() + axis] = "time"
        axes["pad_mask"] = {0: "batch", 1: "time"}
    buf = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # tracer warnings (python values of tensors) are what check_tower verifies after the export
            warnings.simplefilter("ignore")
            torch.onnx.export(Tower(model, modality), args, buf,  # type: ignore[arg-type]  # a file object works
                              input_names=names, output_names=["embedding"], dynamic_axes=axes,
                              opset_version=opset, dynamo=False, do_constant_folding=True)
    finally:
        model.train(was_training)
    data = buf.getvalue()
    check_tower(model, transform, modality, data)
    return data


def torch_embed(model: AlignmentModel, feed: dict[str, np.ndarray], modality: str) -> np.ndarray:
    device = model.logit_scale.device
    part = {k: torch.from_numpy(v).to(device) for k, v in feed.items()}
    with torch.no_grad():
        return model.encode(modality, part).float().cpu().numpy()


def check_tower(model: AlignmentModel, transform: SampleTransform, modality: str, graph: bytes | str,
                atol: float = EXPORT_ATOL) -> None:
    """The graph must embed the traced batch and a batch of other sizes like torch (max abs diff <= atol)."""
    session = new_session(graph, threads=1)
    for varied in (False, True):
        batch = collate(example_samples(modality, transform, varied=varied, seed=1), transform)
        feed = feeds(batch, modality)
        assert feed is not None
        want = torch_embed(model, feed, modality)
        got = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})[0]
        err = float(np.abs(got - want).max()) if want.size else 0.0
        if got.shape != want.shape or not err <= atol:
            raise InvalidInput(f"the exported {modality} tower does not match torch (shape {got.shape} vs "
                               f"{want.shape}, max abs diff {err:.2e} > {atol:g}); this tower cannot be exported "
                               "faithfully with torch.onnx", field=modality)


# ---------------------------------------------------------------------------------------------- INT8

INT8_MODES = ("dynamic", "static")


def conv_dominated(graph: bytes) -> bool:
    """Whether most weights of a graph feed convolutions (a CNN tower: static INT8) rather than matrix
    products (a transformer tower: dynamic INT8)."""
    onnx = require("onnx", "onnx")
    model = onnx.load_from_string(graph)
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    conv = mat = 0
    for node in model.graph.node:
        weight = sum(sizes.get(name, 0) for name in node.input[1:2])
        if node.op_type == "Conv":
            conv += weight
        elif node.op_type in ("MatMul", "Gemm"):
            mat += weight
    return conv > mat


def quantize(graph: bytes, mode: str, calibration: Callable[[], Sequence[dict[str, np.ndarray]]] | None,
             workdir: Any) -> bytes:
    """An INT8 version of ``graph``. ``dynamic``: weights of MatMul/Gemm int8, activations quantized on the fly
    (transformers). ``static``: weights and activations int8 (QDQ), activation ranges calibrated (min/max) on
    ``calibration()`` inputs (CNNs). Weights per channel, in 7 bits (``reduce_range``): x86 CPUs without VNNI
    multiply u8 x s8 pairs into saturating int16 sums, which cost a text tower 0.02 of cosine at 8 bits."""
    from pathlib import Path

    q = require("onnxruntime.quantization", "onnx")
    work = Path(workdir)
    src, pre, dst = work / "fp32.onnx", work / "pre.onnx", work / "int8.onnx"
    src.write_bytes(graph)
    try:
        q.quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception:  # pre-processing only helps: quantize the plain graph without it
        pre.write_bytes(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "dynamic":
            q.quantize_dynamic(str(pre), str(dst), weight_type=q.QuantType.QInt8, per_channel=True,
                               reduce_range=True, op_types_to_quantize=["MatMul", "Gemm"])
        elif mode == "static":
            if calibration is None:
                raise InvalidInput("static INT8 needs calibration data (--calib DATA)", field="int8")
            inputs = list(calibration())
            if not inputs:
                raise InvalidInput("the calibration data has no sample of this modality", field="calib")
            q.quantize_static(str(pre), str(dst), _Reader(inputs), quant_format=q.QuantFormat.QDQ,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              per_channel=True, reduce_range=True, calibrate_method=q.CalibrationMethod.MinMax,
                              extra_options={"CalibMovingAverage": False})
        else:
            raise InvalidInput(f"INT8 mode must be one of {INT8_MODES}, got {mode!r}", field="int8")
    return dst.read_bytes()


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, inputs: Sequence[dict[str, np.ndarray]]):
        self._it = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def calibration_feeds(samples: Sequence[Sample], transform: SampleTransform, modality: str,
                      batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    """The graph inputs of ``samples`` (those with ``modality``), collated in batches as at inference."""
    having = [s for s in samples if getattr(s, modality) is not None]
    out = []
    for start in range(0, len(having), batch_size):
        feed = feeds(collate(having[start:start + batch_size], transform), modality)
        if feed is not None:
            out.append(feed)
    return out


__all__ = ["DEFAULT_OPSET", "EXPORT_ATOL", "INT8_MODES", "MIN_OPSET", "Tower", "calibration_feeds", "check_tower",
           "conv_dominated", "example_samples", "export_tower", "quantize"]
