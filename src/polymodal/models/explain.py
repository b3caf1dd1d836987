"""Why did this image match this query? Occlusion maps for any embedding model.

`similarity_map` cuts the image into a (gh, gw) grid of patches, paints each patch in turn with a flat colour
(the image's mean colour, or mid grey), embeds the original and every occluded copy in ONE batched
``model.embed(image=...)`` call, and reports for each patch the drop in cosine similarity to the query:
``cos(image, q) - cos(image with the patch covered, q)``. A large positive value means "this part of the image
is what matched"; a negative one, that covering the patch brings the image closer to the query. This is the
occlusion method of the saliency literature (Zeiler & Fergus, 2014): it asks only for ``embed``, so it works
the same for our alignment runs, the pretrained CLIP/SigLIP/OpenCLIP wrappers and an ONNX export, at the cost
of gh * gw + 1 image embeddings (bounded: at most `MAX_GRID` patches a side, images first shrunk to
``max_side`` pixels so the batch of copies stays small in memory).

`overlay_png` renders a map as a semi-transparent heat overlay over the image (PIL only): positive drops are
shown, scaled to the map's maximum; the rest of the image is left as it is.

The pieces (`occluded_images`, `map_from_embeddings`) are public so that a caller that embeds elsewhere (the
HTTP service, through its micro-batcher) computes exactly what `similarity_map` computes."""

from __future__ import annotations

import io
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image

from ..errors import InvalidInput

MAX_GRID = 16          # patches a side: at most 16 * 16 + 1 = 257 images in the one embed call
MAX_SIDE = 256         # images are shrunk to this many pixels a side (aspect kept) before they are occluded
GREY = 128
Fill = Literal["mean", "grey"]
FILLS: tuple[str, ...] = ("mean", "grey")
# the overlay's colour ramp, low -> high: yellow, orange, red (alpha grows with the value too)
_RAMP_AT = np.array([0.0, 0.5, 1.0])
_RAMP_RGB = np.array([[255, 230, 0], [255, 120, 0], [215, 0, 0]], dtype=np.float64)


class ImageEmbedder(Protocol):
    """What `similarity_map` needs: `EmbeddingModel.embed` (image=, and text= for a text query)."""

    def embed(self, text: Any = None, image: Any = None) -> np.ndarray: ...


def grid_shape(grid: int | tuple[int, int], field: str = "grid") -> tuple[int, int]:
    """``grid`` (one int, or (rows, cols)) as (gh, gw), each in 1..`MAX_GRID`."""
    shape = (grid, grid) if isinstance(grid, int) and not isinstance(grid, bool) else grid
    if (not isinstance(shape, tuple | list) or len(shape) != 2
            or not all(isinstance(g, int) and not isinstance(g, bool) and 1 <= g <= MAX_GRID for g in shape)):
        raise InvalidInput(f"expected an int (or a pair of ints) in 1..{MAX_GRID}, got {grid!r}", field=field)
    return int(shape[0]), int(shape[1])


