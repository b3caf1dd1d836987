"""Benchmark: training throughput (samples/s) and peak RSS of a recipe (default clip_tiny), one process and
2-process DDP (``torchrun --standalone --nproc_per_node 2``, gloo), plus a plain reference loop.

Each configuration is a fresh ``polymodal train`` process tree. Throughput is measured over the steps after
the first logged window (warm-up, the first-epoch transform cache) from the run's own metrics.jsonl; CPU
time and RSS come from polling /proc for the whole process tree (torchrun agent + workers), so "CPU ms per
sample" stays meaningful when other jobs share the cores and wall-clock rates do not. Peak RSS is the
largest sum over the tree's processes at one moment (data loading included).

The reference is a plain loop in this process: the same model, pre-collated batches, forward, backward,
AdamW step, temperature clamp; no trainer, no sampler, no logging. It bounds what the trainer costs.

    python bench/train_bench.py [--data DIR] [--recipe clip_tiny] [--steps 100] [--configs single1,single2,ddp2]

Prints one JSON line and a table; ``--markdown PATH`` also writes the table there (docs/results/train.md)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

CLK = os.sysconf("SC_CLK_TCK")
CONFIGS = {  # name -> (processes, torch threads per process)
    "single1": (1, 1), "single2": (1, 2), "ddp2": (2, 1),
}


def _tree(root: int) -> list[int]:
    """root and all its descendants (from /proc/*/stat parent ids)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def _usage(pids: list[int]) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) summed over live processes."""
    cpu, rss = 0.0, 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / CLK
            rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return cpu, rss


class Poller(threading.Thread):
    """Samples the process tree's CPU time and RSS, and the metrics file's line count, every `every` s."""

    def __init__(self, pid: int, metrics: Path, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.metrics, self.every = pid, metrics, every
        self.samples: list[tuple[float, float, int, int]] = []  # (time, cpu, rss, metric lines)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            cpu, rss = _usage(_tree(self.pid))
            lines = self.metrics.read_text().count("\n") if self.metrics.exists() else 0
            self.samples.append((time.perf_counter(), cpu, rss, lines))
            self.stop.wait(self.every)


def run_config(recipe: str, data: Path, procs: int, threads: int, steps: int, log_every: int) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="train_bench_")) / "run"
    args = [recipe, "--data", str(data), "--out", str(out), "--steps", str(steps), "--no-progress", "--json",
            "--set", f"train.log_every={log_every}", "train.ckpt_every=0", "data.val_split=null"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
                if procs > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([*launcher, "-m", "polymodal", "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    poller = Poller(proc.pid, out / "metrics.jsonl")
    poller.start()
    stdout, stderr = proc.communicate()
    poller.stop.set()
    poller.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{recipe} with {procs} process(es) failed:\n{stderr[-2000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "samples_per_s" in r]
    first, last = rows[0], rows[-1]
    measured = last["samples_seen"] - first["samples_seen"]
    rate = measured / (last["elapsed_s"] - first["elapsed_s"])
    cpu = _cpu_between(poller.samples, 1, len(rows))
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"processes": procs, "threads": threads, "steps": steps, "measured_samples": measured,
            "samples_per_s": round(rate, 1),
            "cpu_ms_per_sample": round(1000 * cpu / measured, 2) if cpu is not None else None,
            "peak_rss_mb": round(max(s[2] for s in poller.samples) / 2**20),
            "process_wall_s": round(wall, 1), "loss_end": round(float(last["loss"]), 4)}


def _cpu_between(samples: list[tuple[float, float, int, int]], a: int, b: int) -> float | None:
    """CPU seconds between the polls where the metrics file first had ``a`` and ``b`` lines."""
    at_a = next((s[1] for s in samples if s[3] >= a), None)
    at_b = next((s[1] for s in samples if s[3] >= b), None)
    return None if at_a is None or at_b is None or at_b <= at_a else at_b - at_a


def reference_loop(recipe_name: str, data: Path, steps: int, threads: int) -> dict[str, Any]:
    """The plain loop on pre-collated batches (see the module docstring)."""
    from polymodal.data.collate import collate
    from polymodal.data.formats import open_dataset
    from polymodal.data.transforms.compose import SampleTransform
    from polymodal.data.transforms.resolve import transform_config
    from polymodal.models import build_model
    from polymodal.recipes import load_recipe

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    r = load_recipe(recipe_name)
    model = build_model(r.arch, r.model)
    tf = SampleTransform.from_dict(transform_config(model.preprocess(), r.data.transform))
    bs = r.train.batch_size
    samples = list(open_dataset(data, split="train"))[: bs * min(steps, 20)]
    batches = [collate(samples[i:i + bs], tf) for i in range(0, len(samples) - bs + 1, bs)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=r.train.lr)
    model.train()
    cpu0 = time.process_time()
    warm = 3
    for step in range(steps + warm):
        if step == warm:
            t0, cpu0 = time.perf_counter(), time.process_time()
        loss, _ = model(batches[step % len(batches)])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.clamp_logit_scale()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"processes": 1, "threads": threads, "steps": steps, "measured_samples": steps * bs,
            "samples_per_s": round(steps * bs / wall, 1), "cpu_ms_per_sample": round(1000 * cpu / (steps * bs), 2),
            "peak_rss_mb": None, "process_wall_s": round(wall, 1), "loss_end": round(float(loss), 4)}


def ensure_data(path: Path) -> Path:
    if not (path / "manifest.json").is_file():
        from polymodal.data.synth import make_dataset

        print(f"generating shapes (image+text, 3000) into {path} ...", file=sys.stderr)
        make_dataset("shapes", path, n=3000, seed=0, modalities=("text", "image"))
    return path


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = ["# Training throughput (generated by `bench/train_bench.py`)", "",
             f"`{result['recipe']}` (global batch {result['batch_size']}), {result['steps']} steps per "
             f"configuration, rates over the steps after the first {result['log_every']}; data `{result['data']}`. "
             f"Machine: {m['cpus']} CPUs ({m['processor']}), torch {m['torch']}, load average "
             f"{m['load_start']} at the start and {m['load_end']} at the end (other jobs shared the cores; "
             "CPU ms/sample is the load-independent figure).", "",
             "| configuration | processes x threads | samples/s | CPU ms/sample | peak RSS MB | vs single (1 thread) |",
             "|---|---|---|---|---|---|"]
    base = result["runs"].get("single1", {}).get("samples_per_s")
    for name, r in result["runs"].items():
        ratio = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
        rss = "-" if r["peak_rss_mb"] is None else str(r["peak_rss_mb"])
        lines.append(f"| {name} | {r['processes']} x {r['threads']} | {r['samples_per_s']:.1f} | "
                     f"{r['cpu_ms_per_sample']} | {rss} | {ratio} |")
    if result.get("ddp_over_single") is not None:
        lines += ["", f"DDP (2 x 1 thread) / single (1 thread) throughput: {result['ddp_over_single']:.2f}x; "
                  f"DDP / single (2 threads): {result.get('ddp_over_single2') or 0:.2f}x."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data_cache/train_bench", help="data dir (generated if missing)")
    p.add_argument("--recipe", default="clip_tiny")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--configs", default="single1,single2,ddp2,reference",
                   help="comma list of: " + ", ".join([*CONFIGS, "reference"]))
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    data = ensure_data(Path(args.data))
    load0 = os.getloadavg()
    runs: dict[str, Any] = {}
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        if name == "reference":
            runs[name] = reference_loop(args.recipe, data, args.steps // 2, 1)
        else:
            procs, threads = CONFIGS[name]
            runs[name] = run_config(args.recipe, data, procs, threads, args.steps, args.log_every)
        print(json.dumps({name: runs[name]}), file=sys.stderr)
    from polymodal.recipes import load_recipe

    def ratio(a: str, b: str) -> float | None:
        return round(runs[a]["samples_per_s"] / runs[b]["samples_per_s"], 3) if a in runs and b in runs else None

    result = {"recipe": args.recipe, "batch_size": load_recipe(args.recipe).train.batch_size, "steps": args.steps,
              "log_every": args.log_every, "data": str(data), "runs": runs,
              "ddp_over_single": ratio("ddp2", "single1"), "ddp_over_single2": ratio("ddp2", "single2"),
              "machine": {"cpus": os.cpu_count(), "processor": platform.machine(), "torch": torch.__version__,
                          "load_start": [round(x, 2) for x in load0],
                          "load_end": [round(x, 2) for x in os.getloadavg()]}}
    print(json.dumps(result))
    text = table(result)
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
