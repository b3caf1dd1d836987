"""Helpers of the export tests: a run dir of a packaged recipe with random weights, and inputs of every
modality in different sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_random_run(out: Path, recipe_name: str = "imagebind_tiny", seed: int = 0) -> Path:
    """A run dir (as the trainer writes it) of a packaged recipe's model with random weights."""
    import torch

    from polymodal import __version__, rundir
    from polymodal.data.transforms.compose import SampleTransform
    from polymodal.data.transforms.resolve import transform_config
    from polymodal.models import build_model
    from polymodal.recipes import load_recipe
    from polymodal.train.checkpoint import write_checkpoint

    recipe = load_recipe(recipe_name)
    torch.manual_seed(seed)
    model = build_model(recipe.arch, recipe.model)
    transform = SampleTransform.from_dict(transform_config(model.preprocess(), recipe.data.transform)).to_dict()
    config: dict[str, Any] = {"format": rundir.RUN_FORMAT, "version": rundir.RUN_VERSION,
                              "polymodal_version": __version__, "arch": recipe.arch, "model": model.config,
                              "transform": transform, "recipe": recipe.to_dict(), "world_size": 1}
    write_checkpoint(out, 0, model.state_dict(), {**config, "step": 0, "samples_seen": 0})
    return out


def media(n: int, seed: int = 0) -> dict[str, list[Any]]:
    """``n`` inputs per modality of different sizes (text lengths, image sizes, audio durations, video frames)."""
    rng = np.random.default_rng(seed)
    words = ["a", "red", "circle", "left", "of", "a", "blue", "square", "moves", "up", "quickly", "while", "the",
             "green", "ring", "stays"]
    return {
        "text": [" ".join(words[: 1 + (3 * i) % len(words)]) for i in range(n)],
        "image": [rng.integers(0, 256, (20 + 7 * i, 30 + 3 * i, 3), dtype=np.uint8) for i in range(n)],
        "audio": [((0.2 * rng.standard_normal(1600 + 2400 * i)).astype(np.float32), 16000) for i in range(n)],
        "video": [rng.integers(0, 256, (1 + i % 8, 24, 28, 3), dtype=np.uint8) for i in range(n)],
    }
