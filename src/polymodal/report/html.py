"""One self-contained HTML report from a results dict: charts are inline SVG, images and audio are data: URIs,
and nothing is fetched from anywhere. Every string from the results (captions may be Chinese, or hostile)
goes through `html.escape`.

The results dict (every key optional except ``title``)::

    {"title": str, "subtitle": str,
     "meta": {label: value},                         # a small key/value table (data, recipe, machine, ...)
     "steps": [{"name", "status": "ran"|"reused"|"skipped", "seconds", "took": seconds when it ran (reused)}],
     "training": {"steps": [..], "loss": [..], "val_steps": [..], "val_loss": [..], "summary": {label: value}},
     "retrieval": {"directions": {"text->image": {"R@1", "R@5", "R@10", "median_rank", "attribute": {R@k}}},
                   "n_items": int, "caption_duplicate_rate": float},
     "queries": [{"title", "kind", "text": str|None, "audio": (wave float32, sample_rate)|None, "target": str|None,
                  "hits": [{"id", "score", "caption", "sample_id", "image": uint8 HxWx3 | PNG bytes | None,
                            "match": bool}],
                  "explain": why the top image matched, see `polymodal.report.explain` (optional)}],
     "robustness": {"levels": [..], "models": {name: evaluate_classification report}} | None,
     "generation": see `polymodal.report.generation` (captions, answers, transcripts) | None,
     "generated_images": [`polymodal.report.gallery.GalleryItem` (or a mapping of its fields): prompt, lang,
                          picture(s), scores, caption] | None,     # the "Generated images" section
     "notes": [str], "serve_command": str}
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes
from .explain import explain_html
from .gallery import gallery_html
from .generation import generation_section
from .html_media import png_data_uri, wav_bytes, wav_data_uri
from .plots import Series, bar_chart, line_chart

KS = ("R@1", "R@5", "R@10")
THUMB = 96  # px on the page; the image is embedded at its own size and scaled by the browser

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans","Noto Sans CJK SC",sans-serif;margin:24px auto;
max-width:1100px;color:#222;padding:0 16px}
h1{margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:16px}.muted{color:#777;font-size:13px}
.query{border:1px solid #ddd;border-radius:6px;padding:10px;margin:12px 0}
.query h3{margin:0 0 6px 0;font-size:15px}.hits{display:flex;flex-wrap:wrap;gap:10px}
.hit{width:120px;font-size:11px;text-align:center}.hit img{width:96px;height:96px;image-rendering:pixelated;
border:3px solid transparent;border-radius:4px}.hit.match img{border-color:#009E73}
.score{font-variant-numeric:tabular-nums;font-weight:600}.caption{color:#555;word-wrap:break-word}
code{background:#f4f4f4;padding:2px 4px;border-radius:3px}
"""


# ------------------------------------------------------------------------------------------- media

# ------------------------------------------------------------------------------------------- pieces

