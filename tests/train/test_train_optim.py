"""Optimizers, schedule and checkpoint pieces against plain reference computations."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import load_file
from torch import nn

from polymodal import rundir
from polymodal._io import json_bytes, read_json_object
from polymodal.errors import ConfigError
from polymodal.models import build_model
from polymodal.recipes import load_recipe
from polymodal.train import checkpoint as ck
from polymodal.train.optim import Lamb, build_optimizer, no_decay_names, param_groups
from polymodal.train.schedule import WarmupCosine


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.lin = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))


def reference_lamb(x: np.ndarray, grads: list[np.ndarray], lr: float, b1: float, b2: float, eps: float,
                   wd: float, adapt: bool) -> np.ndarray:
    """LAMB as written in You et al. 2019 (Algorithm 2, with bias correction), one tensor, float64."""
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        r = m_hat / (np.sqrt(v_hat) + eps)
        u = r + wd * x
        w_norm, u_norm = np.linalg.norm(x), np.linalg.norm(u)
        trust = w_norm / u_norm if adapt and w_norm > 0 and u_norm > 0 else 1.0
        x = x - lr * trust * u
    return x


@pytest.mark.parametrize("wd, adapt", [(0.1, True), (0.0, True), (0.0, False)])
def test_lamb_matches_paper_update(wd: float, adapt: bool) -> None:
    rng = np.random.default_rng(0)
    x0 = [rng.normal(size=(5, 3)), rng.normal(size=(4,)), np.zeros(3)]  # a zero tensor: trust ratio 1
    grads = [[rng.normal(size=x.shape) for x in x0] for _ in range(6)]
    params = [nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in x0]
    opt = Lamb(params, lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=wd, adapt=adapt)
    for step in grads:
        for p, g in zip(params, step, strict=True):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    for i, p in enumerate(params):
        want = reference_lamb(x0[i], [s[i] for s in grads], 0.01, 0.9, 0.99, 1e-6, wd, adapt)
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=0, atol=1e-12)


def test_weight_decay_exclusions() -> None:
    names = no_decay_names(Tiny())
    assert names == {"emb.weight", "lin.bias", "norm.weight", "norm.bias", "logit_scale"}
    model = build_model("alignment", {**load_recipe("clip_tiny").model, "locked": ["text"]})
    groups = param_groups(model, 0.1)
    decay, plain = groups[0], groups[1]
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0 and not plain["adapt"]
    assert "logit_scale" in plain["names"] and "encoders.image.pos_emb" in plain["names"]
    assert "encoders.image.ln_final.weight" in plain["names"] and "projections.image.weight" in decay["names"]
    assert not any(n.startswith("encoders.text.") for g in groups for n in g["names"])  # locked: left out
    assert all(p.ndim >= 2 for p in decay["params"])
    with pytest.raises(ConfigError, match="no trainable parameters"):
        param_groups(build_model("alignment", {**load_recipe("clip_tiny").model, "projections": "none",
                                               "dim": 128, "locked": ["text", "image"]}).requires_grad_(False), 0.1)


def test_warmup_cosine_values() -> None:
    s = WarmupCosine(base_lr=1.0, warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [s.lr(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.lr(4) == pytest.approx(1.0)
    assert s.lr(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s.lr(14) == pytest.approx(0.1) and s.lr(100) == pytest.approx(0.1)
    timed = WarmupCosine(1.0, 0, None)
    assert timed.lr(50, progress=0.0) == 1.0 and timed.lr(50, progress=1.0) == pytest.approx(0.0)
    assert timed.lr(50, progress=0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_optimizer_state_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = Tiny()
    opt_a = build_optimizer(a, name, 0.01, 0.1)
    x = torch.randint(0, 7, (5,))

    def step(model: Tiny, opt: torch.optim.Optimizer) -> None:
        loss = (model.norm(model.lin(model.emb(x))) * model.logit_scale).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(2):
        step(a, opt_a)
    tensors, meta = ck.flatten_optimizer(opt_a)
    path = tmp_path / "s.safetensors"
    path.write_bytes(rundir.tensors_to_bytes(tensors))
    meta = read_json_object(_write_json(tmp_path / "s.json", meta))
    b = copy.deepcopy(a)
    opt_b = build_optimizer(b, name, 0.01, 0.1)
    ck.restore_optimizer(opt_b, rundir.read_tensors(path), meta, "test")
    step(a, opt_a)
    step(b, opt_b)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    other = build_optimizer(nn.Linear(2, 2), name, 0.01, 0.1)
    with pytest.raises(ConfigError, match="optimizer parameters differ"):
        ck.restore_optimizer(other, rundir.read_tensors(path), meta, "test")


def _write_json(path: Path, obj: object) -> Path:
    path.write_bytes(json_bytes(obj))
    return path


def test_rng_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    random.gauss(0, 1)  # leaves a cached gauss value in the python state
    tensors, meta = ck.rng_state()
    want = (torch.rand(3), np.random.rand(3), [random.random(), random.gauss(0, 1)])
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    ck.set_rng_state(st_load(rundir.tensors_to_bytes(tensors)), read_json_object(_write_json(tmp_path / "r.json", meta)))
    got = (torch.rand(3), np.random.rand(3), [random.random(), random.gauss(0, 1)])
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_checkpoint_dirs_prune_and_link(tmp_path: Path) -> None:
    model = Tiny()
    for step in (1, 2, 3):
        with torch.no_grad():
            model.logit_scale.fill_(float(step))
        ck.write_checkpoint(tmp_path, step, model.state_dict(), {"format": rundir.RUN_FORMAT, "step": step}, keep=2)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["latest", "step_00000002", "step_00000003"]
    assert rundir.latest_checkpoint(tmp_path) == tmp_path / "checkpoints/step_00000003"
    assert float(load_file(str(tmp_path / "model.safetensors"))["logit_scale"]) == 3.0
    assert read_json_object(tmp_path / "config.json")["step"] == 3
    with pytest.raises(ConfigError, match=r"shape of lin\.weight"):
        bigger = Tiny()
        bigger.lin = nn.Linear(4, 5)
        bigger.norm = nn.LayerNorm(5)
        rundir.load_model_state(bigger, tmp_path / "model.safetensors")
