"""JSONL manifest: one sample per line.

``{"id": "a1", "text": "a red circle", "image": "media/a1.png", "audio": "media/a1.flac",
"video": "media/a1.video.png", "video_frames": 8, "metadata": {...}, "targets": {...}}`` -- every field but one
modality is optional (``id`` defaults to ``line{N}``). Text is inline; media are paths relative to the manifest's folder.
Absolute paths and paths that climb out with ``..`` are followed too (a manifest is trusted like a script:
read only manifests you trust). Blank lines are ignored. An unknown field, bad JSON, a missing or corrupt
file is an error naming ``manifest:line`` (and the field / file)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ..._io import atomic_write_bytes, atomic_writer
from ...errors import InvalidInput, NotFound
from ..codec import decode_audio, decode_image, decode_video
from ..sample import Sample
from ..targets import Targets
from .common import ErrorPolicy
from .folder import VIDEO_SUFFIX, sample_files

FIELDS = ("id", "text", "image", "audio", "video", "video_frames", "metadata", "targets")
MEDIA = ("image", "audio", "video")

Item = tuple[str, Callable[[], Sample]]


def jsonl_items(path: str | os.PathLike[str]) -> Iterator[Item]:
    """(``manifest:line``, decode) per non-blank line; lines are parsed only when ``decode()`` is called."""
    path = Path(path)
    if not path.is_file():
        raise NotFound("JSONL manifest does not exist", source=str(path))
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                where = f"{path}:{lineno}"
                yield where, partial(parse_line, raw, lineno, path.parent, where)


def count_lines(path: str | os.PathLike[str]) -> int:
    with Path(path).open("rb") as fh:
        return sum(1 for raw in fh if raw.strip())


def parse_line(raw: bytes, lineno: int, base: Path, where: str) -> Sample:
    """One manifest line -> a validated `Sample`; ``base`` is the folder relative paths start from."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"invalid JSON ({exc})", source=where) from None
    if not isinstance(obj, dict):
        raise InvalidInput(f"expected a JSON object, got {type(obj).__name__}", source=where)
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}; known: {list(FIELDS)}", field=unknown[0], source=where)
    kw: dict[str, Any] = {"id": obj.get("id", f"line{lineno}"), "text": obj.get("text"),
                          "metadata": obj.get("metadata", {}), "source": where,
                          "targets": Targets.from_dict(obj.get("targets"), where)}
    files = {m: _resolve(obj[m], base, m, where) for m in MEDIA if obj.get(m) is not None}
    if "image" in files:
        kw["image"] = decode_image(_read(files["image"], "image", where), str(files["image"]))
    if "audio" in files:
        kw["audio"], kw["sample_rate"] = decode_audio(_read(files["audio"], "audio", where), str(files["audio"]))
    if "video" in files:
        frames = obj.get("video_frames")
        if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
            raise InvalidInput(f"video needs a positive integer video_frames, got {frames!r}",
                               field="video_frames", source=where)
        kw["video"] = decode_video(_read(files["video"], "video", where), frames, str(files["video"]))
    return Sample(**kw)


def _resolve(value: Any, base: Path, field: str, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"expected a file path (string), got {value!r}", field=field, source=where)
    p = Path(value)
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise NotFound(f"referenced file does not exist: {p}", field=field, source=where)
    return p


def _read(p: Path, field: str, where: str) -> bytes:
    try:
        return p.read_bytes()
    except OSError as exc:
        raise NotFound(f"cannot read {p} ({exc.__class__.__name__})", field=field, source=where) from None


def read_jsonl(path: str | os.PathLike[str], policy: ErrorPolicy | None = None) -> Iterator[Sample]:
    """Stream the samples of a JSONL manifest; bad lines raise or are skipped per ``policy``."""
    policy = policy or ErrorPolicy()
    for name, make in jsonl_items(path):
        yield from policy.guard(make, name)


def sample_record(s: Sample, media: dict[str, str]) -> dict[str, Any]:
    """The manifest line of a sample whose media files are at ``media`` (relative paths)."""
    rec: dict[str, Any] = {"id": s.id}
    if s.text is not None:
        rec["text"] = s.text
    rec.update(media)
    if s.video is not None:
        rec["video_frames"] = int(s.video.shape[0])
    if s.metadata:
        rec["metadata"] = s.metadata
    if s.targets:
        rec["targets"] = s.targets.to_dict()
    return rec


def write_jsonl(samples: Iterable[Sample], path: str | os.PathLike[str], media_dir: str = "media") -> int:
    """Write a manifest at ``path`` and media files into ``path.parent / media_dir``; returns the count.

    Streams: lines go to a temp file that is fsynced and renamed over ``path`` only when all samples are
    written, so a reader never sees a half-written manifest (media files are replaced atomically but not
    fsynced, see `write_folder`). Same samples -> same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / media_dir).mkdir(exist_ok=True)
    kind = {".png": "image", ".flac": "audio", VIDEO_SUFFIX: "video"}
    seen: set[str] = set()
    with atomic_writer(path) as fh:
        for s in samples:
            if s.id in seen:
                raise InvalidInput(f"duplicate sample id '{s.id}'", field="id", source=str(path))
            seen.add(s.id)
            media = {}
            for suffix, data in sample_files(s).items():
                atomic_write_bytes(path.parent / media_dir / f"{s.id}{suffix}", data, fsync=False)
                media[kind[suffix]] = f"{media_dir}/{s.id}{suffix}"
            line = json.dumps(sample_record(s, media), ensure_ascii=False, sort_keys=False, allow_nan=False)
            fh.write(line.encode("utf-8") + b"\n")
    return len(seen)
