"""The report's "why did the top image match?" piece: an occlusion map (`polymodal.models.explain`) of a query's
top image, drawn as a heat overlay beside the image itself.

`explain_hit` computes what a query entry of the results dict carries under ``"explain"``; `explain_html`
renders it (`polymodal.report.html` calls it for every query that has one)."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

from .html_media import png_data_uri

if TYPE_CHECKING:
    from ..models.explain import ImageEmbedder

SIZE = 160  # px on the page


def explain_hit(model: ImageEmbedder, image: np.ndarray, text: str, grid: int = 8) -> dict[str, Any]:
    """``{"grid", "map", "image", "overlay"}`` for ``image`` and the query ``text``: the (grid, grid) occlusion
    map as a float32 array, the image the map was computed on (uint8) and the overlay (PNG bytes)."""
    # imported here: `polymodal.models` loads torch, which rendering a report does not need
    from ..models.explain import fit_image, overlay_png, similarity_map

    shown = fit_image(image)
    heat = similarity_map(model, shown, text, grid=grid)
    return {"grid": grid, "map": heat, "image": shown, "overlay": overlay_png(shown, heat)}


def explain_html(ex: Mapping[str, Any]) -> str:
    """The image and its overlay side by side, with a line on how to read them."""
    heat = np.asarray(ex["map"], dtype=np.float64)
    grid = f"{heat.shape[0]}x{heat.shape[1]}" if heat.ndim == 2 else "?"
    top = float(heat.max()) if heat.size else 0.0
    pics = "".join(f"<img src='{png_data_uri(ex[key])}' alt='{alt}' width='{SIZE}' height='{SIZE}' "
                   "style='object-fit:contain;image-rendering:pixelated;margin-right:8px'>"
                   for key, alt in (("image", "top image"), ("overlay", "occlusion heat map")) if ex.get(key) is not None)
    note = (f"Why the top image matched: each of {escape(grid)} patches was covered in turn; red marks the patches "
            f"whose covering lowers the similarity to the query most (largest drop {top:.3g}).")
    return f"<div class='explain'>{pics}<div class='muted'>{note}</div></div>"


__all__ = ["explain_hit", "explain_html"]
