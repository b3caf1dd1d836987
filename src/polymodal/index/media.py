"""Media stored beside a collection: a thumbnail (PNG) and an audio clip (FLAC) per item, so the search page can
show what a hit is. Written by whoever builds the collection (`polymodal index build`, the quickstart, the HTTP
service's upserts).

The store only ever holds files polymodal wrote itself, named by integer id; nothing a client sends is used
as a path.

Media are part of the write that adds their item (``Collection.add/upsert(..., media=...)``, and every delete):
the files are staged in ``media/.txn-<token>/`` (`PendingMedia`), the save that publishes the items writes a
journal there (``ops.json``, fsynced) and names the token in the new generation's state.json, and only after
the switch are the files moved into place (and the media of deleted items removed). A writer that opens
finishes a journal its live generation names (the crash came after the switch) and discards any other
staging folder (the crash came before it), then removes media whose item the collection does not hold."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._io import atomic_write_bytes
from ..errors import InvalidInput

MEDIA_KINDS = {"image": ("png", "image/png"), "audio": ("flac", "audio/flac")}


def thumbnail_png(image: np.ndarray, size: int) -> bytes:
    """A PNG no larger than size x size (aspect kept); small images are kept as they are."""
    im = Image.fromarray(image, mode="RGB")
    if max(im.size) > size:
        im.thumbnail((size, size), Image.Resampling.BICUBIC)
    # imported here: the codec loads the sample module, and torch with it, which a collection does not need
    from ..data.codec import encode_image

    return encode_image(np.asarray(im))


def audio_flac(wave: np.ndarray, sample_rate: int) -> bytes:
    from ..data.codec import encode_audio

    return encode_audio(np.clip(wave, -1.0, 1.0), sample_rate)


def media_files(image: np.ndarray | None, audio: tuple[np.ndarray, int] | None, video: np.ndarray | None,
                thumb: int) -> dict[str, bytes]:
    files = {}
    if image is not None:
        files["image"] = thumbnail_png(image, thumb)
    elif video is not None:  # the first frame stands for the video
        files["image"] = thumbnail_png(video[0], thumb)
    if audio is not None:
        files["audio"] = audio_flac(*audio)
    return files


def as_media(media: Any, n: int, field: str = "media") -> list[dict[str, bytes] | None] | None:
    """None, or one entry per item: None (leave the item's media alone) or {kind: bytes} with kinds from
    MEDIA_KINDS ({} removes the item's media)."""
    if media is None:
        return None
    if isinstance(media, (Mapping, str, bytes)) or not isinstance(media, Sequence):
        raise InvalidInput(f"expected a list (one entry per id) of dicts {{kind: bytes}} or None, got "
                           f"{type(media).__name__}", field=field)
    if len(media) != n:
        raise InvalidInput(f"expected {n} entries (one per id), got {len(media)}", field=field)
    out: list[dict[str, bytes] | None] = []
    for i, files in enumerate(media):
        if files is None:
            out.append(None)
            continue
        if not isinstance(files, Mapping):
            raise InvalidInput(f"entry {i} is {type(files).__name__}, expected a dict {{kind: bytes}}", field=field)
        for kind, data in files.items():
            if kind not in MEDIA_KINDS:
                raise InvalidInput(f"entry {i}: unknown media kind {kind!r}; use {', '.join(MEDIA_KINDS)}",
                                   field=field)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise InvalidInput(f"entry {i}: {kind} must be bytes, got {type(data).__name__}", field=field)
        out.append({k: bytes(v) for k, v in files.items()})
    return out


class MediaStore:
    """``<collection dir>/media/<id>.<kind>.<ext>``: thumbnails (PNG) and audio (FLAC) polymodal wrote
    (an index build, the quickstart, the service's upserts). `put`, `put_media` and `remove` write the folder
    directly, outside any collection write; a collection's own writes stage their media (`PendingMedia`), and a
    writer that opens removes files of ids the collection does not hold."""

    FOLDER = "media"

    def __init__(self, collection_dir: Path):
        self.folder = Path(collection_dir) / self.FOLDER

    def path(self, item_id: int, kind: str) -> Path:
        ext = MEDIA_KINDS[kind][0]  # KeyError for an unknown kind: callers validate kind first
        return self.folder / f"{int(item_id)}.{kind}.{ext}"

    def find(self, item_id: int, kind: str | None = None) -> tuple[Path, str] | None:
        """(path, media type) of a stored file of this id; the first existing kind when kind is None."""
        for k in [kind] if kind else list(MEDIA_KINDS):
            p = self.path(item_id, k)
            if p.is_file():
                return p, MEDIA_KINDS[k][1]
        return None

    def kinds(self, item_id: int) -> list[str]:
        return [k for k in MEDIA_KINDS if self.path(item_id, k).is_file()]

    def put(self, item_id: int, kind: str, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # No fsync: a thumbnail is re-creatable from the item, and one fsync per item would dominate an index build.
        atomic_write_bytes(self.path(item_id, kind), data, fsync=False)

    def put_media(self, item_id: int, image: np.ndarray | None = None, audio: tuple[np.ndarray, int] | None = None,
                  video: np.ndarray | None = None, thumb: int = 256) -> list[str]:
        """Store what the page shows for an item: a thumbnail of the image (or of the video's first frame) and
        the audio as FLAC. For builders too (e.g. `index build`), so built collections get thumbnails."""
        files = media_files(image, audio, video, thumb)
        for kind, data in files.items():
            self.put(item_id, kind, data)
        return list(files)

    def remove(self, item_ids: list[int]) -> None:
        for i in item_ids:
            for kind in MEDIA_KINDS:
                self.path(i, kind).unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------------ the writer's side (see the module doc)

    def recover(self, live_token: str | None) -> None:
        """Finish the staged change the live generation names; drop every other staging folder."""
        if not self.folder.is_dir():
            return
        for p in self.folder.iterdir():
            if not p.name.startswith(PendingMedia.PREFIX):
                continue
            token = p.name[len(PendingMedia.PREFIX):]
            if token == live_token and (p / PendingMedia.JOURNAL).is_file():
                PendingMedia.load(self, token).apply()
            else:
                shutil.rmtree(p, ignore_errors=True)

    def collect_garbage(self, present: Callable[[np.ndarray], np.ndarray]) -> int:
        """Remove media files whose item ``present(ids)`` says the collection does not hold, and temp files of
        interrupted writes. Returns how many files were removed."""
        if not self.folder.is_dir():
            return 0
        named: list[tuple[Path, int]] = []
        removed = 0
        for p in self.folder.iterdir():
            m = _MEDIA_NAME.match(p.name)
            if m and -(2**63) <= int(m.group(1)) < 2**63:
                named.append((p, int(m.group(1))))
            elif p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():   # an atomic write cut short
                p.unlink(missing_ok=True)
                removed += 1
        if named:
            keep = present(np.array([i for _, i in named], np.int64))
            for (p, _), k in zip(named, keep.tolist(), strict=True):
                if not k:
                    p.unlink(missing_ok=True)
                    removed += 1
        return removed


_MEDIA_NAME = re.compile(r"^(-?\d+)\.(" + "|".join(MEDIA_KINDS) + r")\.[a-z0-9]+$")


class PendingMedia:
    """Media changes of unsaved writes: files staged in ``media/.txn-<token>/``, applied after the save that
    publishes them. ``changes[id]`` = {kind: staged file name} the item will have ({} = none)."""

    PREFIX = ".txn-"
    JOURNAL = "ops.json"

    def __init__(self, store: MediaStore, token: str):
        self.store, self.token = store, token
        self.folder = store.folder / f"{self.PREFIX}{token}"
        self.changes: dict[int, dict[str, str]] = {}
        self._seq = 0

    @classmethod
    def load(cls, store: MediaStore, token: str) -> PendingMedia:
        pending = cls(store, token)
        ops = json.loads((pending.folder / cls.JOURNAL).read_text(encoding="utf-8"))
        pending.changes = {int(i): dict(kinds) for i, kinds in ops["changes"].items()}
        return pending

    def stage(self, item_ids: list[int], files: list[dict[str, bytes] | None]) -> Callable[[], None]:
        """Stage each item's new media (None: leave the item's media alone; {}: remove them); returns the undo."""
        before = {i: self.changes.get(i) for i, f in zip(item_ids, files, strict=True) if f is not None}
        written: list[Path] = []

        def undo() -> None:
            for i, prev in before.items():
                if prev is None:
                    self.changes.pop(i, None)
                else:
                    self.changes[i] = prev
            for path in written:
                path.unlink(missing_ok=True)

        self._seq += 1
        nothing_published = not self.store.folder.is_dir()
        try:
            for i, f in zip(item_ids, files, strict=True):
                if f is None or (not f and nothing_published and int(i) not in self.changes):
                    continue   # untouched, or "no media" for an item that has none anywhere
                staged = {}
                for kind, data in f.items():
                    name = f"{self._seq}-{int(i)}.{kind}"
                    self.folder.mkdir(parents=True, exist_ok=True)
                    path = self.folder / name
                    written.append(path)
                    path.write_bytes(data)   # no fsync, as for every media file: a thumbnail is re-creatable
                    staged[kind] = name
                self.changes[int(i)] = staged
        except BaseException:
            undo()
            raise
        return undo

    def remove(self, item_ids: list[int]) -> Callable[[], None]:
        """Stage the removal of these items' media."""
        return self.stage(item_ids, [{} for _ in item_ids])

    def write_journal(self) -> None:
        """ops.json, durable, before the generation that names this token is published."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.JOURNAL
        atomic_write_bytes(path, json.dumps({"token": self.token, "changes": self.changes}).encode("utf-8"))
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def forget_journal(self) -> None:
        """A save that wrote the journal failed before publishing: the journal is not valid (yet)."""
        (self.folder / self.JOURNAL).unlink(missing_ok=True)

    def apply(self) -> None:
        """Move the staged files into place and remove what the items no longer have (idempotent: a crash
        half-way is finished by running it again), then drop the staging folder."""
        for item_id, kinds in self.changes.items():
            for kind in MEDIA_KINDS:
                final = self.store.path(item_id, kind)
                if kind not in kinds:
                    final.unlink(missing_ok=True)
                    continue
                staged = self.folder / kinds[kind]
                if staged.exists():
                    os.replace(staged, final)
        shutil.rmtree(self.folder, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.changes.clear()
