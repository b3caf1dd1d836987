"""Benchmark: the HTTP service under bounded loopback load (`polymodal serve` in a child process on 127.0.0.1).

1. /v1/search with a text query (embedded by the model, then a top-10 search over a collection of --items
   vectors) at concurrency 1, 8, 32: throughput, p50/p95/p99 latency, errors (must be 0: the queue is larger
   than the concurrency).
2. /v1/embed of one text per request at concurrency 32, dynamic batching (max batch 32, max wait 5 ms)
   versus max batch 1: the throughput ratio (target >= 3x), for
   - the real model: a tiny polymodal CLIP (`clip_tiny`, trained for a few steps on generated `shapes` in a
     temp dir, or --model RUN), on the CPU, torch limited to --threads threads;
   - a simulated accelerator: a fake model whose call costs a fixed overhead plus a per-item part, spent
     sleeping (like waiting for a GPU), so the ratio shows what batching buys when a call has fixed cost.
Each configuration gets a fresh server process; the client (asyncio, one keep-alive connection per
concurrent request) runs in this process.

    python bench/serve_load.py [--requests 2000] [--embed-requests 1000] [--concurrency 1,8,32]
                               [--model RUN | --fake] [--out docs/results/serve.md]

Prints one JSON line, then a table; writes the Markdown table to --out."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

WORDS = ["red", "blue", "green", "yellow", "circle", "square", "triangle", "star", "left", "right", "above",
         "below", "small", "large", "moving", "a", "of", "the"]
SIM_OVERHEAD_S, SIM_PER_ITEM_S, SIM_DIM = 0.010, 0.00025, 128


# ------------------------------------------------------------------------------------------ server child

class SimulatedModel:
    """Text only; each call sleeps overhead + per_item * n (no CPU, like an accelerator) and hashes words."""

    modalities = ("text",)
    dim = SIM_DIM

    def embed(self, text: list[str] | None = None, **_: Any) -> np.ndarray:
        assert text is not None
        time.sleep(SIM_OVERHEAD_S + SIM_PER_ITEM_S * len(text))
        out = np.zeros((len(text), SIM_DIM), np.float32)
        for i, s in enumerate(text):
            for w in s.split():
                out[i, hash(w) % SIM_DIM] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def child(args: argparse.Namespace) -> int:
    import torch

    from polymodal.serve import ServeSettings, create_app
    from polymodal.serve.server import bind, make_server

    torch.set_num_threads(args.threads)
    if args.model == "simulated":
        model: Any = SimulatedModel()
    else:
        from polymodal import load
        model = load(args.model)
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size)
    root = Path(args.root)
    app = create_app(model, root=root, settings=settings, collection=root / "bench")
    coll = app.state.service.store.get("bench").coll
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((args.items, model.dim)).astype(np.float32)
    coll.upsert(np.arange(args.items), vecs, [{"caption": caption(rng)} for _ in range(args.items)])
    coll.save()
    model.embed(text=["warm up the model"])
    # the server `polymodal serve` runs: its h11 protocol with the header timeout, connection limits, keep-alive
    sock = bind("127.0.0.1", args.port)
    with contextlib.suppress(KeyboardInterrupt):  # the parent stops each server with SIGINT, as Ctrl-C would
        make_server(app, settings, log_level="warning").run(sockets=[sock])
    return 0


def caption(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 8))).tolist())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A `create_app` server in a child process (a fresh one per configuration)."""

    def __init__(self, model: str, max_batch: int, max_wait_ms: float, queue_size: int, items: int, threads: int):
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="serve_load_"))
        cmd = [sys.executable, __file__, "--child", "--port", str(self.port), "--model", model, "--root",
               str(self.root), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--queue-size",
               str(queue_size), "--items", str(items), "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not start within 300 s")

    def __exit__(self, *exc: Any) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------------------------ load

class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for JSON POSTs. A generic
    client (httpx) costs more CPU per request than the server on a small machine and becomes the bottleneck."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length")
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


