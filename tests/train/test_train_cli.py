"""The train command's front: invalid values are one-line errors with exit code 2 (never a traceback), numeric
flags are range-checked, and --help covers every kind of recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.commands import main as polymodal_main
from polymodal.commands.train import _parser
from polymodal.config import TrainConfig, from_dict
from polymodal.errors import ConfigError
from polymodal.recipes import list_recipes, load_recipe


@pytest.mark.parametrize("key, value, expected", [
    ("eps", -1.0, "> 0"), ("eps", 0.0, "> 0"), ("lr", -1e-3, "> 0"), ("lr", float("inf"), "finite"),
    ("lr", float("nan"), "> 0"), ("steps", 0, "> 0"), ("steps", -5, "> 0"), ("batch_size", 0, ">= 1"),
    ("batch_size", -8, ">= 1"), ("seed", -1, ">= 0"), ("weight_decay", -0.1, ">= 0"),
    ("min_lr_ratio", 1.5, r"\[0, 1\]"), ("minutes", float("inf"), "finite"), ("epochs", -1.0, "> 0"),
    ("grad_clip", 0.0, "> 0"), ("warmup_steps", -1, ">= 0"), ("val_max_samples", 0, ">= 1"),
])
def test_train_config_ranges(key: str, value: float, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"field 'train\.{key}'.*must be.*{expected}.*got"):
        from_dict(TrainConfig, {key: value}, "train")


@pytest.mark.parametrize("override, key", [
    ("train.eps=-1", "train.eps"), ("train.lr=-0.5", "train.lr"), ("train.steps=0", "train.steps"),
    ("train.batch_size=-4", "train.batch_size"), ("train.lr=Infinity", "train.lr"),
    ("model.encoders.text.layers=-1", "encoders.text.layers"), ("model.dim=0", "dim"),
])
def test_invalid_override_values_are_one_line_with_exit_2(override: str, key: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = polymodal_main(["train", "clip_tiny", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                           "--set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and key in err[0] and "must be" in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag, value", [
    ("--stop-after", "-1"), ("--stop-after", "0"), ("--steps", "0"), ("--steps", "-3"), ("--epochs", "-1"),
    ("--epochs", "0"), ("--minutes", "-2"), ("--minutes", "nan"), ("--minutes", "inf"), ("--threads", "0"),
    ("--steps", "x"),
])
def test_negative_numeric_flags_are_rejected(flag: str, value: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = polymodal_main(["train", "clip_tiny", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                           flag, value])
    err = capsys.readouterr().err
    assert code == 2
    assert flag in err and value in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_trainer_rejects_a_negative_stop_after(tmp_path: Path) -> None:
    from polymodal.train.trainer import Trainer

    with pytest.raises(ConfigError, match="stop_after.*>= 1.*-1"):
        Trainer(load_recipe("clip_tiny"), tmp_path, tmp_path / "r", stop_after=-1)


def test_help_covers_every_kind_of_recipe() -> None:
    text = _parser().format_help()
    head = text.split("examples:")[0].lower()
    for word in ("alignment", "fusion", "classifier"):
        assert word in head, word
    for name in list_recipes():
        assert name in text, name
    archs = {load_recipe(n).arch for n in list_recipes()}
    listing = text.split("\npackaged recipes")[1]
    for arch in archs:
        assert arch in listing, arch
    lock = next(a.help for a in _parser()._actions if "--lock" in a.option_strings)
    assert lock is not None and "alignment" in lock  # --lock is for alignment recipes only, and says so
