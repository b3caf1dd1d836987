"""Checkpoint integrity: sha256 of every file recorded at save time and verified on load and resume; resume
falls back to the newest checkpoint that verifies; the run's top-level files are copies, not hard links."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainkit import tiny_recipe

from polymodal import load
from polymodal.commands import main as polymodal_main
from polymodal.errors import InvalidInput
from polymodal.train.trainer import train

CKPT = "checkpoints/step_{:08d}"


def _flip(path: Path, n: int = 64) -> None:
    """Invert ``n`` bytes in the middle of the file (inside the tensor data, after the safetensors header)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checksums_are_recorded_for_every_checkpoint_file(tiny_data: Path, tmp_path: Path) -> None:
    train(tiny_recipe(steps=2), tiny_data, tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / CKPT.format(2)
    sums = json.loads((ckpt / "config.json").read_text())["sha256"]
    assert set(sums) == {"model.safetensors", "train_state.safetensors", "train_state.json"}
    for name, digest in sums.items():
        assert hashlib.sha256((ckpt / name).read_bytes()).hexdigest() == digest, name


def test_flipped_weight_bytes_are_an_error_on_load_naming_the_file(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_recipe(steps=2), tiny_data, run, progress=False)
    ckpt = run / CKPT.format(2)
    _flip(ckpt / "model.safetensors")
    load_file(str(ckpt / "model.safetensors"))  # still a well-formed file: only the checksum can tell
    with pytest.raises(InvalidInput, match=r"step_00000002/model\.safetensors.*checksum"):
        load(ckpt)
    load(run)  # the run's top-level copy is intact
    _flip(run / "model.safetensors")
    with pytest.raises(InvalidInput, match=r"run/model\.safetensors.*checksum"):
        load(run)


def test_resume_refuses_a_corrupt_only_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    recipe = tiny_recipe(steps=4)
    train(recipe, tiny_data, run, progress=False, stop_after=2)
    _flip(run / CKPT.format(2) / "model.safetensors")
    with pytest.raises(InvalidInput, match=r"no checkpoint.*verifies.*step_00000002.*model\.safetensors.*checksum"):
        train(recipe, tiny_data, run, progress=False, resume=True)


@pytest.mark.parametrize("damage", ["truncate_model", "flip_state", "bad_state_json", "missing_dir"])
def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(
        tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    recipe = tiny_recipe(steps=6, ckpt_every=2, keep_checkpoints=2)
    train(recipe, tiny_data, tmp_path / "straight", progress=False)
    run = tmp_path / "run"
    train(recipe, tiny_data, run, progress=False, stop_after=4)
    newest = run / CKPT.format(4)
    if damage == "truncate_model":
        _truncate(newest / "model.safetensors")
    elif damage == "flip_state":
        _flip(newest / "train_state.safetensors")
    elif damage == "bad_state_json":
        (newest / "train_state.json").write_text('{"step": 4')
    else:
        for f in newest.iterdir():
            f.unlink()
        newest.rmdir()
    capsys.readouterr()
    result = train(recipe, tiny_data, run, progress=False, resume=True)
    err = capsys.readouterr().err
    assert "skipping checkpoint step_00000004" in err and "resuming from step_00000002" in err
    assert result.step == 6
    # resumed exactly from step 2: the same weights as a run that was never interrupted
    _same(load_file(str(run / "model.safetensors")), load_file(str(tmp_path / "straight/model.safetensors")))


def test_run_files_are_independent_copies_of_the_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_recipe(steps=2), tiny_data, run, progress=False)
    ckpt = run / CKPT.format(2)
    for name in ("config.json", "model.safetensors"):
        top, inner = run / name, ckpt / name
        assert top.read_bytes() == inner.read_bytes()
        assert os.stat(top).st_nlink == 1 and os.stat(inner).st_nlink == 1, name
        before = inner.read_bytes()
        with open(top, "r+b") as fh:  # truncate in place: a hard link would truncate both
            fh.truncate(10)
        assert inner.read_bytes() == before, name
    # the damaged top-level config does not stop a resume: the checkpoint holds its own
    train(tiny_recipe(steps=3), tiny_data, run, progress=False, resume=True)
    assert json.loads((run / "config.json").read_text())["step"] == 3


def test_cli_resume_without_recipe_reads_a_checkpoint_config_when_the_run_config_is_damaged(
        tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe_file = tmp_path / "tiny.json"
    recipe_file.write_text(json.dumps(tiny_recipe(steps=3).to_dict()))
    run = tmp_path / "run"
    args = ["--data", str(tiny_data), "--out", str(run), "--no-progress", "--json"]
    assert polymodal_main(["train", str(recipe_file), *args, "--stop-after", "2"]) == 0
    (run / "config.json").write_text("{trunc")
    capsys.readouterr()
    assert polymodal_main(["train", "--resume", *args]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 3


def test_a_save_after_a_fallback_removes_the_abandoned_newer_checkpoints(tmp_path: Path) -> None:
    """After resuming from an older checkpoint, a damaged newer one must not take a keep slot from a good one."""
    from polymodal import rundir
    from polymodal.train import checkpoint as ck

    state = {"w": torch.zeros(2)}
    for step in (1, 2, 3):
        ck.write_checkpoint(tmp_path, step, state, {"format": rundir.RUN_FORMAT, "step": step}, keep=3)
    ck.write_checkpoint(tmp_path, 2, state, {"format": rundir.RUN_FORMAT, "step": 2}, keep=2)  # resumed from 1
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["latest", "step_00000001", "step_00000002"]
    assert rundir.latest_checkpoint(tmp_path) == tmp_path / "checkpoints/step_00000002"
