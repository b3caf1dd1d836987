"""Request inputs -> model inputs, and item writes: decoding with limits (errors name the field), which input
gives an item's vector, and the write step (upsert + stored media + save) under the collection's write lock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..index.media import media_files
from ..index.records import EMBED_PREFERENCE
from .media import audio_from_b64, image_from_b64, video_from_b64
from .schemas import ItemIn, VideoIn
from .service import ServeSettings
from .store import Handle


def decode_one(modality: str, value: Any, settings: ServeSettings, field: str) -> Any:
    """text -> str, image -> uint8 HxWx3, audio -> (float32 wave, rate), video -> uint8 TxHxWx3, vector -> f32."""
    limits = settings.limits
    if modality == "text":
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput("text is empty", field=field)
        if len(value) > settings.max_text_chars:
            raise InvalidInput(f"text of {len(value)} characters exceeds the limit of {settings.max_text_chars}",
                               field=field)
        return value
    if modality == "image":
        return image_from_b64(value, field, limits)
    if modality == "audio":
        return audio_from_b64(value, field, limits)
    if modality == "video":
        data, frames = (value.data, value.frames) if isinstance(value, VideoIn) else (value["data"], value["frames"])
        return video_from_b64(data, frames, field, limits)
    if modality == "vector":
        vec = np.asarray(value, dtype=np.float32)
        if vec.ndim != 1 or vec.size == 0:
            raise InvalidInput("expected a non-empty list of numbers", field=field)
        if not np.isfinite(vec).all():
            raise InvalidInput("vector contains NaN or inf (or overflows float32)", field=field)
        return vec
    raise InvalidInput(f"unknown input {modality!r}", field=field)


def decode_query(fields: dict[str, Any], settings: ServeSettings, prefix: str = "") -> dict[str, Any]:
    """Decode each given input of a query; the error names ``prefix + input``."""
    return {m: decode_one(m, v, settings, f"{prefix}{m}") for m, v in fields.items() if v is not None}


def decode_items(items: Sequence[ItemIn], settings: ServeSettings) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(items):
        fields = {m: getattr(item, m) for m in ("text", "image", "audio", "video", "vector")}
        out.append(decode_query(fields, settings, f"items[{i}]."))
    return out


def embed_choices(items: Sequence[ItemIn], decoded: list[dict[str, Any]]) -> dict[str, list[int]]:
    """{modality: item positions} for items whose vector the server must compute."""
    plan: dict[str, list[int]] = {}
    for i, (item, inputs) in enumerate(zip(items, decoded, strict=True)):
        if item.embed is not None:
            if item.embed not in inputs:
                raise InvalidInput(f"embed={item.embed!r} but the item has no {item.embed}", field=f"items[{i}].embed")
            plan.setdefault(item.embed, []).append(i)
        elif "vector" not in inputs:
            first = next((m for m in EMBED_PREFERENCE if m in inputs), None)
            if first is None:
                raise InvalidInput("an item needs a vector or at least one of text, image, audio, video",
                                   field=f"items[{i}]")
            plan.setdefault(first, []).append(i)
    return plan


def write_items(handle: Handle, items: Sequence[ItemIn], decoded: list[dict[str, Any]],
                vectors: list[np.ndarray | None], settings: ServeSettings) -> int:
    """Upsert, replace the items' stored media, save. Returns the collection size."""
    dim = handle.coll.dim
    for i, v in enumerate(vectors):
        if v is None or v.shape != (dim,):
            got = "none" if v is None else str(v.shape[0])
            raise InvalidInput(f"vector dimension {got} does not match the collection's {dim}",
                               field=f"items[{i}].vector")
    metadata = []
    for item in items:
        meta = dict(item.metadata or {})
        if item.text is not None:
            meta.setdefault("caption", item.text)  # the page shows metadata["caption"]
        metadata.append(meta)
    media = [media_files(d.get("image"), d.get("audio"), d.get("video"), settings.thumb_size) for d in decoded]
    ids = [item.id for item in items]
    with handle.write_lock:
        handle.coll.upsert(ids, np.stack(vectors), metadata)  # type: ignore[arg-type]
        handle.media.remove(ids)  # an upsert replaces the item, media included
        for item_id, files in zip(ids, media, strict=True):
            for kind, data in files.items():
                handle.media.put(item_id, kind, data)
        handle.coll.save()
        return len(handle.coll)


def write_delete(handle: Handle, ids: list[int]) -> tuple[int, int]:
    with handle.write_lock:
        deleted = handle.coll.delete(ids, missing="ignore")
        handle.media.remove(ids)
        handle.coll.save()
        return deleted, len(handle.coll)
