"""Checkpoints: safetensors for tensors, JSON for everything else. Nothing is ever pickled.

A run directory::

    RUN/config.json               what rebuilds the model: arch, model cfg, transform (incl. tokenizer), recipe
    RUN/model.safetensors         the latest weights (a hard link to the newest checkpoint's file)
    RUN/metrics.jsonl             one JSON line per logged step
    RUN/checkpoints/latest        name of the newest complete checkpoint, e.g. "step_00000300"
    RUN/checkpoints/step_00000300/
        config.json  model.safetensors
        train_state.safetensors   optimizer tensors, RNG states (per rank)
        train_state.json          step, samples seen, elapsed time, optimizer groups, non-tensor RNG state

A checkpoint is written into a temporary folder and renamed into place, then ``latest`` is replaced
atomically: a crash mid-write leaves the previous checkpoint intact and ``latest`` pointing at it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ..data.formats.common import atomic_write_bytes
from ..errors import ConfigError, InvalidInput, NotFound

RUN_FORMAT = "polymodal-run"
RUN_VERSION = 1
CONFIG, MODEL, STATE_T, STATE_J = "config.json", "model.safetensors", "train_state.safetensors", "train_state.json"


# ------------------------------------------------------------------------------------------- tensors

def tensors_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    # Clone: tied weights share storage, which safetensors refuses; loading copies into each tie anyway.
    return st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise NotFound("no such file", source=str(path))
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as exc:
        raise InvalidInput(f"not a readable safetensors file ({exc})", source=str(path)) from None


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NotFound("no such file", source=str(path))
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"invalid JSON ({exc})", source=str(path)) from None
    if not isinstance(obj, dict):
        raise InvalidInput("expected a JSON object", source=str(path))
    return obj


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def load_model_state(model: nn.Module, path: Path) -> None:
    """Load weights strictly; a key or shape mismatch is a ConfigError naming the first differences."""
    state = read_tensors(path)
    check_model_state(model, state, str(path))
    model.load_state_dict(state, strict=True)


def check_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if extra:
            parts.append(f"unexpected {extra[:3]}")
        if shapes:
            k = shapes[0]
            parts.append(f"shape of {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise ConfigError("checkpoint does not match the model (" + "; ".join(parts) + ")", source=source)


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
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # type: ignore[misc]
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

def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text(encoding="utf-8").strip()
    return path if (path / MODEL).is_file() else None


def write_checkpoint(run_dir: str | os.PathLike[str], step: int, model_state: Mapping[str, torch.Tensor],
                     config: dict[str, Any], state_tensors: Mapping[str, torch.Tensor] | None = None,
                     state_json: dict[str, Any] | None = None, keep: int = 1) -> Path:
    """Write a complete checkpoint for ``step``, point ``latest`` and the top-level files at it, and
    remove older checkpoints beyond ``keep``. Returns the checkpoint folder."""
    run = Path(run_dir)
    root = run / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = {CONFIG: json_bytes(config), MODEL: tensors_to_bytes(model_state)}
    if state_tensors is not None and state_json is not None:
        files[STATE_T] = tensors_to_bytes(state_tensors)
        files[STATE_J] = json_bytes(state_json)
    for name, data in files.items():
        atomic_write_bytes(tmp / name, data)
        os.chmod(tmp / name, 0o644)  # temp files are created 0600; a run is meant to be shared and read
    if final.exists():  # a checkpoint of the same step from an earlier, interrupted run
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_bytes(root / "latest", (final.name + "\n").encode())
    for name in (CONFIG, MODEL):
        _link_into(final / name, run / name)
    _prune(root, keep, final.name)
    return final


def _link_into(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (hard link, else copy), replacing it atomically."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _prune(root: Path, keep: int, newest: str) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and p.name != newest)
    for old in done[: max(0, len(done) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def read_run_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """config.json of a run dir or checkpoint dir, checked for the run format."""
    cfg_path = Path(path) / CONFIG
    cfg = read_json(cfg_path)
    if cfg.get("format") != RUN_FORMAT:
        raise InvalidInput(f"not a polymodal run config (format {cfg.get('format')!r})", source=str(cfg_path))
    for key in ("arch", "model", "transform"):
        if key not in cfg:
            raise InvalidInput(f"missing \"{key}\"", field=key, source=str(cfg_path))
    return cfg
