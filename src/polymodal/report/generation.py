"""The report's generation section: images with their generated captions, questions with the model's answers
(right or wrong marked against the reference), spoken clips with their transcripts and word/character error
rate. Every string is escaped (generated text may be anything).

``generation`` (every key optional)::

    {"captions": [{"image": uint8 HxWx3, "text": generated, "references": [str], "attributes": {"all": 0|1}}],
     "vqa": [{"image": uint8 HxWx3, "question", "answer": generated, "expected": [str], "correct": bool}],
     "asr": [{"audio": (wave float32, rate), "text": transcript, "reference", "lang", "error": float,
              "metric": "WER"|"CER"}],
     "summary": {label: value}}
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from .html_media import png_data_uri, wav_data_uri

CSS = """
.gen{display:flex;flex-wrap:wrap;gap:12px}.gen .card{width:200px;border:1px solid #ddd;border-radius:6px;padding:8px;
font-size:12px}.gen img{width:96px;height:96px;image-rendering:pixelated;border-radius:4px}
.gen .ok{color:#009E73;font-weight:600}.gen .bad{color:#D55E00;font-weight:600}.gen .ref{color:#777}
"""


def _num(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else escape(str(v))


def _caption(c: Mapping[str, Any]) -> str:
    att = (c.get("attributes") or {}).get("all")
    mark = "" if att is None else (" <span class='ok'>&#10003; attributes</span>" if att >= 1.0
                                   else " <span class='bad'>&#10007; attributes</span>")
    refs = c.get("references") or []
    return (f"<div class='card'><img src='{png_data_uri(c['image'])}' alt=''><div><b>{escape(str(c.get('text')))}"
            f"</b>{mark}</div><div class='ref'>reference: {escape(str(refs[0]) if refs else '-')}</div></div>")


def _answer(q: Mapping[str, Any]) -> str:
    mark = "<span class='ok'>&#10003;</span>" if q.get("correct") else "<span class='bad'>&#10007;</span>"
    expected = ", ".join(str(e) for e in (q.get("expected") or []))
    return (f"<div class='card'><img src='{png_data_uri(q['image'])}' alt=''><div>Q: {escape(str(q.get('question')))}"
            f"</div><div>A: <b>{escape(str(q.get('answer')))}</b> {mark}</div>"
            f"<div class='ref'>expected: {escape(expected)}</div></div>")


def _transcript(a: Mapping[str, Any]) -> str:
    wave_f32, sr = a["audio"]
    err = a.get("error")
    return (f"<div class='card' style='width:320px'><audio controls preload='none' "
            f"src='{wav_data_uri(wave_f32, int(sr))}'></audio><div><b>{escape(str(a.get('text')))}</b></div>"
            f"<div class='ref'>reference: {escape(str(a.get('reference')))}</div>"
            f"<div>{escape(str(a.get('metric', 'WER')))} {_num(err) if err is not None else '-'}</div></div>")


def generation_section(gen: Mapping[str, Any]) -> str:
    parts = ["<h2>Generation</h2>", f"<style>{CSS}</style>"]
    summary = gen.get("summary") or {}
    if summary:
        rows = "".join(f"<tr><td>{escape(str(k))}</td><td class=num>{_num(v)}</td></tr>" for k, v in summary.items())
        parts.append(f"<table>{rows}</table>")
    if gen.get("captions"):
        parts.append("<h3>Captions of test images</h3><div class='gen'>"
                     + "".join(_caption(c) for c in gen["captions"]) + "</div>")
    if gen.get("vqa"):
        parts.append("<h3>Questions about test images</h3><div class='gen'>"
                     + "".join(_answer(q) for q in gen["vqa"]) + "</div>")
    if gen.get("asr"):
        parts.append("<h3>Spoken test captions, transcribed</h3><div class='gen'>"
                     + "".join(_transcript(a) for a in gen["asr"]) + "</div>")
    return "".join(parts)


__all__ = ["generation_section"]
