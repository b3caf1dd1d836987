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
   Both servers run side by side and take turns (--rounds rounds each), so that drift in what else the machine
   is doing falls on both alike. Where the time goes, per request: the server's event-loop thread (HTTP, routing,
   JSON, response), the model (CPU of the worker thread inside model.embed, the server's own metric), the rest
   of the server (hand-offs, thread pool) and the client; and the model alone, without HTTP, one text per call
   versus batches of 32 and of the mean batch size the server formed: the most batching can gain on this CPU
   (the ceiling), against which the speed-up is set. The batched server also answers the same load on
   POST /v1/embeddings (OpenAI-compatible), to show it costs what /v1/embed does.
Each configuration gets its own server process; the client (asyncio, one keep-alive connection per
concurrent request) runs in this process.

    python bench/serve_load.py [--requests 2000] [--embed-requests 400] [--rounds 3] [--concurrency 1,8,32]
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
        model = load(args.model, runtime=args.runtime)
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

    def __init__(self, model: str, max_batch: int, max_wait_ms: float, queue_size: int, items: int, threads: int,
                 runtime: str = "torch"):
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="serve_load_"))
        cmd = [sys.executable, __file__, "--child", "--port", str(self.port), "--model", model, "--root",
               str(self.root), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--queue-size",
               str(queue_size), "--items", str(items), "--threads", str(threads), "--runtime", runtime]
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
            "rps": round(len(results) / wall, 1), **percentiles(lat), "errors": sum(not r[1] for r in results),
            "latencies_ms": lat}


def percentiles(lat_ms: np.ndarray) -> dict[str, float]:
    return {f"p{q}_ms": round(float(np.percentile(lat_ms, q)), 2) for q in (50, 95, 99)}


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
    del out["latencies_ms"]
    total = n + concurrency  # the warm-up requests ran too
    out["server_cpu_ms_per_request"] = round(1000 * (cpu_seconds(srv.proc.pid) - cpu0) / total, 2)
    return out


def thread_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of the process's main thread -- the server's event loop --, of all its threads)."""
    main, total = 0.0, 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            total += cpu
            main += cpu if task.name == str(pid) else 0.0
    return main, total


def scrape(url: str) -> dict[str, float]:
    """The server's own counters: model calls, items embedded, CPU seconds inside the model (all modalities)."""
    sums: dict[str, float] = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        for name in ("polymodal_embed_batch_size_sum", "polymodal_embed_batch_size_count",
                     "polymodal_model_call_cpu_seconds_total"):
            if line.startswith(name + "{"):
                sums[name] = sums.get(name, 0.0) + float(line.split()[-1])
    return {"items": sums.get("polymodal_embed_batch_size_sum", 0.0),
            "calls": sums.get("polymodal_embed_batch_size_count", 0.0),
            "model_cpu_s": sums.get("polymodal_model_call_cpu_seconds_total", 0.0)}


def embed_bodies(path: str, n: int, seed: int, model_id: str = "") -> list[bytes]:
    rng = np.random.default_rng(seed)
    texts = [caption(rng) for _ in range(n)]
    if path == "/v1/embeddings":
        return [json.dumps({"model": model_id, "input": [t], "encoding_format": "float"}).encode() for t in texts]
    return [json.dumps({"text": [t]}).encode() for t in texts]


