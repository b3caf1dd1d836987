"""The text->image judges against reference computations (closed forms, eigen-decompositions, brute-force
loops), the attribute scorer on hand-built scenes (one failure mode each), and `evaluate_t2i` end to end: a
generator that draws the true scene scores like the real pictures, one that draws empty backgrounds scores low."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from scipy.linalg import hadamard

from polymodal.data.synth import shapes
from polymodal.data.synth.captions import COLOR_ZH
from polymodal.errors import InvalidInput, ModelOutputError
from polymodal.eval.scene_parser import SceneParser, fit_parser
from polymodal.eval.t2i import evaluate_t2i
from polymodal.eval.t2i_judges import (
    attribute_scores,
    clip_score,
    frechet_distance,
    r_precision,
    r_precision_candidates,
    r_precision_hits,
)
from polymodal.models.t2i_front import ImageGenerator, ImageOptions

# ----------------------------------------------------------------------------------------------- Frechet distance


def _diagonal_set(mu: np.ndarray, var: np.ndarray, n: int = 16) -> np.ndarray:
    """n rows whose sample mean is exactly ``mu`` and sample covariance (ddof=1) exactly diag(``var``):
    orthogonal zero-mean Hadamard columns, scaled."""
    cols = hadamard(n)[:, 1:1 + len(mu)].astype(np.float64)  # +-1, zero mean, orthogonal, sum of squares n
    return mu + cols * np.sqrt(var * (n - 1) / n)


def test_frechet_matches_the_closed_form_for_diagonal_gaussians() -> None:
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    a, b = _diagonal_set(mu1, s1), _diagonal_set(mu2, s2)
    np.testing.assert_allclose(np.cov(a, rowvar=False), np.diag(s1), atol=1e-12)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2.0 * np.sqrt(s1 * s2))
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-9)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def test_frechet_matches_an_eigendecomposition_on_full_covariances() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)
    b = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = _sqrt_psd(s1)  # Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix
    tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0.0, None)))
    diff = a.mean(0) - b.mean(0)
    want = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-7)
    assert frechet_distance(b, a) == pytest.approx(want, rel=1e-7)


def test_frechet_of_identical_sets_is_zero_also_when_singular() -> None:
    rng = np.random.default_rng(1)
    full = rng.normal(size=(200, 8))
    assert abs(frechet_distance(full, full)) < 1e-8
    few = rng.normal(size=(6, 16)).astype(np.float32)  # fewer rows than dims: singular covariances
    value = frechet_distance(few, few)
    assert np.isfinite(value) and abs(value) < 1e-4 * np.trace(np.cov(few, rowvar=False))
    assert frechet_distance(few, few + 1.0) == pytest.approx(16.0 + value, abs=1e-3)  # a shift adds |d mu|^2


def test_frechet_rejects_bad_features() -> None:
    x = np.zeros((4, 3))
    with pytest.raises(InvalidInput, match="dims differ"):
        frechet_distance(x, np.zeros((4, 2)))
    with pytest.raises(InvalidInput):
        frechet_distance(x[:1], x)
    with pytest.raises(InvalidInput):
        frechet_distance(np.full((4, 3), np.nan), x)


# ----------------------------------------------------------------------------------------------- CLIP score, R-precision

def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_clip_score_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    img, txt = _unit(rng.normal(size=(40, 12))), _unit(rng.normal(size=(40, 12)))
    want = np.mean([100.0 * max(sum(float(p) * float(q) for p, q in zip(i, t, strict=True)), 0.0)
                    for i, t in zip(img, txt, strict=True)])
    assert clip_score(img, txt) == pytest.approx(want, rel=1e-12)
    assert clip_score(img, img) == pytest.approx(100.0)
    assert clip_score(img, -img) == 0.0  # negative cosines clip at 0
    with pytest.raises(InvalidInput):
        clip_score(img, txt[:-1])


def _r_precision_loop(img: np.ndarray, txt: np.ndarray, others: np.ndarray) -> float:
    hits = []
    for i in range(len(img)):
        own = float(img[i] @ txt[i])
        hits.append(all(own > float(img[i] @ txt[j]) for j in others[i]))
    return float(np.mean(hits))


def test_r_precision_matches_a_brute_force_loop() -> None:
    rng = np.random.default_rng(5)
    txt = _unit(rng.normal(size=(60, 8)))
    img = _unit(txt + rng.normal(scale=0.6, size=txt.shape))  # often, not always, nearest its own text
    got = r_precision(img, txt, candidates=20, seed=4)
    assert got == _r_precision_loop(img, txt, r_precision_candidates(60, 20, seed=4))
    assert 0.1 < got < 0.99
    # with every row a candidate the draw does not matter: compare with all other rows
    everyone = np.array([[j for j in range(60) if j != i] for i in range(60)])
    assert r_precision(img, txt, candidates=60, seed=9) == _r_precision_loop(img, txt, everyone)


def test_r_precision_candidates_are_other_rows_without_replacement_and_seeded() -> None:
    c = r_precision_candidates(30, 10, seed=1)
    assert c.shape == (30, 9)
    for i, row in enumerate(c):
        assert i not in row and len(set(row.tolist())) == 9 and row.min() >= 0 and row.max() < 30
    np.testing.assert_array_equal(c, r_precision_candidates(30, 10, seed=1))
    assert not np.array_equal(c, r_precision_candidates(30, 10, seed=2))
    with pytest.raises(InvalidInput, match="at least 10 rows"):
        r_precision_candidates(9, 10)


def test_r_precision_counts_a_tie_as_a_miss() -> None:
    txt = _unit(np.eye(4)[[0, 1, 2, 3, 0]].astype(float))  # rows 0 and 4 share a text
    hits = r_precision_hits(txt, txt, candidates=5)
    np.testing.assert_array_equal(hits, [False, True, True, True, False])


# ----------------------------------------------------------------------------------------------- attribute scores

def _obj(color: str, shape: str, size: str, position: str) -> dict[str, Any]:
    return {"color": color, "shape": shape, "size": size, "position": position}


RED = _obj("red", "circle", "small", "left")
BLUE = _obj("blue", "square", "large", "right")


@pytest.mark.parametrize(("intended", "parsed", "want"), [
    ([RED], [RED], dict(attribute=1, position=1, color=1, shape=1, size=1, object=1, count=1, scene=1)),
    ([RED], [{**RED, "color": "green"}], dict(attribute=0.75, color=0, shape=1, object=0, count=1, scene=0)),
    ([RED], [{**RED, "shape": "star"}], dict(attribute=0.75, shape=0, color=1, object=0, scene=0)),
    ([RED], [{**RED, "size": "large"}], dict(attribute=0.75, size=0, object=0, scene=0)),
    ([RED], [{**RED, "position": "center"}], dict(attribute=0, position=0, color=0, count=1, scene=0)),
    ([RED], [RED, BLUE], dict(attribute=1, object=1, count=0, scene=0)),   # an extra object
    ([RED], [], dict(attribute=0, position=0, count=0, scene=0)),
    ([RED, BLUE], [RED, BLUE], dict(attribute=1, relation=1, count=1, scene=1)),
    ([RED, BLUE], [RED], dict(attribute=0.5, position=0.5, object=0.5, relation=0, count=0, scene=0)),
    ([RED, BLUE], [{**RED, "color": "pink"}, {**BLUE, "shape": "cross"}],   # right cells, wrong looks
     dict(attribute=0.75, color=0.5, shape=0.5, object=0, relation=1, count=1, scene=0)),
    ([RED, BLUE], [{**BLUE, "position": "left"}, {**RED, "position": "right"}],   # swapped: the relation holds
     dict(attribute=0.25, position=1, color=0, size=0, relation=1, scene=0)),
])
def test_attribute_scores_on_hand_built_scenes(intended: list[dict[str, Any]], parsed: list[dict[str, Any]],
                                               want: dict[str, float]) -> None:
    got = attribute_scores([intended], [parsed])
    assert {k: got[k] for k in want} == pytest.approx(want)
    assert got["n_images"] == 1 and got["n_objects"] == len(intended)
    assert (got["relation"] is None) == (len(intended) == 1)


def test_attribute_scores_average_images_and_objects_apart() -> None:
    intended = [[RED], [RED, BLUE], [BLUE]]
    parsed = [[RED], [RED], [{**BLUE, "color": "red"}]]
    got = attribute_scores(intended, parsed)
    assert got["attribute"] == pytest.approx((1.0 + 0.5 + 0.75) / 3)
    assert got["position"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert got["object_position"] == pytest.approx(3 / 4)      # per object: 3 of 4 cells occupied
    assert got["object_object"] == pytest.approx(2 / 4)        # both reds right, both blues wrong
    assert got["count"] == pytest.approx(2 / 3) and got["relation"] == 0.0 and got["scene"] == pytest.approx(1 / 3)
    assert (got["n_images"], got["n_objects"], got["n_relation"]) == (3, 4, 1)
    with pytest.raises(InvalidInput):
        attribute_scores(intended, parsed[:2])
    with pytest.raises(InvalidInput):
        attribute_scores([[{"color": "red"}]], [[]])


# ----------------------------------------------------------------------------------------------- evaluate_t2i

def _samples(n: int, seed: int) -> list[Any]:
    return [shapes.make_sample(i, "test", seed=seed, langs=("en", "zh"), modalities=("text", "image"))
            for i in range(n)]


@pytest.fixture(scope="module")
def parser() -> SceneParser:
    """A parser fitted briefly (seconds) on real pictures of other scenes (all color+shape pairs)."""
    torch.set_num_threads(1)
    train = _samples(600, seed=11)
    return fit_parser(np.stack([s.image for s in train]), [s.metadata["objects"] for s in train], steps=300,
                      batch_size=32, width=8, seed=0)


class SceneRenderer:
    """A fake generator that draws each prompt's true scene with `shapes.render` (canonical positions, sizes,
    colors, no rotation, its own background); ``empty=True`` draws the background only."""

    name, task, langs = "fake", "text_to_image", ("en", "zh")

    def __init__(self, samples: Sequence[Any], image_size: int = 64, empty: bool = False):
        self.scenes = {c: s.metadata["objects"] for s in samples for c in s.metadata["captions"].values()}
        self.image_size, self.empty = image_size, empty
        self.seeds: list[int | None] = []

    def generate_images(self, prompts: str | Sequence[str], n: int = 1, options: ImageOptions | None = None,
                        progress: Any = None, batch_size: int = 8, max_images: int | None = None) -> list[np.ndarray]:
        self.seeds.append(None if options is None else options.seed)
        bg = (np.array([40.0, 38.0, 45.0]), np.array([52.0, 47.0, 40.0]), 0)
        out = []
        for p in [prompts] if isinstance(prompts, str) else prompts:
            objs = [{**o, "_xy": shapes.POSITIONS[o["position"]], "_r": shapes.SIZES[o["size"]], "_angle": 0.0,
                     "_rgb": shapes.COLORS[o["color"]]} for o in self.scenes[p]]
            image = shapes.render(objs, bg, self.image_size)
            if self.empty:  # a dark background like the data set's (render needs at least one object)
                image = np.full_like(image, 42)
            out.extend([image] * n)
        return out


def _color_areas(text: str) -> list[float]:
    """The area the caption's objects give each palette color (size words: small 1, large 3.3 = (0.2/0.11)^2)."""
    large = {"large": 3.3, "big": 3.3, "small": 1.0, "little": 1.0}
    en = re.findall(r"(small|little|large|big) (\w+)", text)
    zh = re.findall("(" + "|".join(COLOR_ZH.values()) + ")的(小|大)", text)
    zh_color = {v: k for k, v in COLOR_ZH.items()}
    areas = dict.fromkeys(shapes.COLORS, 0.0)
    for size, color in en:
        areas[color] = areas.get(color, 0.0) + large[size]
    for color, size in zh:
        areas[zh_color[color]] += 3.3 if size == "大" else 1.0
    return [areas[c] for c in shapes.COLORS]