async def _load(url: str, path: str, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    conns = [Connection(host, int(port)) for _ in range(concurrency)]

    async def one(conn: Connection, body: bytes) -> tuple[float, bool]:
        t0 = time.perf_counter()
        try:
            ok = await conn.post(path, body) == 200
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
            ok = False
            await conn.close()
            conn.writer = None
        return time.perf_counter() - t0, ok

    await asyncio.gather(*(one(c, bodies[i % len(bodies)]) for i, c in enumerate(conns)))  # warm-up: connect
    queue = list(reversed(bodies))
    results: list[tuple[float, bool]] = []

    async def worker(conn: Connection) -> None:
        while queue:
            results.append(await one(conn, queue.pop()))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    wall = time.perf_counter() - t0
    for c in conns:
        await c.close()
    lat = np.array([r[0] for r in results]) * 1000
    return {"path": path, "concurrency": concurrency, "requests": len(results), "seconds": round(wall, 2),
            "rps": round(len(results) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "errors": sum(not r[1] for r in results)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), immune to what else the machine is doing."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(srv: Server, path: str, n: int, concurrency: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    texts = [caption(rng) for _ in range(n)]
    bodies = [json.dumps({"text": t, "k": 10} if path == "/v1/search" else {"text": [t]}).encode() for t in texts]
    cpu0 = cpu_seconds(srv.proc.pid)
    out = asyncio.run(_load(srv.url, path, bodies, concurrency))
    total = n + concurrency  # the warm-up requests ran too
    out["server_cpu_ms_per_request"] = round(1000 * (cpu_seconds(srv.proc.pid) - cpu0) / total, 2)
    return out


def batching(model: str, label: str, args: argparse.Namespace) -> dict[str, Any]:
    runs = {}
    for mb in (1, args.max_batch):
        with Server(model, mb, args.max_wait_ms, args.queue_size, args.items, args.threads) as srv:
            runs[mb] = load(srv, "/v1/embed", args.embed_requests, 32, seed=1)
            runs[mb]["batch_sizes"] = batch_stats(srv.url)
    return {"model": label, "concurrency": 32, "unbatched": runs[1], "batched": runs[args.max_batch],
            "speedup": round(runs[args.max_batch]["rps"] / runs[1]["rps"], 2)}


def batch_stats(url: str) -> dict[str, float]:
    """Mean items per model call, from the server's own Prometheus histogram."""
    text = httpx.get(url + "/metrics").text
    total = sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("polymodal_embed_batch_size_sum"))
    calls = sum(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("polymodal_embed_batch_size_count"))
    return {"model_calls": int(calls), "mean_items_per_call": round(total / max(calls, 1), 2)}


# ------------------------------------------------------------------------------------------ model

def tiny_model(work: Path) -> str:
    """Train clip_tiny for a few steps on generated shapes (about a minute on 2 cores); returns the run dir."""
    py = [sys.executable, "-m", "polymodal"]
    subprocess.run([*py, "data", "make", "shapes", "--out", str(work / "data"), "--n", "200", "--modalities",
                    "image,text", "--workers", "1", "--no-progress", "--json"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*py, "train", "clip_tiny", "--data", str(work / "data"), "--out", str(work / "run"), "--steps",
                    "10", "--set", "train.batch_size=32", "train.warmup_steps=2", "train.ckpt_every=10",
                    "--device", "cpu", "--no-progress", "--json"], check=True, stdout=subprocess.DEVNULL)
    return str(work / "run")


def model_ceiling(run: str, threads: int, batch: int) -> dict[str, float]:
    """The model alone, no HTTP: ``batch`` one-text calls versus one call of ``batch`` texts (median CPU time of
    this process, so other load on the machine does not distort it) -- the most batching can gain for this model
    on this CPU."""
    import torch

    from polymodal import load as load_run

    torch.set_num_threads(threads)
    model, rng = load_run(run), np.random.default_rng(5)
    texts = [caption(rng) for _ in range(batch)]

    def median_ms(items: list[str], reps: int) -> float:
        times = []
        for _ in range(reps):
            t0 = time.process_time()
            model.embed(text=items)
            times.append(time.process_time() - t0)
        return 1000 * float(np.median(times))

    median_ms(texts, 2)
    one, many = median_ms(texts[:1], 60), median_ms(texts, 15)
    return {"ms_one_text": round(one, 2), f"ms_{batch}_texts": round(many, 2),
            "ceiling": round(batch * one / many, 2)}


# ------------------------------------------------------------------------------------------ report

def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Loopback load on {m['cpus']} CPUs ({m['platform']}), load average before/after "
             f"{m['loadavg_before']} / {m['loadavg_after']}; model: {result['model']['label']}.", "",
             "| endpoint | concurrency | requests | req/s | p50 ms | p95 ms | p99 ms | errors | server CPU ms/req |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["search"]:
        lines.append(f"| {r['path']} | {r['concurrency']} | {r['requests']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {r['server_cpu_ms_per_request']:.2f} |")
    lines += ["", "Dynamic batching, /v1/embed (one text per request) at concurrency 32:", "",
              "| model | max batch | req/s | p50 ms | p99 ms | items/model call | errors | server CPU ms/req | speed-up |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in result["embed_batching"]:
        speedup = f"**{b['speedup']:.2f}x**"
        for key, mb in (("unbatched", 1), ("batched", result["settings"]["max_batch"])):
            r = b[key]
            lines.append(f"| {b['model']} | {mb} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                         f"{r['batch_sizes']['mean_items_per_call']:.1f} | {r['errors']} | "
                         f"{r['server_cpu_ms_per_request']:.2f} | "
                         f"{speedup if key == 'batched' else ''} |")
    for b in result["embed_batching"]:
        if "model_only" in b:
            mo = b["model_only"]
            lines += ["", f"The model alone ({b['model']}, no HTTP): one text {mo['ms_one_text']:.1f} ms CPU, "
                      f"{result['settings']['max_batch']} texts in one call "
                      f"{mo['ms_{}_texts'.format(result['settings']['max_batch'])]:.1f} ms CPU: batching can gain at most "
                      f"{mo['ceiling']:.2f}x for this model on this CPU, before any HTTP cost."]
    return "\n".join(lines)


def http_stack() -> str:
    """The HTTP parser and event loop of `polymodal serve`: always h11 (httptools has no header size limit, and
    the header timeout is a subclass of uvicorn's h11 protocol); uvloop when installed."""
    import importlib.util

    return "h11 + " + ("uvloop" if importlib.util.find_spec("uvloop") else "asyncio")


def write_markdown(result: dict[str, Any], out: Path) -> None:
    s = result["settings"]
    body = ["# HTTP service load benchmark", "",
            "Generated by `python bench/serve_load.py` (do not edit by hand). Server: `create_app` under uvicorn "
            f"in a child process on 127.0.0.1, max wait {s['max_wait_ms']} ms, queue {s['queue_size']}, "
            f"collection of {s['items']} vectors (flat), torch threads {s['threads']}, uvicorn with "
            f"{result['machine']['http']}. Client: the parent process (asyncio, one keep-alive connection per "
            "concurrent request), sharing the same CPUs. `server CPU ms/req` is the server process's CPU time per "
            "request, which does not depend on what else the machine is doing.", "", table(result), "",
            f"Simulated accelerator: each model call sleeps {SIM_OVERHEAD_S * 1000:g} ms + "
            f"{SIM_PER_ITEM_S * 1000:g} ms per item. Real model: {result['model']['label']}.", "",
            "Raw result:", "", "```json", json.dumps(result, indent=1), "```", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(body), encoding="utf-8")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="search requests per concurrency level")
    p.add_argument("--embed-requests", type=int, default=1000, help="embed requests per batching configuration")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--model", help="a trained run (default: train a tiny clip_tiny in a temp dir)")
    p.add_argument("--fake", action="store_true", help="only the simulated-accelerator model")
    p.add_argument("--items", type=int, default=2000, help="vectors in the searched collection")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--queue-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    p.add_argument("--out", default="docs/results/serve.md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        return child(args)
    work = Path(tempfile.mkdtemp(prefix="serve_load_model_"))
    before = [round(x, 2) for x in os.getloadavg()]
    try:
        if args.fake:
            model, label = "simulated", "simulated accelerator (fake model)"
        elif args.model:
            model, label = args.model, f"run {args.model}"
        else:
            print("training a tiny clip_tiny model (10 steps on 200 generated shapes)...", file=sys.stderr)
            model, label = tiny_model(work), "clip_tiny (text tower: 2-layer byte transformer, width 128), 10 steps"
        search = []
        with Server(model, args.max_batch, args.max_wait_ms, args.queue_size, args.items, args.threads) as srv:
            for c in (int(x) for x in args.concurrency.split(",")):
                search.append(load(srv, "/v1/search", args.requests, c, seed=c))
                print(f"search c={c}: {search[-1]['rps']} req/s", file=sys.stderr)
        embed = [batching(model, label, args)]
        if model != "simulated":
            embed[0]["model_only"] = model_ceiling(model, args.threads, args.max_batch)
            embed.append(batching("simulated", "simulated accelerator", args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"bench": "serve_load", "model": {"label": label},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "loadavg_before": before, "http": http_stack(), "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
              "settings": {k: getattr(args, k) for k in ("max_batch", "max_wait_ms", "queue_size", "items", "threads")},
              "search": search, "embed_batching": embed}
    print(json.dumps(result))
    print(table(result))
    if args.out:
        write_markdown(result, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
