"""The 2-process side of test_train_parallel.py, and the tiny LM data and recipe both sides use.

Run under ``torchrun --nproc_per_node 2`` (gloo): ``python parallel_lm_worker.py DATA OUT``. It joins the process
group itself, so several trainer runs share one start-up (the trainer then leaves the group alone), and writes
``OUT/result.json`` (rank 0) with:

- ``grads``: per strategy, the largest difference between the full gradients of the sharded model and an
  unsharded copy's on the same global batch (fsdp: the mean of the two ranks' halves; tp: the whole batch), with
  activation checkpointing on in the sharded model; and the memory per rank, planned vs counted after a step;
- ``runs``: the trainer's results for fsdp, tp, an fsdp run stopped at step 2 and resumed under tp.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from polymodal.config import Recipe
from polymodal.data.collate import collate
from polymodal.data.formats.webdataset import ShardWriter
from polymodal.data.sample import Batch, Sample
from polymodal.data.targets import QA, Caption, Targets
from polymodal.data.transforms.compose import SampleTransform
from polymodal.data.transforms.resolve import transform_config
from polymodal.models import build_model
from polymodal.train.parallel import Parallel, rank_memory
from polymodal.train.trainer import train

# byte-level tokenizer (260 = 4 specials + 256 bytes: no merges), so every row below has the same number of
# tokens: a per-rank token mean then averages to the global one, as the 1-process loss does
LM = {"tokenizer": {"vocab_size": 260}, "hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 64,
      "max_len": 48, "texts_per_sample": None}
WORDS = ("blue", "pink", "gold", "gray", "teal", "navy", "lime", "rose")
SHAPES = ("star", "disk", "ring", "cube", "cone")


def lm_samples(n: int, start: int = 0) -> list[Sample]:
    out = []
    for i in range(start, start + n):
        color, shape = WORDS[i % len(WORDS)], SHAPES[(i * 3) % len(SHAPES)]
        caps = (Caption(f"a {color} {shape} at {i % 10}"), Caption(f"the {shape} is {color}"))
        qa = (QA(f"what color is the {shape}?", color, "color"),)
        out.append(Sample(id=f"lm{i:04d}", text=caps[0].text, targets=Targets(captions=caps, qa=qa)))
    return out


def write_lm_data(root: Path) -> Path:
    splits = {"train": lm_samples(24), "val": lm_samples(4, 100)}
    root.mkdir(parents=True, exist_ok=True)
    for name, samples in splits.items():
        with ShardWriter(root / name, shard_size=64) as w:
            for s in samples:
                w.write(s)
    manifest = {"name": "tiny-lm", "splits": {k: {"path": k, "count": len(v)} for k, v in splits.items()},
                "modalities": ["text"]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def lm_recipe(parallel: str = "ddp", steps: int = 3, **model: Any) -> Recipe:
    return Recipe.from_dict({
        "arch": "lm", "model": {**LM, **model}, "data": {"split": "train", "val_split": "val"},
        "train": {"batch_size": 8, "lr": 3e-3, "weight_decay": 0.1, "warmup_steps": 1, "steps": steps,
                  "grad_clip": 0.5, "log_every": 1, "seed": 0, "parallel": parallel}})


def lm_batch(model: Any, samples: list[Sample]) -> Batch:
    tf = SampleTransform.from_dict(transform_config(model.preprocess(), {})).eval()
    return collate(samples, lambda s: {k: v for k, v in tf(s).items() if k in model.modalities})


def full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        out[name] = g.full_tensor() if hasattr(g, "full_tensor") else g  # type: ignore[union-attr]
    return out


def grad_parity(strategy: str, rank: int, world: int) -> dict[str, Any]:
    torch.manual_seed(0)
    samples = lm_samples(8)
    model = build_model("lm", LM)
    model.fit_data(samples)
    ref = copy.deepcopy(model)
    par = Parallel(strategy, world, rank, torch.device("cpu"), activation_checkpointing=True)
    par.apply(model)
    parts = [samples[r::world] for r in range(world)] if strategy == "fsdp" else [samples]
    loss, _ = model(lm_batch(model, parts[rank] if strategy == "fsdp" else samples))
    loss.backward()
    ref_loss = sum(ref(lm_batch(ref, part))[0] for part in parts) / len(parts)
    ref_loss.backward()
    mine, want = full_grads(model), dict((n, p.grad) for n, p in ref.named_parameters())
    diff = max(float((mine[k] - want[k]).abs().max()) for k in want)
    scale = max(float(g.abs().max()) for g in want.values())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    planned = rank_memory(model, opt, planned=True)
    opt.step()
    counted = rank_memory(model, opt)
    single = rank_memory(ref, torch.optim.AdamW(ref.parameters()), planned=True)
    return {"keys": sorted(mine) == sorted(want), "max_diff": diff, "grad_scale": scale,
            "planned": planned.to_log(), "counted": counted.to_log(), "unsharded": single.to_log()}


def main(data: Path, out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    result: dict[str, Any] = {"grads": {s: grad_parity(s, rank, world) for s in ("fsdp", "tp")}, "runs": {}}
    kw: dict[str, Any] = {"device": "cpu", "progress": False}
    for strategy in ("fsdp", "tp"):
        result["runs"][strategy] = train(lm_recipe(strategy), data, out / strategy, **kw).to_dict()
    train(lm_recipe("fsdp"), data, out / "resume", stop_after=2, **kw)
    result["runs"]["resume"] = train(lm_recipe("tp"), data, out / "resume", resume=True, **kw).to_dict()
    if rank == 0:
        (out / "result.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
