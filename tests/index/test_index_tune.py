"""tune(): the chosen parameters reach the target recall on held-out queries (not the tuning sample), are
the fastest of those measured that do, and are saved with the collection."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from _index_util import clustered, recall

from polymodal.index import Collection


@pytest.mark.parametrize(("kind", "n"), [("hnsw", 4000), ("ivf_flat", 4000), ("ivf_pq", 8000)])
def test_tune_reaches_target_on_held_out_queries(tmp_path: Path, kind: str, n: int) -> None:
    dim, target = 32, 0.95
    x = clustered(n, dim, seed=11, spread=1.0)
    q = clustered(200, dim, seed=12, spread=1.0)          # same distribution, never in the collection
    coll = Collection.create(tmp_path / "c", dim, index=kind)
    coll.add(np.arange(n), x)
    report = coll.tune(target_recall=target, k=10, sample=300)
    assert report["reached"] and report["recall"] >= target
    reached = [t for t in report["tried"] if t["reached"]]
    assert report["qps"] == max(t["qps"] for t in reached)
    key = "efSearch" if kind == "hnsw" else "nprobe"
    assert coll.info()["params"][key] == report["params"][key]
    ref = faiss.IndexFlatIP(dim)
    ref.add(x)
    truth = ref.search(q, 10)[1]
    held_out = recall(coll.search(q, k=10).ids, truth)
    assert held_out >= target - 0.03, held_out   # the sample is a sample: allow a little noise
    coll.close()
    with Collection.open(tmp_path / "c", readonly=True) as again:
        assert again.info()["params"] == coll.info()["params"]
        assert again.info()["tuned"]["recall"] == report["recall"]


def test_tune_on_exact_index_is_a_no_op(tmp_path: Path) -> None:
    coll = Collection.create(tmp_path / "c", 8, index="flat")
    coll.add(np.arange(100), clustered(100, 8))
    report = coll.tune()
    assert report["exact"] and report["recall"] == 1.0 and coll.info()["tuned"] is None
    coll.close()


def test_retraining_resets_tuned_parameters(tmp_path: Path) -> None:
    x = clustered(4200, 16, seed=1)
    coll = Collection.create(tmp_path / "c", 16, index="ivf_flat")
    coll.add(np.arange(1000), x[:1000])
    coll.tune(target_recall=0.9, sample=100)
    assert coll.info()["tuned"] is not None
    coll.add(np.arange(1000, 4200), x[1000:])                # 4.2x growth: retrained, nlist changed
    assert coll.info()["tuned"] is None and coll.info()["trained_at"] == 4200
    coll.close()


def test_tune_on_given_queries_and_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from polymodal.commands import index as cli

    x = clustered(3000, 16, seed=1, spread=1.0)
    q = clustered(100, 16, seed=2, spread=1.0)
    coll = Collection.create(tmp_path / "c", 16, index="hnsw")
    coll.add(np.arange(3000), x)
    report = coll.tune(target_recall=0.9, queries=q)
    assert report["queries"] == "given" and report["sample"] == 100 and report["reached"]
    ref = faiss.IndexFlatIP(16)
    ref.add(x)
    measured = recall(coll.search(q, k=10).ids, ref.search(q, 10)[1])
    assert measured == pytest.approx(report["recall"], abs=1e-3)   # the same queries: the same recall
    coll.close()
    assert cli.main(["tune", str(tmp_path / "c"), "--target-recall", "0.9", "--sample", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reached"] and out["queries"] == "held-out"
    with Collection.open(tmp_path / "c", readonly=True) as again:
        assert again.info()["tuned"]["queries"] == "held-out"
