"""Which model filled a collection: its fingerprint (a hash of the model's config and weights, e.g.
`EmbeddingModel.fingerprint`), its name (the run it was loaded from) and the modalities the items were
embedded from. The collection stores this record when a model first fills it; searching it with another
model's embeddings is refused (`ModelMismatch`), or only warned about when explicitly allowed, since two
models' vectors of the same size are still not comparable. The index never imports a model: it sees the
optional ``fingerprint`` / ``name`` attributes of whatever object embeds (the `Embedder` protocol)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InvalidInput, ModelMismatch
from .validate import is_utf8

MAX_FINGERPRINT_CHARS = 256


def model_identity(model: Any, field: str = "model") -> dict[str, Any] | None:
    """``{"fingerprint", "name"}`` of a model object (its optional ``fingerprint`` and ``name`` attributes), a
    ``{"fingerprint": ..., "name": ...}`` mapping or a fingerprint string; None for None or for a model object
    without a fingerprint (nothing to record or check then)."""
    if model is None:
        return None
    fp: Any
    name: Any
    if isinstance(model, str):
        fp, name = model, None
    elif isinstance(model, Mapping):
        fp, name = model.get("fingerprint"), model.get("name")
    else:
        fp, name = getattr(model, "fingerprint", None), getattr(model, "name", None)
        if fp is None:
            return None
    if not isinstance(fp, str) or not fp.strip() or len(fp) > MAX_FINGERPRINT_CHARS or not is_utf8(fp):
        raise InvalidInput(f"a model fingerprint must be a non-empty string of at most {MAX_FINGERPRINT_CHARS} "
                           f"characters, got {fp!r}", field=field)
    if name is not None and (not isinstance(name, str) or not is_utf8(name)):
        raise InvalidInput(f"a model name must be a string, got {name!r}", field=field)
    return {"fingerprint": fp, "name": name}


def check_modalities(modalities: Iterable[str] | str | None) -> list[str]:
    """The modalities vectors were embedded from (sorted, unique); each one of text, image, audio, video."""
    if modalities is None:
        return []
    values = [modalities] if isinstance(modalities, str) else list(modalities)
    if not values:
        return []
    # imported here: the sample module loads torch, which a collection on its own does not need
    from ..data.sample import MODALITIES

    for m in values:
        if m not in MODALITIES:
            raise InvalidInput(f"expected modalities among {', '.join(MODALITIES)}, got {m!r}", field="modalities")
    return sorted(set(values))


def describe(record: Mapping[str, Any]) -> str:
    short = str(record["fingerprint"])[:12]
    return f"model {record['name']} (fingerprint {short})" if record.get("name") else f"model fingerprint {short}"


def merged_record(record: dict[str, Any] | None, ident: dict[str, Any], modalities: list[str]) -> dict[str, Any]:
    """The collection's record after a write of vectors embedded by ``ident`` from ``modalities``; refuses a
    write by another model (it would mix two embedding spaces in one collection)."""
    if record is not None and record["fingerprint"] != ident["fingerprint"]:
        raise ModelMismatch(f"the collection was filled by {describe(record)}; these vectors come from "
                            f"{describe(ident)}, and two models' embeddings are not comparable: use a new "
                            "collection for this model", field="model")
    old = record or {"fingerprint": ident["fingerprint"], "name": ident.get("name"), "modalities": []}
    return {"fingerprint": old["fingerprint"], "name": old.get("name") or ident.get("name"),
            "modalities": sorted(set(old.get("modalities") or []) | set(modalities))}


def check_model(record: Mapping[str, Any] | None, model: Any, allow_mismatch: bool = False) -> None:
    """Refuse (ModelMismatch) a query embedded by another model than the one that filled the collection; with
    ``allow_mismatch`` only warn. Nothing to check when either side has no fingerprint."""
    ident = model_identity(model)
    if record is None or ident is None or ident["fingerprint"] == record.get("fingerprint"):
        return
    message = (f"the collection was filled by {describe(record)}, but the query is embedded by {describe(ident)}; "
               "embeddings of different models are not comparable, so the hits would be meaningless. Search with "
               "the collection's model, or pass allow_model_mismatch=True (--allow-model-mismatch) to search anyway")
    if allow_mismatch:
        warnings.warn(message, UserWarning, stacklevel=3)
        return
    raise ModelMismatch(message, field="model")


__all__ = ["check_modalities", "check_model", "describe", "merged_record", "model_identity"]
