"""Text->image runs end to end through the trainer: sources read on the first build and copied in, a finished run
loading without its sources, `polymodal.load` returning the image front door."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

import polymodal  # noqa: E402
from polymodal.commands.data import main as data_main  # noqa: E402
from polymodal.config import Recipe  # noqa: E402
from polymodal.errors import ConfigError  # noqa: E402
from polymodal.models.loading import load_model  # noqa: E402
from polymodal.models.t2i_front import TextToImageModel, is_image_run  # noqa: E402
from polymodal.train.trainer import Trainer  # noqa: E402

VQ = {"kind": "vq", "image_size": 64, "channels": [8, 8, 16, 16], "latent_channels": 4, "codebook_size": 32,
      "norm_groups": 8}
CLIP = {"dim": 32, "loss": "clip", "pairing": "all", "encoders": {
    "image": {"name": "image_vit", "image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "heads": 2},
    "text": {"name": "text_transformer", "width": 32, "layers": 1, "heads": 2, "max_len": 96}}}


def train(tmp: Path, name: str, arch: str, model: dict[str, Any], data: Path, mods: list[str]) -> Path:
    recipe = Recipe.from_dict({"arch": arch, "model": model, "data": {"split": "train", "modalities": mods},
                               "train": {"batch_size": 8, "lr": 1e-3, "warmup_steps": 0, "steps": 2, "seed": 0}})
    Trainer(recipe, data, tmp / name, progress=False).fit()
    return tmp / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("t2i")
    assert data_main(["make", "shapes", "--out", str(tmp / "data"), "--n", "40", "--lang", "en,zh",
                      "--modalities", "text,image", "--no-progress"]) == 0
    data = tmp / "data"
    vq = train(tmp, "vq", "image_autoencoder", VQ, data, ["image"])
    clip = train(tmp, "clip", "alignment", CLIP, data, ["image", "text"])
    ldm = train(tmp, "ldm", "latent_diffusion", {
        "autoencoder": {"from_run": str(vq)}, "text": {"from_run": str(clip)},
        "unet": {"channels": [32, 32], "layers_per_block": 1, "head_dim": 16, "norm_groups": 8}, "steps": 3},
        data, ["image"])
    ar = train(tmp, "ar", "token_ar", {"autoencoder": {"from_run": str(vq)}, "tokenizer": {"vocab_size": 300},
                                       "text_len": 24, "layers": 1, "width": 32, "heads": 2, "image_to_text": 0.5},
               data, ["image"])
    lm = train(tmp, "lm", "lm", {"tokenizer": {"vocab_size": 300}, "hidden": 32, "layers": 1, "heads": 2,
                                 "kv_heads": 1, "intermediate": 64, "max_len": 64}, data, [])
    ldm_lm = train(tmp, "ldm_lm", "latent_diffusion", {
        "autoencoder": {"from_run": str(vq)}, "text": {"from_run": str(lm)},
        "unet": {"channels": [32, 32], "layers_per_block": 1, "head_dim": 16, "norm_groups": 8}, "steps": 2},
        data, ["image"])
    return {"data": data, "vq": vq, "clip": clip, "ldm": ldm, "ar": ar, "lm": lm, "ldm_lm": ldm_lm}


def test_sources_are_copied_in_and_a_run_loads_without_them(runs: dict[str, Path], tmp_path: Path) -> None:
    vq = load_model(runs["vq"])[0].state_dict()
    clip = load_model(runs["clip"])[0].state_dict()
    ldm_model, _, cfg = load_model(runs["ldm"])
    for k, v in ldm_model.autoencoder.state_dict().items():
        torch.testing.assert_close(v, vq[k])  # frozen: unchanged by the generator's training
    for k, v in ldm_model.text.encoder.state_dict().items():
        torch.testing.assert_close(v, clip[f"encoders.text.{k}"])
    assert cfg["model"]["autoencoder"]["config"]["codebook_size"] == 32 and cfg["model"]["latent_scale"] > 0
    moved = tmp_path / "ldm"
    shutil.copytree(runs["ldm"], moved)
    hidden = tmp_path / "gone"
    shutil.move(str(runs["vq"]), hidden)  # the sources are gone: the run still builds from its own config
    try:
        gen = polymodal.load(moved)
        assert isinstance(gen, TextToImageModel) and is_image_run(moved)
        pics = gen.generate_images(["a red star", "一个红色的星形"], n=2, seed=0, steps=2)
        assert len(pics) == 4 and all(p.shape == (64, 64, 3) and p.dtype == np.uint8 for p in pics)
    finally:
        shutil.move(str(hidden), runs["vq"])


def test_token_run_generates_captions_and_saves_hf_folders(runs: dict[str, Path]) -> None:
    gen = polymodal.load(runs["ar"])
    assert isinstance(gen, TextToImageModel) and gen.langs == ("en", "zh")
    pics = gen.generate_images("a red star", n=2, seed=1, guidance=2.0)
    assert len(pics) == 2
    model = load_model(runs["ar"])[0]
    assert len(model.caption_images(pics, max_tokens=3)) == 2
    assert (runs["ar"] / "hf" / "lm" / "config.json").is_file() and (runs["ar"] / "hf" / "vqvae").is_dir()
    assert (runs["ldm"] / "hf" / "unet" / "config.json").is_file() and (runs["ldm"] / "hf" / "scheduler").is_dir()


def test_a_source_of_the_wrong_kind_is_a_config_error(runs: dict[str, Path], tmp_path: Path) -> None:
    recipe = Recipe.from_dict({"arch": "latent_diffusion", "model": {"autoencoder": {"from_run": str(runs["clip"])},
                                                                      "text": {"from_run": str(runs["clip"])}},
                               "data": {"split": "train"}, "train": {"steps": 1, "batch_size": 4}})
    with pytest.raises(ConfigError, match="image_autoencoder") as err:
        Trainer(recipe, runs["data"], tmp_path / "bad", progress=False).fit()
    assert err.value.field == "model.autoencoder.from_run"
    assert not is_image_run(runs["clip"])


def test_an_lm_run_conditions_diffusion_with_its_last_layer_states(runs: dict[str, Path]) -> None:
    lm = load_model(runs["lm"])[0]
    model = load_model(runs["ldm_lm"])[0]
    for k, v in model.text.encoder.state_dict().items():
        torch.testing.assert_close(v, lm.state_dict()[k])
    prompt = "a small red star"
    states, mask = model.text([prompt])
    ids = [1, *lm._tok().encode(prompt), 2]  # <s> prompt </s>
    with torch.no_grad():
        want = lm.lm(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(states, want)
    assert mask.all() and states.shape[-1] == model.unet.config.cross_attention_dim
    pics = polymodal.load(runs["ldm_lm"]).generate_images(prompt, seed=0, steps=2)
    assert pics[0].shape == (64, 64, 3)
