"""onnxruntime sessions for exported towers and the runner that makes an `EmbeddingModel` use them.

Threads are explicit: ``intra_op_num_threads`` from the argument, else env ``POLYMODAL_ORT_THREADS``, else
``torch.get_num_threads()`` (so ORT and torch get the same CPU budget); ``inter_op_num_threads`` 1 and
sequential execution (a tower is one chain of ops). Idle worker threads sleep rather than spin unless
``OMP_WAIT_POLICY=ACTIVE`` (polymodal's process policy, see `polymodal._runtime`). Needs the ``[onnx]`` extra."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..data.sample import TIME_AXIS, Batch
from ..errors import InvalidInput, require
from .alignment import _select_rows

THREADS_ENV = "POLYMODAL_ORT_THREADS"


def ort_module() -> Any:
    """onnxruntime, or the one-line install hint (`MissingExtra`)."""
    require("onnx", "onnx")
    return require("onnxruntime", "onnx")


def resolve_threads(threads: int | None = None) -> int:
    """The intra-op thread count: ``threads``, else env POLYMODAL_ORT_THREADS, else torch's thread count."""
    if threads is None:
        env = os.environ.get(THREADS_ENV, "").strip()
        if env:
            try:
                threads = int(env)
            except ValueError:
                raise InvalidInput(f"{THREADS_ENV} must be a positive integer, got {env!r}",
                                   field=THREADS_ENV) from None
        else:
            threads = torch.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidInput(f"threads must be a positive integer, got {threads!r}", field="threads")
    return threads


def session_options(threads: int | None = None) -> Any:
    ort = ort_module()
    so = ort.SessionOptions()
    so.intra_op_num_threads = resolve_threads(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE" else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    return so


def new_session(graph: bytes | str | os.PathLike[str], threads: int | None = None,
                device: torch.device | None = None) -> Any:
    """An InferenceSession of a serialized graph or a .onnx file. CUDA when ``device`` is a CUDA device and
    the installed onnxruntime has it, else CPU."""
    ort = ort_module()
    providers = ["CPUExecutionProvider"]
    if device is not None and device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    source = graph if isinstance(graph, bytes) else os.fspath(graph)
    return ort.InferenceSession(source, session_options(threads), providers=providers)


def input_names(modality: str) -> list[str]:
    return ["values", "pad_mask"] if TIME_AXIS.get(modality) is not None else ["values"]


def feeds(batch: Batch, modality: str) -> dict[str, np.ndarray] | None:
    """The graph inputs for the rows of ``batch`` that have ``modality`` (padding trimmed to the longest
    selected row, exactly as `AlignmentModel.embed_batch` does), or None when no row has it."""
    if modality not in batch.data or not bool(batch.mask[modality].any()):
        return None
    rows = batch.mask[modality].nonzero().squeeze(1)
    part = _select_rows(batch.part(modality), rows, modality)
    values = part["values"]
    out = {"values": values.detach().cpu().numpy()}
    if "pad_mask" in input_names(modality):
        pm = part.get("pad_mask")
        if pm is None:  # a fixed-length part of a time modality: every step is real
            axis = TIME_AXIS[modality]
            assert axis is not None
            pm = torch.ones(values.shape[0], values.shape[axis + 1 if axis >= 0 else axis], dtype=torch.bool)
        out["pad_mask"] = pm.detach().cpu().numpy().astype(bool)
    return out


class OrtTowers:
    """A `polymodal.models.embedding.TowerRunner` over one onnxruntime session per modality."""

    runtime = "onnx"

    def __init__(self, sessions: Mapping[str, Any], dim: int, fingerprint: str | None = None,
                 precision: Mapping[str, str] | None = None, threads: int | None = None):
        self.sessions = dict(sessions)
        self.modalities: tuple[str, ...] = tuple(sorted(self.sessions))
        self.dim = int(dim)
        self.fingerprint = fingerprint
        self.precision = {m: (precision or {}).get(m, "fp32") for m in self.modalities}
        self.threads = threads
        self._inputs = {m: [i.name for i in s.get_inputs()] for m, s in self.sessions.items()}

    def embed_batch(self, batch: Batch, modality: str) -> torch.Tensor:
        if modality not in self.sessions:
            raise InvalidInput(f"this model has no {modality!r} encoder (has {self.modalities})", field="modality")
        feed = feeds(batch, modality)
        if feed is None:
            return torch.zeros(0, self.dim)
        out = self.sessions[modality].run(None, {name: feed[name] for name in self._inputs[modality]})[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def __repr__(self) -> str:
        return f"OrtTowers({self.precision})"


__all__ = ["THREADS_ENV", "OrtTowers", "feeds", "input_names", "new_session", "ort_module", "resolve_threads",
           "session_options"]
