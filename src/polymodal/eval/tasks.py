"""Evaluation tasks over a data set and an embedding model (anything with ``.embed(**{modality: inputs})``
returning normalised (N, D) float32 arrays and a ``.modalities`` tuple, e.g. ``polymodal.load(run)``).

With ``progress=True`` the encoding (nearly all of an evaluation's time) shows one tqdm bar with the time
left on stderr; the inputs are then embedded in chunks of `ENCODE_CHUNK`, a multiple of
`EmbeddingModel.embed`'s batch, so the embeddings are the same as from one call."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from itertools import permutations
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ..data.sample import Sample
from ..errors import InvalidInput
from .retrieval import duplicate_rate, retrieval_ranks
from .zeroshot import class_embeddings, zeroshot_metrics

TEMPLATES = {
    "en": ["a photo of the digit {}", "the number {}", "a handwritten {}", "{}"],
    "zh": ["数字{}", "手写的{}", "{}"],
}


class EmbeddingModel(Protocol):
    @property
    def modalities(self) -> tuple[str, ...]: ...

    def embed(self, *args: Any, **kwargs: Any) -> np.ndarray: ...


def model_input(sample: Sample, modality: str) -> Any:
    """The raw input ``model.embed`` takes for one sample's modality."""
    if modality == "audio":
        return (sample.audio, sample.sample_rate)
    return getattr(sample, modality)


def embed_modality(model: EmbeddingModel, samples: Sequence[Sample], modality: str) -> np.ndarray:
    return np.asarray(model.embed(**{modality: [model_input(s, modality) for s in samples]}), dtype=np.float32)


ENCODE_CHUNK = 256  # 4 x EmbeddingModel.embed's default batch of 64: chunked embeddings equal one call's


class _Encoder:
    """``model.embed`` per modality; with a bar, in chunks that advance one bar over every input of a task."""

    def __init__(self, model: EmbeddingModel, total: int, progress: bool):
        self.model = model
        self.bar = tqdm(total=total, desc="encoding", unit="item") if progress else None

    def __call__(self, modality: str, inputs: Sequence[Any]) -> np.ndarray:
        if self.bar is None:
            return np.asarray(self.model.embed(**{modality: list(inputs)}), dtype=np.float32)
        parts = []
        for lo in range(0, len(inputs), ENCODE_CHUNK):
            chunk = list(inputs[lo:lo + ENCODE_CHUNK])
            parts.append(np.asarray(self.model.embed(**{modality: chunk}), dtype=np.float32))
            self.bar.update(len(chunk))
        return np.concatenate(parts) if parts else np.asarray(self.model.embed(**{modality: []}), dtype=np.float32)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _label_key(s: Sample) -> str | None:
    labels = s.metadata.get("labels")
    return json.dumps(labels, sort_keys=True, ensure_ascii=False) if labels else None


def evaluate_retrieval(model: EmbeddingModel, samples: Sequence[Sample], *, ks: Sequence[int] = (1, 5, 10),
                       all_captions: bool = False, modalities: Iterable[str] | None = None,
                       progress: bool = False) -> dict[str, Any]:
    """R@k, median/mean rank in every direction between the modalities the model and the data share.

    With ``all_captions`` every value of ``metadata['captions']`` (e.g. English and Chinese) becomes an
    extra caption of its item. Identity retrieval is reported with the caption duplicate rate; when the
    samples carry ``metadata['labels']``, attribute-match R@k (hit = an item with the same labels) too."""
    wanted = set(modalities or model.modalities)
    present = [m for m in model.modalities if m in wanted and any(getattr(s, m) is not None for s in samples)]
    if len(present) < 2:
        raise InvalidInput(f"need two modalities shared by the model and the data, found {present}", field="modalities")
    plan: dict[str, tuple[list[Any], list[int]]] = {}  # m -> (inputs, item index per row)
    texts: list[str] = []
    for m in present:
        idx = [i for i, s in enumerate(samples) if getattr(s, m) is not None]
        if m == "text" and all_captions:
            rows = [(i, c) for i in idx for c in _captions(samples[i])]
            plan[m] = ([c for _, c in rows], [i for i, _ in rows])
        else:
            plan[m] = ([model_input(samples[i], m) for i in idx], idx)
        if m == "text":
            texts = [t or "" for t in plan[m][0]]
    encode = _Encoder(model, sum(len(inputs) for inputs, _ in plan.values()), progress)
    items = {m: (encode(m, inputs), np.array(rows)) for m, (inputs, rows) in plan.items()}
    encode.close()
    keys = [_label_key(s) for s in samples]
    names = sorted({k for k in keys if k is not None})
    number = {k: n for n, k in enumerate(names)}
    label_of = [number[k] if k is not None else -1 for k in keys]  # -1: item without labels
    out: dict[str, Any] = {"n_items": len(samples), "directions": {}}
    if texts:
        out["caption_duplicate_rate"] = duplicate_rate(texts)
    for a, b in permutations(present, 2):
        (qa, qi), (gb, gi) = items[a], items[b]
        pos_of: dict[int, list[int]] = {}
        for row, item in enumerate(gi):
            pos_of.setdefault(int(item), []).append(row)
        keep = [r for r, item in enumerate(qi) if int(item) in pos_of]
        if not keep:
            continue
        res: dict[str, Any] = dict(retrieval_ranks(qa[keep], gb, positives=[pos_of[int(qi[r])] for r in keep]).summary(ks))
        if names and all(label_of[int(i)] >= 0 for i in gi) and all(label_of[int(qi[r])] >= 0 for r in keep):
            attr = retrieval_ranks(qa[keep], gb, query_labels=[label_of[int(qi[r])] for r in keep],
                                   gallery_labels=[label_of[int(i)] for i in gi]).summary(ks)
            res["attribute"] = {k: v for k, v in attr.items() if k.startswith("R@")}
        out["directions"][f"{a}->{b}"] = res
    return out


