"""Recipes that extend others: every packaged recipe resolves to exactly what it was before the `extends`
refactor, bases stay unlisted, and the merge, cycle and error rules hold.

``recipes_resolved.json`` was captured by a one-off script from the packaged recipe files *before* they were
rewritten with ``extends`` (``{name: json.loads(file)}`` for every recipe then), so the rewrite cannot change a
recipe. Change a recipe on purpose: change that file too, in the same commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polymodal.config import Recipe, deep_merge
from polymodal.errors import ConfigError
from polymodal.recipes import RECIPE_DIR, list_recipes, load_recipe, recipe_json

CAPTURED = json.loads((Path(__file__).parent / "recipes_resolved.json").read_text())


def test_every_packaged_recipe_resolves_as_captured() -> None:
    assert list_recipes() == sorted(CAPTURED)
    for name, want in CAPTURED.items():
        assert recipe_json(name) == want, name
        assert load_recipe(name) == Recipe.from_dict(want), name


def test_fusion_recipes_extend_the_bases() -> None:
    bases = sorted(p.stem for p in RECIPE_DIR.glob("_*.json"))
    assert bases == ["_fusion", "_fusion_digits", "_fusion_shapes"]
    for name in list_recipes():
        if name.startswith("fusion_"):
            raw = json.loads((RECIPE_DIR / f"{name}.json").read_text())
            assert raw["extends"] == ("_fusion_shapes" if name.endswith("_shapes") else "_fusion_digits")
            assert set(raw) == {"extends", "name", "description", "model"} and set(raw["model"]) == {"fusion"}
    base = load_recipe("_fusion_digits")  # a base loads by name (it is just not listed, nor runnable)
    assert base.name == "_fusion_digits" and "fusion" not in base.model


def test_deep_merge_rules() -> None:
    base = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1}
    over = {"a": {"c": [3], "d": None, "g": 2}, "f": {"h": 1}}
    assert deep_merge(base, over) == {"a": {"b": 1, "c": [3], "d": None, "g": 2}, "f": {"h": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1}  # inputs untouched


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_a_user_recipe_extends_a_packaged_one_and_files(tmp_path: Path) -> None:
    mine = _write(tmp_path / "mine.json", {"extends": "fusion_early", "model": {"fusion": {"name": "late"}},
                                           "train": {"steps": 5}})
    r = load_recipe(str(mine))
    assert r.name == "mine"  # the name is never inherited
    assert r.model["fusion"] == {"name": "late"} and r.model["num_classes"] == 10 and r.train.steps == 5
    assert r.train.lr == load_recipe("fusion_early").train.lr
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "lr.json", {"train": {"lr": 0.5}, "name": "lr"})
    two = _write(tmp_path / "two.json", {"extends": ["mine.json", "sub/lr.json"], "description": "d"})
    r2 = load_recipe(str(two))  # paths are relative to the extending file; a list merges left to right
    assert r2.name == "two" and r2.train.lr == 0.5 and r2.train.steps == 5 and r2.model["fusion"]["name"] == "late"


def test_extends_errors_name_the_file(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", {"extends": "b.json", "arch": "alignment", "model": {}})
    _write(tmp_path / "b.json", {"extends": "c.json"})
    _write(tmp_path / "c.json", {"extends": "a.json"})
    with pytest.raises(ConfigError, match=r"c\.json: field 'extends': .*cycle: a\.json -> b\.json -> c\.json -> a\.json"):
        load_recipe(str(a))
    selfref = _write(tmp_path / "self.json", {"extends": "self.json"})
    with pytest.raises(ConfigError, match=r"cycle: self\.json -> self\.json"):
        load_recipe(str(selfref))
    missing = _write(tmp_path / "m.json", {"extends": "clip_tinyy"})
    with pytest.raises(ConfigError, match=r"m\.json: field 'extends': cannot extend 'clip_tinyy'.*did you mean clip_tiny"):
        load_recipe(str(missing))
    nofile = _write(tmp_path / "n.json", {"extends": "nope.json"})
    with pytest.raises(ConfigError, match=r"n\.json: field 'extends': cannot extend 'nope\.json': recipe file not found"):
        load_recipe(str(nofile))
    wrong = _write(tmp_path / "w.json", {"extends": 3})
    with pytest.raises(ConfigError, match=r"w\.json: field 'extends'"):
        load_recipe(str(wrong))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    user = _write(tmp_path / "u.json", {"extends": "bad.json"})
    with pytest.raises(ConfigError, match=r"bad\.json.*invalid JSON"):
        load_recipe(str(user))
