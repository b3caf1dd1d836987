"""Benchmark: memory per rank of the language model under DDP, FSDP and tensor parallel (``train.parallel``).

For each width (``lm_tiny``'s LM: 4 layers, 4 heads / 2 KV heads, MLP 4x the width, 1024-token vocabulary, tied
embeddings) and each strategy, ``--world`` processes (gloo on CPU, nccl with ``--device cuda``) build the same
model, shard it with `polymodal.train.parallel.Parallel` (DDP: the whole model in every rank, wrapped in
``DistributedDataParallel``), and run ``--steps`` optimizer steps (AdamW, grad clip 1.0) on the same global batch
of 8 rows (DDP and FSDP: half per rank; TP: all of it on each). Then each rank counts the bytes of parameters,
gradients and optimizer state it holds (`rank_memory`: local shards of DTensors; DDP's gradient buckets, all-gather
buffers and activations not counted). DDP is the reference: the table gives each strategy's total over DDP's,
and the largest weight difference from DDP's after the steps (the same training, sharded). With ``--device cuda``
it also reports each rank's peak allocated GPU memory (activations and buffers included).

    python bench/parallel_memory.py [--widths 128,256] [--world 2] [--steps 2] [--device cpu]
                                    [--markdown docs/results/parallel.md]

Prints one JSON line and a table; ``--markdown PATH`` also writes the table there."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

STRATEGIES = ("ddp", "fsdp", "tp")
COLORS = ("blue", "pink", "gold", "gray", "teal", "navy", "lime", "rose")
SHAPES = ("star", "disk", "ring", "cube", "cone")


def _samples(n: int) -> list[Any]:
    from polymodal.data.sample import Sample
    from polymodal.data.targets import QA, Caption, Targets

    out = []
    for i in range(n):  # equal lengths: per-rank token means average to the global one
        color, shape = COLORS[i % len(COLORS)], SHAPES[(3 * i) % len(SHAPES)]
        caps = (Caption(f"a {color} {shape} at {i % 10}"), Caption(f"the {shape} is {color}"))
        qa = (QA(f"what color is the {shape}?", color, "color"),)
        out.append(Sample(id=f"b{i}", text=caps[0].text, targets=Targets(captions=caps, qa=qa)))
    return out


def lm_config(width: int) -> dict[str, Any]:
    from polymodal.recipes import load_recipe

    cfg = dict(load_recipe("lm_tiny").model)
    # no BPE merges (bytes only; the embedding keeps its 1024 rows): every row has the same number of tokens, so
    # DDP's and FSDP's mean of per-rank token means is the global mean TP computes, and the weights compare
    tokenizer = {**cfg["tokenizer"], "min_frequency": 10**9}
    cfg.update(hidden=width, intermediate=4 * width, texts_per_sample=None, tokenizer=tokenizer)
    return cfg


def _rank(rank: int, world: int, port: int, job: dict[str, Any]) -> None:
    """One process of one (width, strategy) run; writes its numbers (and rank 0 the weights) under job["out"]."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from polymodal.data.collate import collate
    from polymodal.models import build_model
    from polymodal.train.distributed import cleanup, init_distributed
    from polymodal.train.optim import build_optimizer
    from polymodal.train.parallel import Parallel, rank_memory

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    env = init_distributed(job["device"])
    strategy, out = job["strategy"], Path(job["out"])
    torch.manual_seed(0)
    samples = _samples(8)
    model: Any = build_model("lm", job["model"])
    model.fit_data(samples)
    model.to(env.device)
    par = Parallel(strategy, world, rank, env.device)
    par.apply(model)
    opt = build_optimizer(model, "adamw", 1e-3, 0.05, (0.9, 0.98), 1e-6)
    step_fn = DDP(model) if strategy == "ddp" else model
    rows = samples if strategy == "tp" else samples[rank::world]
    batch = collate(rows, lambda s: {}).to(env.device)
    params = [p for p in model.parameters() if p.requires_grad]
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(env.device)
    times, loss = [], torch.zeros(())
    for step in range(job["steps"]):
        t0 = time.perf_counter()
        loss, _ = step_fn(batch)
        loss.backward()
        par.clip_grad_norm(params, 1.0)
        opt.step()
        if step < job["steps"] - 1:
            opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    mem = rank_memory(model, opt)
    peak = torch.cuda.max_memory_allocated(env.device) if env.device.type == "cuda" else None
    state = par.model_state(model)
    if rank == 0:
        save_file({k: v.detach().cpu().clone() for k, v in state.items()}, str(out / "weights.safetensors"))
    row = {"rank": rank, **mem.to_log(), "peak_allocated_bytes": peak, "loss": float(loss.detach()),
           "step_s": min(times[1:] or times)}
    (out / f"rank{rank}.json").write_text(json.dumps(row))
    cleanup(env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(width: int, strategy: str, world: int, steps: int, device: str, root: Path) -> dict[str, Any]:
    out = root / f"{strategy}_{width}"
    out.mkdir(parents=True)
    job = {"strategy": strategy, "model": lm_config(width), "steps": steps, "device": device, "out": str(out)}
    mp.spawn(_rank, args=(world, _free_port(), job), nprocs=world, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    worst = max(ranks, key=lambda r: r["memory/total_bytes"])
    return {"width": width, "strategy": strategy, "params_bytes": worst["memory/params_bytes"],
            "grads_bytes": worst["memory/grads_bytes"], "optimizer_bytes": worst["memory/optimizer_bytes"],
            "total_bytes": worst["memory/total_bytes"], "peak_allocated_bytes": worst["peak_allocated_bytes"],
            "loss": ranks[0]["loss"], "step_s": round(max(r["step_s"] for r in ranks), 4), "dir": str(out)}


def compare(results: list[dict[str, Any]]) -> None:
    """Each run's total over DDP's at the same width, and its largest weight difference from DDP's."""
    ddp = {r["width"]: r for r in results if r["strategy"] == "ddp"}
    for r in results:
        ref = ddp[r["width"]]
        r["vs_ddp"] = round(r["total_bytes"] / ref["total_bytes"], 3)
        a, b = load_file(f"{ref['dir']}/weights.safetensors"), load_file(f"{r['dir']}/weights.safetensors")
        r["max_weight_diff_vs_ddp"] = max(float((a[k] - b[k]).abs().max()) for k in a)
    for r in results:
        r.pop("dir")


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    mib = 1 / 2**20
    lines = ["# Memory per rank: DDP, FSDP, tensor parallel (generated by `bench/parallel_memory.py`)", "",
             f"`lm_tiny`'s LM (4 layers, 4 heads / 2 KV heads, MLP 4x width, vocabulary 1024, tied embeddings) at "
             f"each width, {result['world']} processes ({result['device']}), {result['steps']} AdamW steps on a global "
             "batch of 8 rows of equal token counts (byte tokens), DDP the reference. Bytes of parameters + gradients + optimizer state held by one rank (the largest "
             "rank; local shards of DTensors; DDP's gradient buckets, all-gather buffers and activations not "
             f"counted). Machine: {m['cpus']} CPUs ({m['processor']}), torch {m['torch']}.", "",
             "| width | parameters | strategy | params MiB | grads MiB | optimizer MiB | total MiB | vs DDP | "
             "max weight diff vs DDP | step s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['width']} | {result['parameters'][str(r['width'])]:,} | {r['strategy']} | "
                     f"{r['params_bytes'] * mib:.2f} | {r['grads_bytes'] * mib:.2f} | "
                     f"{r['optimizer_bytes'] * mib:.2f} | {r['total_bytes'] * mib:.2f} | {r['vs_ddp']:.2f} | "
                     f"{r['max_weight_diff_vs_ddp']:.1e} | {r['step_s']} |")
    fsdp = [r["vs_ddp"] for r in result["runs"] if r["strategy"] == "fsdp"]
    tp = [r["vs_ddp"] for r in result["runs"] if r["strategy"] == "tp"]
    lines += ["", f"FSDP / DDP: {', '.join(f'{x:.2f}' for x in fsdp)} (target <= 0.60: every parameter is sharded, "
              f"embeddings included). TP / DDP: {', '.join(f'{x:.2f}' for x in tp)} (embeddings and norms stay "
              "replicated). Step times are from a shared 2-core CPU and say nothing about GPU speed."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="128,256")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    strategies = [s for s in args.strategies.split(",") if s]
    if "ddp" not in strategies:
        strategies.insert(0, "ddp")  # the reference
    from polymodal.models import build_model

    params = {str(w): sum(q.numel() for q in build_model("lm", lm_config(w)).parameters()) for w in widths}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in widths:
            for s in strategies:
                runs.append(run(w, s, args.world, args.steps, args.device, Path(tmp)))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "dir"}), file=sys.stderr)
        compare(runs)
    result = {"bench": "parallel_memory", "world": args.world, "device": args.device, "steps": args.steps,
              "parameters": params, "runs": runs,
              "machine": {"cpus": os.cpu_count(), "processor": platform.machine(), "torch": torch.__version__}}
    print(json.dumps(result))
    text = table(result)
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
