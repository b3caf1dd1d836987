"""Every bad-input path raises InvalidInput naming the field, and leaves the collection exactly as it was
(in memory and on disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _index_util import clustered

from polymodal.errors import InvalidInput
from polymodal.index import Collection

DIM = 8


@pytest.fixture(params=["flat", "hnsw"])
def coll(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    c = Collection.create(tmp_path / "c", DIM, index=request.param)
    c.add(np.arange(50), clustered(50, DIM), [{"i": i} for i in range(50)])
    c.save()
    yield c
    c.close(save=False)


def _snapshot(c: Collection) -> tuple:
    q = clustered(5, DIM, seed=3)
    res = c.search(q, k=5)
    files = sorted(p.name for p in c.root.iterdir())
    return len(c), res.ids.tolist(), res.metadata, c.info()["generation"], files


GOOD = clustered(2, DIM, seed=1)
BAD_WRITES = [
    ("ids", dict(ids=[1.0, 2.0], vectors=GOOD)),
    ("ids", dict(ids=["a", "b"], vectors=GOOD)),
    ("ids", dict(ids=[True, False], vectors=GOOD)),
    ("ids", dict(ids=np.array([1.5, 2.5]), vectors=GOOD)),
    ("ids", dict(ids=[100, 100], vectors=GOOD)),                     # duplicate inside one call
    ("ids", dict(ids=[100, -1], vectors=GOOD)),                      # -1 pads results
    ("ids", dict(ids=[100, 2**70], vectors=GOOD)),
    ("ids", dict(ids="12", vectors=GOOD)),
    ("vectors", dict(ids=[100, 101], vectors=np.ones((2, DIM + 1)))),
    ("vectors", dict(ids=[100, 101], vectors=np.ones(DIM))),
    ("vectors", dict(ids=[100, 101], vectors=np.ones((3, DIM)))),
    ("vectors", dict(ids=[100, 101], vectors=np.where(np.eye(2, DIM) > 0, np.nan, 1.0))),
    ("vectors", dict(ids=[100, 101], vectors=np.where(np.eye(2, DIM) > 0, np.inf, 1.0))),
    ("vectors", dict(ids=[100, 101], vectors=np.full((2, DIM), 1e39))),   # overflows float32
    ("vectors", dict(ids=[100, 101], vectors=np.zeros((2, DIM)))),        # no direction for cosine
    ("vectors", dict(ids=[100, 101], vectors=np.array([["a"] * DIM] * 2))),
    ("metadata", dict(ids=[100, 101], vectors=GOOD, metadata=[{"a": 1}])),
    ("metadata", dict(ids=[100, 101], vectors=GOOD, metadata={"a": 1})),
    ("metadata", dict(ids=[100, 101], vectors=GOOD, metadata=[{"a": 1}, "x"])),
    ("metadata", dict(ids=[100, 101], vectors=GOOD, metadata=[{"a": float("nan")}, {}])),
    ("metadata", dict(ids=[100, 101], vectors=GOOD, metadata=[{"a": object()}, {}])),
]


@pytest.mark.parametrize("method", ["add", "upsert"])
@pytest.mark.parametrize(("field", "kwargs"), BAD_WRITES)
def test_bad_writes_name_the_field_and_write_nothing(coll: Collection, method: str, field: str,
                                                     kwargs: dict[str, Any]) -> None:
    before = _snapshot(coll)
    with pytest.raises(InvalidInput) as err:
        getattr(coll, method)(**kwargs)
    assert err.value.field == field, str(err.value)
    assert field in str(err.value)
    coll.save()   # a no-op: nothing changed, so no new generation either
    assert _snapshot(coll) == before


def test_add_of_existing_id_is_rejected_whole(coll: Collection) -> None:
    before = _snapshot(coll)
    with pytest.raises(InvalidInput, match="upsert") as err:
        coll.add([500, 3], GOOD)      # 500 is new, 3 exists: neither is written
    assert err.value.field == "ids"
    assert _snapshot(coll) == before
    assert not coll.ids().tolist().count(500)


@pytest.mark.parametrize(("field", "call"), [
    ("queries", lambda c: c.search(np.ones((1, DIM + 2)), k=3)),
    ("queries", lambda c: c.search(np.full((1, DIM), np.nan), k=3)),
    ("queries", lambda c: c.search(np.zeros(DIM), k=3)),
    ("k", lambda c: c.search(GOOD, k=0)),
    ("k", lambda c: c.search(GOOD, k=2.5)),
    ("k", lambda c: c.search(GOOD, k=True)),
    ("params", lambda c: c.search(GOOD, k=3, params={"nprobes": 3})),
    ("params.nprobe", lambda c: c.search(GOOD, k=3, params={"nprobe": 0})),
    ("params.exact", lambda c: c.search(GOOD, k=3, params={"exact": "yes"})),
    ("filter", lambda c: c.search(GOOD, k=3, filter=[("i", 1)])),
    ("filter", lambda c: c.search(GOOD, k=3, filter={"": 1})),
    ("filter", lambda c: c.search(GOOD, k=3, filter={'a"b': 1})),
    ("filter.i", lambda c: c.search(GOOD, k=3, filter={"i": {"around": 3}})),
    ("filter.i", lambda c: c.search(GOOD, k=3, filter={"i": []})),
    ("filter.i", lambda c: c.search(GOOD, k=3, filter={"i": {"gte": float("inf")}})),
    ("filter.i", lambda c: c.search(GOOD, k=3, filter={"i": {"x": 1}})),
    ("filter.i", lambda c: c.search(GOOD, k=3, filter={"i": 2**63})),             # beyond SQLite's int64
    ("filter.i", lambda c: c.search(GOOD, k=3, filter={"i": {"gte": -(2**64)}})),
    ("filter.i", lambda c: c.search(GOOD, k=3, filter={"i": [1, 2**70]})),
    ("filter.i", lambda c: c.search(GOOD, k=3, filter={"i": "\ud800"})),          # not encodable as UTF-8
    ("filter", lambda c: c.search(GOOD, k=3, filter={"\ud800": 1})),
    ("k", lambda c: c.search(GOOD, k=2**40)),
    ("params.efSearch", lambda c: c.search(GOOD, k=3, params={"efSearch": 2**31})),
    ("params.k_factor", lambda c: c.search(GOOD, k=3, params={"k_factor": 2**40})),
    ("params.nprobe", lambda c: c.search(GOOD, k=3, params={"nprobe": 2**62})),
    ("ids", lambda c: c.get([1.0])),
    ("ids", lambda c: c.delete([3, 3])),
    ("missing", lambda c: c.delete([3], missing="skip")),
    ("target_recall", lambda c: c.tune(target_recall=1.5)),
    ("sample", lambda c: c.tune(sample=0)),
])
def test_bad_reads_and_calls_name_the_field(coll: Collection, field: str, call: Any) -> None:
    before = _snapshot(coll)
    with pytest.raises(InvalidInput) as err:
        call(coll)
    assert err.value.field == field, str(err.value)
    assert _snapshot(coll) == before


@pytest.mark.parametrize(("field", "kwargs"), [
    ("dim", dict(dim=0)),
    ("dim", dict(dim=4.0)),
    ("metric", dict(dim=4, metric="cos")),
    ("index", dict(dim=4, index="hnswx")),
    ("index", dict(dim=4, index="IVF16,PQ3")),     # PQ3 does not divide dim 4
    ("index", dict(dim=4, index="")),
    ("index", dict(dim=128, index="PQ64x24")),     # 2^24 centroids per sub-quantizer: 8.8 GB to build
    ("index", dict(dim=128, index="IVF1024,PQ16x17")),
    ("index", dict(dim=128, index="PQ3")),         # 3 does not divide 128
    ("index", dict(dim=4096, index="PQ64x16")),    # a 1 GiB codebook
    ("index", dict(dim=128, index="IVF99999999999,Flat")),
    ("index", dict(dim=128, index="RQ8x20")),
    ("index", dict(dim=128, index="IMI2x16,Flat")),    # 2^32 inverted lists
    ("memory_budget", dict(dim=4, memory_budget="lots")),
    ("memory_budget", dict(dim=4, memory_budget=-5)),
])
def test_bad_create_arguments(tmp_path: Path, field: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as err:
        Collection.create(tmp_path / "c", **kwargs)
    assert err.value.field == field
    assert not (tmp_path / "c").exists()    # rejected before anything is created


def test_memory_budget_units(tmp_path: Path) -> None:
    c = Collection.create(tmp_path / "c", 4, memory_budget="1.5 GiB")
    assert c.info()["memory_budget"] == int(1.5 * 2**30)
    c.close()


@pytest.mark.parametrize("spec", ["PQ64x24", "IVF4096,PQ64x24", "OPQ64,IVF65536,PQ64x30", "HNSW32,PQ128x40",
                                  "IVF1048577,Flat", "PCA64,IVF9999999999,Flat"])
def test_absurd_factory_strings_are_rejected_without_building(tmp_path: Path, spec: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The parameters that make FAISS allocate (PQ/RQ codebooks, inverted lists) are bounded from the string
    itself: FAISS never builds the index (which took 22 s and 8.8 GB for PQ64x24)."""
    import faiss

    def no_build(*args: Any) -> Any:
        raise AssertionError(f"FAISS was asked to build {args}")

    monkeypatch.setattr(faiss, "index_factory", no_build)
    with pytest.raises(InvalidInput) as err:
        Collection.create(tmp_path / "c", 128, index=spec)
    assert err.value.field == "index" and spec in str(err.value)
    assert "at most" in str(err.value)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(("dim", "spec"), [(128, "PQ64x12"), (128, "IVF256,PQ16x8np"), (64, "OPQ16_32,IVF64,PQ16"),
                                           (32, "HNSW16"), (32, "IVF64_HNSW32,Flat"), (32, "IVF16,SQ8"),
                                           (32, "PCA16,IVF16,PQ4x4fs"), (32, "RQ4x8"), (16, "Flat"), (16, "SQfp16")])
def test_reasonable_factory_strings_still_pass(tmp_path: Path, dim: int, spec: str) -> None:
    Collection.create(tmp_path / "c", dim, index=spec).close()