def format_number(v: Any) -> str:
    """A number as people write it: integers (and whole floats) plain, 100 and more rounded to a whole number,
    smaller values to three significant digits (0.812, 12.5, 0.0503); anything else as text."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        x = float(v)
        if not math.isfinite(x):
            return str(x)
        if x.is_integer() and abs(x) < 1e15:
            return str(int(x))
        return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"
    return str(v)


def _num(v: Any) -> str:
    return "-" if v is None else escape(format_number(v))


def _kv_table(rows: Mapping[str, Any]) -> str:
    body = "".join(f"<tr><th>{escape(str(k))}</th><td>{_num(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _steps(steps: Sequence[Mapping[str, Any]]) -> str:
    def status(s: Mapping[str, Any]) -> str:
        took = s.get("took")  # a reused step: how long it took when it ran
        return escape(str(s.get("status", ""))) + (f" (took {_num(took)} s)" if took is not None else "")

    rows = "".join(f"<tr><td>{escape(str(s.get('name', '')))}</td><td>{status(s)}</td>"
                   f"<td class='num'>{_num(s.get('seconds'))}</td></tr>" for s in steps)
    total = sum(float(s.get("seconds") or 0.0) for s in steps)
    return (f"<table><tr><th>step</th><th>status</th><th>seconds</th></tr>{rows}"
            f"<tr><th>total</th><th></th><th class='num'>{_num(total)}</th></tr></table>")


def _training(tr: Mapping[str, Any]) -> str:
    series = [Series("train loss", tr.get("steps") or [], tr.get("loss") or [])]
    if tr.get("val_loss"):
        series.append(Series("validation loss", tr.get("val_steps") or [], tr["val_loss"], dashed=True, markers=True))
    chart = line_chart(series, title="Training loss", x_label="step", y_label="loss", width=640)
    summary = _kv_table(tr["summary"]) if tr.get("summary") else ""
    return f"<h2>Training</h2><div class='charts'>{chart}{summary}</div>"


def _retrieval(ret: Mapping[str, Any]) -> str:
    dirs: Mapping[str, Mapping[str, Any]] = ret.get("directions") or {}
    names = list(dirs)
    parts = ["<h2>Retrieval (test split)</h2>"]
    info = {k: ret[k] for k in ("n_items", "caption_duplicate_rate") if k in ret}
    if info:
        parts.append(f"<p class='muted'>{', '.join(f'{escape(k)}: {_num(v)}' for k, v in info.items())}</p>")
    charts = [bar_chart(names, KS, [[dirs[d].get(k) for k in KS] for d in names],
                        title="Recall@K per direction (exact item)", y_label="recall")]
    if any(isinstance(dirs[d].get("attribute"), Mapping) for d in names):
        attr = [[(dirs[d].get("attribute") or {}).get(k) for k in KS] for d in names]
        charts.append(bar_chart(names, KS, attr, title="Recall@K per direction (same labels)", y_label="recall"))
    parts.append(f"<div class='charts'>{''.join(charts)}</div>")
    head = "".join(f"<th>{k}</th>" for k in (*KS, "median rank", *(f"attr {k}" for k in KS)))
    rows = []
    for d in names:
        r, a = dirs[d], dirs[d].get("attribute") or {}
        cells = [_num(r.get(k)) for k in KS] + [_num(r.get("median_rank"))] + [_num(a.get(k)) for k in KS]
        rows.append(f"<tr><td>{escape(d)}</td>{''.join(f'<td class=num>{c}</td>' for c in cells)}</tr>")
    parts.append(f"<table><tr><th>direction</th>{head}</tr>{''.join(rows)}</table>")
    return "".join(parts)


def _hit(h: Mapping[str, Any], rank: int) -> str:
    img = h.get("image")
    pic = (f"<img src='{png_data_uri(img)}' alt='{escape(str(h.get('caption') or ''))}' width='{THUMB}' "
           f"height='{THUMB}'>" if img is not None else "<div class='muted'>(no image)</div>")
    cls = "hit match" if h.get("match") else "hit"
    mark = " &#10003;" if h.get("match") else ""
    return (f"<div class='{cls}' data-id='{escape(str(h.get('id')))}'>{pic}<div>#{rank} "
            f"<span class='score'>{_num(h.get('score'))}</span>{mark}</div>"
            f"<div class='caption'>{escape(str(h.get('caption') or ''))}</div></div>")


def _query(q: Mapping[str, Any]) -> str:
    parts = [f"<div class='query' data-kind='{escape(str(q.get('kind', '')))}'>",
             f"<h3>{escape(str(q.get('title', 'query')))}</h3>"]
    if q.get("text"):
        parts.append(f"<div>text: <q class='query-text'>{escape(str(q['text']))}</q></div>")
    audio = q.get("audio")
    if audio is not None:
        wave_f32, sr = audio
        parts.append(f"<div>speech: <audio controls preload='none' src='{wav_data_uri(wave_f32, int(sr))}'>"
                     "</audio></div>")
    if q.get("note"):
        parts.append(f"<div class='muted'>{escape(str(q['note']))}</div>")
    hits = q.get("hits") or []
    parts.append("<div class='hits'>" + "".join(_hit(h, i + 1) for i, h in enumerate(hits)) + "</div>")
    if q.get("explain") is not None:  # why the top image matched (report/explain.py)
        parts.append(explain_html(q["explain"]))
    return "".join(parts) + "</div>"


FLAT = 0.01  # a noise curve whose accuracy moves less than this (one point) over all levels is flat


def _robustness_intro(levels: Sequence[float]) -> str:
    shown = ", ".join(format_number(v) for v in levels)
    return ("<p class='muted'>Accuracy (0-1) with a modality removed, and under noise of increasing level "
            f"({escape(shown)}; 0 = clean, 1 = strongest). <b>Relative robustness</b>: the area under the "
            "accuracy-vs-noise curve over the levels, on the accuracy scale (0-1): a curve that never drops scores "
            "its clean accuracy. <b>Effective robustness</b>: the accuracy a model keeps beyond late fusion's curve "
            f"(shifted to start at the model's own clean accuracy), summed over the {len(levels)} noise levels, in "
            "accuracy units (+0.1: one level 10 points better, or ten levels 1 point better); 0 for late fusion "
            "itself, above 0 more robust than late fusion, below 0 less.</p>")


def _accuracy(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _flat_note(sweep: str, models: Mapping[str, Mapping[str, Any]]) -> str:
    """Why a sweep's chart is flat (every model's accuracy moves less than `FLAT`), or "" when it is not."""
    curves = {name: [float(a) for a in (((r.get("noise") or {}).get(sweep) or {}).get("acc") or [])
                     if isinstance(a, int | float) and math.isfinite(a)] for name, r in models.items()}
    curves = {name: c for name, c in curves.items() if c}
    if not curves or any(max(c) - min(c) >= FLAT for c in curves.values()):
        return ""
    lo, hi = min(min(c) for c in curves.values()), max(max(c) for c in curves.values())
    span = format_number(lo) if format_number(lo) == format_number(hi) else f"{format_number(lo)}-{format_number(hi)}"
    text = (f"Accuracy vs {sweep} noise is flat: no model's accuracy moves by {FLAT:g} or more from the clean "
            f"level to the strongest noise (all stay at {span}).")
    clean = {name: _accuracy((r.get("clean") or {}).get("acc")) for name, r in models.items()}
    removed = {name: _accuracy(((r.get("removed") or {}).get(sweep) or {}).get("acc")) for name, r in models.items()}
    if all(v is not None for v in (*removed.values(), *clean.values())):
        if all(abs((removed[n] or 0.0) - (clean[n] or 0.0)) < FLAT for n in removed):
            scores = sorted({format_number(v) for v in removed.values()})
            score = scores[0] if len(scores) == 1 else ", ".join(f"{n} {format_number(v)}" for n, v in removed.items())
            text += (f" The models do not need the {sweep}: with the {sweep} removed they still score {score}, "
                     f"because the other modality carries the label, so noise on the {sweep} cannot hurt them.")
        else:
            drops = ", ".join(f"{n} {format_number(clean[n])} -> {format_number(removed[n])}" for n in removed)
            text += (f" Yet removing the {sweep} costs accuracy ({drops}): even the strongest noise leaves "
                     f"what the models use from the {sweep} intact.")
    return f"<p class='muted flat-note' data-sweep='{escape(sweep)}'>{escape(text)}</p>"


def _robustness(rob: Mapping[str, Any]) -> str:
    models: Mapping[str, Mapping[str, Any]] = rob.get("models") or {}
    if not models:
        return ""
    levels = list(rob.get("levels") or next(iter(models.values())).get("levels") or [])
    parts = ["<h2>Robustness (fusion classifiers on digits)</h2>", _robustness_intro(levels)]
    mods = sorted({m for r in models.values() for m in (r.get("removed") or {})})
    sweeps = sorted({s for r in models.values() for s in (r.get("noise") or {})})
    head = "".join(f"<th>{escape(m)} missing</th>" for m in mods)
    head += "".join(f"<th>{escape(s)} noise: rel. robustness (0-1) / eff. robustness (sum over {len(levels)} "
                    "levels)</th>" for s in sweeps)
    rows = []
    for name, r in models.items():
        cells = [f"<td class=num>{_num((r.get('clean') or {}).get('acc'))}</td>"]
        cells += [f"<td class=num>{_num(((r.get('removed') or {}).get(m) or {}).get('acc'))}</td>" for m in mods]
        for s in sweeps:
            n = (r.get("noise") or {}).get(s) or {}
            eff = n.get("effective_robustness")
            cells.append(f"<td class=num>{_num(n.get('relative_robustness'))} / {_num(eff) if eff is not None else '-'}"
                         "</td>")
        rows.append(f"<tr><td>{escape(name)}</td>{''.join(cells)}</tr>")
    parts.append(f"<table><tr><th>model</th><th>clean acc</th>{head}</tr>{''.join(rows)}</table>")
    charts = []
    for s in sweeps:
        series = [Series(name, levels, ((r.get("noise") or {}).get(s) or {}).get("acc") or [], markers=True)
                  for name, r in models.items()]
        charts.append(line_chart(series, title=f"Accuracy vs {s} noise", x_label="noise level", y_label="accuracy",
                                 width=360, height=260, y_min=0.0, y_max=1.0, x_ticks=levels or None))
    parts.append(f"<div class='charts'>{''.join(charts)}</div>")
    parts += [_flat_note(s, models) for s in sweeps]
    return "".join(parts)


# ------------------------------------------------------------------------------------------- page

def render_report(results: Mapping[str, Any]) -> str:
    """The whole report page as a string (see the module doc for ``results``)."""
    title = str(results.get("title", "polymodal report"))
    body = [f"<h1>{escape(title)}</h1>"]
    if results.get("subtitle"):
        body.append(f"<p class='muted'>{escape(str(results['subtitle']))}</p>")
    if results.get("meta"):
        body.append(_kv_table(results["meta"]))
    if results.get("steps"):
        body.append("<h2>Steps</h2>" + _steps(results["steps"]))
    if results.get("training"):
        body.append(_training(results["training"]))
    if results.get("retrieval"):
        body.append(_retrieval(results["retrieval"]))
    if results.get("queries"):
        body.append("<h2>Example queries</h2><p class='muted'>Searched in the collection of test images; a green "
                    "frame and &#10003; mark the expected item (or, for a hand-written query, an item whose labels "
                    "match it).</p>")
        body += [_query(q) for q in results["queries"]]
    if results.get("robustness"):
        body.append(_robustness(results["robustness"]))
    if results.get("generation"):
        body.append(generation_section(results["generation"]))
    if results.get("generated_images"):
        body.append("<h2>Generated images</h2>" + gallery_html(results["generated_images"]))
    for note in results.get("notes") or []:
        body.append(f"<p class='muted'>{escape(str(note))}</p>")
    if results.get("serve_command"):
        body.append(f"<h2>Browse</h2><p><code>{escape(str(results['serve_command']))}</code></p>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(results: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render and write the report atomically (a reader never sees half a page); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, render_report(results).encode("utf-8"))
    return out


__all__ = ["format_number", "png_data_uri", "render_report", "wav_bytes", "wav_data_uri", "write_report"]
