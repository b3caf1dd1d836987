"""Index kinds: recall against FAISS exact search, incremental adds after build, IVF staging / training /
retraining, HNSW tombstones and compaction, factory strings, and the `auto` rule."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from _index_util import clustered, recall

from polymodal.index import Collection, faiss_index, tuning

DIM = 24


def _faiss_exact(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    ref = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    ref.add_with_ids(x, ids)
    return ref.search(q, k)[1]


@pytest.mark.parametrize(("kind", "floor"), [("flat", 1.0), ("hnsw", 0.95), ("ivf_flat", 0.9), ("ivf_pq", 0.7),
                                             ("IVF32,Flat", 0.9), ("HNSW16", 0.95), ("IVF16,SQ8", 0.9)])
def test_recall_against_faiss_exact(tmp_path: Path, kind: str, floor: float) -> None:
    n = 4000
    x = clustered(n, DIM, seed=2)
    ids = np.random.default_rng(0).permutation(10 * n)[:n].astype(np.int64)
    q = clustered(100, DIM, seed=7)   # held-out queries from the same distribution
    coll = Collection.create(tmp_path / "c", DIM, index=kind)
    # built incrementally: the first batch trains IVF kinds, later batches are added to the trained index
    for a in range(0, n, 1000):
        coll.add(ids[a: a + 1000], x[a: a + 1000])
    info = coll.info()
    assert info["kind"] == ("factory" if kind[0].isupper() else kind) and len(coll) == n
    if kind != "flat":
        assert info["faiss"] is not None and not info["staged"]
    res = coll.search(q, k=10)
    r = recall(res.ids, _faiss_exact(x, ids, q, 10))
    assert r >= floor, (kind, r)
    coll.close()


def test_ivf_stays_exact_until_it_can_train_then_retrains_after_growth(tmp_path: Path) -> None:
    x = clustered(5000, DIM, seed=3)
    coll = Collection.create(tmp_path / "c", DIM, index="ivf_flat")
    coll.add(np.arange(500), x[:500])
    info = coll.info()
    assert info["staged"] and info["faiss"] is None          # too few vectors to train: exact search
    res = coll.search(x[:5], k=3)
    assert (res.ids[:, 0] == np.arange(5)).all()
    coll.add(np.arange(500, 1200), x[500:1200])
    info = coll.info()
    assert not info["staged"] and info["trained_at"] == 1200
    nlist_first = info["nlist"]
    assert nlist_first == faiss_index.ivf_nlist(1200)
    coll.add(np.arange(1200, 4000), x[1200:4000])             # < 4x: added to the trained index
    assert coll.info()["trained_at"] == 1200
    coll.add(np.arange(4000, 5000), x[4000:5000])             # 5000 >= 4 * 1200: retrained
    info = coll.info()
    assert info["trained_at"] == 5000 and info["nlist"] == faiss_index.ivf_nlist(5000) > nlist_first
    res = coll.search(x[:50], k=1, params={"nprobe": info["nlist"]})
    assert (res.ids[:, 0] == np.arange(50)).all()
    coll.close()


def test_hnsw_tombstones_are_filtered_then_compacted(tmp_path: Path) -> None:
    x = clustered(1000, DIM, seed=5)
    coll = Collection.create(tmp_path / "c", DIM, index="hnsw")
    coll.add(np.arange(1000), x)
    coll.delete(np.arange(0, 200))                           # 20% dead: kept as tombstones
    assert coll.info()["tombstones"] == 200
    res = coll.search(x[:200], k=10)
    assert (res.ids >= 200).all() and ((res.ids >= 0).sum(1) == 10).all()
    coll.upsert(np.arange(200, 300), x[:100])                # 100 more dead positions -> over 25%: compacted
    info = coll.info()
    assert info["tombstones"] == 0
    res = coll.search(x[:100], k=1)
    assert (res.ids[:, 0] == np.arange(200, 300)).all()
    coll.close()


def test_auto_moves_from_flat_to_hnsw_to_ivf_pq(tmp_path: Path) -> None:
    dim = 16
    x = clustered(12_000, dim, seed=6)
    # budget: HNSW fits at 10k-12k vectors (M = 8..) but not beyond ~13k, where auto must move to IVF-PQ
    budget = 4 * 12_000 * (dim + 2 * 8)
    coll = Collection.create(tmp_path / "c", dim, index="auto", memory_budget=budget)
    coll.add(np.arange(9_000), x[:9_000])
    assert coll.info()["kind"] == "flat"
    coll.add(np.arange(9_000, 12_000), x[9_000:12_000])
    info = coll.info()
    assert info["kind"] == "hnsw" and info["faiss"] == f"HNSW{tuning.hnsw_m_for(12_000, dim, budget)}"
    more = clustered(2_000, dim, seed=8)
    coll.add(np.arange(12_000, 14_000), more)
    info = coll.info()
    assert info["kind"] == "ivf_pq" and info["faiss"].startswith("IVF") and "PQ" in info["faiss"]
    res = coll.search(more[:20], k=1, params={"nprobe": info["nlist"], "k_factor": 32})
    assert (res.ids[:, 0] == np.arange(12_000, 12_020)).mean() >= 0.9
    coll.close()


def test_auto_rule_matches_the_documented_formula() -> None:
    gib = 2**30
    assert tuning.choose_auto(5_000, 256, 4 * gib) == ("flat", 32)
    assert tuning.choose_auto(200_000, 256, 4 * gib) == ("hnsw", 32)
    # M = floor((budget / (4n) - d) / 2) = floor((4 GiB / 40M - 256) / 2) = -> below 8 at 10M vectors
    assert tuning.choose_auto(10_000_000, 256, 4 * gib)[0] == "ivf_pq"
    assert tuning.hnsw_m_for(1_000_000, 128, 1 * gib) == min(32, int((gib / 4e6 - 128) // 2))
    # once HNSW is chosen, M is kept and auto never goes back down
    assert tuning.choose_auto(20_000, 256, 4 * gib, current="hnsw", current_m=16) == ("hnsw", 16)
    assert tuning.choose_auto(100, 256, 4 * gib, current="ivf_pq")[0] == "ivf_pq"
    assert faiss_index.ivf_nlist(1_000_000) == 4096 and faiss_index.ivf_nlist(1000) == 16
    assert faiss_index.pq_m(256) == 32 and faiss_index.pq_m(24) == 3 and faiss_index.pq_m(256, 10**6, 20 * 10**6) == 8
