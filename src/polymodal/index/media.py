"""Media stored beside a collection: a thumbnail (PNG) and an audio clip (FLAC) per item, so the search page can
show what a hit is. Written by whoever builds the collection (`polymodal index build`, the quickstart, the HTTP
service's upserts).

The store only ever holds files polymodal wrote itself, named by integer id; nothing a client sends is used
as a path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_write_bytes
from ..data.codec import encode_audio, encode_image

MEDIA_KINDS = {"image": ("png", "image/png"), "audio": ("flac", "audio/flac")}


def thumbnail_png(image: np.ndarray, size: int) -> bytes:
    """A PNG no larger than size x size (aspect kept); small images are kept as they are."""
    im = Image.fromarray(image, mode="RGB")
    if max(im.size) > size:
        im.thumbnail((size, size), Image.Resampling.BICUBIC)
    return encode_image(np.asarray(im))


def audio_flac(wave: np.ndarray, sample_rate: int) -> bytes:
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


class MediaStore:
    """``<collection dir>/media/<id>.<kind>.<ext>``: thumbnails (PNG) and audio (FLAC) polymodal wrote
    (an index build, the quickstart, the service's upserts)."""

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
