"""Checkpoint integrity: sha256 of every file recorded at save time and verified on load and resume; resume
falls back to the newest checkpoint that verifies; the run's top-level files are copies, not hard links."""

from __future__ import annotations

import errno
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


# ------------------------------------------------------------------ loading a run whose top-level files do not verify

def _two_checkpoints(tiny_data: Path, tmp_path: Path) -> Path:
    """A finished run with checkpoints at steps 2 and 4 (the top-level files are copies of step 4's)."""
    run = tmp_path / "run"
    train(tiny_recipe(steps=4, ckpt_every=2, keep_checkpoints=2), tiny_data, run, progress=False)
    return run


def _weights(run_or_ckpt: Path) -> dict[str, torch.Tensor]:
    return dict(load(run_or_ckpt).model.state_dict())


def _strip_checksums(config: Path) -> None:
    cfg = json.loads(config.read_text())
    del cfg["sha256"]
    config.write_text(json.dumps(cfg))


class _Crash(Exception):
    pass


def test_load_after_a_crash_between_the_two_top_level_writes_uses_the_new_checkpoint(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies after replacing RUN/model.safetensors and before RUN/config.json (which records its
    checksum): the run still loads, from the checkpoint that save completed, with a warning."""
    from polymodal._io import atomic_write_bytes as real_write
    from polymodal.train import checkpoint as ck

    run = _two_checkpoints(tiny_data, tmp_path)
    saved = ck.read_checkpoint(run / CKPT.format(4))

    def crashing(path: str | os.PathLike[str], data: bytes, fsync: bool = True) -> None:
        if Path(path) == run / "config.json":
            raise _Crash("killed between the top-level weights and the top-level config")
        real_write(path, data, fsync)

    monkeypatch.setattr(ck, "atomic_write_bytes", crashing)
    new_state = {k: v + 1 if v.is_floating_point() else v for k, v in saved.model_state.items()}
    config = {k: v for k, v in saved.config.items() if k != "sha256"}
    with pytest.raises(_Crash):
        ck.write_checkpoint(run, 6, new_state, config, saved.state_tensors, {**saved.state, "step": 6}, keep=2)
    monkeypatch.undo()
    assert load_file(str(run / "model.safetensors")).keys() == new_state.keys()  # the new weights are on top
    with pytest.warns(UserWarning, match=r"model\.safetensors.*checksum mismatch.*step_00000006"):
        got = _weights(run)
    _same(got, load_file(str(run / CKPT.format(6) / "model.safetensors")))
    _same(got, new_state)


@pytest.mark.parametrize("damage", ["other_weights", "truncated_weights", "missing_weights", "truncated_config",
                                    "missing_config"])
def test_load_of_a_run_whose_top_level_files_do_not_verify_falls_back_to_the_newest_good_checkpoint(
        tiny_data: Path, tmp_path: Path, damage: str) -> None:
    run = _two_checkpoints(tiny_data, tmp_path)
    step2, step4 = run / CKPT.format(2), run / CKPT.format(4)
    if damage == "other_weights":  # a well-formed file, only not the one config.json records
        (run / "model.safetensors").write_bytes((step2 / "model.safetensors").read_bytes())
    elif damage == "truncated_weights":
        _truncate(run / "model.safetensors")
    elif damage == "missing_weights":
        (run / "model.safetensors").unlink()
    elif damage == "truncated_config":
        _truncate(run / "config.json")
    else:
        (run / "config.json").unlink()
    if damage == "other_weights":  # and the newest checkpoint is damaged too: the one before it is used
        _flip(step4 / "model.safetensors")
        expect, why = step2, r"step_00000004.*checksum mismatch.*loaded .*step_00000002"
    else:
        expect, why = step4, r"loaded .*step_00000004"
    what = "config" if "config" in damage else "model"
    with pytest.warns(UserWarning, match=rf"(?s)run/{what}\.(json|safetensors).*{why}"):
        got = _weights(run)
    _same(got, load_file(str(expect / "model.safetensors")))


def test_a_reader_that_sees_a_save_between_its_two_reads_reads_again(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader reads config.json, the trainer then saves (weights, then config), the reader reads the new
    weights: a mismatch that a second read resolves, with no warning and no fallback."""
    import warnings

    from polymodal.train import checkpoint as ck

    run = _two_checkpoints(tiny_data, tmp_path)
    saved = ck.read_checkpoint(run / CKPT.format(4))
    new_state = {k: v + 1 if v.is_floating_point() else v for k, v in saved.model_state.items()}
    config = {k: v for k, v in saved.config.items() if k != "sha256"}
    real_read = Path.read_bytes
    saves: list[Path] = []

    def read_bytes(self: Path) -> bytes:
        if self == run / "model.safetensors" and not saves:  # the save lands between config and weights
            saves.append(ck.write_checkpoint(run, 6, new_state, config, saved.state_tensors,
                                             {**saved.state, "step": 6}, keep=2))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _weights(run)
    assert saves
    _same(got, new_state)


def test_load_of_a_run_with_nothing_that_verifies_is_an_error_naming_every_file(
        tiny_data: Path, tmp_path: Path) -> None:
    run = _two_checkpoints(tiny_data, tmp_path)
    _flip(run / "model.safetensors")
    _flip(run / CKPT.format(4) / "model.safetensors")
    _truncate(run / CKPT.format(2) / "model.safetensors")
    with pytest.raises(InvalidInput, match=r"(?s)verif.*run/model\.safetensors.*checksum mismatch"
                                           r".*step_00000004/model\.safetensors.*checksum mismatch"
                                           r".*step_00000002/model\.safetensors"):
        load(run)


def test_load_of_an_explicit_checkpoint_stays_strict(tiny_data: Path, tmp_path: Path) -> None:
    run = _two_checkpoints(tiny_data, tmp_path)
    _flip(run / CKPT.format(4) / "model.safetensors")
    with pytest.raises(InvalidInput, match=r"step_00000004/model\.safetensors.*checksum mismatch"):
        load(run / CKPT.format(4))
    load(run)  # the run's own copy still verifies


@pytest.mark.parametrize("damage", [None, "truncated_weights"])
def test_a_run_saved_before_checksums_loads_unchecked(tiny_data: Path, tmp_path: Path, damage: str | None) -> None:
    run = _two_checkpoints(tiny_data, tmp_path)
    for folder in (run, run / CKPT.format(2), run / CKPT.format(4)):
        _strip_checksums(folder / "config.json")
    if damage is None:  # other, well-formed weights: nothing records what they should be, so they load
        (run / "model.safetensors").write_bytes((run / CKPT.format(2) / "model.safetensors").read_bytes())
        _same(_weights(run), load_file(str(run / CKPT.format(2) / "model.safetensors")))
    else:  # an unreadable file is damage all the same: the checkpoint is used
        _truncate(run / "model.safetensors")
        with pytest.warns(UserWarning, match=r"run/model\.safetensors.*loaded .*step_00000004"):
            got = _weights(run)
        _same(got, load_file(str(run / CKPT.format(4) / "model.safetensors")))


def _fail_reading(monkeypatch: pytest.MonkeyPatch, target: Path, code: int) -> None:
    real_read = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == target:
            raise OSError(code, os.strerror(code), str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


@pytest.mark.parametrize("code", [errno.EIO, errno.EACCES])
def test_an_os_error_while_choosing_the_checkpoint_to_resume_is_raised_not_taken_for_damage(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """A read error (a flaky disk, a permission) says nothing about the checkpoint: resuming from an older one
    would then delete the newer, intact one as an abandoned timeline."""
    recipe = tiny_recipe(steps=6, ckpt_every=2, keep_checkpoints=2)
    run = tmp_path / "run"
    train(recipe, tiny_data, run, progress=False, stop_after=4)
    newest = run / CKPT.format(4)
    before = {f.name: f.read_bytes() for f in newest.iterdir()}
    _fail_reading(monkeypatch, newest / "train_state.safetensors", code)
    with pytest.raises(OSError, match=os.strerror(code)) as err:
        train(recipe, tiny_data, run, progress=False, resume=True, stop_after=1)
    assert not isinstance(err.value, InvalidInput)
    monkeypatch.undo()
    assert {f.name: f.read_bytes() for f in newest.iterdir()} == before  # kept, untouched
    assert (run / "checkpoints/latest").read_text().strip() == "step_00000004"


@pytest.mark.parametrize("code", [errno.EIO, errno.EACCES])
def test_an_os_error_while_loading_a_run_is_raised_not_taken_for_damage(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    run = _two_checkpoints(tiny_data, tmp_path)
    _fail_reading(monkeypatch, run / "model.safetensors", code)
    with pytest.raises(OSError, match=os.strerror(code)) as err:
        load(run)
    assert not isinstance(err.value, InvalidInput)
