"""A gallery of generated pictures for the self-contained report: one card per prompt with its picture(s), the
prompt, its language, scores (e.g. CLIP score, attribute accuracy) and a caption line, in a grid that fills the
page's width. Pictures are PNG data URIs (nothing is fetched); every string is escaped, since a prompt may hold
anything. `render_report` shows it as the "Generated images" section (``results["generated_images"]``).

    gallery_html([GalleryItem("a red star above a blue square", pictures, lang="en",
                              scores={"clip": 0.31}, caption="star: red ok, square: blue ok")])"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .html_media import png_data_uri

THUMB = 96  # px on the page: a 64x64 picture is scaled up, pixelated rather than blurred
_LANG = re.compile(r"[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*")   # a BCP 47 tag, as the lang attribute takes it

CSS = """
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px;margin:8px 0}
.gallery figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:8px;font-size:12px}
.gallery .pics{display:flex;flex-wrap:wrap;gap:4px}
.gallery img{width:96px;height:96px;image-rendering:pixelated;border-radius:4px}
.gallery .prompt{font-weight:600;margin-top:4px;word-wrap:break-word}.gallery .lang{color:#777;font-weight:400}
.gallery .scores{font-variant-numeric:tabular-nums;color:#333}.gallery .caption{color:#555;word-wrap:break-word}
"""


@dataclass(frozen=True, eq=False)   # arrays: no field-wise ==
class GalleryItem:
    """One prompt and what a model drew for it. ``image``: a uint8 ``HxWx3`` (or ``HxW``) array, or several (a
    sequence, or an ``N x H x W x 3`` array); ``scores``: name -> value; ``caption``: one line under them."""

    prompt: str
    image: np.ndarray | Sequence[np.ndarray]
    lang: str = ""
    scores: Mapping[str, float] = field(default_factory=dict)
    caption: str = ""

    def __post_init__(self) -> None:
        self.pictures()  # refuse a bad picture now, naming the field

    def pictures(self) -> list[np.ndarray]:
        """The item's pictures, each a uint8 ``HxWx3`` or ``HxW`` array."""
        arr = self.image if isinstance(self.image, np.ndarray) else None
        many = list(arr) if arr is not None and arr.ndim == 4 else [arr] if arr is not None else list(self.image)
        if not many:
            raise InvalidInput("give at least one picture", field="image")
        out = []
        for i, pic in enumerate(many):
            a = np.asarray(pic)
            if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)):
                raise InvalidInput(f"picture {i} must be uint8 HxWx3 or HxW, got {a.dtype} {a.shape}",
                                   field="image")
            out.append(a)
        return out

    @classmethod
    def of(cls, value: GalleryItem | Mapping[str, Any]) -> GalleryItem:
        """An item, or a mapping with an item's fields (``{"prompt", "image", "lang", "scores", "caption"}``)."""
        if isinstance(value, GalleryItem):
            return value
        try:
            return cls(**value)
        except TypeError as exc:
            raise InvalidInput(f"a gallery item takes prompt, image, lang, scores and caption ({exc})",
                               field="generated_images") from None


def _score(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return str(value)
    x = float(value)
    return str(x) if not math.isfinite(x) else str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.3g}"


def _card(item: GalleryItem) -> str:
    alt = escape(item.prompt)
    pics = "".join(f"<img src='{png_data_uri(p)}' alt='{alt}' width='{THUMB}' height='{THUMB}'>"
                   for p in item.pictures())
    lang = item.lang if _LANG.fullmatch(item.lang or "") else ""
    attr = f" lang='{escape(lang)}'" if lang else ""
    tag = f" <span class='lang'>[{escape(item.lang)}]</span>" if item.lang else ""
    parts = [f"<figure class='item'{attr}><div class='pics'>{pics}</div><figcaption>",
             f"<div class='prompt'>{escape(item.prompt)}{tag}</div>"]
    if item.scores:
        shown = " &middot; ".join(f"{escape(str(k))} {escape(_score(v))}" for k, v in item.scores.items())
        parts.append(f"<div class='scores'>{shown}</div>")
    if item.caption:
        parts.append(f"<div class='caption'>{escape(item.caption)}</div>")
    return "".join(parts) + "</figcaption></figure>"


def gallery_html(items: Sequence[GalleryItem | Mapping[str, Any]]) -> str:
    """The gallery as an HTML fragment (its own style, then the grid), to place in a page."""
    cards = [_card(GalleryItem.of(x)) for x in items]
    if not cards:
        return "<p class='muted'>No generated images.</p>"
    return f"<style>{CSS}</style><div class='gallery'>{''.join(cards)}</div>"


__all__ = ["GalleryItem", "gallery_html"]
