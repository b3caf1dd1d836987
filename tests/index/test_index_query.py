"""The one query pipeline (`polymodal.index.query`): embed -> fuse -> search scores like a plain numpy
computation, each vector is normalised where it enters unnormalised (and model embeddings are not touched),
and the checks name the input at fault."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polymodal.errors import InvalidInput, ModelOutputError
from polymodal.index import Collection, embed_query, fuse, search_query, search_with_model
from polymodal.index.query import query_vector

DIM = 12
N = 300
WEIGHTS = {"text": 2.0, "image": 0.5, "audio": 1.0, "vector": 1.5}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def key_vec(key: int) -> np.ndarray:
    return unit(np.random.default_rng(key).standard_normal(DIM)).astype(np.float32)


class TableModel:
    """text "k", an image filled with k, audio starting at k: each embeds to key_vec(k), times ``scale``
    (1 keeps the library contract: float32 unit rows)."""

    modalities = ("audio", "image", "text")
    dim = DIM

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def embed(self, text: Any = None, image: Any = None, audio: Any = None, video: Any = None) -> np.ndarray:
        (modality, values), = ((m, v) for m, v in (("text", text), ("image", image), ("audio", audio))
                               if v is not None)
        key = {"text": int, "image": lambda im: int(im.flat[0]), "audio": lambda a: int(a[0][0])}[modality]
        return np.stack([key_vec(key(v)) * self.scale for v in values]).astype(np.float32)


QUERY = {"text": "3", "image": np.full((4, 4, 3), 5, np.uint8), "audio": (np.full(100, 7.0, np.float32), 16000)}


def raw_base() -> np.ndarray:
    """Vectors of very different norms, as a user may add them (the collection normalises them for cosine)."""
    rng = np.random.default_rng(0)
    return (rng.standard_normal((N, DIM)) * rng.uniform(0.1, 50.0, (N, 1))).astype(np.float32)


@pytest.fixture(params=["cosine", "ip", "l2"])
def coll(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Collection]:
    c = Collection.create(tmp_path / request.param, dim=DIM, metric=request.param, index="flat")
    c.add(np.arange(N), raw_base())
    yield c
    c.close()


def reference(metric: str, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (ids, scores) by float64 numpy: cosine/ip scores are inner products (of unit base rows for
    cosine), l2 scores squared distances."""
    base = raw_base().astype(np.float64)
    if metric == "cosine":
        base = unit(base)
    if metric == "l2":
        d = ((base - q) ** 2).sum(1)
        order = np.argsort(d, kind="stable")[:k]
        return order, d[order]
    s = base @ q
    order = np.argsort(-s, kind="stable")[:k]
    return order, s[order]


def test_fused_query_scores_like_numpy(coll: Collection) -> None:
    """Weighted text + image + audio + a raw vector of norm ~40: the model's unit embeddings and the
    normalised raw vector are summed with the weights and renormalised, whatever the metric."""
    raw = 40.0 * key_vec(11) + np.float32(0.5)
    e = {"text": key_vec(3), "image": key_vec(5), "audio": key_vec(7), "vector": unit(raw.astype(np.float64))}
    q = unit(sum(WEIGHTS[m] * e[m].astype(np.float64) for m in e))
    ids, scores = reference(coll.metric, q, 10)
    res = search_with_model(coll, TableModel(), **QUERY, vector=raw, weights=WEIGHTS, k=10)
    np.testing.assert_array_equal(res.ids[0], ids)
    np.testing.assert_allclose(res.scores[0], scores, rtol=1e-5, atol=1e-5)
    embs = {**embed_query(TableModel(), **QUERY), "vector": raw}
    again = search_query(coll, embs, WEIGHTS, k=10)   # the service's path: embeddings supplied, then fuse + search
    np.testing.assert_array_equal(again.ids, res.ids)
    np.testing.assert_array_equal(again.scores, res.scores)


def test_one_model_input_is_the_query_itself(coll: Collection) -> None:
    """A lone model embedding is already unit: it is searched as returned, not renormalised on the way."""
    e = {"text": key_vec(3) * np.float32(1 + 5e-4)}   # off by more than rounding, within the contract's check
    np.testing.assert_array_equal(query_vector(e, None, DIM), e["text"])
    ids, scores = reference(coll.metric, key_vec(3).astype(np.float64), 5)
    res = search_with_model(coll, TableModel(), text="3", k=5)
    np.testing.assert_array_equal(res.ids[0], ids)
    np.testing.assert_allclose(res.scores[0], scores, rtol=1e-5, atol=1e-5)


