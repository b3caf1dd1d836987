"""Named recipes: complete model + data + training configs as JSON files in this folder.

``load_recipe("clip_tiny")`` loads a packaged recipe; ``load_recipe("path/to/my.json")`` loads a file.
Packaged: clip_tiny, siglip_tiny, audioclip_tiny, imagebind_tiny, lit_minilm (see docs/training.md)."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

from ..config import Recipe
from ..errors import ConfigError

RECIPE_DIR = Path(__file__).resolve().parent


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def recipe_path(name: str | os.PathLike[str]) -> Path:
    """The file of a packaged recipe name, or ``name`` itself when it is a path to a JSON file."""
    text = str(name)
    path = Path(text)
    if path.suffix == ".json" or os.sep in text or "/" in text:
        if not path.is_file():
            raise ConfigError("recipe file not found", source=text)
        return path
    candidate = RECIPE_DIR / f"{text}.json"
    if candidate.is_file():
        return candidate
    known = list_recipes()
    close = difflib.get_close_matches(text, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"unknown recipe {text!r} ({hint}known: {', '.join(known)}; or give a path to a .json file)",
                      field="recipe")


def load_recipe(name: str | os.PathLike[str]) -> Recipe:
    """Load and validate a recipe by packaged name or file path."""
    path = recipe_path(name)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"invalid JSON ({exc})", source=str(path)) from None
    recipe = Recipe.from_dict(obj, source=str(path))
    if not recipe.name:
        recipe = Recipe.from_dict({**obj, "name": path.stem}, source=str(path))
    return recipe


__all__ = ["RECIPE_DIR", "list_recipes", "load_recipe", "recipe_path"]
