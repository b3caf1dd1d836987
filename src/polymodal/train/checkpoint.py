"""Checkpoints: safetensors for tensors, JSON for everything else. Nothing is ever pickled.

A run directory::

    RUN/config.json               what rebuilds the model: arch, model cfg, transform (incl. tokenizer), recipe
    RUN/model.safetensors         the latest weights (a copy of the newest checkpoint's file)
    RUN/metrics.jsonl             one JSON line per logged step
    RUN/checkpoints/latest        name of the newest complete checkpoint, e.g. "step_00000300"
    RUN/checkpoints/step_00000300/
        config.json  model.safetensors
        train_state.safetensors   optimizer tensors, RNG states (per rank)
        train_state.json          step, samples seen, elapsed time, optimizer groups, non-tensor RNG state

A checkpoint is written into a temporary folder and renamed into place, then ``latest`` is replaced
atomically: a crash mid-write leaves the previous checkpoint intact and ``latest`` pointing at it. Each
``config.json`` records the sha256 of the files beside it (`polymodal.rundir.CHECKSUMS`). The top-level files
are independent copies written atomically (never hard links: damage to one must leave the other intact), the
weights before the config that records their checksum. Two files cannot be replaced as one: a crash between
the two writes, or a reader between them, sees new weights under the old config; loading the run then reads
again and falls back to the checkpoint (`polymodal.rundir.read_run_weights`), which is complete before either
write. `read_checkpoint` reads a checkpoint back and checks every file, so a resume can skip a damaged
checkpoint for an older one that verifies; an OS error that is not damage (permission, EIO) propagates instead,
so a checkpoint that could not be read is never skipped, and then pruned as abandoned.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_bytes, json_bytes
from ..errors import ConfigError, InvalidInput
from ..rundir import (
    CHECKSUMS,
    CONFIG,
    MODEL,
    STATE_J,
    STATE_T,
    checkpoint_name,
    checkpoint_step,
    read_run_config,
    read_tensors,
    read_verified,
    sha256_hex,
    tensors_to_bytes,
)

# --------------------------------------------------------------------------------- optimizer state

def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as (tensors, JSON): tensors keyed ``optim.{param index}.{name}``."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: dict[str, Any],
                      source: str) -> None:
    groups = meta["param_groups"]
    own = opt.state_dict()["param_groups"]
    if [g.get("names") for g in groups] != [g.get("names") for g in own]:
        raise ConfigError("optimizer parameters differ from the checkpoint's (different model or locked "
                          "towers)", source=source)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    fixed = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in groups]
    opt.load_state_dict({"state": state, "param_groups": fixed})


# ---------------------------------------------------------------------------------------- RNG state

def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch (CPU and CUDA), numpy and python RNG states as (tensors, JSON)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(np_keys, dtype=np.int64))
    py_version, py_internal, py_gauss = random.getstate()
    tensors["python"] = torch.tensor(py_internal, dtype=torch.int64)
    meta = {"numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)], "python": [py_version, py_gauss]}
    return tensors, meta


def set_rng_state(tensors: Mapping[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in tensors]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    np_name, np_pos, np_has_gauss, np_gauss = meta["numpy"]
    np.random.set_state((np_name, tensors["numpy"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    py_version, py_gauss = meta["python"]
    random.setstate((py_version, tuple(int(x) for x in tensors["python"].tolist()), py_gauss))


# ------------------------------------------------------------------------------------- directories

def write_checkpoint(run_dir: str | os.PathLike[str], step: int, model_state: Mapping[str, torch.Tensor],
                     config: dict[str, Any], state_tensors: Mapping[str, torch.Tensor] | None = None,
                     state_json: dict[str, Any] | None = None, keep: int = 1) -> Path:
    """Write a complete checkpoint for ``step`` (its ``config.json`` recording every other file's sha256),
    point ``latest`` and the top-level copies at it, and remove older checkpoints beyond ``keep``. Returns
    the checkpoint folder."""
    run = Path(run_dir)
    root = run / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = {MODEL: tensors_to_bytes(model_state)}
    if state_tensors is not None and state_json is not None:
        files[STATE_T] = tensors_to_bytes(state_tensors)
        files[STATE_J] = json_bytes(state_json)
    files[CONFIG] = json_bytes({**config, CHECKSUMS: {name: sha256_hex(data) for name, data in files.items()}})
    for name, data in files.items():
        atomic_write_bytes(tmp / name, data)
        os.chmod(tmp / name, 0o644)  # a run is meant to be shared and read
    if final.exists():  # a checkpoint of the same step from an earlier, interrupted run
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_bytes(root / "latest", (final.name + "\n").encode())
    for name in (MODEL, CONFIG):  # the weights first: the config records their checksum
        atomic_write_bytes(run / name, files[name])
    _prune(root, keep, step)
    return final


def _prune(root: Path, keep: int, newest: int) -> None:
    """Keep the checkpoint of step ``newest`` and the ``keep - 1`` before it. Checkpoints of later steps belong
    to a timeline the run left (it resumed from an older checkpoint because they did not verify): removed, so a
    damaged one never takes the place of a good one."""
    found = sorted((s, p) for p in root.glob("step_*") if p.is_dir() and (s := checkpoint_step(p)) is not None)
    older = [p for s, p in found if s < newest]
    abandoned = [p for s, p in found if s > newest]
    for old in abandoned + older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class Checkpoint:
    """A checkpoint read back whole, every file checked against the checksums its config records."""

    path: Path
    config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    state_tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


STATE_KEYS = ("step", "samples_seen", "elapsed_s", "world", "optimizer", "rng")


def read_checkpoint(path: Path) -> Checkpoint:
    """Read and verify a checkpoint folder. Any damage (a missing, truncated or changed file, a checksum
    mismatch, unreadable JSON, a train state without its keys) is InvalidInput or NotFound naming the file."""
    if not path.is_dir():
        raise InvalidInput("no such checkpoint folder", source=str(path))
    config = read_run_config(path)
    sums = config.get(CHECKSUMS)
    sums = sums if isinstance(sums, dict) else {}
    model_state = read_tensors(path / MODEL, sums.get(MODEL))
    state_tensors = read_tensors(path / STATE_T, sums.get(STATE_T))
    state_path = path / STATE_J
    try:
        state = json.loads(read_verified(state_path, sums.get(STATE_J)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"invalid JSON ({exc})", source=str(state_path)) from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise InvalidInput(f"not a train state: missing {missing}", source=str(state_path))
    return Checkpoint(path, config, model_state, state_tensors, state)
