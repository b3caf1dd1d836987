"""FSDP and tensor parallel for the LM (train.parallel), on 2 gloo processes under torchrun, against one process:

- gradients of the sharded model (activation checkpointing on) equal an unsharded copy's on the same global batch;
- 3 trainer steps (grad clipping engaged) end with the loss, validation loss and weights of the 1-process run, and a
  full ``model.safetensors`` plus a loadable ``hf`` folder; an fsdp run stopped at step 2 resumes under tp exactly;
- memory per rank: planned == counted after a step; FSDP <= 60% of the unsharded model's, TP below it too;
In one process: tp over 2 processes with 1 key/value head (or a model without transformer layers) is a ConfigError
naming train.parallel; activation checkpointing (transformers' and torch.utils.checkpoint's) leaves gradients
unchanged."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from parallel_lm_worker import LM, lm_batch, lm_recipe, lm_samples, write_lm_data
from safetensors.torch import load_file

from polymodal.config import Recipe, TrainConfig
from polymodal.errors import ConfigError
from polymodal.models import build_model
from polymodal.train.distributed import DistEnv
from polymodal.train.parallel import (
    Parallel,
    decoder_layers,
    enable_activation_checkpointing,
    rank_memory,
    tp_layers,
)
from polymodal.train.trainer import train

pytest.importorskip("transformers")
WORKER = Path(__file__).with_name("parallel_lm_worker.py")


@pytest.fixture(scope="module")
def two_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """(data, 2-process output dir, the worker's result.json), one torchrun for every 2-process check."""
    root = tmp_path_factory.mktemp("parallel")
    data = write_lm_data(root / "data")
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           str(data), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return data, out, json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("strategy", ["fsdp", "tp"])
def test_sharded_gradients_equal_unsharded(two_process: tuple[Path, Path, dict[str, Any]], strategy: str) -> None:
    g = two_process[2]["grads"][strategy]
    assert g["keys"] and g["grad_scale"] > 1e-3
    assert g["max_diff"] < 1e-6 * max(1.0, g["grad_scale"]), g


def test_memory_per_rank(two_process: tuple[Path, Path, dict[str, Any]]) -> None:
    grads = two_process[2]["grads"]
    for strategy in ("fsdp", "tp"):
        assert grads[strategy]["planned"] == grads[strategy]["counted"], strategy
    full = grads["fsdp"]["unsharded"]["memory/total_bytes"]
    assert grads["fsdp"]["counted"]["memory/total_bytes"] <= 0.6 * full
    assert grads["tp"]["counted"]["memory/total_bytes"] < full


def _weights_equal(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=2e-5, rtol=1e-4, msg=k)


def test_training_matches_one_process(two_process: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    data, out, result = two_process
    single = train(lm_recipe(), data, tmp_path / "single", progress=False, device="cpu")
    for name in ("fsdp", "tp", "resume"):
        run = result["runs"][name]
        assert run["step"] == 3 and run["samples_seen"] == 24, name
        assert abs(run["loss"] - single.loss) < 1e-5 and abs(run["val_loss"] - single.val_loss) < 1e-5, name
        _weights_equal(tmp_path / "single/model.safetensors", out / name / "model.safetensors")
        _weights_equal(tmp_path / "single/hf/model.safetensors", out / name / "hf/model.safetensors")
        assert json.loads((out / name / "config.json").read_text())["world_size"] == 2
    rows = [json.loads(x) for x in (out / "fsdp/metrics.jsonl").read_text().splitlines()]
    one = json.loads((tmp_path / "single/metrics.jsonl").read_text().splitlines()[0])
    assert rows[0]["parallel"] == "fsdp" and one["parallel"] == "none"
    assert rows[0]["memory/total_bytes"] <= 0.6 * one["memory/total_bytes"]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]


def test_unsupported_combinations_are_config_errors() -> None:
    """Checked before any collective, so no process group is needed here."""
    model = build_model("lm", {**LM, "kv_heads": 1})
    with pytest.raises(ConfigError, match=r"train\.parallel.*key/value heads \(1\)"):
        Parallel("tp", world=2).apply(model)
    model = build_model("lm", {**LM, "heads": 6, "kv_heads": 3, "hidden": 48, "intermediate": 96})
    with pytest.raises(ConfigError, match=r"attention heads \(6\)"):
        tp_layers(model, 4)
    assert len(tp_layers(model, 3)) == 2
    for strategy in ("tp", "fsdp"):  # no transformer layers to shard; LAMB's norms would be per shard
        with pytest.raises(ConfigError, match="train.parallel"):
            Parallel(strategy, world=2).apply(torch.nn.Sequential(torch.nn.Linear(4, 4)))
        with pytest.raises(ConfigError, match="train.optimizer"):
            Parallel.from_config(TrainConfig(parallel=strategy, optimizer="lamb"), DistEnv(world=2))
    assert Parallel.from_config(TrainConfig(parallel="tp", optimizer="lamb"), DistEnv()).strategy == "none"
    with pytest.raises(ConfigError, match="train.parallel"):
        Recipe.from_dict({**lm_recipe().to_dict(), "train": {"parallel": "zero3"}})


@pytest.mark.parametrize("use_hf", [True, False])
def test_activation_checkpointing_keeps_gradients(use_hf: bool) -> None:
    torch.manual_seed(0)
    samples = lm_samples(6)
    model = build_model("lm", {**LM, "texts_per_sample": 2})  # the torch RNG draws texts: replayed exactly
    model.fit_data(samples)
    ckpt = copy.deepcopy(model)
    assert enable_activation_checkpointing(ckpt, use_hf=use_hf) == len(decoder_layers(ckpt)) == LM["layers"]
    grads = []
    for m in (model, ckpt):
        torch.manual_seed(1)
        loss, _ = m(lm_batch(m, samples))
        loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for k, g in grads[0].items():
        torch.testing.assert_close(grads[1][k], g, atol=1e-7, rtol=1e-6, msg=k)
    opt = torch.optim.AdamW(model.parameters())
    planned = rank_memory(model, opt, planned=True)
    opt.step()
    assert rank_memory(model, opt) == planned
