"""Model config checks: sizes and counts in a recipe's model section (the arch's own fields, and the encoder
and fusion specs) are range-checked when the config is loaded, with errors naming the dotted key."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from polymodal.errors import ConfigError
from polymodal.models.registry import model_config
from polymodal.recipes import load_recipe


def _with(recipe: str, key: str, value: Any) -> dict[str, Any]:
    model = copy.deepcopy(load_recipe(recipe).model)
    node = model
    parts = key.split(".")
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    return model


@pytest.mark.parametrize("recipe, key, value, expected", [
    ("clip_tiny", "encoders.text.layers", -1, ">= 0"),
    ("clip_tiny", "encoders.image.layers", -2, ">= 0"),
    ("clip_tiny", "encoders.text.width", 0, ">= 1"),
    ("clip_tiny", "encoders.text.heads", -4, ">= 1"),
    ("clip_tiny", "encoders.text.max_len", 0, ">= 1"),
    ("clip_tiny", "encoders.text.dropout", -0.5, r"\[0, 1\)"),
    ("clip_tiny", "encoders.text.dropout", 1.0, r"\[0, 1\)"),
    ("clip_tiny", "encoders.image.mlp_ratio", 0, "> 0"),
    ("clip_tiny", "encoders.text.output_dim", -3, ">= 1"),
    ("clip_tiny", "encoders.text.layers", 2.5, "an integer"),
    ("clip_tiny", "encoders.text.layers", True, "an integer"),
    ("imagebind_tiny", "encoders.video.layers", -1, ">= 0"),
    ("imagebind_tiny", "encoders.video.max_frames", 0, ">= 1"),
    ("imagebind_tiny", "encoders.video.frame.image_size", -32, ">= 1"),
    ("imagebind_tiny", "encoders.audio.channels", [64, -1], ">= 1"),
    ("fusion_crossmodal", "fusion.cross_layers", -1, ">= 0"),
    ("fusion_crossmodal", "fusion.self_layers", -1, ">= 0"),
    ("fusion_crossmodal", "fusion.d_model", -32, ">= 1"),
    ("fusion_crossmodal", "fusion.heads", 0, ">= 1"),
    ("fusion_crossmodal", "fusion.dropout", 1.5, r"\[0, 1\)"),
    ("fusion_shared_private", "fusion.layers", -1, ">= 0"),
    ("fusion_shared_private", "fusion.hidden", -4, ">= 1"),
    ("fusion_shared_private", "fusion.diff_weight", -0.1, ">= 0"),
    ("fusion_low_rank_tensor", "fusion.rank", 0, ">= 1"),
    ("fusion_low_rank_tensor", "fusion.out_dim", 0, ">= 1"),
    ("fusion_attention", "fusion.hidden", -3, ">= 1"),
    ("fusion_early", "encoders.audio.layers", -1, ">= 0"),
    ("fusion_early", "encoders.image.channels", [], "non-empty"),
])
def test_bad_sizes_in_specs_are_config_errors(recipe: str, key: str, value: Any, expected: str) -> None:
    r = load_recipe(recipe)
    with pytest.raises(ConfigError, match=rf"field '{key}'.*must be.*{expected}.*got"):
        model_config(r.arch, _with(recipe, key, value))


def test_good_sizes_pass_and_every_packaged_recipe_checks() -> None:
    for name in ("clip_tiny", "imagebind_tiny", "fusion_crossmodal", "fusion_low_rank_tensor"):
        r = load_recipe(name)
        model_config(r.arch, r.model)
    model_config("alignment", _with("clip_tiny", "encoders.text.layers", 0))  # no blocks: embeddings only
    model_config("alignment", _with("clip_tiny", "encoders.text.output_dim", None))  # None: the default
    model_config("fusion", _with("fusion_early", "encoders.audio.layers", 0))
    model_config("fusion", _with("fusion_early", "fusion.out_dim", None))


@pytest.mark.parametrize("arch, key, value", [
    ("alignment", "dim", -8), ("alignment", "init_logit_scale", float("nan")),
    ("fusion", "num_classes", -3), ("fusion", "modality_dropout", -0.1),
])
def test_arch_fields_are_range_checked(arch: str, key: str, value: Any) -> None:
    model = copy.deepcopy(load_recipe("clip_tiny" if arch == "alignment" else "fusion_early").model)
    model[key] = value
    with pytest.raises(ConfigError, match=rf"field '{key}'"):
        model_config(arch, model)
