"""ONNX export and the onnxruntime runtime of an `EmbeddingModel` (extra ``[onnx]``; docs/export.md).

An export dir holds one graph per modality (``{modality}.onnx``, fp32, always kept; ``{modality}.int8.onnx``
when that tower was quantized), ``polymodal_export.json`` (written last: a folder without it is no export),
for a Hugging Face tokenizer a copy of it under ``tokenizer/`` and for a CLAP checkpoint's audio preprocessing a
copy of its feature extractor under ``audio_features/``. The folder is written beside ``out`` and renamed into
place when complete (`_publish`). Loading one gives an `EmbeddingModel` whose
towers run in onnxruntime; preprocessing stays polymodal's transform + collate.

Fingerprints: an fp32 export embeds like its source (checked at export to 1e-4), so it keeps the source's
fingerprint and serves collections built with torch. An export with any INT8 tower embeds differently: its
fingerprint is derived from the source's and from the quantized graphs' bytes (`int8_fingerprint`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, json_bytes, read_json_object
from .._version import __version__
from ..data.collate import collate
from ..data.sample import Sample
from ..data.transforms.audio import ClapAudioTransform
from ..data.transforms.compose import SampleTransform
from ..errors import InvalidInput, NotFound
from .embedding import FINGERPRINT_KEYS, EmbeddingModel
from .onnx_export import (
    DEFAULT_OPSET,
    INT8_MODES,
    calibration_feeds,
    conv_dominated,
    example_samples,
    export_tower,
    quantize,
)
from .onnx_session import OrtTowers, feeds, input_names, new_session, ort_module

EXPORT_FILE = "polymodal_export.json"
STANDALONE_FILE = "embed_onnx.py"  # a copy of polymodal/models/onnx_standalone.py: runs the export without torch
EXPORT_FORMAT = "polymodal-onnx-export"
EXPORT_VERSION = 1
TOKENIZER_DIR = "tokenizer"
AUDIO_FEATURES_DIR = "audio_features"
INT8_MIN_COSINE = 0.9   # an INT8 tower whose embeddings drift further from fp32 is refused at export


def is_export_dir(path: Path) -> bool:
    return (path / EXPORT_FILE).is_file()


# ---------------------------------------------------------------------------------------------- runtime

def with_runtime(model: EmbeddingModel, runtime: str, threads: int | None = None) -> EmbeddingModel:
    """``model`` with its towers run by ``runtime``: "onnx" exports every tower in memory (fp32, checked
    against torch) and runs it in onnxruntime; "torch" runs the torch towers. Same fingerprint either way."""
    if runtime == model.runtime:
        return model
    if model.model is None:
        raise InvalidInput(f"this model has no torch weights (an ONNX export); it cannot run on {runtime!r}",
                           field="runtime", source=model.name)
    if runtime == "torch":
        return EmbeddingModel(model.model, model.transform, model.config, model.device, model.name)
    if runtime != "onnx":
        raise InvalidInput(f"runtime must be 'torch' or 'onnx', got {runtime!r}", field="runtime")
    ort_module()
    sessions = {m: new_session(export_tower(model.model, model.transform, m), threads, model.device)
                for m in model.modalities}
    runner = OrtTowers(sessions, model.dim, None, threads=threads)
    return EmbeddingModel(model.model, model.transform, model.config, model.device, model.name, runner=runner)


def load_export(path: Path, threads: int | None = None, precision: str | None = None) -> EmbeddingModel:
    """An export dir as an `EmbeddingModel` running in onnxruntime. ``precision="fp32"`` runs the fp32 graphs
    of quantized towers instead (and then has the source's fingerprint)."""
    path = Path(path)
    manifest = read_manifest(path)
    towers: dict[str, dict[str, Any]] = manifest["towers"]
    if precision not in (None, "fp32"):
        raise InvalidInput(f"precision must be None or 'fp32', got {precision!r}", field="precision")
    sessions, kinds = {}, {}
    for m, tower in sorted(towers.items()):
        key = "fp32" if precision == "fp32" else "runtime"
        entry = tower[key]
        sessions[m] = new_session(_verified(path, entry), threads)
        kinds[m] = "fp32" if precision == "fp32" else str(tower["precision"])
    fp = manifest["source"]["fingerprint"] if precision == "fp32" else manifest["fingerprint"]
    runner = OrtTowers(sessions, int(manifest["dim"]), str(fp), kinds, threads)
    transform_cfg = _local_transform(manifest["transform"], path)
    transform = SampleTransform.from_dict(transform_cfg)
    config = {**manifest["config"], "transform": transform_cfg, "temperature": manifest.get("temperature")}
    return EmbeddingModel(None, transform, config, name=str(path), runner=runner)


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / EXPORT_FILE
    manifest = read_json_object(file)
    if manifest.get("format") != EXPORT_FORMAT:
        raise InvalidInput(f"not a polymodal ONNX export (format {manifest.get('format')!r})", source=str(file))
    if manifest.get("version") != EXPORT_VERSION:
        raise InvalidInput(f"export format version {manifest.get('version')!r} is not supported (this polymodal "
                           f"reads version {EXPORT_VERSION})", source=str(file))
    for key in ("towers", "dim", "fingerprint", "source", "transform", "config"):
        if key not in manifest:
            raise InvalidInput(f"missing key {key!r}", source=str(file))
    return manifest


def _verified(root: Path, entry: Mapping[str, Any]) -> bytes:
    """A graph file's bytes, checked against the size and sha256 the manifest records."""
    file = root / str(entry["file"])
    if not file.is_file():
        raise NotFound("graph file missing from the export", source=str(file))
    data = file.read_bytes()
    if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise InvalidInput("graph file does not match the checksum in polymodal_export.json (damaged or "
                           "replaced)", source=str(file))
    return data


def _local_transform(cfg: dict[str, Any], root: Path) -> dict[str, Any]:
    """The stored transform with a tokenizer and a CLAP feature extractor copied into the export resolved against
    the export dir."""
    text, audio = cfg.get("text"), cfg.get("audio")
    if isinstance(text, dict) and text.get("kind") == "hf" and text.get("path") == TOKENIZER_DIR:
        cfg = {**cfg, "text": {**text, "path": str((root / TOKENIZER_DIR).resolve())}}
    if isinstance(audio, dict) and audio.get("type") == "hf_clap" and audio.get("path") == AUDIO_FEATURES_DIR:
        cfg = {**cfg, "audio": {**audio, "path": str((root / AUDIO_FEATURES_DIR).resolve())}}
    return cfg


# ---------------------------------------------------------------------------------------------- export

def int8_fingerprint(source: str, towers: Mapping[str, Mapping[str, Any]]) -> str:
    """What an export with INT8 towers embeds as: the source fingerprint plus, per tower, its precision and the
    sha256 of the graph that runs (quantization, calibration data and settings all end up in those bytes)."""
    h = hashlib.sha256(b"polymodal-onnx-int8-v1\n" + source.encode())
    for m, tower in sorted(towers.items()):
        h.update(f"\n{m}|{tower['precision']}|{tower['runtime']['sha256']}".encode())
    return h.hexdigest()


def parse_int8(spec: str | Mapping[str, str] | None, modalities: Sequence[str]) -> dict[str, str]:
    """Per-tower INT8 modes from ``dynamic``/``static``/``auto``/``none`` (every tower) or
    ``MOD=MODE,...`` (towers not named stay fp32). ``auto``: static for CNN towers, dynamic for the rest."""
    if spec is None or spec == "none":
        return {}
    choices = (*INT8_MODES, "auto", "none")
    if isinstance(spec, str):
        pairs = ([p.split("=", 1) for p in spec.split(",") if p.strip()] if "=" in spec
                 else [[m, spec] for m in modalities])
        spec = {}
        for pair in pairs:
            if len(pair) != 2:
                raise InvalidInput(f"expected MODALITY=MODE, got {'='.join(pair)!r}", field="int8")
            spec[pair[0].strip()] = pair[1].strip()
    out = {}
    for m, mode in spec.items():
        if m not in modalities:
            raise InvalidInput(f"no {m!r} tower (the model has {', '.join(modalities)})", field="int8")
        if mode not in choices:
            raise InvalidInput(f"INT8 mode must be one of {', '.join(choices)}, got {mode!r}", field="int8")
        if mode != "none":
            out[m] = mode
    return out


def export_model(model: EmbeddingModel, out: str | os.PathLike[str], int8: str | Mapping[str, str] | None = None,
                 calib: Sequence[Sample] | None = None, opset: int = DEFAULT_OPSET, overwrite: bool = False,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write ``model`` as an export dir ``out`` (see the module doc); returns the manifest. ``int8``: see
    `parse_int8`; ``calib``: samples for static INT8 (and for ``auto`` on CNN towers).

    Everything is written into a hidden sibling ``.{name}.tmp-XXXX`` (a unique name) and published at the end by rename (see
    `_publish`): a failed export removes it and leaves ``out`` (an earlier export included) as it was."""
    if model.model is None:
        raise InvalidInput("this model is an ONNX export already; export its source run instead", field="model",
                           source=model.name)
    ort_module()
    root = Path(out).resolve()
    _check_target(root, overwrite)
    modes = parse_int8(int8, model.modalities)
    root.parent.mkdir(parents=True, exist_ok=True)
    stage = _sibling(root, "tmp")
    try:
        manifest = _write_export(model, stage, modes, calib, opset, log or (lambda _msg: None))
        _publish(stage, root, overwrite)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return manifest


def _write_export(model: EmbeddingModel, root: Path, modes: Mapping[str, str], calib: Sequence[Sample] | None,
                  opset: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Every file of the export into the (new, empty) folder ``root``, the manifest last."""
    assert model.model is not None
    transform_cfg = model.transform.to_dict()
    towers: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="polymodal-export-") as tmp:
        for m in model.modalities:
            say(f"exporting the {m} tower")
            fp32 = export_tower(model.model, model.transform, m, opset)
            entry = _write(root, f"{m}.onnx", fp32)
            tower: dict[str, Any] = {"inputs": input_names(m), "fp32": entry, "runtime": entry, "precision": "fp32"}
            mode = modes.get(m)
            if mode == "auto":
                mode = "static" if conv_dominated(fp32) and calib else "dynamic"
            if mode is not None:
                say(f"quantizing the {m} tower to INT8 ({mode})")
                calib_fn = (lambda m=m: calibration_feeds(calib, model.transform, m)) if calib else None
                graph = quantize(fp32, mode, calib_fn, Path(tmp))
                cosine = _int8_cosine(fp32, graph, model.transform, m)
                if cosine < INT8_MIN_COSINE:
                    raise InvalidInput(f"INT8 ({mode}) {m} embeddings drift too far from fp32 (min cosine "
                                       f"{cosine:.3f} < {INT8_MIN_COSINE}); export this tower in fp32", field="int8")
                tower.update(runtime=_write(root, f"{m}.int8.onnx", graph), precision=f"int8-{mode}",
                             check={"min_cosine_to_fp32": round(cosine, 6)})
                if mode == "static" and calib:
                    tower["calibration"] = {"samples": sum(getattr(s, m) is not None for s in calib)}
            towers[m] = tower
    if _copy_tokenizer(model.transform, root):
        transform_cfg = {**transform_cfg, "text": {**transform_cfg["text"], "path": TOKENIZER_DIR}}
    if _copy_audio_features(model.transform, root):
        transform_cfg = {**transform_cfg, "audio": {**transform_cfg["audio"], "path": AUDIO_FEATURES_DIR}}
    # the torch-free runner (numpy + PIL + onnxruntime [+ tokenizers]): the same preprocessing, read from the manifest
    atomic_write_bytes(root / STANDALONE_FILE, Path(__file__).with_name("onnx_standalone.py").read_bytes())
    source_fp = model.fingerprint
    quantized = any(t["precision"] != "fp32" for t in towers.values())
    manifest = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "polymodal_version": __version__,
        "opset": opset, "onnxruntime_version": str(ort_module().__version__),
        "dim": model.dim, "modalities": list(model.modalities),
        "source": {"name": model.name, "fingerprint": source_fp},
        "fingerprint": int8_fingerprint(source_fp, towers) if quantized else source_fp,
        "transform": transform_cfg,
        "temperature": model.temperature_config(),
        "config": {k: model.config[k] for k in FINGERPRINT_KEYS if k in model.config and k != "transform"},
        "towers": towers,
    }
    atomic_write_bytes(root / EXPORT_FILE, json_bytes(manifest))
    return manifest