def test_raw_vector_finds_what_its_normalised_version_finds(tmp_path: Path) -> None:
    """Cosine: a raw query vector (here of norm ~370), given straight to `Collection.search` or through the
    query pipeline, gets the hits and cosine scores of its unit version."""
    with Collection.create(tmp_path / "c", dim=DIM, index="flat") as c:
        c.add(np.arange(N), raw_base())
        raw = (370.0 * key_vec(21) + 3.0).astype(np.float32)
        u = unit(raw.astype(np.float64)).astype(np.float32)
        ids, scores = reference("cosine", u.astype(np.float64), 10)
        for res in (c.search(raw, k=10), c.search(u, k=10), search_with_model(c, None, vector=raw, k=10),
                    search_with_model(c, None, vector=u, k=10), search_query(c, {"vector": raw[None]}, k=10)):
            np.testing.assert_array_equal(res.ids[0], ids)
            np.testing.assert_allclose(res.scores[0], scores, rtol=1e-6, atol=1e-6)
        assert res.scores.max() <= 1.0 + 1e-6
        # normalized=True trusts the caller: a unit query gives the same hits, a raw one is not rescaled
        np.testing.assert_allclose(c.search(u, k=10, normalized=True).scores[0], scores, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(c.search(raw, k=10, normalized=True).scores[0],
                                   scores * np.linalg.norm(raw.astype(np.float64)), rtol=1e-5)


def test_lone_raw_vector_is_searched_as_a_direction(tmp_path: Path) -> None:
    """Through the pipeline a raw vector is normalised once whatever the metric (the fused query is always a
    unit vector), so on an l2 collection 3v and v/|v| find the same items."""
    with Collection.create(tmp_path / "l2", dim=DIM, metric="l2", index="flat") as c:
        c.add(np.arange(N), unit(raw_base().astype(np.float64)).astype(np.float32))
        v = key_vec(4)
        plain = c.search(v, k=10)
        res = search_with_model(c, None, vector=3.0 * v, k=10)
        np.testing.assert_array_equal(res.ids, plain.ids)
        np.testing.assert_allclose(res.scores, plain.scores, rtol=1e-5, atol=1e-6)


def test_fuse_normalises_each_input_of_any_norm() -> None:
    a, b = key_vec(1) * 3, key_vec(2) * 0.25
    expect = unit(unit(a.astype(np.float64)) + 2 * unit(b.astype(np.float64)))
    np.testing.assert_allclose(fuse({"x": a, "y": b[None]}, {"y": 2}), expect, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fuse({"x": a}), key_vec(1), rtol=1e-6, atol=1e-7)
    with pytest.raises(InvalidInput, match="differs") as err:
        fuse({"x": a, "y": np.ones(3)})
    assert err.value.field == "y"


@pytest.mark.parametrize(("embeddings", "weights", "field", "match"), [
    ({}, None, "query", "no query input"),
    ({"smell": key_vec(1)}, None, "query", "unknown query input"),
    ({"text": np.ones(DIM - 1) / np.sqrt(DIM - 1)}, None, "text", "dimension"),
    ({"vector": np.ones(3)}, None, "vector", "dimension"),
    ({"vector": np.zeros(DIM)}, None, "vector", "zero"),
    ({"vector": np.full(DIM, np.nan)}, None, "vector", "not finite"),
    ({"text": np.stack([key_vec(1), key_vec(2)])}, None, "text", "shape"),
    ({"text": key_vec(1)}, {"text": 0}, "weights", "zero"),
    ({"text": key_vec(1), "vector": -key_vec(1)}, None, "weights", "cancel"),
])
def test_search_query_errors_name_the_input(tmp_path: Path, embeddings: dict, weights: dict | None, field: str,
                                            match: str) -> None:
    with Collection.create(tmp_path / "c", dim=DIM, index="flat") as c:
        c.add([1], key_vec(1)[None])
        with pytest.raises(InvalidInput, match=match) as err:
            search_query(c, embeddings, weights, k=1)
        assert err.value.field == field


@pytest.mark.parametrize(("embeddings", "field"), [({"text": 2 * key_vec(1)}, "text"),
                                                   ({"image": np.full(DIM, np.inf)}, "image")])
def test_embeddings_breaking_the_unit_contract_are_the_models_fault(tmp_path: Path, embeddings: dict,
                                                                     field: str) -> None:
    """search_query takes model output (the service hands it what its batcher returned): a non-unit embedding
    is a ModelOutputError naming the input, not an InvalidInput blaming the caller."""
    with Collection.create(tmp_path / "c", dim=DIM, index="flat") as c:
        c.add([1], key_vec(1)[None])
        with pytest.raises(ModelOutputError, match="L2-normalised") as err:
            search_query(c, embeddings, None, k=1)
        assert err.value.field == field and not isinstance(err.value, InvalidInput)


def test_a_model_breaking_the_unit_contract_is_refused(tmp_path: Path) -> None:
    with Collection.create(tmp_path / "c", dim=DIM, index="flat") as c:
        c.add([1], key_vec(1)[None])
        with pytest.raises(ModelOutputError, match="norm 2") as err:  # the model's fault, not the caller's
            search_with_model(c, TableModel(scale=2.0), text="1", k=1)
        assert err.value.field == "text" and not isinstance(err.value, InvalidInput)
