"""torchrun with 2 gloo processes trains to the same weights as one process on the same global batches:
this exercises the step sampler (disjoint equal shares), the gathered contrastive loss and DDP averaging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainkit import make_samples, tiny_recipe, write_split_dir

from polymodal.train.trainer import train


@pytest.fixture(scope="module")
def gappy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A third of the samples lack their image: towers sit idle in some micro-batches (DDP unused params)."""
    samples = [s.replace(image=None) if i % 3 == 0 else s for i, s in enumerate(make_samples(40, 5))]
    return write_split_dir(tmp_path_factory.mktemp("gappy"), {"train": samples}, ["image", "text"])


@pytest.mark.parametrize("accum_freq, gappy", [(1, False), (2, True)])
def test_two_process_ddp_matches_single_process(tiny_data: Path, gappy_data: Path, tmp_path: Path,
                                                accum_freq: int, gappy: bool) -> None:
    data = gappy_data if gappy else tiny_data
    recipe = tiny_recipe(steps=3, accum_freq=accum_freq, log_every=1)
    recipe_file = tmp_path / "tiny.json"
    recipe_file.write_text(json.dumps(recipe.to_dict()))
    single = train(recipe.with_overrides(["train.accum_freq=1"]), data, tmp_path / "single", progress=False)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "polymodal", "train", str(recipe_file), "--data", str(data), "--out", str(tmp_path / "ddp"),
           "--device", "cpu", "--no-progress", "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["step"] == 3 and result["samples_seen"] == 24
    assert abs(result["loss"] - single.loss) < 1e-5

    a = load_file(str(tmp_path / "single/model.safetensors"))
    b = load_file(str(tmp_path / "ddp/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)
    cfg = json.loads((tmp_path / "ddp/config.json").read_text())
    assert cfg["world_size"] == 2
    state = json.loads((tmp_path / "ddp/checkpoints/step_00000003/train_state.json").read_text())
    assert state["world"] == 2 and len(state["rng"]) == 2
