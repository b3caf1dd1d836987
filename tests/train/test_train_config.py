"""Recipes and overrides: JSON <-> dataclasses, dotted --set with type checks, packaged recipes, the CLI front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polymodal.commands import main as polymodal_main
from polymodal.commands.train import _parser, resolve_recipe
from polymodal.config import Recipe, TrainConfig, apply_overrides, from_dict
from polymodal.data.transforms.compose import SampleTransform
from polymodal.data.transforms.resolve import transform_config
from polymodal.errors import ConfigError
from polymodal.models import build_model
from polymodal.models.alignment import AlignmentConfig
from polymodal.models.registry import model_config
from polymodal.recipes import list_recipes, load_recipe


def test_round_trip_and_overrides() -> None:
    r = load_recipe("clip_tiny")
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    lr_before, layers_before = r.train.lr, r.model["encoders"]["text"]["layers"]
    r2 = apply_overrides(r, ["train.lr=5e-4", "model.encoders.text.layers=4", "train.grad_clip=null",
                             "train.precision=bf16", "data.modalities=text,image", "train.betas=[0.9, 0.95]",
                             "train.weight_decay=0", "+model.encoders.text.dropout=0.1"])
    assert r2.train.lr == 5e-4 and r2.model["encoders"]["text"]["layers"] == 4
    assert r2.train.grad_clip is None and r2.train.precision == "bf16"
    assert r2.data.modalities == ["text", "image"] and r2.train.betas == [0.9, 0.95]
    assert r2.train.weight_decay == 0.0 and isinstance(r2.train.weight_decay, float)
    assert r2.model["encoders"]["text"]["dropout"] == 0.1
    assert r.train.lr == lr_before and r.model["encoders"]["text"]["layers"] == layers_before  # untouched (frozen)


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", r"train\.lrr.*did you mean lr"),
    ("trian.lr=1", r"trian.*did you mean train"),
    ("model.encoders.text.layer=4", r"model\.encoders\.text\.layer.*did you mean layers.*prefix the key with \+"),
    ("train.steps=abc", r"train\.steps.*expected int or null, got 'abc'"),
    ("train.batch_size=1.5", r"train\.batch_size.*expected int"),
    ("train.accum_freq=true", r"expected int"),
    ("model.encoders.text.layers=two", r"model\.encoders\.text\.layers.*expected int"),
    ("model.dim=null", r"expected int"),
    ("train.optimizer=sgd", r"train\.optimizer.*adamw, lamb"),
    ("train.lr", r"expected key=value"),
    ("+train.new_key=1", r"train\.new_key.*unknown key"),
])
def test_override_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_recipe("clip_tiny"), [override])


def test_from_dict_checks_keys_and_types() -> None:
    with pytest.raises(ConfigError, match=r"train\.bach_size.*did you mean batch_size"):
        Recipe.from_dict({"arch": "alignment", "model": {}, "train": {"bach_size": 3}})
    with pytest.raises(ConfigError, match="missing \"arch\""):
        Recipe.from_dict({"model": {}})
    with pytest.raises(ConfigError, match="steps or epochs, not both"):
        from_dict(TrainConfig, {"steps": 3, "epochs": 1.0})
    with pytest.raises(ConfigError, match=r"train\.lr.*expected float, got str"):
        Recipe.from_dict({"arch": "alignment", "model": {}, "train": {"lr": "fast"}})
    with pytest.raises(ConfigError, match=r"field 'encoders': missing"):
        from_dict(AlignmentConfig, {"dim": 8})


def test_archs_come_from_the_model_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # config/recipes know no arch (they sit below the models): an unknown arch is caught by the models'
    # registry, when the model (or just its config) is built, and by the CLI before a run starts.
    r = Recipe.from_dict({"arch": "clip", "model": {}})
    for check in (model_config, build_model):
        with pytest.raises(ConfigError, match=r"field 'arch'.*unknown arch 'clip'.*alignment, asr, captioner, fusion, image_autoencoder, latent_diffusion, lm, mllm, token_ar, videobert, vl_encoder, vqa"):
            check(r.arch, r.model)
    bad = tmp_path / "bad_arch.json"
    bad.write_text(json.dumps({"arch": "clip", "model": {}}))
    assert polymodal_main(["train", str(bad), "--print-recipe"]) == 2  # an invalid recipe: a usage error
    assert "unknown arch 'clip'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"field 'dimm'.*did you mean dim"):
        model_config("alignment", {**load_recipe("clip_tiny").model, "dimm": 3})
    assert model_config("alignment", load_recipe("clip_tiny").model).dim == 128


def test_typed_overrides_keep_their_type_and_sections_are_replaced_once() -> None:
    r = load_recipe("clip_tiny")
    third = 1 / 3
    r2 = apply_overrides(r, [("train.lr", third), ("data.split", "null"), ("model.encoders.text.layers", 3),
                             ("+model.anchor", None), ("train.weight_decay", 0), "train.betas=0.8,0.9"])
    assert r2.train.lr == third and r2.data.split == "null" and r2.model["encoders"]["text"]["layers"] == 3
    assert r2.model["anchor"] is None and "anchor" not in r.model
    assert r2.train.weight_decay == 0.0 and isinstance(r2.train.weight_decay, float)
    assert r2.train.betas == [0.8, 0.9] and r2.train.steps == r.train.steps
    # one replace per section: an intermediate state (steps and epochs both set) is never checked
    r3 = apply_overrides(r, ["train.epochs=2", "train.steps=null"])
    assert r3.train.epochs == 2.0 and r3.train.steps is None
    with pytest.raises(ConfigError, match="steps or epochs, not both"):
        apply_overrides(r, ["train.epochs=2"])
    with pytest.raises(ConfigError, match=r"train\.steps.*expected int or null, got float 1\.5"):
        apply_overrides(r, [("train.steps", 1.5)])
    with pytest.raises(ConfigError, match=r"model\.dim.*expected int, got bool"):
        apply_overrides(r, [("model.dim", True)])
    with pytest.raises(ConfigError, match=r"train\.lr.*must be > 0"):
        apply_overrides(r, [("train.lr", -1.0)])
    assert apply_overrides(r, []) is r


def test_removed_train_modality_dropout_is_a_clear_error() -> None:
    def recipe(train: dict[str, object]) -> Recipe:
        return Recipe.from_dict({"arch": "fusion", "model": {}, "train": train})

    with pytest.raises(ConfigError, match=r"field 'train\.modality_dropout': removed.*model\.modality_dropout"):
        recipe({"modality_dropout": 0.3})
    with pytest.raises(ConfigError, match=r"train\.modality_dropout.*model\.modality_dropout"):
        apply_overrides(load_recipe("fusion_early"), ["train.modality_dropout=0.3"])
    # a run dir saved before the removal holds the old default, 0: it still loads (and resumes)
    assert recipe({"modality_dropout": 0.0, "steps": 3}).train.steps == 3
    assert "modality_dropout" not in recipe({}).to_dict()["train"]


def test_unknown_recipe_and_cli_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown recipe 'clip_tiyn' \(did you mean clip_tiny"):
        load_recipe("clip_tiyn")
    assert polymodal_main(["train", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown recipe 'nope'" in err[0]
    assert polymodal_main(["train", "clip_tiny", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                           "--set", "train.lr=fast"]) == 2
    assert "train.lr" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_recipe(str(bad))


def test_cli_flags_map_onto_the_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["clip_tiny", "--lock", "text", "--minutes", "2", "--set", "train.lr=0.01"])
    r = resolve_recipe(args)
    assert r.model["locked"] == ["text"] and r.train.minutes == 2.0 and r.train.steps is None
    assert r.train.lr == 0.01
    r = resolve_recipe(_parser().parse_args(["clip_tiny", "--minutes", str(1 / 3)]))
    assert r.train.minutes == 1 / 3
    r = resolve_recipe(_parser().parse_args(["clip_tiny", "--epochs", "3"]))
    assert r.train.epochs == 3.0 and r.train.steps is None
    assert polymodal_main(["train", "siglip_tiny", "--print-recipe", "--steps", "7"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["steps"] == 7 and printed["model"]["loss"] == "siglip"
    assert polymodal_main(["train", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "imagebind_tiny" in listed and "fusion_late_shapes" in listed and "_fusion" not in listed


@pytest.mark.parametrize("name", ["clip_tiny", "siglip_tiny", "audioclip_tiny", "imagebind_tiny"])
def test_packaged_recipes_build(name: str) -> None:
    r = load_recipe(name)
    assert r.name == name and r.arch == "alignment" and r.train.has_length
    model = build_model(r.arch, r.model)
    assert sorted(model.modalities) == sorted(r.data.modalities)
    tf = SampleTransform.from_dict(transform_config(model.preprocess(), r.data.transform))
    assert tf.image is not None and tf.image.size == 32 and tf.text is not None
    if "audio" in r.data.modalities:
        assert tf.audio is not None and tf.audio.n_mels == 64
    else:
        assert tf.audio is None and tf.video is None


def test_packaged_lit_recipe() -> None:
    r = load_recipe("lit_minilm")
    assert r.model["locked"] == ["text"] and r.model["encoders"]["text"]["name"] == "st_text"
    assert {"audioclip_tiny", "clip_tiny", "imagebind_tiny", "lit_minilm", "siglip_tiny"} <= set(list_recipes())


def test_transform_conflict_with_encoder_is_an_error() -> None:
    needs = {"image": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}, "text": {"max_len": 40}}
    cfg = transform_config(needs, {"image": {"random_crop": True}})
    assert cfg["image"]["size"] == 32 and cfg["image"]["random_crop"] and cfg["max_text_len"] == 40
    assert cfg["audio"] is None and cfg["video"] is None
    with pytest.raises(ConfigError, match=r"data\.transform\.image\.size.*64.*needs 32"):
        transform_config(needs, {"image": {"size": 64}})
    audio = transform_config({"audio": {"n_mels": 40, "max_frames": 101}}, {})
    assert audio["audio"]["n_mels"] == 40 and audio["audio"]["max_seconds"] == pytest.approx(1.0)


def test_every_arch_has_a_builder_and_a_config() -> None:
    """An arch is registered twice under one name (builder and config): a half-registered arch fails here."""
    from polymodal.models import ARCHS, MODEL_CONFIGS

    assert ARCHS.names() == MODEL_CONFIGS.names() and ARCHS.names()
