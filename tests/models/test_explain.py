"""Occlusion maps (`polymodal.models.explain`): on a fake model whose image embedding sees only one region, the
map is non-zero exactly on the patches that overlap it; on an untrained clip_tiny, the batched map equals the
drop computed patch by patch with one embed call each; the overlay blends by its formula; the report piece."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.errors import InvalidInput
from polymodal.models.explain import (
    MAX_GRID,
    heat_layer,
    map_from_embeddings,
    occluded_images,
    overlay_png,
    similarity_map,
)

DIM = 8


class RegionModel:
    """Embeds an image by the pixels inside ``region`` (y0, y1, x0, x1) only, through a fixed random projection;
    a text by the image it names in ``texts``. Records every call (modality, n items)."""

    modalities = ("image", "text")

    def __init__(self, region: tuple[int, int, int, int], texts: dict[str, np.ndarray] | None = None):
        y0, y1, x0, x1 = region
        self.region = region
        self.proj = np.random.default_rng(1).standard_normal(((y1 - y0) * (x1 - x0) * 3, DIM))
        self.texts = texts or {}
        self.calls: list[tuple[str, int]] = []

    def embed(self, text: Any = None, image: Any = None) -> np.ndarray:
        if text is not None:
            self.calls.append(("text", len(text)))
            return self.embed_quietly([self.texts[t] for t in text])
        self.calls.append(("image", len(image)))
        return self.embed_quietly(image)

    def embed_quietly(self, images: list[np.ndarray]) -> np.ndarray:
        y0, y1, x0, x1 = self.region
        rows = np.stack([img[y0:y1, x0:x1].reshape(-1) / 255.0 @ self.proj for img in images])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


class Counting:
    """Wraps a model and records its embed calls."""

    def __init__(self, model: Any):
        self.model, self.calls = model, []

    def embed(self, text: Any = None, image: Any = None) -> np.ndarray:
        modality, items = ("text", text) if text is not None else ("image", image)
        self.calls.append((modality, len(items)))
        return np.asarray(self.model.embed(**{modality: items}))


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def cell_of(pos: int, size: int, n: int) -> int:
    """Which of n cells over ``size`` pixels holds pixel ``pos`` (cell i spans i*size//n .. (i+1)*size//n)."""
    return next(i for i in range(n) if i * size // n <= pos < (i + 1) * size // n)


def test_the_map_peaks_on_the_one_patch_the_model_sees():
    img = noise(32, 32)
    model = RegionModel((8, 16, 16, 24))           # exactly patch (1, 2) of a 4 x 4 grid
    query = model.embed_quietly([img])[0]
    heat = similarity_map(model, img, query, grid=4)
    assert heat.shape == (4, 4) and heat.dtype == np.float32
    assert np.unravel_index(np.argmax(heat), heat.shape) == (1, 2)
    assert heat[1, 2] > 1e-3
    rest = np.delete(heat.reshape(-1), 1 * 4 + 2)
    np.testing.assert_allclose(rest, 0.0, atol=1e-6)
    assert model.calls == [("image", 17)]          # the image and its 16 copies, in one call


@pytest.mark.parametrize("fill", ["mean", "grey"])
def test_non_zero_exactly_where_a_patch_overlaps_the_region(fill: str):
    h, w, grid = 30, 45, (5, 7)
    region = (5, 13, 25, 31)   # column 25 starts cell 4 (25 = 4 * 45 // 7): rounding the edges would miss it
    img = noise(h, w, seed=2)
    model = RegionModel(region)
    heat = similarity_map(model, img, model.embed_quietly([img])[0], grid=grid, fill=fill)  # type: ignore[arg-type]
    y0, y1, x0, x1 = region
    want = {(cell_of(y, h, grid[0]), cell_of(x, w, grid[1])) for y in range(y0, y1) for x in range(x0, x1)}
    got = {(int(i), int(j)) for i, j in zip(*np.nonzero(np.abs(heat) > 1e-6), strict=True)}
    assert got == want
    assert (heat[tuple(np.array(sorted(want)).T)] > 0).all()   # covering what it sees only lowers the match


def test_a_text_query_is_embedded_by_the_model():
    img = noise(24, 24, seed=3)
    other = noise(24, 24, seed=4)
    model = RegionModel((0, 12, 0, 12), texts={"the image": img, "another": other})
    by_text = similarity_map(model, img, "the image", grid=2)
    np.testing.assert_allclose(by_text, similarity_map(model, img, model.embed_quietly([img])[0], grid=2), atol=1e-7)
    assert model.calls[:2] == [("text", 1), ("image", 5)]
    assert by_text[0, 0] > 0 and np.allclose(by_text.reshape(-1)[1:], 0.0, atol=1e-6)


@pytest.fixture(scope="module")
def clip_tiny() -> Any:
    from polymodal.data.transforms.compose import SampleTransform
    from polymodal.data.transforms.resolve import transform_config
    from polymodal.models import build_model
    from polymodal.models.embedding import EmbeddingModel
    from polymodal.recipes import load_recipe

    torch.set_num_threads(1)
    torch.manual_seed(0)
    recipe = load_recipe("clip_tiny")
    net = build_model("alignment", recipe.model)
    transform = SampleTransform.from_dict(transform_config(net.preprocess(), recipe.data.transform))
    return EmbeddingModel(net, transform, {"arch": "alignment", "model": recipe.model})


def test_real_model_matches_patch_by_patch_reference(clip_tiny: Any):
    img = noise(37, 41, seed=5)    # sizes the grid does not divide
    img[8:20, 10:30] = (230, 30, 30)
    text, grid = "a red square", 4
    model = Counting(clip_tiny)
    heat = similarity_map(model, img, text, grid=grid)
    assert model.calls == [("text", 1), ("image", grid * grid + 1)]
    q = clip_tiny.embed(text=[text])[0].astype(np.float64)
    base = float(clip_tiny.embed(image=[img])[0] @ q)
    colour = np.round(img.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    want = np.zeros((grid, grid))
    for i in range(grid):
        for j in range(grid):
            copy = img.copy()
            copy[i * 37 // grid:(i + 1) * 37 // grid, j * 41 // grid:(j + 1) * 41 // grid] = colour
            want[i, j] = base - float(clip_tiny.embed(image=[copy])[0] @ q)   # one call per patch
    np.testing.assert_allclose(heat, want, atol=2e-5)


def test_real_model_shape_finite_deterministic(clip_tiny: Any):
    img = noise(64, 48, seed=6)
    a = similarity_map(clip_tiny, img, "a blue circle")
    b = similarity_map(clip_tiny, img, "a blue circle")
    assert a.shape == (8, 8) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    big = np.asarray(Image.fromarray(img).resize((480, 640)))  # shrunk to 256 a side first: same grid
    assert similarity_map(clip_tiny, big, "a blue circle", grid=(3, 5)).shape == (3, 5)


def test_occluded_copies_and_bounds():
    img = noise(10, 12, seed=7)
    copies = occluded_images(img, (2, 3), fill="grey")
    assert len(copies) == 7 and copies[0] is img
    np.testing.assert_array_equal(copies[1][:5, :4], 128)
    np.testing.assert_array_equal(copies[1][5:], img[5:])
    np.testing.assert_array_equal(copies[6][5:, 8:], 128)
    model = RegionModel((0, 4, 0, 4))
    q = model.embed_quietly([img])[0]
    for grid in (0, MAX_GRID + 1, True, (2,), "8"):
        with pytest.raises(InvalidInput) as e:
            similarity_map(model, img, q, grid=grid)  # type: ignore[arg-type]
        assert e.value.field == "grid"
    with pytest.raises(InvalidInput, match="too small") as e:
        similarity_map(model, img, q, grid=11)
    assert e.value.field == "grid"
    with pytest.raises(InvalidInput) as e:
        similarity_map(model, img.astype(np.float32), q)
    assert e.value.field == "image"
    with pytest.raises(InvalidInput) as e:
        similarity_map(model, img, q, fill="blue")  # type: ignore[arg-type]
    assert e.value.field == "fill"
    for bad in (np.zeros(DIM), np.ones(DIM + 1), np.full(DIM, np.nan), "  "):
        with pytest.raises(InvalidInput) as e:
            similarity_map(model, img, bad, grid=2)
        assert e.value.field == "query"
    with pytest.raises(InvalidInput) as e:
        map_from_embeddings(np.ones((4, DIM)), q, grid=2)
    assert e.value.field == "embeddings"


def decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_overlay_blends_by_its_formula():
    img = noise(40, 40, seed=8)
    img[:10, :10] = 128
    up = np.repeat(np.repeat(img, 4, axis=0), 4, axis=1)          # 40 < 128: enlarged x4, pixel-exact
    flat = decode_png(overlay_png(img, np.full((4, 4), 0.3), alpha=0.6))
    want = np.round(up * 0.4 + np.array([215, 0, 0]) * 0.6)   # every value is the maximum
    np.testing.assert_allclose(flat, want, atol=1)   # (bilinear resizing of a constant may leave 1 - 1e-7)
    np.testing.assert_array_equal(decode_png(overlay_png(img, -np.ones((4, 4)))), up)   # nothing positive
    hot = np.zeros((4, 4))
    hot[0, 0] = 1.0
    one = decode_png(overlay_png(img, hot, min_side=1))
    assert one.shape == img.shape
    np.testing.assert_array_equal(one[20:, 20:], img[20:, 20:])   # far from the hot cell: the image
    assert int(one[5, 5, 0]) - int(one[5, 5, 2]) > 80    # the grey hot cell turned red
    big = decode_png(overlay_png(noise(900, 600), hot))
    assert max(big.shape[:2]) == 512
    with pytest.raises(InvalidInput) as e:
        heat_layer(np.array([np.inf]), 4, 4)
    assert e.value.field == "heat"


def test_report_shows_the_explanation():
    from polymodal.report import render_report
    from polymodal.report.explain import explain_hit

    img = noise(32, 32, seed=9)
    model = RegionModel((8, 16, 16, 24), texts={"q": img})
    ex = explain_hit(model, img, "q", grid=4)
    np.testing.assert_allclose(ex["map"], similarity_map(model, img, "q", grid=4))
    page = render_report({"title": "t", "queries": [{"title": "Text", "kind": "text", "text": "q", "explain": ex,
                                                     "hits": [{"id": 1, "score": 1.0, "image": img}]}]})
    assert "class='explain'" in page and "4x4 patches" in page
    uri = "data:image/png;base64,"
    shown = [decode_png(base64.b64decode(part.split("'")[0])) for part in page.split(uri)[1:]]
    assert any(np.array_equal(s, decode_png(ex["overlay"])) for s in shown)
