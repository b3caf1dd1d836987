"""The run directory format, read side: file names, weights, the run config, the newest checkpoint.

A neutral module (below `models` and `train`): `polymodal.models` loads a run through it and the trainer
writes runs with `polymodal.train.checkpoint`, which builds on these names. Nothing is ever unpickled.

    RUN/config.json               what rebuilds the model: arch, model cfg, transform (incl. tokenizer), recipe
    RUN/model.safetensors         the latest weights
    RUN/checkpoints/latest        name of the newest complete checkpoint, e.g. "step_00000300"
    RUN/checkpoints/step_00000300/{config.json, model.safetensors, train_state.safetensors, train_state.json}

A ``config.json`` records the sha256 of the files beside it (``"sha256": {file name: hex digest}``); reading a
recorded file checks it, so flipped or truncated bytes are an error naming the file, never other weights.
Run dirs written before checksums existed have none and load unchecked.

Damage is what a file holds: a checksum mismatch, a truncated or unparseable file, a missing file (`DAMAGE`:
InvalidInput or NotFound). Any other OSError (a permission, EIO) says nothing about the file and propagates as
it is, so no caller skips, falls back past or deletes a checkpoint that may be intact. `read_run_weights` loads a
run dir whose top-level copies do not verify from the newest checkpoint that does, with a warning.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ._io import read_json_object
from .errors import ConfigError, InvalidInput, NotFound, PolymodalError

RUN_FORMAT = "polymodal-run"
RUN_VERSION = 1
CONFIG, MODEL, STATE_T, STATE_J = "config.json", "model.safetensors", "train_state.safetensors", "train_state.json"
CHECKSUMS = "sha256"  # config.json key: {file name: sha256 hex digest} of the files beside it
# What a damaged file raises (checksum mismatch, truncated or unparseable, missing): a reader may skip it for an
# older copy. Any other OSError is not damage and propagates.
DAMAGE: tuple[type[PolymodalError], ...] = (InvalidInput, NotFound)

T = TypeVar("T")


class CheckpointFallbackWarning(UserWarning):
    """A run was loaded from one of its checkpoints because its top-level files do not verify."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recorded_checksum(path: Path) -> str | None:
    """The sha256 that the ``config.json`` beside ``path`` records for it (None: no config, or none recorded)."""
    cfg_path = path.parent / CONFIG
    if path.name == CONFIG or not cfg_path.is_file():
        return None
    sums = read_json_object(cfg_path).get(CHECKSUMS)
    value = sums.get(path.name) if isinstance(sums, dict) else None
    return value if isinstance(value, str) else None


def read_verified(path: Path, sha256: str | None) -> bytes:
    """The bytes of ``path``, checked against ``sha256`` when given: a mismatch is InvalidInput and a missing
    file NotFound, naming the file. Other OS errors (permission, EIO) propagate unchanged: they are not damage."""
    if not path.is_file():
        raise NotFound("no such file", source=str(path))
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # removed since is_file (e.g. an old checkpoint pruned)
        raise NotFound("no such file", source=str(path)) from None
    if sha256 is not None:
        got = sha256_hex(data)
        if got != sha256:
            raise InvalidInput(f"checksum mismatch: the file's sha256 is {got[:16]}... but {CONFIG} records "
                               f"{sha256[:16]}... (the file is corrupt, truncated or was changed after saving)",
                               source=str(path))
    return data


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    # Clone: tied weights share storage, which safetensors refuses; loading copies into each tie anyway.
    return st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})