def check_image(image: Any, field: str = "image") -> np.ndarray:
    """A uint8 HxWx3 array, or `InvalidInput` naming ``field``."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise InvalidInput(f"expected a uint8 HxWx3 image, got {arr.dtype} {arr.shape}", field=field)
    return arr


def fit_image(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """The image shrunk (bicubic, aspect kept) so that neither side exceeds ``max_side``; small ones as they are."""
    image = check_image(image)
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def cell_edges(size: int, n: int) -> np.ndarray:
    """The n + 1 pixel boundaries of n near-equal cells over ``size`` pixels (cell i is edges[i]:edges[i+1])."""
    return (np.arange(n + 1) * size) // n


def occluded_images(image: np.ndarray, grid: int | tuple[int, int] = 8, fill: Fill = "mean") -> list[np.ndarray]:
    """``[image, copy(0, 0), copy(0, 1), ..., copy(gh-1, gw-1)]``: the image, then one copy per patch (row-major)
    with that patch painted ``fill`` (the image's mean colour, or mid grey)."""
    image = check_image(image)
    gh, gw = grid_shape(grid)
    h, w = image.shape[:2]
    if h < gh or w < gw:
        raise InvalidInput(f"a {h}x{w} image is too small for a {gh}x{gw} grid", field="grid")
    if fill not in FILLS:
        raise InvalidInput(f"expected one of {', '.join(FILLS)}, got {fill!r}", field="fill")
    colour = (np.round(image.reshape(-1, 3).mean(axis=0)) if fill == "mean" else np.full(3, GREY)).astype(np.uint8)
    ys, xs = cell_edges(h, gh), cell_edges(w, gw)
    out = [image]
    for i in range(gh):
        for j in range(gw):
            copy = image.copy()
            copy[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = colour
            out.append(copy)
    return out


def _unit(v: np.ndarray, field: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if not np.isfinite(v).all():
        raise InvalidInput("contains NaN or inf", field=field)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    if (norm == 0).any():
        raise InvalidInput("is the zero vector (it has no direction to compare with)", field=field)
    unit: np.ndarray = v / norm
    return unit


def map_from_embeddings(embeddings: np.ndarray, query: np.ndarray, grid: int | tuple[int, int] = 8
                        ) -> tuple[np.ndarray, float]:
    """(the (gh, gw) map, the cosine of the whole image) from the embeddings of `occluded_images`' output.
    Rows and query are normalised here, so models that do not normalise are compared by cosine too."""
    gh, gw = grid_shape(grid)
    emb = np.asarray(embeddings)
    q = np.asarray(query).reshape(-1)
    if emb.ndim != 2 or emb.shape[0] != gh * gw + 1:
        raise InvalidInput(f"expected {gh * gw + 1} embeddings (the image, then one per patch), got shape "
                           f"{emb.shape}", field="embeddings")
    if q.shape[0] != emb.shape[1]:
        raise InvalidInput(f"the query has {q.shape[0]} dimensions, the image embeddings {emb.shape[1]}",
                           field="query")
    cos = _unit(emb, "embeddings") @ _unit(q, "query")
    return (cos[0] - cos[1:]).reshape(gh, gw).astype(np.float32), float(cos[0])


def query_vector(model: ImageEmbedder, query: np.ndarray | str) -> np.ndarray:
    """A query vector as given, or the model's embedding of a query text."""
    if isinstance(query, str):
        if not query.strip():
            raise InvalidInput("the query text is empty", field="query")
        vec: np.ndarray = np.asarray(model.embed(text=[query]))[0]
        return vec
    q = np.asarray(query)
    if q.ndim != 1 or q.size == 0 or not np.issubdtype(q.dtype, np.number):
        raise InvalidInput(f"expected a text or a 1-d vector, got {q.dtype} {q.shape}", field="query")
    return q


def similarity_map(model: ImageEmbedder, image: np.ndarray, query: np.ndarray | str,
                   grid: int | tuple[int, int] = 8, fill: Fill = "mean", max_side: int = MAX_SIDE) -> np.ndarray:
    """The (gh, gw) float32 occlusion map of ``image`` for ``query`` (a text, embedded by ``model``, or a vector
    of its space): per patch, the drop in cosine similarity when that patch is covered. The image is first
    shrunk to ``max_side`` pixels a side; the original and all occluded copies are embedded in one call."""
    q = query_vector(model, query)
    copies = occluded_images(fit_image(image, max_side), grid, fill)
    heat, _ = map_from_embeddings(np.asarray(model.embed(image=copies)), q, grid)
    return heat


def _ramp(v: np.ndarray) -> np.ndarray:
    return np.stack([np.interp(v, _RAMP_AT, _RAMP_RGB[:, c]) for c in range(3)], axis=-1)


def heat_layer(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    """The positive part of ``heat`` scaled to [0, 1] by its maximum (all zeros when nothing is positive),
    resized bilinearly to height x width (float64)."""
    h = np.asarray(heat, dtype=np.float64)
    if h.ndim != 2 or h.size == 0 or not np.isfinite(h).all():
        raise InvalidInput(f"expected a finite 2-d map, got shape {h.shape}", field="heat")
    top = float(h.max())
    if top <= 0.0:
        return np.zeros((height, width))
    scaled = (np.clip(h, 0.0, None) / top).astype(np.float32)
    up = Image.fromarray(scaled, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(up, dtype=np.float64), 0.0, 1.0)


def overlay_png(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6, min_side: int = 128,
                max_side: int = 512) -> bytes:
    """A PNG of ``image`` under a semi-transparent heat overlay of ``heat`` (any (gh, gw) map over the whole
    image): colour yellow -> red and opacity up to ``alpha`` grow with the value; where the map is <= 0 the
    image shows unchanged. Small images are enlarged (pixel-exact) to at least ``min_side``, large ones shrunk
    to ``max_side`` pixels a side, so the overlay is readable and small."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInput(f"expected 0 <= alpha <= 1, got {alpha}", field="alpha")
    base = check_image(image)
    longest = max(base.shape[:2])
    if longest < min_side:
        k = -(-min_side // longest)
        base = np.repeat(np.repeat(base, k, axis=0), k, axis=1)
    base = fit_image(base, max_side)
    v = heat_layer(heat, *base.shape[:2])
    a = (alpha * v)[..., None]
    out = np.round(base * (1.0 - a) + _ramp(v) * a).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["FILLS", "MAX_GRID", "MAX_SIDE", "ImageEmbedder", "cell_edges", "fit_image", "grid_shape",
           "heat_layer", "map_from_embeddings", "occluded_images", "overlay_png", "query_vector", "similarity_map"]