class WordEmbedder:
    """A fake embedding model: a text is the area its words give each color (English or Chinese), a picture
    the share of its pixels near each palette color; both L2-normalised (no palette color: zero)."""

    modalities = ("text", "image")

    def embed(self, text: Sequence[str] | None = None, image: Sequence[np.ndarray] | None = None) -> np.ndarray:
        palette = np.array(list(shapes.COLORS.values()), dtype=np.float64)
        if text is not None:
            rows = np.array([_color_areas(t) for t in text])
        else:
            assert image is not None
            rows = np.array([(np.linalg.norm(im.reshape(-1, 1, 3).astype(float) - palette, axis=2) < 40).mean(0)
                             for im in image])
        norm = np.linalg.norm(rows, axis=1, keepdims=True)
        return (rows / np.maximum(norm, 1e-12)).astype(np.float32)


def test_evaluate_t2i_scores_true_scenes_like_real_pictures_and_empty_ones_low(parser: SceneParser) -> None:
    samples = _samples(60, seed=0)
    real, real_gallery = evaluate_t2i(None, samples, parser=parser, embedder=WordEmbedder())
    fake = SceneRenderer(samples)
    ticks: list[tuple[int, int]] = []
    drawn, _ = evaluate_t2i(fake, samples, parser=parser, embedder=WordEmbedder(), n_per_prompt=2,
                            options=ImageOptions(seed=5), progress=lambda done, total: ticks.append((done, total)))
    empty, _ = evaluate_t2i(SceneRenderer(samples, empty=True), samples, parser=parser, embedder=WordEmbedder())
    r, d, e = real["groups"]["all"], drawn["groups"]["all"], empty["groups"]["all"]
    assert r["parser"]["attribute"] > 0.75 and d["parser"]["attribute"] > r["parser"]["attribute"] - 0.1
    assert e["parser"]["attribute"] < 0.3 and e["parser"]["scene"] < 0.05
    assert d["clip_score"] > 50 and e["clip_score"] == 0.0 and abs(d["clip_score"] - r["clip_score"]) < 10
    assert r["r_precision"] > 0.2 and abs(d["r_precision"] - r["r_precision"]) < 0.15 and e["r_precision"] == 0.0
    assert r["frechet"] < 0.01 and d["frechet"] < 0.5 * e["frechet"]
    assert list(real["groups"]) == ["all", "seen", "heldout", "one_object", "two_objects", "lang:en", "lang:zh"]
    assert real["groups"]["lang:en"]["images"] == 60 and drawn["images"] == 240 and drawn["prompts"] == 120
    assert real["speed"] is None and drawn["speed"]["calls"] == 15 and drawn["speed"]["seconds_per_image"] >= 0
    assert fake.seeds == [5 + 16 * k for k in range(15)]   # image k gets seed 5 + k whatever call makes it
    assert ticks == [(16 * k, 240) for k in range(1, 16)]
    assert real["r_precision_candidates"] == {"en": 60, "zh": 60}
    zh0 = real_gallery[1]   # sample-major: sample 0 in English, then in Chinese
    assert (zh0.sample_id, zh0.lang, zh0.prompt) == (samples[0].id, "zh", samples[0].metadata["captions"]["zh"])
    assert zh0.image is samples[0].image and zh0.marks["objects"]


