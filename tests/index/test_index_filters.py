"""Metadata filters (equality, IN, range, ne, missing) against a plain-Python reference, and the guarantee that
a filtered search returns k hits whenever k items match — on the exact path and through the ANN indexes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _index_util import clustered, exact_topk

from polymodal.index import Collection, searching

N, DIM = 3000, 16


def _meta(i: int) -> dict[str, Any]:
    m: dict[str, Any] = {"color": ["red", "green", "blue"][i % 3], "year": 1990 + i % 40, "score": (i % 100) / 10,
                         "rare": i % 500 == 0, "tag": f"t{i % 7}"}
    if i % 11 == 0:
        del m["tag"]
    return m


def _passes(m: dict[str, Any], flt: dict[str, Any]) -> bool:
    """The filter semantics, written plainly."""
    for key, cond in flt.items():
        v = m.get(key)
        if cond is None:
            ok = v is None
        elif isinstance(cond, list):
            ok = v in cond
        elif isinstance(cond, dict):
            ops = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a > b,
                   "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
                   "in": lambda a, b: a in b}
            ok = v is not None and all(ops[op](v, b) for op, b in cond.items())
        else:
            ok = v == cond
        if not ok:
            return False
    return True


FILTERS = [
    {"color": "red"},
    {"color": ["red", "blue"]},
    {"year": {"gte": 2000, "lt": 2010}},
    {"score": {"gt": 2.5, "lte": 7.0}, "color": "green"},
    {"color": {"ne": "red"}},
    {"tag": None},
    {"tag": {"in": ["t1", "t2"]}, "year": {"lt": 2000}},
    {"rare": True},
    {"color": "purple"},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(1)
    x = clustered(N, DIM, seed=4)
    ids = np.arange(N, dtype=np.int64) * 3 + 1
    metas = [_meta(i) for i in range(N)]
    colls = {}
    for kind in ("flat", "hnsw", "ivf_flat"):
        c = Collection.create(tmp_path_factory.mktemp(kind) / "c", DIM, index=kind)
        c.add(ids, x, metas)
        colls[kind] = c
    return {"x": x, "ids": ids, "metas": metas, "colls": colls, "q": clustered(8, DIM, seed=5)}


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: "-".join(f))
def test_filter_semantics_exact(data: dict[str, Any], flt: dict[str, Any]) -> None:
    keep = np.array([_passes(m, flt) for m in data["metas"]])
    k = 10
    res = data["colls"]["flat"].search(data["q"], k=k, filter=flt)
    want = min(k, int(keep.sum()))
    if want:
        ref = exact_topk(data["x"][keep], data["ids"][keep], data["q"], want)
        assert (res.ids[:, :want] == ref).all()
    assert (res.ids[:, want:] == -1).all()
    for row in res.metadata:
        assert len(row) == want and all(_passes(m, flt) for m in row)


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat"])
@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: "-".join(f))
def test_ann_filtered_search_returns_k_hits(data: dict[str, Any], kind: str, flt: dict[str, Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # force the ANN path (with an IDSelector) even for selective filters, to test enlarge + fallback
    monkeypatch.setattr(searching, "EXACT_SUBSET_MAX", 0)
    monkeypatch.setattr(searching, "EXACT_SUBSET_FRACTION", 0.0)
    keep = np.array([_passes(m, flt) for m in data["metas"]])
    k = 25
    res = data["colls"][kind].search(data["q"], k=k, filter=flt, params={"nprobe": 1, "efSearch": 16})
    want = min(k, int(keep.sum()))
    allowed = set(data["ids"][keep].tolist())
    assert ((res.ids >= 0).sum(axis=1) == want).all()
    assert all(i in allowed for i in res.ids[res.ids >= 0].tolist())
    assert all(len(set(row[row >= 0].tolist())) == want for row in res.ids)   # no duplicates


def test_selective_filter_uses_exact_subset(data: dict[str, Any]) -> None:
    flt = {"rare": True}        # 6 of 3000 items
    keep = np.array([_passes(m, flt) for m in data["metas"]])
    res = data["colls"]["hnsw"].search(data["q"], k=4, filter=flt)
    assert (res.ids == exact_topk(data["x"][keep], data["ids"][keep], data["q"], 4)).all()


def test_filter_after_delete_and_upsert(data: dict[str, Any], tmp_path: Path) -> None:
    c = Collection.create(tmp_path / "c", DIM, index="flat")
    c.add(data["ids"][:30], data["x"][:30], data["metas"][:30])
    c.delete(data["ids"][:3])
    c.upsert(data["ids"][3:4], data["x"][3:4], [{"color": "purple"}])
    res = c.search(data["q"], k=30, filter={"color": "purple"})
    assert (res.ids[:, 0] == data["ids"][3]).all() and (res.ids[:, 1:] == -1).all()
    res = c.search(data["q"], k=30, filter={"color": "red"})
    expected = {int(i) for i, m in zip(data["ids"][4:30], data["metas"][4:30], strict=True) if m["color"] == "red"}
    assert {int(i) for i in res.ids[0] if i >= 0} == expected
    c.close()
