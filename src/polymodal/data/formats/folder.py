"""Folder format: media files with sidecar files matched by stem (like clip-retrieval's reader).

``a.png`` (or .jpg/.jpeg/.bmp/.webp) image, ``a.txt`` caption (UTF-8), ``a.flac`` (or .wav/.ogg) audio,
``a.video.png`` film strip (T frames stacked vertically), ``a.json`` = ``{"metadata": {...}, "video_frames": T,
"targets": {...}}`` (the same JSON as a WebDataset member; ``targets`` as in `polymodal.data.targets`). Files sharing a stem in one folder form one sample. Folders are walked
recursively in sorted order (files of a folder first, then its subfolders), so the order is deterministic.
Hidden files and files with other extensions are ignored. The sample id is the path of the stem relative
to the root with ``/`` -> ``__`` and any other dot or space -> ``_`` (ids cannot hold dots or slashes)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ..._io import atomic_write_bytes
from ...errors import InvalidInput, NotFound
from ..codec import decode_audio, decode_image, decode_video, encode_audio, encode_image, encode_video
from ..sample import Sample
from ..targets import Targets
from .common import ErrorPolicy

# suffix -> field of the sample it feeds
_SUFFIX_FIELD = {".txt": "text", ".json": "json", ".png": "image", ".jpg": "image", ".jpeg": "image",
                 ".bmp": "image", ".webp": "image", ".flac": "audio", ".wav": "audio", ".ogg": "audio"}
VIDEO_SUFFIX = ".video.png"
JSON_KEYS = ("metadata", "video_frames", "targets")
_BAD_ID_CHARS = re.compile(r"[\s./\\]")

Item = tuple[str, Callable[[], Sample]]


def split_name(name: str) -> tuple[str, str] | None:
    """``'a.video.png' -> ('a', 'video')``, ``'a.PNG' -> ('a', 'image')``; None for files we ignore."""
    low = name.lower()
    if name.startswith("."):
        return None
    if low.endswith(VIDEO_SUFFIX) and len(name) > len(VIDEO_SUFFIX):
        return name[: -len(VIDEO_SUFFIX)], "video"
    stem, ext = os.path.splitext(name)
    field = _SUFFIX_FIELD.get(ext.lower())
    return (stem, field) if field and stem else None


def _walk(root: Path) -> Iterator[tuple[Path, list[str]]]:
    """(folder, sorted file names) for every folder under root, depth first, sorted, hidden ones skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield Path(dirpath), sorted(filenames)


def _groups(root: Path) -> Iterator[tuple[Path, str, dict[str, Path]]]:
    """(folder, stem, {field: file}) per sample; two files feeding one field is an error (raised lazily)."""
    for folder, names in _walk(root):
        groups: dict[str, dict[str, Path]] = {}
        for name in names:
            parsed = split_name(name)
            if parsed is None:
                continue
            stem, field = parsed
            files = groups.setdefault(stem, {})
            if field in files:  # e.g. a.png and a.jpg: remember both, report when decoding
                files[f"{field}+"] = folder / name
            else:
                files[field] = folder / name
        for stem in sorted(groups):
            yield folder, stem, groups[stem]


def folder_id(root: Path, folder: Path, stem: str) -> str:
    rel = folder.relative_to(root).parts + (stem,)
    return "__".join(_BAD_ID_CHARS.sub("_", p) for p in rel)


def folder_items(root: str | os.PathLike[str]) -> Iterator[Item]:
    """(name, decode) per sample; nothing is decoded until ``decode()`` is called."""
    root = Path(root)
    if not root.is_dir():
        raise NotFound("folder does not exist", source=str(root))
    for folder, stem, files in _groups(root):
        exts = ",".join(sorted(p.name[len(stem) + 1:] for p in files.values()))
        name = f"{folder / stem}.{{{exts}}}"
        sid = folder_id(root, folder, stem)
        yield name, partial(_load, sid, files, name)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFound("file disappeared while reading", source=str(path)) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read file ({exc})", source=str(path)) from None