def _captions(s: Sample) -> list[str]:
    caps = s.metadata.get("captions")
    vals = list(caps.values()) if isinstance(caps, dict) else list(caps or [])
    out = [s.text] if s.text else []
    out += [c for c in vals if isinstance(c, str) and c.strip() and c not in out]
    return out


def label_value(meta: dict[str, Any], field: str) -> Any:
    """``metadata['labels']['color']`` for the dotted field ``labels.color`` (None when absent)."""
    cur: Any = meta
    for part in field.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def temperature(model: Any) -> tuple[float, float | None]:
    """(logit multiplier, bias or None) of an embedding model (`EmbeddingModel.temperature`: its alignment
    model's learned ``logit_scale``, a checkpoint's own, and SigLIP's ``logit_bias``); CLIP_benchmark's 100 for a
    model without one."""
    own = getattr(model, "temperature", None)
    if isinstance(own, tuple):
        return own
    inner = getattr(model, "model", None)
    log_scale = getattr(inner, "logit_scale", None)
    if log_scale is None:
        return 100.0, None
    bias = getattr(inner, "logit_bias", None)
    return float(np.exp(float(log_scale))), (None if bias is None else float(bias))


def evaluate_zeroshot(model: EmbeddingModel, samples: Sequence[Sample], classnames: Sequence[str], *,
                      label_field: str = "label", label_names: Sequence[str] | None = None,
                      templates: Sequence[str] | None = None, lang: str = "en",
                      modalities: Iterable[str] | None = None, progress: bool = False) -> dict[str, Any]:
    """Classify every non-text modality of the samples by text prompts (prompt ensembles).

    Labels come from the (dotted) metadata field: an int is a class index; a string is looked up in
    ``label_names`` (default: ``classnames``), so Chinese prompts can classify English-labelled data."""
    if "text" not in model.modalities:
        raise InvalidInput("zero-shot classification needs a model with a text tower", field="modalities")
    names = list(label_names or classnames)
    if len(names) != len(classnames):
        raise InvalidInput(f"{len(names)} label names for {len(classnames)} classes", field="label_names")

    def label(s: Sample) -> int | None:
        v = label_value(s.metadata, label_field)
        if isinstance(v, str):
            return names.index(v) if v in names else None
        return int(v) if isinstance(v, int | np.integer) and not isinstance(v, bool) else None

    tmpl = list(templates or TEMPLATES.get(lang, TEMPLATES["en"]))
    classes = class_embeddings(lambda t: model.embed(text=t), classnames, tmpl)
    scale, bias = temperature(model)
    out: dict[str, Any] = {"classes": list(classnames), "templates": tmpl, "label_field": label_field}
    subs = {m: [s for s in samples if getattr(s, m) is not None and label(s) is not None]
            for m in modalities or [m for m in model.modalities if m != "text"]}
    subs = {m: sub for m, sub in subs.items() if sub}
    encode = _Encoder(model, sum(len(sub) for sub in subs.values()), progress)
    for m, sub in subs.items():
        out[m] = zeroshot_metrics(encode(m, [model_input(s, m) for s in sub]), classes, [label(s) or 0 for s in sub],
                                  scale=scale, bias=bias)
    encode.close()
    return out
