"""Trainer behaviour on tiny data: exact resume, accumulation = one big batch, checkpoint -> load -> embed,
NaN stop keeping the last good checkpoint, and the bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from trainkit import make_samples, tiny_recipe, write_split_dir

import polymodal.train.trainer as trainer_mod
from polymodal import load
from polymodal.config import Recipe
from polymodal.data.collate import collate
from polymodal.data.transforms.compose import SampleTransform
from polymodal.errors import ConfigError, InvalidInput, NotFound
from polymodal.models import build_model
from polymodal.train.step import StepModule, forward_backward
from polymodal.train.trainer import Trainer, TrainingError, train


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_resume_is_bit_exact(tiny_data: Path, tmp_path: Path) -> None:
    # dropout and random crops make the RNG streams matter; the interrupted run must replay them exactly
    recipe = tiny_recipe({"encoders": {
        "text": {"name": "text_transformer", "width": 32, "layers": 1, "heads": 2, "max_len": 40, "dropout": 0.2},
        "image": {"name": "image_vit", "image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2,
                  "dropout": 0.2}}}, steps=6, optimizer="adamw")
    recipe = recipe.with_overrides(['data.transform={"image": {"random_crop": true}}'])
    straight = train(recipe, tiny_data, tmp_path / "a", progress=False)
    first = train(recipe, tiny_data, tmp_path / "b", progress=False, stop_after=3)
    assert first.step == 3 and first.stopped_by == "stop_after"
    resumed = train(recipe, tiny_data, tmp_path / "b", progress=False, resume=True)
    assert straight.step == resumed.step == 6 and resumed.samples_seen == 48
    assert_same_tensors(weights(tmp_path / "a"), weights(tmp_path / "b"))
    # optimizer moments too, and the metrics log has each step once
    sa = load_file(str(tmp_path / "a/checkpoints/step_00000006/train_state.safetensors"))
    sb = load_file(str(tmp_path / "b/checkpoints/step_00000006/train_state.safetensors"))
    assert_same_tensors({k: v for k, v in sa.items() if k.startswith("optim.")},
                        {k: v for k, v in sb.items() if k.startswith("optim.")})
    steps = [json.loads(x)["step"] for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4, 5, 6]


def _batches(model: torch.nn.Module, n: int) -> tuple[list, object]:
    from polymodal.data.transforms.resolve import transform_config

    tf = SampleTransform.from_dict(transform_config(model.preprocess(), {}))
    return [collate(make_samples(n, 7)[i:i + 4], tf) for i in range(0, n, 4)], collate(make_samples(n, 7), tf)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_contrastive_accumulation_equals_big_batch(tiny_data: Path, loss: str) -> None:
    """accum over 2 micro-batches of 4 = one batch of 8: same loss, same gradient for every parameter
    (temperature and SigLIP bias included, which OpenCLIP would count twice)."""
    recipe = tiny_recipe({"loss": loss})
    torch.manual_seed(0)
    big = build_model("alignment", recipe.model)
    small = build_model("alignment", recipe.model)
    small.load_state_dict(big.state_dict())
    micro, whole = _batches(big, 8)

    def autocast():
        return torch.autocast("cpu", enabled=False)

    core_big, core_small = StepModule(big), StepModule(small)
    loss_big, _ = forward_backward(core_big, core_big, [whole], autocast, torch.device("cpu"))
    loss_acc, _ = forward_backward(core_small, core_small, micro, autocast, torch.device("cpu"))
    torch.testing.assert_close(loss_acc, loss_big, atol=1e-6, rtol=0)
    for (name, p), q in zip(big.named_parameters(), small.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_trainer_accum_freq_matches_plain(tiny_data: Path, tmp_path: Path) -> None:
    a = train(tiny_recipe(steps=3, accum_freq=1), tiny_data, tmp_path / "a", progress=False)
    b = train(tiny_recipe(steps=3, accum_freq=2), tiny_data, tmp_path / "b", progress=False)
    assert abs(a.loss - b.loss) < 1e-5
    assert_same_tensors(weights(tmp_path / "a"), weights(tmp_path / "b"), atol=1e-5)


def test_checkpoint_round_trip_embed(tiny_data: Path, tmp_path: Path) -> None:
    t = Trainer(tiny_recipe(steps=2, precision="bf16"), tiny_data, tmp_path / "run", progress=False)
    t.fit()
    em = load(tmp_path / "run")
    assert em.modalities == ("image", "text") and em.dim == 16
    samples = make_samples(5, 3)
    t.model.eval()
    batch = collate(samples, SampleTransform.from_dict(t.transform_cfg).eval())
    with torch.no_grad():
        want_t = t.model.embed_batch(batch, "text").numpy()
        want_i = t.model.embed_batch(batch, "image").numpy()
    got_t = em.embed(text=[s.text for s in samples], batch_size=2)
    got_i = em.embed(image=[s.image for s in samples])
    assert got_t.dtype == np.float32 and got_t.shape == (5, 16)
    np.testing.assert_allclose(got_t, want_t, atol=1e-6)
    np.testing.assert_allclose(got_i, want_i, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got_i, axis=1), 1.0, atol=1e-5)
    assert em.embed(text=[]).shape == (0, 16)
    with pytest.raises(InvalidInput, match="once per modality"):
        em.embed(text=["a"], image=[samples[0].image])
    with pytest.raises(InvalidInput, match="no audio encoder"):
        em.embed(audio=[(np.zeros(100, np.float32), 16000)])
    with pytest.raises(InvalidInput, match="image"):
        em.embed(image=[np.zeros((4, 4), np.uint8)])
    cfg = json.loads((tmp_path / "run/config.json").read_text())
    assert cfg["transform"]["text"]["kind"] == "byte" and cfg["transform"]["image"]["size"] == 16
    assert cfg["recipe"]["train"]["precision"] == "bf16"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = trainer_mod.forward_backward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, logs = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), logs

    monkeypatch.setattr(trainer_mod, "forward_backward", poisoned)
    with pytest.raises(TrainingError, match="step 3: loss nan is not finite.*step_00000002"):
        train(tiny_recipe(steps=4, ckpt_every=2), tiny_data, tmp_path / "run", progress=False)
    good = load_file(str(tmp_path / "run/checkpoints/step_00000002/model.safetensors"))
    assert_same_tensors(weights(tmp_path / "run"), good)
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step_00000002"


def test_bad_inputs(tiny_data: Path, tmp_path: Path) -> None:
    text_only = write_split_dir(tmp_path / "textonly", {"train": make_samples(12, 0, ("text",))}, ["text"])
    with pytest.raises(InvalidInput, match="needs image"):
        train(tiny_recipe(), text_only, tmp_path / "r0", progress=False)
    train(tiny_recipe(steps=1), tiny_data, tmp_path / "r1", progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_recipe(steps=1), tiny_data, tmp_path / "r1", progress=False)
    with pytest.raises(ConfigError, match=r"different model\.dim \(16 vs now 8\)"):
        train(tiny_recipe({"dim": 8}, steps=2), tiny_data, tmp_path / "r1", progress=False, resume=True)
    with pytest.raises(NotFound, match="nothing to resume"):
        train(tiny_recipe(), tiny_data, tmp_path / "r2", progress=False, resume=True)
    with pytest.raises(InvalidInput, match="fewer than one batch"):
        train(tiny_recipe(batch_size=64), tiny_data, tmp_path / "r3", progress=False)
    with pytest.raises(ConfigError, match="multiple of processes x accum_freq"):
        train(tiny_recipe(accum_freq=3), tiny_data, tmp_path / "r4", progress=False)
    with pytest.raises(ConfigError, match="run length"):
        train(Recipe.from_dict({**tiny_recipe().to_dict(), "train": {"steps": None}}), tiny_data,
              tmp_path / "r5", progress=False)


def test_streaming_covers_each_sample_once_and_resumes_exactly(tiny_data: Path, tmp_path: Path) -> None:
    from polymodal.data.formats import open_dataset
    from polymodal.train.data import StreamData

    ds = open_dataset(tiny_data, split="train")
    tf = SampleTransform.from_dict({"image": {"size": 16}, "text": {"kind": "byte"}})
    seen = []
    for rank in (0, 1):  # two ranks' shares of one epoch: disjoint, together every sample once
        sd = StreamData(ds, tf, 0, ["image", "text"], rank, 2, per_rank=4, steps_per_epoch=5, buffer=8)
        seen += [s.id for step in range(5) for s in sd.step_samples(step)[0]]
    assert sorted(seen) == sorted(s.id for s in ds)
    sd = StreamData(ds, tf, 0, ["image", "text"], 0, 1, per_rank=8, steps_per_epoch=5, buffer=8)
    epoch0 = [s.id for step in range(5) for s in sd.step_samples(step)[0]]
    epoch1 = [s.id for step in range(5, 10) for s in sd.step_samples(step)[0]]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1  # reshuffled per epoch

    recipe = tiny_recipe(steps=7).with_overrides(["data.stream=true", "data.shuffle_buffer=8"])
    train(recipe, tiny_data, tmp_path / "a", progress=False)
    train(recipe, tiny_data, tmp_path / "b", progress=False, stop_after=6)  # stops inside epoch 1
    train(recipe, tiny_data, tmp_path / "b", progress=False, resume=True)
    assert_same_tensors(weights(tmp_path / "a"), weights(tmp_path / "b"))


def test_cli_train_stop_and_resume_without_recipe(tiny_data: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from polymodal.commands import main

    recipe_file = tmp_path / "tiny.json"
    recipe_file.write_text(json.dumps(tiny_recipe(steps=3).to_dict()))
    run = tmp_path / "run"
    args = ["--data", str(tiny_data), "--out", str(run), "--no-progress", "--json"]
    assert main(["train", str(recipe_file), *args, "--stop-after", "2"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["step"] == 2 and first["stopped_by"] == "stop_after"
    assert main(["train", "--resume", *args]) == 0  # the run's own recipe
    done = json.loads(capsys.readouterr().out)
    assert done["step"] == 3 and done["stopped_by"] == "steps" and done["val_loss"] is not None
    assert main(["train", str(recipe_file), *args]) == 1
    assert "already holds a run" in capsys.readouterr().err