def test_evaluate_t2i_groups_are_their_rows(parser: SceneParser) -> None:
    samples = _samples(24, seed=2)
    report, gallery = evaluate_t2i(SceneRenderer(samples, image_size=128), samples, parser=parser, embedder=None,
                                   langs=("en",))
    groups = report["groups"]
    assert groups["seen"]["images"] + groups["heldout"]["images"] == 24
    held = [g for g, s in zip(gallery, samples, strict=True) if s.metadata["heldout"]]
    assert groups["heldout"]["images"] == len(held) > 0
    want = attribute_scores([s.metadata["objects"] for s in samples if s.metadata["heldout"]],
                            [g.parsed for g in held])
    assert groups["heldout"]["parser"] == want
    assert groups["one_object"]["parser"]["relation"] is None and groups["two_objects"]["parser"]["n_relation"] > 0
    assert "clip_score" not in groups["all"] and report["r_precision_candidates"] is None


def test_evaluate_t2i_rejects_what_it_cannot_judge(parser: SceneParser) -> None:
    samples = _samples(4, seed=0)
    fake: ImageGenerator = SceneRenderer(samples)
    with pytest.raises(InvalidInput, match="reads en, zh, not fr"):
        evaluate_t2i(fake, samples, parser=parser, embedder=None, langs=("fr",))
    with pytest.raises(InvalidInput, match="n_per_prompt"):
        evaluate_t2i(fake, samples, parser=parser, embedder=None, n_per_prompt=0)

    class Short(SceneRenderer):
        def generate_images(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
            return super().generate_images(*args, **kwargs)[:-1]
    with pytest.raises(ModelOutputError):
        evaluate_t2i(Short(samples), samples, parser=parser, embedder=None)


@pytest.fixture(scope="module")
def clip_tiny() -> Any:
    """An untrained clip_tiny: the real `EmbeddingModel` call path (its numbers mean nothing)."""
    from polymodal.data.transforms.compose import SampleTransform
    from polymodal.data.transforms.resolve import transform_config
    from polymodal.models import build_model
    from polymodal.models.embedding import EmbeddingModel
    from polymodal.recipes import load_recipe

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        recipe = load_recipe("clip_tiny")
        net = build_model("alignment", recipe.model)
    transform = SampleTransform.from_dict(transform_config(net.preprocess(), recipe.data.transform))
    return EmbeddingModel(net, transform, {"arch": "alignment", "model": recipe.model})


def test_evaluate_t2i_with_a_real_embedding_model_matches_direct_calls(parser: SceneParser, clip_tiny: Any) -> None:
    samples = _samples(12, seed=6)
    report, _ = evaluate_t2i(None, samples, parser=parser, embedder=clip_tiny)
    real = clip_tiny.embed(image=[s.image for s in samples])
    groups = report["groups"]
    for lang in ("en", "zh"):
        text = clip_tiny.embed(text=[s.metadata["captions"][lang] for s in samples])
        assert groups[f"lang:{lang}"]["clip_score"] == pytest.approx(clip_score(real, text), rel=1e-5)
        assert groups[f"lang:{lang}"]["r_precision"] == r_precision(real, text, candidates=12, seed=0)
        assert groups[f"lang:{lang}"]["frechet"] == pytest.approx(frechet_distance(real, real), abs=1e-6)
    assert report["r_precision_candidates"] == {"en": 12, "zh": 12}
    given, _ = evaluate_t2i(None, samples, parser=parser, embedder=clip_tiny, real_features=real)
    assert given["groups"] == groups   # aligned features: each group against its own samples' pictures
    held = [s.metadata["heldout"] for s in samples]
    assert groups["heldout"]["frechet"] == pytest.approx(frechet_distance(real[held], np.repeat(real[held], 2, 0)),
                                                         abs=1e-6)
    other = clip_tiny.embed(image=[s.image for s in _samples(5, seed=7)])   # not aligned: one reference for all
    apart, _ = evaluate_t2i(None, samples, parser=parser, embedder=clip_tiny, real_features=other)
    generated = np.repeat(real, 2, axis=0)
    assert apart["groups"]["all"]["frechet"] == pytest.approx(frechet_distance(other, generated), rel=1e-6)
    seen = ~np.repeat(np.array(held), 2)
    assert apart["groups"]["seen"]["frechet"] == pytest.approx(frechet_distance(other, generated[seen]), rel=1e-6)