def measure(srv: Server, path: str, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    """One round of load, with what it cost: server threads, model, client (this process)."""
    (main0, all0), m0, client0 = thread_cpu(srv.proc.pid), scrape(srv.url), time.process_time()
    out = asyncio.run(_load(srv.url, path, bodies, concurrency))
    client = time.process_time() - client0
    (main1, all1), m1 = thread_cpu(srv.proc.pid), scrape(srv.url)
    out.update(server_cpu_s=all1 - all0, loop_cpu_s=main1 - main0, model_cpu_s=m1["model_cpu_s"] - m0["model_cpu_s"],
               client_cpu_s=client, calls=m1["calls"] - m0["calls"], items=m1["items"] - m0["items"],
               answered=out["requests"] + concurrency)  # _load's warm-up requests ran too
    return out


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one configuration, added up: req/s over all of them, latency percentiles of all requests, and
    the CPU per request of each part."""
    n, seconds = sum(r["requests"] for r in rounds), sum(r["seconds"] for r in rounds)
    answered = sum(r["answered"] for r in rounds)

    def per_request(key: str) -> float:
        return round(1000 * sum(r[key] for r in rounds) / answered, 3)

    out = {"path": rounds[0]["path"], "concurrency": rounds[0]["concurrency"], "requests": n,
           "seconds": round(seconds, 2), "rps": round(n / seconds, 1), "rounds_rps": [r["rps"] for r in rounds],
           **percentiles(np.concatenate([r["latencies_ms"] for r in rounds])),
           "errors": sum(r["errors"] for r in rounds),
           "server_cpu_ms_per_request": per_request("server_cpu_s"),
           "breakdown_ms_per_request": {"event_loop": per_request("loop_cpu_s"), "model": per_request("model_cpu_s"),
                                        "client": per_request("client_cpu_s")},
           "batch_sizes": {"model_calls": int(sum(r["calls"] for r in rounds)),
                           "mean_items_per_call": round(sum(r["items"] for r in rounds)
                                                        / max(1.0, sum(r["calls"] for r in rounds)), 2)}}
    b = out["breakdown_ms_per_request"]
    b["server_rest"] = round(out["server_cpu_ms_per_request"] - b["event_loop"] - b["model"], 3)
    return out


def batching(model: str, label: str, args: argparse.Namespace, openai: bool = False) -> dict[str, Any]:
    """Max batch 1 and --max-batch side by side, taking turns for --rounds rounds at concurrency 32."""
    n, c, top = args.embed_requests, 32, args.max_batch
    runs: dict[int, list[dict[str, Any]]] = {1: [], top: []}
    extra: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        runtime = args.runtime if model != "simulated" else "torch"
        servers = {mb: stack.enter_context(Server(model, mb, args.max_wait_ms, args.queue_size, args.items,
                                                               args.threads, runtime))
                   for mb in (1, top)}
        model_id = httpx.get(servers[top].url + "/v1/models").json()["data"][0]["id"]
        for srv in servers.values():  # warm-up: connections, caches, the batcher's thread
            asyncio.run(_load(srv.url, "/v1/embed", embed_bodies("/v1/embed", 2 * c, 9), c))
        for r in range(args.rounds):
            for mb in (1, top) if r % 2 == 0 else (top, 1):
                runs[mb].append(measure(servers[mb], "/v1/embed", embed_bodies("/v1/embed", n, 100 + r), c))
            if openai:
                extra.append(measure(servers[top], "/v1/embeddings",
                                     embed_bodies("/v1/embeddings", n, 200 + r, model_id), c))
            print(f"{label}: round {r + 1}: {runs[1][-1]['rps']} vs {runs[top][-1]['rps']} req/s", file=sys.stderr)
    unbatched, batched = pooled(runs[1]), pooled(runs[top])
    out = {"model": label, "concurrency": c, "unbatched": unbatched, "batched": batched,
           "speedup": round(batched["rps"] / unbatched["rps"], 2),
           "rounds_speedup": [round(b["rps"] / u["rps"], 2) for u, b in zip(runs[1], runs[top], strict=True)],
           "cpu_speedup": round(unbatched["server_cpu_ms_per_request"] / batched["server_cpu_ms_per_request"], 2)}
    if openai:
        out["openai_batched"] = pooled(extra)
    return out


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


def model_ceiling(run: str, threads: int, sizes: list[int]) -> dict[str, Any]:
    """The model alone, no HTTP: one-text calls versus calls of ``size`` texts (median CPU time of this process
    per call, the sizes taking turns so that drift in the machine's load falls on all alike) -- for each size, the
    most batching into calls of that size can gain for this model on this CPU: ``size * one / call``."""
    import gc

    import torch

    from polymodal import load as load_run

    torch.set_num_threads(threads)
    model, rng = load_run(run), np.random.default_rng(5)
    texts = [caption(rng) for _ in range(max(sizes))]
    gc.collect()
    gc.freeze()  # as the server does
    times: dict[int, list[float]] = {b: [] for b in (1, *sizes)}
    model.embed(text=texts)
    for rep in range(12):
        for b in times:
            for k in range(8 if b == 1 else 1):  # one text at a time: a different one each call
                batch = [texts[(8 * rep + k) % len(texts)]] if b == 1 else texts[:b]
                t0 = time.process_time()
                model.embed(text=batch)
                times[b].append(time.process_time() - t0)
    gc.unfreeze()
    one = 1000 * float(np.median(times[1]))
    return {"ms_one_text": round(one, 2),
            "by_size": {str(b): {"ms_per_call": round(1000 * float(np.median(times[b])), 2),
                                 "ms_per_text": round(1000 * float(np.median(times[b])) / b, 3),
                                 "ceiling": round(b * one / (1000 * float(np.median(times[b]))), 2)}
                        for b in sizes}}


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
    top = result["settings"]["max_batch"]
    lines += ["", f"Dynamic batching, one text per request at concurrency 32, {result['settings']['rounds']} rounds "
              "of each configuration taking turns. CPU ms per request: the server's event-loop thread (HTTP parsing, "
              "routing, JSON, the response), the model (CPU of the worker thread inside `model.embed`), the rest of "
              "the server (hand-offs, thread pool), and the load client (this process):", "",
              "| model | endpoint | max batch | req/s | p50 ms | p99 ms | items/model call | errors | server CPU "
              "ms/req | event loop | model | server rest | client | speed-up |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in result["embed_batching"]:
        rows = [("unbatched", 1, ""), ("batched", top, f"**{b['speedup']:.2f}x**")]
        rows += [("openai_batched", top, "")] if "openai_batched" in b else []
        for key, mb, speedup in rows:
            r, d = b[key], b[key]["breakdown_ms_per_request"]
            lines.append(f"| {b['model']} | `{r['path']}` | {mb} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | {r['batch_sizes']['mean_items_per_call']:.1f} | {r['errors']} | "
                         f"{r['server_cpu_ms_per_request']:.2f} | {d['event_loop']:.2f} | {d['model']:.2f} | "
                         f"{d['server_rest']:.2f} | {d['client']:.2f} | {speedup} |")
    lines.append("")
    for b in result["embed_batching"]:
        u, t = b["unbatched"], b["batched"]
        lines.append(f"- {b['model']}: batching gave **{b['speedup']:.2f}x** the requests per second (rounds: "
                     f"{', '.join(f'{x:.2f}x' for x in b['rounds_speedup'])}) and took {b['cpu_speedup']:.2f}x less "
                     f"server CPU per request ({u['server_cpu_ms_per_request']:.2f} -> "
                     f"{t['server_cpu_ms_per_request']:.2f} ms).")
        if "model_only" not in b:
            continue
        mo, ub, bb = b["model_only"], u["breakdown_ms_per_request"], t["breakdown_ms_per_request"]
        sizes = mo["by_size"]
        ceil = sizes[str(top)]["ceiling"]
        best = max(s["ceiling"] for s in sizes.values())
        lines.append(f"  The model alone (no HTTP, median CPU per call): one text {mo['ms_one_text']:.2f} ms; per text in "
                     "calls of " + ", ".join(f"{k}: {v['ms_per_text']:.2f} ms ({v['ceiling']:.2f}x)"
                                             for k, v in sizes.items())
                     + f". So batching can make the model itself at most {ceil:.2f}x faster in calls of {top} "
                     f"({best:.2f}x at best) on this CPU; the service reached {b['speedup'] / ceil:.0%} of that "
                     f"{ceil:.2f}x ceiling{' and is above it' if b['speedup'] > ceil else ''}.")
        lines.append(f"  Inside the server the model's CPU per request went {ub['model']:.2f} -> {bb['model']:.2f} ms "
                     f"({ub['model'] / max(bb['model'], 1e-9):.2f}x; one text per call costs it more there than alone, "
                     f"{ub['model']:.2f} against {mo['ms_one_text']:.2f} ms, presumably as its thread shares the GIL "
                     f"with the busy event loop) and the event loop's {ub['event_loop']:.2f} -> "
                     f"{bb['event_loop']:.2f} ms (a call of one text wakes the loop and hands off to and from the "
                     "model's thread once per request; the simulated model shows the same cost without torch). "
                     "Batching removes these per-call costs too, which is how the service can beat the model's own "
                     "ceiling. What it cannot remove is the per-request HTTP work: "
                     f"{bb['event_loop']:.2f} ms of event loop per request against {bb['model']:.2f} ms of model per "
                     "text in batches.")
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
    p.add_argument("--embed-requests", type=int, default=400, help="embed requests per round and configuration")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each batching configuration, taking turns")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--model", help="a trained run (default: train a tiny clip_tiny in a temp dir)")
    p.add_argument("--fake", action="store_true", help="only the simulated-accelerator model")
    p.add_argument("--items", type=int, default=2000, help="vectors in the searched collection")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--queue-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="the server runs the model's towers with torch or onnxruntime (polymodal serve --runtime)")
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
        with Server(model, args.max_batch, args.max_wait_ms, args.queue_size, args.items, args.threads,
                    args.runtime if model != "simulated" else "torch") as srv:
            for c in (int(x) for x in args.concurrency.split(",")):
                search.append(load(srv, "/v1/search", args.requests, c, seed=c))
                print(f"search c={c}: {search[-1]['rps']} req/s", file=sys.stderr)
        embed = [batching(model, label, args, openai=True)]
        if model != "simulated":
            mean = round(embed[0]["batched"]["batch_sizes"]["mean_items_per_call"])
            sizes = sorted({s for s in (8, mean, args.max_batch) if 1 < s <= args.max_batch})
            embed[0]["model_only"] = model_ceiling(model, args.threads, sizes)
            embed.append(batching("simulated", "simulated accelerator", args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"bench": "serve_load", "model": {"label": label},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "loadavg_before": before, "http": http_stack(), "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
              "settings": {k: getattr(args, k) for k in ("max_batch", "max_wait_ms", "queue_size", "items", "threads",
                                                          "rounds", "embed_requests")},
              "search": search, "embed_batching": embed}
    print(json.dumps(result))
    print(table(result))
    if args.out:
        write_markdown(result, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
