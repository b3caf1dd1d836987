"""Named recipes: complete model + data + training configs as JSON files in this folder.

``load_recipe("clip_tiny")`` loads a packaged recipe; ``load_recipe("path/to/my.json")`` loads a file.
Packaged: clip_tiny, siglip_tiny, audioclip_tiny, imagebind_tiny, lit_minilm, the fusion_* recipes and the
generative lm_tiny, caption_tiny, caption_video_tiny, vqa_tiny, vqa_video_tiny, vqa_blind_tiny, asr_tiny, ALIGN's
align_tiny, the vision-language encoders vl_visualbert_tiny, vl_visualbert_patches_tiny, vl_lxmert_tiny,
vl_vilbert_tiny, vl_blip_tiny, vl_concat_tiny and videobert_tiny (see docs/training.md, docs/fusion.md,
docs/generation.md and docs/architectures.md).

A recipe may extend others: ``{"extends": "fusion_early", "model": {"fusion": {"name": "late"}}}`` is the
base recipe's JSON with this file's keys deep-merged over it (objects merge key by key; lists, scalars and null
replace). ``extends`` names a packaged recipe, or a ``.json`` path relative to the extending file; a list of
bases is merged left to right. ``name`` is never inherited (a file's name is its own, else its file name).
Files whose name starts with ``_`` are bases only: loadable by name, but not listed.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from .._io import deep_merge, read_json_object
from ..config import Recipe
from ..errors import ConfigError

RECIPE_DIR = Path(__file__).resolve().parent


def list_recipes() -> list[str]:
    """The runnable packaged recipes (bases, named ``_*``, are left out)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json") if not p.stem.startswith("_"))


def recipe_path(name: str | os.PathLike[str]) -> Path:
    """The file of a packaged recipe name, or ``name`` itself when it is a path to a JSON file."""
    text = str(name)
    path = Path(text)
    if _is_path(text):
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


def _is_path(text: str) -> bool:
    return text.endswith(".json") or os.sep in text or "/" in text


def recipe_json(name: str | os.PathLike[str]) -> dict[str, Any]:
    """The recipe's JSON object with every ``extends`` resolved (not yet validated)."""
    return _resolve(recipe_path(name), ())


def load_recipe(name: str | os.PathLike[str]) -> Recipe:
    """Load and validate a recipe by packaged name or file path (``extends`` resolved)."""
    path = recipe_path(name)
    obj = _resolve(path, ())
    obj.setdefault("name", path.stem)
    return Recipe.from_dict(obj, source=str(path))


def _read(path: Path) -> dict[str, Any]:
    return read_json_object(path, ConfigError, "a recipe must be a JSON object")


def _resolve(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """``path``'s JSON merged over its bases'; ``chain`` is the files extending it (to catch cycles)."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain[chain.index(path):], path))
        raise ConfigError(f"recipes extend each other in a cycle: {cycle}", field="extends", source=str(chain[-1]))
    obj = _read(path)
    bases = obj.pop("extends", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError("expected a recipe name or path, or a list of them", field="extends", source=str(path))
    merged: dict[str, Any] = {}
    for base in bases:
        try:
            base_path = path.parent / base if _is_path(base) else recipe_path(base)
            if not base_path.is_file():
                raise ConfigError("recipe file not found", source=str(base_path))
        except ConfigError as err:
            raise ConfigError(f"cannot extend {base!r}: {err.message}", field="extends", source=str(path)) from None
        inherited = _resolve(base_path, (*chain, path))
        inherited.pop("name", None)  # a name is never inherited
        merged = deep_merge(merged, inherited)
    return deep_merge(merged, obj)


__all__ = ["RECIPE_DIR", "list_recipes", "load_recipe", "recipe_json", "recipe_path"]
