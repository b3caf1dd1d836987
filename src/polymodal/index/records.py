"""What a collection stores about a sample: its scalar metadata, flattened, under names that never clash with
the fields polymodal itself sets (sample_id, caption, split, modality, source)."""

from __future__ import annotations

from typing import Any

from ..data.sample import Sample

RESERVED = ("sample_id", "caption", "split", "modality", "source")
# The modality an item with several inputs is embedded by (index build, the service's upserts): the first it has.
EMBED_PREFERENCE = ("image", "video", "audio", "text")


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def flatten_metadata(meta: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """JSON-safe scalars (and lists of scalars) of a sample's metadata, nested keys joined with dots."""
    out: dict[str, Any] = {}
    for key, v in meta.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict):
            out.update(flatten_metadata(v, name + "."))
        elif _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v)):
            out[name] = v
    return out


def item_metadata(sample: Sample, modality: str, split: str | None) -> dict[str, Any]:
    meta = {"sample_id": sample.id, "caption": sample.text, "split": split, "modality": modality,
            "source": sample.source}
    for key, v in flatten_metadata(sample.metadata or {}).items():
        meta[f"meta.{key}" if key in RESERVED else key] = v
    return {k: v for k, v in meta.items() if v is not None}


__all__ = ["EMBED_PREFERENCE", "RESERVED", "flatten_metadata", "item_metadata"]