def _load(sid: str, files: dict[str, Path], name: str) -> Sample:
    dup = [k for k in files if k.endswith("+")]
    if dup:
        field = dup[0][:-1]
        raise InvalidInput(f"two files for one sample: {files[field].name} and {files[dup[0]].name}",
                           field=field, source=name)
    meta = _read_json(files["json"]) if "json" in files else {}
    kw: dict[str, Any] = {"id": sid, "metadata": meta.get("metadata", {}), "source": name}
    if "targets" in meta:  # errors name the sidecar: targets.qa[2].answer in a.json
        kw["targets"] = Targets.from_dict(meta["targets"], str(files["json"]))
    if "text" in files:
        kw["text"] = decode_text(_read(files["text"]), str(files["text"]))
    if "image" in files:
        kw["image"] = decode_image(_read(files["image"]), str(files["image"]))
    if "audio" in files:
        kw["audio"], kw["sample_rate"] = decode_audio(_read(files["audio"]), str(files["audio"]))
    if "video" in files:
        frames = meta.get("video_frames")
        if frames is None:
            raise InvalidInput(f"film strip needs 'video_frames' in {files['video'].name[:-len(VIDEO_SUFFIX)]}.json",
                               field="video_frames", source=str(files["video"]))
        kw["video"] = decode_video(_read(files["video"]), frames, str(files["video"]))
    return Sample(**kw)


def decode_text(data: bytes, source: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"text is not UTF-8 ({exc})", field="text", source=source) from None
    text = text.removeprefix("\ufeff").rstrip("\r\n")  # a BOM or a final newline is not part of the caption
    if not text.strip():
        raise InvalidInput("text is empty", field="text", source=source)
    return text


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(_read(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"invalid JSON ({exc})", source=str(path)) from None
    if not isinstance(obj, dict):
        raise InvalidInput(f"expected a JSON object with keys {list(JSON_KEYS)}", source=str(path))
    unknown = sorted(set(obj) - set(JSON_KEYS))
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}; allowed: {list(JSON_KEYS)} "
                           "(put your own fields under \"metadata\")", field=unknown[0], source=str(path))
    frames = obj.get("video_frames")
    if frames is not None and (not isinstance(frames, int) or isinstance(frames, bool) or frames < 1):
        raise InvalidInput(f"expected a positive integer, got {frames!r}", field="video_frames", source=str(path))
    if not isinstance(obj.get("metadata", {}), dict):
        raise InvalidInput("expected a JSON object", field="metadata", source=str(path))
    return obj


def read_folder(root: str | os.PathLike[str], policy: ErrorPolicy | None = None) -> Iterator[Sample]:
    """Stream the samples of a folder (see the module doc); bad samples raise or are skipped per ``policy``."""
    policy = policy or ErrorPolicy()
    for name, make in folder_items(root):
        yield from policy.guard(make, name)


def sample_files(s: Sample) -> dict[str, bytes]:
    """``{suffix: bytes}`` of one sample in the folder layout (shared with the JSONL writer's media)."""
    out: dict[str, bytes] = {}
    if s.image is not None:
        out[".png"] = encode_image(s.image)
    if s.audio is not None:
        assert s.sample_rate is not None
        out[".flac"] = encode_audio(s.audio, s.sample_rate)
    if s.video is not None:
        out[VIDEO_SUFFIX] = encode_video(s.video)
    return out


def write_folder(samples: Iterable[Sample], root: str | os.PathLike[str]) -> int:
    """Write samples flat into ``root`` as ``{id}.txt/.png/.flac/.video.png/.json``; returns the count.

    Each file is replaced atomically (temp file + rename; not fsynced: with three small files per sample,
    syncing each one made writing ~10x slower, and a crash may lose only recent files); the JSON sidecar is
    written only when there is metadata, video or targets. Same samples -> same bytes."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise InvalidInput(f"duplicate sample id '{s.id}'", field="id", source=str(root))
        seen.add(s.id)
        files = sample_files(s)
        if s.text is not None:
            files[".txt"] = s.text.encode("utf-8")
        if s.metadata or s.video is not None or s.targets:
            meta: dict[str, Any] = {"metadata": s.metadata}
            if s.video is not None:
                meta["video_frames"] = int(s.video.shape[0])
            if s.targets:
                meta["targets"] = s.targets.to_dict()
            files[".json"] = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
        for suffix, data in files.items():
            atomic_write_bytes(root / f"{s.id}{suffix}", data, fsync=False)
    return len(seen)
