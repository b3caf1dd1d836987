"""Collection semantics: stable ids, upsert/delete, get, metrics against a numpy reference, reopen, locking,
context manager, info."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from _index_util import clustered, exact_topk

from polymodal.errors import InvalidInput, NotFound
from polymodal.index import Collection

KINDS = ["flat", "hnsw", "ivf_flat", "ivf_pq"]


def _make(tmp_path: Path, kind: str, n: int = 1500, dim: int = 16, seed: int = 0, metric: str = "cosine"):
    x = clustered(n, dim, seed)
    ids = np.arange(n, dtype=np.int64) * 10 + 7          # sparse, non-positional ids
    coll = Collection.create(tmp_path / f"c-{kind}-{metric}", dim, metric=metric, index=kind)
    coll.add(ids, x, [{"n": int(i), "half": int(i < n // 2)} for i in range(n)])
    return coll, ids, x


@pytest.mark.parametrize("kind", KINDS)
def test_ids_are_stable_through_upsert_and_delete(tmp_path: Path, kind: str) -> None:
    coll, ids, x = _make(tmp_path, kind)
    # each vector finds itself under its own id (never a row position)
    res = coll.search(x[:50], k=1, params={"exact": True})
    assert (res.ids[:, 0] == ids[:50]).all()
    # delete really removes: the id is never returned again, len shrinks, get fails
    gone = ids[:20]
    assert coll.delete(gone) == 20
    assert len(coll) == len(ids) - 20
    res = coll.search(x[:20], k=10)
    assert not np.isin(res.ids, gone).any()
    with pytest.raises(NotFound):
        coll.get(gone[:1])
    # upsert replaces the vector of an existing id: searching the new vector finds that id first
    target, new_vec = ids[100], x[900]
    coll.upsert([target], new_vec[None], [{"n": -1}])
    got = coll.get([target])
    np.testing.assert_allclose(got.vectors[0], new_vec / np.linalg.norm(new_vec), rtol=1e-6)
    assert got.metadata == [{"n": -1}]
    res = coll.search(new_vec, k=2)
    assert set(res.ids[0]) == {target, ids[900]}
    assert len(coll) == len(ids) - 20
    # the old vector of the upserted id no longer maps to it
    res = coll.search(x[100], k=1, params={"exact": True})
    assert res.ids[0, 0] != target
    coll.close()


def test_upsert_without_metadata_keeps_existing_and_inserts_new(tmp_path: Path) -> None:
    coll, ids, x = _make(tmp_path, "flat", n=20)
    coll.upsert([ids[0], 999], x[:2])
    items = coll.get([ids[0], 999])
    assert items.metadata == [{"n": 0, "half": 1}, {}]
    assert len(coll) == 21
    coll.close()


def test_delete_missing_ids(tmp_path: Path) -> None:
    coll, ids, _ = _make(tmp_path, "flat", n=20)
    with pytest.raises(NotFound, match="12345"):
        coll.delete([ids[0], 12345])
    assert len(coll) == 20   # nothing removed
    assert coll.delete([ids[0], 12345], missing="ignore") == 1
    coll.close()


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_exact_search_matches_numpy_reference(tmp_path: Path, metric: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 12)).astype(np.float32) * rng.uniform(0.5, 2, (400, 1)).astype(np.float32)
    q = rng.standard_normal((20, 12)).astype(np.float32)
    ids = rng.permutation(10_000)[:400].astype(np.int64)
    coll = Collection.create(tmp_path / "c", 12, metric=metric, index="flat")
    coll.add(ids, x)
    res = coll.search(q, k=5)
    if metric == "cosine":   # reference: cosine = inner product of normalized vectors
        x, q = x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    assert (res.ids == exact_topk(x, ids, q, 5, "l2" if metric == "l2" else "ip")).all()
    row = {int(i): r for r, i in enumerate(ids)}
    best = x[[row[int(i)] for i in res.ids[:, 0]]]
    expect = ((q - best) ** 2).sum(1) if metric == "l2" else (q * best).sum(1)
    np.testing.assert_allclose(res.scores[:, 0], expect, rtol=1e-4, atol=1e-4)
    coll.close()


def test_cosine_normalizes_once_at_insert(tmp_path: Path) -> None:
    coll = Collection.create(tmp_path / "c", 3, index="flat")
    coll.add([5], [[3.0, 0.0, 4.0]])
    np.testing.assert_allclose(coll.get([5]).vectors, [[0.6, 0.0, 0.8]], rtol=1e-6)
    res = coll.search([0.0, 0.0, 10.0], k=1)
    assert res.scores[0, 0] == pytest.approx(0.8)
    coll.close()


def test_k_larger_than_collection_pads(tmp_path: Path) -> None:
    coll, ids, x = _make(tmp_path, "hnsw", n=5)
    res = coll.search(x[:2], k=8)
    assert res.ids.shape == (2, 8) and res.ids.dtype == np.int64 and res.scores.dtype == np.float32
    assert (res.ids[:, 5:] == -1).all() and np.isneginf(res.scores[:, 5:]).all()
    assert sorted(res.ids[0, :5]) == sorted(ids)
    assert [len(m) for m in res.metadata] == [5, 5]
    assert res.hits(0)[0]["id"] == ids[0] and res.hits(0)[0]["metadata"]["n"] == 0
    coll.close()


@pytest.mark.parametrize("kind", KINDS)
def test_reopen_gives_identical_results(tmp_path: Path, kind: str) -> None:
    coll, ids, x = _make(tmp_path, kind)
    coll.delete(ids[:30])
    coll.upsert(ids[30:40], x[500:510])
    q = clustered(30, 16, seed=9)
    before = coll.search(q, k=10, filter={"half": 1})
    before_all = coll.search(q, k=10)
    info = coll.info()
    coll.close()
    again = Collection.open(coll.root, readonly=True)
    after, after_all = again.search(q, k=10, filter={"half": 1}), again.search(q, k=10)
    assert (after.ids == before.ids).all() and (after_all.ids == before_all.ids).all()
    np.testing.assert_array_equal(after_all.scores, before_all.scores)
    assert after.metadata == before.metadata
    assert again.info()["params"] == info["params"] and len(again) == len(ids) - 30
    again.close()


def test_context_manager_saves_on_success_only(tmp_path: Path) -> None:
    with Collection.create(tmp_path / "c", 4, index="flat") as coll:
        coll.add([1, 2], np.eye(4, dtype=np.float32)[:2])
    with pytest.raises(RuntimeError), Collection.open(tmp_path / "c") as coll:
        coll.add([3], np.eye(4, dtype=np.float32)[2:3])
        raise RuntimeError("boom")
    with Collection.open(tmp_path / "c", readonly=True) as coll:
        assert sorted(coll.ids().tolist()) == [1, 2]


def test_single_writer_lock_and_readonly(tmp_path: Path) -> None:
    coll = Collection.create(tmp_path / "c", 4, index="flat")
    with pytest.raises(InvalidInput, match="already open for writing"):
        Collection.open(tmp_path / "c")
    reader = Collection.open(tmp_path / "c", readonly=True)
    with pytest.raises(InvalidInput, match="read-only"):
        reader.add([1], np.ones((1, 4), np.float32))
    coll.add([1], np.ones((1, 4), np.float32))
    coll.save()
    assert len(reader) == 0 and reader.refresh() and len(reader) == 1
    coll.close()
    reader.close()
    Collection.open(tmp_path / "c").close()   # the lock was released


def test_create_and_open_errors(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(InvalidInput, match="path"):
        Collection.create(tmp_path / "full", 4)
    with pytest.raises(NotFound):
        Collection.open(tmp_path / "nope")
    with pytest.raises(NotFound, match="CURRENT"):
        Collection.open(tmp_path / "full")


def test_concurrent_threads_search_while_writing(tmp_path: Path) -> None:
    coll, ids, x = _make(tmp_path, "hnsw", n=800)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for i in range(60):
                res = coll.search(x[i % 50: i % 50 + 4], k=5)
                assert (res.ids >= 0).all()
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    def writer() -> None:
        try:
            for i in range(30):
                coll.add([100_000 + i], x[i: i + 1])
                coll.delete([100_000 + i])
                coll.upsert([ids[i]], x[i + 1: i + 2])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(coll) == 800 and len(set(coll.ids().tolist())) == 800
    coll.close()


def test_info_reports_structure(tmp_path: Path) -> None:
    coll, ids, _ = _make(tmp_path, "hnsw", n=200)
    coll.delete(ids[:10])
    info = coll.info()
    assert info["count"] == 190 and info["kind"] == "hnsw" and info["faiss"] == "HNSW32"
    assert info["tombstones"] == 10 and info["unsaved_changes"]
    assert info["bytes"]["vectors"] == 190 * (16 * 4 + 8) and info["bytes"]["index"] > 0
    coll.close()
