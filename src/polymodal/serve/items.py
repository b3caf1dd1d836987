"""Request inputs -> model inputs, and item writes: decoding with limits (errors name the field), which input
gives an item's vector, and the write step (upsert + stored media + save) under the collection's write lock."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..index.media import media_files
from ..index.records import EMBED_PREFERENCE
from .media import RequestBudget, check_audio, check_image, check_video
from .schemas import ItemIn, VideoIn
from .service import ServeSettings
from .store import Handle


def prepare_one(modality: str, value: Any, settings: ServeSettings, field: str,
                budget: RequestBudget) -> Callable[[], Any]:
    """Check one input (media: from its header, charged to the request's budget) and return its decoder:
    text -> str, image -> uint8 HxWx3, audio -> (float32 wave, rate), video -> uint8 TxHxWx3, vector -> f32."""
    limits = settings.limits
    if modality == "text":
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput("text is empty", field=field)
        if len(value) > settings.max_text_chars:
            raise InvalidInput(f"text of {len(value)} characters exceeds the limit of {settings.max_text_chars}",
                               field=field)
        return lambda: value
    if modality == "image":
        return check_image(value, field, limits, budget)
    if modality == "audio":
        return check_audio(value, field, limits, budget)
    if modality == "video":
        data, frames = (value.data, value.frames) if isinstance(value, VideoIn) else (value["data"], value["frames"])
        return check_video(data, frames, field, limits, budget)
    if modality == "vector":
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below (no log noise)
            vec = np.asarray(value, dtype=np.float32)
        if vec.ndim != 1 or vec.size == 0:
            raise InvalidInput("expected a non-empty list of numbers", field=field)
        if not np.isfinite(vec).all():
            raise InvalidInput("vector contains NaN or inf (or overflows float32)", field=field)
        return lambda: vec
    raise InvalidInput(f"unknown input {modality!r}", field=field)


# Each decode_* checks every input of one request (one budget) before it decodes any of them.

def decode_groups(groups: dict[str, list[Any]], settings: ServeSettings) -> dict[str, list[Any]]:
    """``{modality: [inputs]}`` (as /v1/embed takes them) -> decoded; errors name ``modality[i]``."""
    budget = RequestBudget(settings.limits)
    pending = {m: [prepare_one(m, v, settings, f"{m}[{i}]", budget) for i, v in enumerate(values)]
               for m, values in groups.items()}
    return {m: [decode() for decode in decoders] for m, decoders in pending.items()}


def decode_query(fields: dict[str, Any], settings: ServeSettings, prefix: str = "") -> dict[str, Any]:
    """Decode each given input of a query; the error names ``prefix + input``."""
    budget = RequestBudget(settings.limits)
    pending = {m: prepare_one(m, v, settings, f"{prefix}{m}", budget) for m, v in fields.items() if v is not None}
    return {m: decode() for m, decode in pending.items()}


def decode_items(items: Sequence[ItemIn], settings: ServeSettings) -> list[dict[str, Any]]:
    budget = RequestBudget(settings.limits)
    pending = [{m: prepare_one(m, v, settings, f"items[{i}].{m}", budget)
                for m in ("text", "image", "audio", "video", "vector") if (v := getattr(item, m)) is not None}
               for i, item in enumerate(items)]
    return [{m: decode() for m, decode in decoders.items()} for decoders in pending]


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
                vectors: list[np.ndarray | None], settings: ServeSettings, model: Any = None) -> int:
    """Upsert with the items' media, saved, as one step (a failure undoes all of it). ``model``: the server's
    model, recorded as the collection's (and checked) when it embedded any item. Returns the collection size."""
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
    # an upsert replaces the item, media included ({} removes the old ones)
    media = [media_files(d.get("image"), d.get("audio"), d.get("video"), settings.thumb_size) for d in decoded]
    ids = [item.id for item in items]
    embedded = [item.embed or next(m for m in EMBED_PREFERENCE if m in d)   # the items the server embedded
                for item, d in zip(items, decoded, strict=True) if item.embed is not None or "vector" not in d]
    with handle.write_lock:
        coll = handle.writable()
        coll.upsert(ids, np.stack(vectors), metadata, media=media,  # type: ignore[arg-type]
                    model=model if embedded else None, modalities=embedded, save=True)
        return len(coll)


def write_delete(handle: Handle, ids: list[int]) -> tuple[int, int]:
    """Delete the items and their media, saved, as one step."""
    with handle.write_lock:
        coll = handle.writable()
        deleted = coll.delete(ids, missing="ignore", save=True)
        return deleted, len(coll)
