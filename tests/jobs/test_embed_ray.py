"""The Ray engine: 2 actors write the same shards as the local engine (same ids, vectors within 1e-6) and finish
a job started locally and killed from its last finished shard. One local Ray instance for the module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jobkit import Crashing

from polymodal import load
from polymodal.jobs import EmbeddingShards, EmbedOptions, embed_dataset

ray = pytest.importorskip("ray")

LOCAL = EmbedOptions(shard_size=16, batch_size=8, progress=False)
RAY = EmbedOptions(shard_size=16, batch_size=8, progress=False, engine="ray", workers=2)


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield
    ray.shutdown()


def _rows(out: Path) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    shards = EmbeddingShards(out)
    vecs, metas = [], []
    for v, m in shards.chunks():
        vecs.append(v)
        metas += m
    return [m["sample_id"] for m in metas], np.concatenate(vecs), metas


def test_ray_engine_finishes_a_killed_local_job_with_the_local_engines_embeddings(
        job_data: Path, job_run: Path, tmp_path: Path) -> None:
    """One Ray execution (actor start-up is the slow part): a local job killed after its first shard is
    finished by 2 Ray actors (3 shards); the result equals a whole local run: same ids, metadata, manifest
    record, and vectors within 1e-6."""
    model = load(job_run)
    embed_dataset(str(job_run), job_data, tmp_path / "local", LOCAL, model=model)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(str(job_run), job_data, out, LOCAL, model=Crashing(model, calls=3))
    summary = embed_dataset(str(job_run), job_data, out, RAY, model=model)
    assert summary["engine"] == "ray" and summary["workers"] == 2 and summary["complete"]
    assert summary["resumed_shards"] == 1 and summary["written_shards"] == 3 and summary["count"] == 50
    ids_l, vec_l, meta_l = _rows(tmp_path / "local")
    ids_r, vec_r, meta_r = _rows(out)
    assert ids_r == ids_l and meta_r == meta_l
    np.testing.assert_allclose(vec_r, vec_l, atol=1e-6, rtol=0)
    man_l = json.loads((tmp_path / "local" / "manifest.json").read_text())
    man_r = json.loads((out / "manifest.json").read_text())
    assert man_r["model"] == man_l["model"] and man_r["modalities"] == man_l["modalities"]
    assert [e["files"] for e in man_r["shards"][1:]] == [e["files"] for e in man_l["shards"][1:]]
