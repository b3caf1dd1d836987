"""The quickstart's example queries: which to ask (test captions, spoken captions, speech + a text hint,
hand-written text), running them against the collection, and their JSON form (without media)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

K = 8  # hits per query
EXPLAINED = 2  # text queries whose top image the report explains (an occlusion map: 65 image embeddings each)


def query_specs(tests: list[Any], langs: list[str], modalities: tuple[str, ...] = ("audio", "image", "text")
                ) -> list[dict[str, Any]]:
    """Example queries: test captions, spoken captions, speech + a text hint, hand-written text
    (one of them a colour+shape pair held out of training); only those the model's ``modalities`` can embed."""
    plain = [s for s in tests if s.audio is not None and not s.metadata.get("heldout")] or tests
    a = next((s for s in plain if s.metadata.get("lang", "en") == "en"), plain[0])
    rest = [s for s in plain if s is not a] or plain
    b, c = rest[0], rest[1 % len(rest)]
    hint = ", ".join(f"{o.get('size', '')} {o.get('color', '')} {o.get('shape', '')}".strip()
                     for o in c.metadata.get("objects") or [] if isinstance(o, dict)) or None
    specs: list[dict[str, Any]] = [
        {"title": "Text: a test caption", "kind": "text", "text": a.text, "target": a.id},
        {"title": "Speech: a spoken test caption", "kind": "speech", "audio": (b.audio, b.sample_rate),
         "target": b.id, "note": f"what is said: {b.text}"},
        {"title": "Speech + text hint (fused)", "kind": "fused", "audio": (c.audio, c.sample_rate),
         "text": hint, "target": c.id,
         "note": f"what is said: {c.text}"},
        {"title": "Text, hand-written", "kind": "text", "text": "a big yellow circle",
         "labels": {"color": "yellow", "shape": "circle", "size": "large"}},
        {"title": "Text, held-out pair (red stars never appear in training)", "kind": "text", "text": "a red star",
         "labels": {"color": "red", "shape": "star"}},
    ]
    zh = next((s for s in tests if s.metadata.get("lang") == "zh" and s.text), None)
    if "zh" in langs and zh is not None:
        specs.insert(1, {"title": "Text (中文): a test caption", "kind": "text", "text": zh.text, "target": zh.id})
    return [q for q in specs if all(m in modalities for m, key in (("text", "text"), ("audio", "audio"))
                                    if q.get(key) is not None)]


def _shows(sample: Any, want: dict[str, str]) -> bool:
    """Whether any object in the scene has the wanted attributes (e.g. colour and shape)."""
    objects = sample.metadata.get("objects") or [sample.metadata.get("labels") or {}]
    return bool(want) and any(all(o.get(k) == v for k, v in want.items()) for o in objects if isinstance(o, dict))


def run_queries(model: Any, coll_path: Path, tests: list[Any], langs: list[str]) -> list[dict[str, Any]]:
    from ..index import Collection, search_with_model
    from ..report.explain import explain_hit

    by_id = {s.id: s for s in tests}
    out = []
    with Collection.open(coll_path, readonly=True) as coll:
        for spec in query_specs(tests, langs, tuple(model.modalities)):
            res = search_with_model(coll, model, text=spec.get("text"), audio=spec.get("audio"), k=K)
            hits = []
            for h in res.hits(0):
                meta = h["metadata"]
                sample = by_id.get(meta.get("sample_id", ""))
                match = (meta.get("sample_id") == spec.get("target") if spec.get("target")
                         else sample is not None and _shows(sample, spec.get("labels") or {}))
                hits.append({"id": h["id"], "score": float(h["score"]), "sample_id": meta.get("sample_id"),
                             "caption": meta.get("caption"), "match": match,
                             "image": sample.image if sample is not None else None})
            out.append({**spec, "hits": hits})
            explain = spec["kind"] == "text" and "image" in model.modalities and sum("explain" in q for q in out) < EXPLAINED
            if explain and hits and hits[0]["image"] is not None:
                out[-1]["explain"] = explain_hit(model, hits[0]["image"], spec["text"])  # why the top image matched
    return out


def queries_json(queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The queries without media, for --json and summary.json."""
    out = []
    for q in queries:
        hits = [{k: h[k] for k in ("id", "sample_id", "score", "caption", "match")} for h in q["hits"]]
        rank = next((i + 1 for i, h in enumerate(hits) if h["match"]), None)
        out.append({"title": q["title"], "kind": q["kind"], "text": q.get("text"), "target": q.get("target"),
                    "first_match_rank": rank, "hits": hits})
    return out


__all__ = ["K", "queries_json", "query_specs", "run_queries"]