def read_tensors(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, its bytes checked against ``sha256`` when given."""
    data = read_verified(path, sha256)
    try:
        return st_load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise InvalidInput(f"not a readable safetensors file ({exc})", source=str(path)) from None

def load_model_state(model: nn.Module, path: Path) -> None:
    """Load weights strictly, checked against the checksum the ``config.json`` beside them records; a key or
    shape mismatch is a ConfigError naming the first differences."""
    state = read_tensors(path, recorded_checksum(path))
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

def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"

def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text(encoding="utf-8").strip()
    return path if (path / MODEL).is_file() else None

def checkpoint_candidates(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The checkpoints to resume from, in the order to try them: the one ``checkpoints/latest`` names (whether
    or not it still exists), then every other ``step_*`` folder, newest first."""
    root = Path(run_dir) / "checkpoints"
    out: list[Path] = []
    pointer = root / "latest"
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        if name.startswith("step_") and "/" not in name and os.sep not in name:
            out.append(root / name)
    steps = sorted((p for p in root.glob("step_*") if p.is_dir() and checkpoint_step(p) is not None),
                   key=lambda p: checkpoint_step(p) or 0, reverse=True)
    return out + [p for p in steps if p not in out]

def first_verified(folders: Iterable[Path], read: Callable[[Path], T],
                   on_skip: Callable[[Path, PolymodalError], None] | None = None) -> tuple[Path, T] | None:
    """The first of ``folders`` (e.g. `checkpoint_candidates`) that ``read`` reads without damage, with what it
    read; ``on_skip(folder, error)`` hears of each one skipped for damage (`DAMAGE`). None when none reads.
    Any other error, an OSError included, propagates: a folder that could not be read is not known damaged."""
    for folder in folders:
        try:
            return folder, read(folder)
        except DAMAGE as err:
            if on_skip is not None:
                on_skip(folder, err)
    return None


def read_weights(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(run config, weights) of a run dir or checkpoint folder: ``config.json`` read once and the weights
    checked against the sha256 it records (a config without checksums: unchecked, but still parsed)."""
    try:
        cfg = read_run_config(folder)
    except (FileNotFoundError, NotADirectoryError):  # removed since is_file (an old checkpoint pruned)
        raise NotFound("no such file", source=str(folder / CONFIG)) from None
    sums = cfg.get(CHECKSUMS)
    sha = sums.get(MODEL) if isinstance(sums, dict) else None
    return cfg, read_tensors(folder / MODEL, sha if isinstance(sha, str) else None)


def read_run_weights(run: str | os.PathLike[str]
                     ) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """(folder read, run config, weights) of a run dir or one of its checkpoints, everything verified.

    A run dir's top-level ``config.json`` and ``model.safetensors`` are two files replaced one after the other
    at each save, so a reader can see one old and one new (a checksum mismatch): they are read a second time.
    If they still do not verify (mismatch, truncated, missing: a crash between the two writes, or real damage),
    the run loads from the newest checkpoint under ``checkpoints/`` that verifies (`checkpoint_candidates`
    order, as a resume), with a `CheckpointFallbackWarning` naming what was skipped and why; when none does,
    InvalidInput lists every file and its fault. A folder without checkpoints (a checkpoint itself) is strict:
    its own error. OS errors other than damage propagate (see `DAMAGE`)."""
    path = Path(run)
    if not path.exists():
        raise NotFound("no such run directory", source=str(path))
    try:
        return path, *read_weights(path)
    except DAMAGE as err:
        top: PolymodalError = err
    candidates = checkpoint_candidates(path) if (path / "checkpoints").is_dir() else []
    if not candidates:
        if isinstance(top, NotFound) and not (path / MODEL).exists() and not (path / CONFIG).exists():
            raise NotFound(f"no {MODEL} here and no checkpoint under checkpoints/", source=str(path))
        raise top
    try:  # a save may have replaced the weights between our two reads: read both again
        return path, *read_weights(path)
    except DAMAGE as err:
        top = err
    skipped: list[str] = []
    found = first_verified(candidates, read_weights, lambda p, e: skipped.append(f"{p.name} ({e})"))
    if found is None:
        raise InvalidInput("nothing to load: neither the run's top-level files nor any checkpoint under "
                           f"checkpoints/ verify: top level ({top}); " + "; ".join(skipped), source=str(path))
    folder, (cfg, state) = found
    also = f"; skipped {'; '.join(skipped)}" if skipped else ""
    warnings.warn(f"{path}: the run's top-level files do not verify ({top}){also}; loaded {folder}, the newest "
                  "checkpoint that verifies", CheckpointFallbackWarning, stacklevel=1)  # one place: shown once
    return folder, cfg, state


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint folder named by `checkpoint_name` (None for any other name)."""
    digits = path.name.removeprefix("step_")
    return int(digits) if path.name.startswith("step_") and digits.isdigit() else None

def read_run_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """config.json of a run dir or checkpoint dir, checked for the run format."""
    cfg_path = Path(path) / CONFIG
    cfg = read_json_object(cfg_path)
    if cfg.get("format") != RUN_FORMAT:
        raise InvalidInput(f"not a polymodal run config (format {cfg.get('format')!r})", source=str(cfg_path))
    for key in ("arch", "model", "transform"):
        if key not in cfg:
            raise InvalidInput(f"missing \"{key}\"", field=key, source=str(cfg_path))
    return cfg
