"""Benchmark: FAISS build and add rates at 1M vectors, measured, and extrapolated to 100M (docs/scale.md).

In one process, on ``--n`` clustered unit vectors of ``--dim`` dimensions (bench/index_bench.py's generator):
  ivf-pq (raw FAISS)   ``IVF{nlist},PQ{m}x8np`` for each ``--nlists``: train on 64 nlist vectors (coarse
                       k-means and PQ codebooks timed apart), add all n
                       in chunks of 100k; seconds, vectors/s, bytes per vector of the index
  polymodal bulk       `polymodal.index.build_from_vectors` (what ``index build --from-embeddings`` runs) with
                       the first nlist: train once, add chunk by chunk through `Collection.add` (metadata rows,
                       raw-vector store), save once; its add rate against raw FAISS' is the overhead
  hnsw (raw FAISS)     ``HNSW32`` add rate on ``--hnsw-n`` vectors (graph insertion, for comparison)
Then the 100M extrapolation: the coarse assignment of an add costs ~nlist * d per vector, so the add time per
vector is fitted as a + b * nlist over the measured nlists and evaluated at autofaiss' nlist for 100M
(2^round(log2(4 sqrt n)) = 32768); k-means training costs (64 nlist points) x nlist x d x iterations, so it
grows with nlist^2 from the largest measured nlist (plus the PQ codebooks, whose cost does not depend on nlist). Memory per vector: m bytes of PQ code + 8 of id in the
index, plus 4 d bytes of raw vectors that a collection keeps (memory-mapped) for exact re-ranking.

    python bench/index_scale.py [--n 1000000] [--dim 256] [--nlists 256,1024] [--m 32] [--hnsw-n 100000]

Prints one JSON line; writes the generated block of docs/scale.md (between its markers; not with --no-docs)."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before FAISS loads OpenMP (as polymodal does)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import faiss  # noqa: E402

from index_bench import make_data  # noqa: E402
from polymodal.index import build_from_vectors  # noqa: E402

CHUNK = 100_000
TARGET_N = 100_000_000
BEGIN, END = "<!-- index_scale:begin -->", "<!-- index_scale:end -->"


def ivf_pq(x: np.ndarray, nlist: int, m: int) -> dict[str, Any]:
    """Trained as polymodal trains it (10 k-means iterations, PQ codebooks on 16k points), in two timed
    steps: the coarse k-means (which grows with nlist^2) and the PQ codebooks (independent of nlist)."""
    n, d = x.shape
    index = faiss.index_factory(d, f"IVF{nlist},PQ{m}x8np", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.pq.cp.niter, ivf.pq.cp.max_points_per_centroid = 10, 64
    rows = np.sort(np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False))
    sample = np.ascontiguousarray(x[rows])
    t = time.perf_counter()
    km = faiss.Kmeans(d, nlist, niter=10, spherical=False, seed=1234)
    km.train(sample)
    coarse_s = time.perf_counter() - t
    ivf.quantizer.add(km.centroids)   # a trained quantizer: index.train now trains the PQ codebooks only
    t = time.perf_counter()
    index.train(sample)
    pq_s = time.perf_counter() - t
    train_s = coarse_s + pq_s
    t = time.perf_counter()
    for a in range(0, n, CHUNK):
        index.add_with_ids(x[a:a + CHUNK], np.arange(a, min(a + CHUNK, n), dtype=np.int64))
    add_s = time.perf_counter() - t
    return {"spec": f"IVF{nlist},PQ{m}x8np", "nlist": nlist, "train_points": len(rows), "train_s": round(train_s, 2),
            "coarse_kmeans_s": round(coarse_s, 2), "pq_train_s": round(pq_s, 2),
            "add_s": round(add_s, 2), "add_per_s": round(n / add_s), "index_bytes_per_vector": m + 8}


class _Chunks:
    def __init__(self, x: np.ndarray):
        self.x, self.dim = x, x.shape[1]

    def __len__(self) -> int:
        return len(self.x)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        return self.x[np.sort(np.random.default_rng(seed).choice(len(self.x), size=n, replace=False))]

    def chunks(self) -> Any:
        for a in range(0, len(self.x), CHUNK):
            yield self.x[a:a + CHUNK], None


def bulk(x: np.ndarray, nlist: int, m: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="index_scale_"))
    try:
        t = time.perf_counter()
        coll, report = build_from_vectors(work / "c", _Chunks(x), index=f"IVF{nlist},PQ{m}x8np",
                                          train_sample=64 * nlist)
        total = time.perf_counter() - t
        info = coll.info()
        coll.close()
        disk = sum(p.stat().st_size for p in (work / "c").rglob("*") if p.is_file())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"spec": info["faiss"], "train_s": report["train_s"], "add_s": report["add_s"], "save_s": report["save_s"],
            "total_s": round(total, 2), "add_per_s": round(len(x) / report["add_s"]),
            "disk_bytes_per_vector": round(disk / len(x), 1)}


def hnsw(x: np.ndarray) -> dict[str, Any]:
    index = faiss.index_factory(x.shape[1], "HNSW32", faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 40
    t = time.perf_counter()
    index.add(x)
    s = time.perf_counter() - t
    return {"n": len(x), "add_s": round(s, 2), "add_per_s": round(len(x) / s),
            "bytes_per_vector": 4 * x.shape[1] + 2 * 32 * 4}


def assignment(x: np.ndarray, nlist: int, n_queries: int = 20_000) -> dict[str, Any]:
    """Seconds per vector to find its list among ``nlist`` centroids (the coarse step of every add and of each
    k-means iteration), measured at the 100M nlist: exhaustive (flat quantizer) and through an HNSW32 graph
    over the centroids (``IVF{nlist}_HNSW32``)."""
    rng = np.random.default_rng(1)
    cents = np.ascontiguousarray(x[rng.choice(len(x), size=nlist, replace=False)])
    q = np.ascontiguousarray(x[rng.choice(len(x), size=n_queries, replace=False)])
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(cents)
    t = time.perf_counter()
    flat.search(q, 1)
    flat_s = (time.perf_counter() - t) / n_queries
    graph = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = 40
    graph.add(cents)
    graph.hnsw.efSearch = 16   # FAISS' default for an HNSW coarse quantizer
    t = time.perf_counter()
    graph.search(q, 1)
    hnsw_s = (time.perf_counter() - t) / n_queries
    return {"nlist": nlist, "flat_us_per_vector": round(flat_s * 1e6, 2), "hnsw_us_per_vector": round(hnsw_s * 1e6, 2)}


def extrapolate(res: dict[str, Any]) -> dict[str, Any]:
    """100M from measured per-vector costs: add = PQ encoding (the smallest-nlist run's add time per vector,
    whose assignment is cheap) + coarse assignment at the 100M nlist (measured); coarse k-means = 10
    iterations x 64 nlist points x assignment, + the PQ codebooks (measured, independent of n)."""
    runs, d, m, asg = res["ivf_pq"], res["dim"], res["m"], res["assign"]
    nlist_100m = asg["nlist"]
    small = min(runs, key=lambda r: r["nlist"])
    encode = small["add_s"] / res["n"]
    flat, graph = asg["flat_us_per_vector"] * 1e-6, asg["hnsw_us_per_vector"] * 1e-6
    add_100m = TARGET_N * (encode + flat)
    add_100m_hnsw = TARGET_N * (encode + graph)
    train_100m = 10 * 64 * nlist_100m * flat + small["pq_train_s"]
    overhead = res["bulk"]["add_s"] / next(r["add_s"] for r in runs if r["spec"] == res["bulk"]["spec"]) \
        if any(r["spec"] == res["bulk"]["spec"] for r in runs) else None
    return {"n": TARGET_N, "nlist": nlist_100m, "encode_us_per_vector": round(encode * 1e6, 2),
            "add_hours": round(add_100m / 3600, 1), "add_hours_hnsw_quantizer": round(add_100m_hnsw / 3600, 1),
            "train_hours": round(train_100m / 3600, 2),
            "index_gb": round(TARGET_N * (m + 8) / 1e9, 1), "raw_vectors_gb": round(TARGET_N * 4 * d / 1e9, 1),
            "centroids_mb": round(nlist_100m * d * 4 / 1e6, 1), "bulk_overhead_x": round(overhead, 2) if overhead else None,
            "hnsw_hours": round(TARGET_N / res["hnsw"]["add_per_s"] / 3600, 1),
            "hnsw_gb": round(TARGET_N * res["hnsw"]["bytes_per_vector"] / 1e9, 1)}


def markdown(res: dict[str, Any]) -> str:
    m, e = res["machine"], res["extrapolated"]
    lines = [BEGIN, "", "_Generated by `bench/index_scale.py` — a rerun replaces this block._", "",
             f"Measured on {res['n']:,} x {res['dim']} clustered unit vectors, {m['cpus']} CPUs ({m['platform']}), "
             f"load average at start {m['load_at_start']}, FAISS {m['faiss']} with {m['threads']} threads.", "",
             "| build | index | train points | train s (coarse k-means + PQ) | add s | vectors/s added | index bytes/vector |",
             "|---|---|---|---|---|---|---|"]
    for r in res["ivf_pq"]:
        lines.append(f"| raw FAISS | {r['spec']} | {r['train_points']:,} | {r['train_s']} ({r['coarse_kmeans_s']} + "
                     f"{r['pq_train_s']}) | {r['add_s']} | "
                     f"{r['add_per_s']:,} | {r['index_bytes_per_vector']} |")
    b = res["bulk"]
    lines.append(f"| polymodal `build_from_vectors` (save {b['save_s']} s, {b['disk_bytes_per_vector']} B/vector "
                 f"on disk with raw vectors + metadata) | {b['spec']} | - | {b['train_s']} | {b['add_s']} | "
                 f"{b['add_per_s']:,} | - |")
    h = res["hnsw"]
    lines.append(f"| raw FAISS ({h['n']:,} vectors) | HNSW32 | - | - | {h['add_s']} | {h['add_per_s']:,} | "
                 f"{h['bytes_per_vector']} |")
    a = res["assign"]
    lines += ["", f"Coarse assignment among {a['nlist']:,} centroids (the 100M nlist), measured: "
              f"{a['flat_us_per_vector']} us/vector exhaustive, {a['hnsw_us_per_vector']} us/vector through an HNSW32 "
              f"graph of the centroids; PQ encoding {e['encode_us_per_vector']} us/vector.", "",
              f"Extrapolated to {e['n']:,} vectors on this machine: IVF{e['nlist']},PQ{res['m']}: train "
              f"~{e['train_hours']} h (10 k-means iterations over 64 x nlist points), add ~{e['add_hours']} h "
              f"(~{e['add_hours_hnsw_quantizer']} h with `IVF{e['nlist']}_HNSW32`); index {e['index_gb']} GB "
              f"(+ {e['centroids_mb']} MB centroids), raw vectors {e['raw_vectors_gb']} GB on disk. HNSW32 instead: "
              f"~{e['hnsw_hours']} h to add, {e['hnsw_gb']} GB in memory. polymodal's bulk path adds at "
              f"{e['bulk_overhead_x']}x raw FAISS' time.", "",
             "```json", json.dumps(res), "```", "", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--nlists", default="256,1024", help="IVF sizes measured (the add-cost fit needs two)")
    p.add_argument("--m", type=int, default=32, help="PQ sub-quantizers (bytes per code)")
    p.add_argument("--hnsw-n", type=int, default=100_000)
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args(argv)
    load = round(os.getloadavg()[0], 2)
    x, _ = make_data(args.n, 0, args.dim, seed=0)
    res: dict[str, Any] = {"bench": "index_scale", "n": args.n, "dim": args.dim, "m": args.m}
    res["ivf_pq"] = []
    for nlist in (int(v) for v in args.nlists.split(",")):
        res["ivf_pq"].append(ivf_pq(x, nlist, args.m))
        print(res["ivf_pq"][-1], file=sys.stderr)
    res["bulk"] = bulk(x, int(args.nlists.split(",")[0]), args.m)
    print(res["bulk"], file=sys.stderr)
    res["hnsw"] = hnsw(x[: args.hnsw_n])
    print(res["hnsw"], file=sys.stderr)
    res["assign"] = assignment(x, 1 << round(math.log2(4 * math.sqrt(TARGET_N))))
    print(res["assign"], file=sys.stderr)
    res["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "load_at_start": load,
                      "faiss": faiss.__version__, "threads": faiss.omp_get_max_threads()}
    res["extrapolated"] = extrapolate(res)
    print(json.dumps(res))
    if not args.no_docs:
        path = ROOT / "docs" / "scale.md"
        text = path.read_text() if path.exists() else f"{BEGIN}\n{END}\n"
        block = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        path.write_text(block.sub(lambda _: markdown(res), text) if block.search(text) else text + "\n" + markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