def _check_target(root: Path, overwrite: bool) -> None:
    """Refuse ``out`` unless it is missing, an empty folder, or (with ``overwrite``) an earlier export."""
    if root.exists() and not root.is_dir():
        raise InvalidInput("not a folder", field="out", source=str(root))
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise InvalidInput("folder is not empty; choose a new one or pass --overwrite", field="out",
                               source=str(root))
        if not is_export_dir(root):
            raise InvalidInput("--overwrite replaces an earlier export only; this folder holds something else",
                               field="out", source=str(root))


def _sibling(root: Path, kind: str) -> Path:
    """A new hidden folder beside ``root`` (same file system, so renames between them are atomic), with a unique
    name: two exporters never share one, even in two containers whose processes both have pid 1."""
    return Path(tempfile.mkdtemp(prefix=f".{root.name}.{kind}-", dir=root.parent))


def _publish(stage: Path, root: Path, overwrite: bool) -> None:
    """Put the complete export ``stage`` at ``root``. ``root`` missing or empty: one rename. An earlier export
    there (``overwrite``): it is renamed aside to ``.{name}.old-XXXX``, ``stage`` is renamed in, then the old one
    is deleted. A failed rename in between puts the old export back. A crash between the two renames leaves no
    ``root`` but two complete exports beside it (the old under ``.old-``, the new under ``.tmp-``); a crash
    after them leaves the new export at ``root`` and at most a stale ``.old-`` folder."""
    _check_target(root, overwrite)   # again: the folder may have changed while the towers were exported
    if not root.is_dir() or not any(root.iterdir()):
        os.rename(stage, root)   # POSIX: replaces an empty folder in one step
        return
    aside = _sibling(root, "old")
    os.rmdir(aside)  # a unique free name: the old export is renamed onto it
    os.rename(root, aside)
    try:
        os.rename(stage, root)
    except BaseException:
        os.rename(aside, root)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _write(root: Path, name: str, data: bytes) -> dict[str, Any]:
    atomic_write_bytes(root / name, data)
    return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _int8_cosine(fp32: bytes, int8: bytes, transform: SampleTransform, modality: str) -> float:
    """Smallest cosine between fp32 and INT8 embeddings on the check batches."""
    a, b = new_session(fp32, threads=1), new_session(int8, threads=1)
    worst = 1.0
    for varied in (False, True):
        feed = feeds(collate(example_samples(modality, transform, varied=varied, seed=2), transform), modality)
        assert feed is not None
        x = a.run(None, {i.name: feed[i.name] for i in a.get_inputs()})[0]
        y = b.run(None, {i.name: feed[i.name] for i in b.get_inputs()})[0]
        cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
        worst = min(worst, float(cos.min()))
    return worst


def _copy_tokenizer(transform: SampleTransform, root: Path) -> bool:
    """A Hugging Face tokenizer (not a packaged one) is saved into the export so the folder is self-contained."""
    cfg = transform.text.to_dict() if transform.text is not None else {}
    if cfg.get("kind") != "hf" or str(cfg.get("path", "")).startswith("pkg://"):
        return False
    tok = getattr(transform.text, "_tok", None)
    if tok is None or not hasattr(tok, "save_pretrained"):
        return False
    tok.save_pretrained(str(root / TOKENIZER_DIR))
    return True


def _copy_audio_features(transform: SampleTransform, root: Path) -> bool:
    """A Hugging Face CLAP checkpoint's feature extractor (what ``hf_clap`` audio preprocessing loads from the
    checkpoint folder) is saved into the export, like the tokenizer."""
    audio = transform.audio
    if not isinstance(audio, ClapAudioTransform):
        return False
    audio.extractor.save_pretrained(str(root / AUDIO_FEATURES_DIR))
    return True


__all__ = ["EXPORT_FILE", "EXPORT_FORMAT", "export_model", "int8_fingerprint", "is_export_dir", "load_export",
           "parse_int8", "read_manifest", "with_runtime"]
