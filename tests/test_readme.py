"""The README's examples, run or checked.

- The Python block runs as a script, twice, each time in a fresh interpreter, in a folder whose `runs/ac` is a tiny
  run trained here: it must succeed both times (a rerun is not a traceback) and leave a saved collection holding
  its two items (reopened from disk).
- Every `pm ...` line of the tour parses with its command's own parser, and everything a line reads (data, run,
  collection, query file) was made by an earlier line; the zero-shot evaluation uses a model trained on the data
  it classifies, with prompts in a language the data has."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from polymodal.commands import chat, data, embed, export, generate, index, quickstart, search, serve, train
from polymodal.commands import eval as eval_cmd
from polymodal.config import Recipe
from polymodal.data.synth import make_dataset
from polymodal.data.synth.make import assign_splits
from polymodal.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, re.S | re.M)


# --------------------------------------------------------------------------------------------- the Python block

TINY = {"arch": "alignment",
        "model": {"dim": 16, "loss": "clip", "encoders": {
            "text": {"name": "text_transformer", "width": 32, "layers": 1, "heads": 2, "max_len": 96},
            "image": {"name": "image_vit", "image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2}}},
        "data": {"modalities": ["image", "text"]},
        "train": {"batch_size": 8, "lr": 0.003, "warmup_steps": 1, "steps": 1, "log_every": 1, "seed": 0,
                  "ckpt_every": 0}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder like the tour's, with a tiny alignment run (text + image) at runs/ac."""
    from polymodal.train import train as train_run

    root = tmp_path_factory.mktemp("readme")
    shapes = tmp_path_factory.mktemp("readme_data") / "shapes"
    make_dataset("shapes", shapes, n=30, seed=0, modalities=("text", "image"), workers=1, progress=False)
    train_run(Recipe.from_dict(TINY), shapes, root / "runs" / "ac", progress=False)
    return root


def test_the_python_block_saves_and_runs_again(workdir: Path) -> None:
    pytest.importorskip("faiss")
    from polymodal.index import Collection

    (code,) = blocks("python")
    script = workdir / "readme_example.py"
    script.write_text(code, encoding="utf-8")
    outputs = []
    for _ in range(2):  # the second run finds the collection of the first
        proc = subprocess.run([sys.executable, str(script)], cwd=workdir, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs.append(proc.stdout)
        with Collection.open(workdir / "col" / "mine", readonly=True) as col:
            assert sorted(col.ids().tolist()) == [0, 1]
            assert [m["caption"] for m in col.get([0, 1]).metadata] == ["en", "zh"]
    assert outputs[0] == outputs[1]
    assert "tensor([ True, False])" in outputs[0] and "'caption'" in outputs[0]


# --------------------------------------------------------------------------------------------- the tour

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "data": data.build_parser, "train": train._parser, "eval": eval_cmd.build_parser,
    "index": index._index_parser, "search": search._search_parser, "serve": serve._parser}


EVERY_PARSER: dict[str, Callable[[], argparse.ArgumentParser]] = {
    **PARSERS, "export": export._parser, "embed": embed._parser, "quickstart": quickstart._parser,
    "generate": generate._parser, "chat": chat._parser}


def test_every_polymodal_line_outside_the_tour_parses() -> None:
    """The other sections' examples (`polymodal CMD ...` lines: bring your own model, export, batch embedding) use
    flags their commands have."""
    seen = set()
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] != ["polymodal"] or len(words) < 2 or words[1].startswith("-"):
                continue
            seen.add(words[1])
            try:
                EVERY_PARSER[words[1]]().parse_args(words[2:])
            except SystemExit as exc:
                raise AssertionError(f"README: `{line.strip()}` does not parse") from exc
    assert {"export", "embed", "index", "search", "eval", "quickstart", "serve", "generate"} <= seen


def tour() -> list[tuple[str, argparse.Namespace]]:
    """(command, parsed arguments) for every `pm` line of the tour, in order (`pm --help` left out)."""
    (bash,) = [b for b in blocks("bash") if "alias pm=" in b]
    out = []
    for line in bash.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] != ["pm"] or words[1:] == ["--help"]:
            continue
        try:
            out.append((words[1], PARSERS[words[1]]().parse_args(words[2:])))
        except SystemExit as exc:
            raise AssertionError(f"README tour: `{line.strip()}` does not parse") from exc
    return out


def _made(lines: list[tuple[str, argparse.Namespace]], key: str, value: Any) -> tuple[str, argparse.Namespace]:
    """The earlier line whose output (``key``) is ``value``."""
    for cmd, a in lines:
        if str(getattr(a, key, None)) == str(value):
            return cmd, a
    raise AssertionError(f"README tour: nothing before makes {value}")


def test_every_tour_line_parses_and_reads_what_an_earlier_line_made() -> None:
    lines = tour()
    assert {cmd for cmd, _ in lines} == set(PARSERS)
    for i, (cmd, a) in enumerate(lines):
        before = lines[:i]
        sub = getattr(a, "command", None) or getattr(a, "cmd", None)
        if cmd == "data" and sub in ("inspect", "convert"):
            _made(before, "out", a.path)
        elif cmd == "train":
            _made(before, "out", a.data)
        elif cmd == "eval":
            _made(before, "out", a.run), _made(before, "out", a.data)
        elif cmd == "index":
            _made(before, "out", a.model), _made(before, "out", a.data)
        elif cmd in ("search", "serve"):
            _made(before, "out", a.model), _made(before, "collection", a.collection)
        for media in ("audio", "image"):
            if getattr(a, media, None):
                _check_query_file(before, Path(getattr(a, media)))


def _check_query_file(before: list[tuple[str, argparse.Namespace]], path: Path) -> None:
    """A query file must be one that an earlier `data convert --to folder` wrote: a sample of the converted split."""
    _, conv = _made(before, "out", path.parent)
    assert conv.command == "convert" and conv.to == "folder"
    _, made = _made(before, "out", conv.path)
    sample_id, ext = path.name.split(".", 1)
    name, number = sample_id.rsplit("-", 1)
    assert name == made.name and ext in ("flac", "png")
    split, _ = assign_splits(made.n, made.seed)[int(number)]
    assert split == conv.split  # so the file is there after the convert


def test_zero_shot_uses_a_model_trained_on_the_data_it_classifies() -> None:
    lines = tour()
    zeroshot = [a for cmd, a in lines if cmd == "eval" and a.task == "zeroshot"]
    assert zeroshot
    for ev in zeroshot:
        _, trained = _made(lines, "out", ev.run)
        assert str(trained.data) == str(ev.data), f"{ev.run} was trained on {trained.data}, not {ev.data}"
        recipe = load_recipe(trained.recipe)
        assert recipe.arch == "alignment" and "text" in recipe.data.modalities
        _, made = _made(lines, "out", ev.data)
        assert ev.lang in made.lang.split(",")  # prompts in a language the captions have
