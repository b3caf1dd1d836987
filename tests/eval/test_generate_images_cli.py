"""`polymodal generate RUN --prompt ...` with a text->image run (a fake one: `is_image_run` and
`load_image_generator` replaced, the fake of tests/serve/t2ifake.py): PNG files equal to the fake's pictures for
the seeds the protocol gives them, the paths or one JSON object printed, a progress bar on stderr, another run's
files never replaced without --overwrite, flags of one kind of run refused on the other; and text runs as before."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

import polymodal.commands.generate as generate
import polymodal.commands.generate_images as generate_images
from polymodal.commands import main
from polymodal.models.t2i_front import ImageOptions


def _t2ifake() -> ModuleType:
    spec = importlib.util.spec_from_file_location("t2ifake_cli", Path(__file__).parents[1] / "serve" / "t2ifake.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fakes = _t2ifake()
PROMPTS = ["a red star above a blue square", "一个蓝色的圆"]


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Two fake text->image runs with the same folder name (``a/ldm``, ``b/ldm``)."""
    made = {str(tmp_path / d / "ldm"): fakes.FakeImageModel(str(tmp_path / d / "ldm")) for d in ("a", "b")}
    monkeypatch.setattr(generate, "is_image_run", lambda run: str(run) in made)
    monkeypatch.setattr(generate_images, "load_image_generator", lambda run, device="cpu": made[str(run)])
    monkeypatch.chdir(tmp_path)
    return made


def png(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_pictures_json_and_progress(runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = str(tmp_path / "a" / "ldm")
    argv = ["generate", run, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--n", "2", "--seed", "5",
            "--steps", "3", "--guidance", "2", "--sampler", "ddim", "--batch-size", "3", "--out", "pics", "--json"]
    assert main(argv) == 0
    io = capsys.readouterr()
    out = json.loads(io.out)
    assert out["run"] == run and out["out"] == "pics" and out["seconds_per_image"] >= 0
    rows = out["images"]
    assert [(r["prompt"], r["prompt_index"], r["image_index"], r["seed"]) for r in rows] == [
        (PROMPTS[0], 0, 0, 5), (PROMPTS[0], 0, 1, 6), (PROMPTS[1], 1, 0, 7), (PROMPTS[1], 1, 1, 8)]
    assert [r["path"] for r in rows] == [f"pics/ldm_p{i:02d}_{j:02d}.png" for i in range(2) for j in range(2)]
    for r in rows:
        np.testing.assert_array_equal(png(tmp_path / r["path"]), fakes.fake_picture(r["prompt"], r["seed"]))
    fake = runs[run]
    assert fake.calls == [(PROMPTS, 2, ImageOptions(steps=3, guidance=2.0, seed=5, sampler="ddim"), 3)]
    assert "generate" in io.err and "4/4" in io.err and "image" in io.err   # tqdm's bar, on stderr
    manifest = json.loads((tmp_path / "pics" / "generated.json").read_text(encoding="utf-8"))["files"]
    assert manifest["ldm_p01_00.png"] == {"run": run, "prompt": PROMPTS[1], "seed": 7,
                                          "options": {"steps": 3, "guidance": 2.0, "sampler": "ddim",
                                                      "temperature": 1.0}}


def test_paths_printed_and_other_runs_files_kept(runs: dict[str, Any], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]):
    a, b = (str(tmp_path / d / "ldm") for d in ("a", "b"))
    assert main(["generate", a, "--prompt", PROMPTS[0], "--n", "2", "--seed", "1"]) == 0   # default ./generated
    io = capsys.readouterr()
    assert io.out.splitlines() == ["generated/ldm_p00_00.png", "generated/ldm_p00_01.png"]
    assert "seed 1" in io.err
    first = png(tmp_path / "generated" / "ldm_p00_00.png")
    # b/ldm has the same folder name: its files would replace a/ldm's, which is refused ...
    assert main(["generate", b, "--prompt", PROMPTS[1], "--seed", "1"]) == 1
    assert f"written by the run {a}" in capsys.readouterr().err
    np.testing.assert_array_equal(png(tmp_path / "generated" / "ldm_p00_00.png"), first)
    assert runs[b].calls == []   # refused before drawing
    # ... unless asked; the same run again replaces its own files and says so
    assert main(["generate", b, "--prompt", PROMPTS[1], "--seed", "1", "--overwrite"]) == 0
    np.testing.assert_array_equal(png(tmp_path / "generated" / "ldm_p00_00.png"), fakes.fake_picture(PROMPTS[1], 1))
    assert main(["generate", b, "--prompt", PROMPTS[1], "--seed", "1"]) == 0
    assert "replacing 1 from an earlier call" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "ldm_p00_00.png").write_bytes(b"not ours")
    assert main(["generate", a, "--prompt", "x", "--out", "mine"]) == 1
    assert "something other than" in capsys.readouterr().err
    assert (tmp_path / "mine" / "ldm_p00_00.png").read_bytes() == b"not ours"


def test_no_seed_draws_one_that_remakes_the_picture(runs: dict[str, Any], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]):
    run = str(tmp_path / "a" / "ldm")
    assert main(["generate", run, "--prompt", PROMPTS[0], "--json", "--out", "x"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["images"]
    np.testing.assert_array_equal(png(tmp_path / row["path"]), fakes.fake_picture(PROMPTS[0], row["seed"]))


@pytest.mark.parametrize(("flags", "words"), [
    (["--beams", "2"], "--beams does not apply"),
    (["--image", "x.png"], "--image does not apply"),
    (["--max-new-tokens", "5"], "--max-new-tokens"),
    (["--n", "0"], "field '--n'"),
    (["--steps", "0"], "field '--steps'"),
    (["--top-k", "0"], "field '--top-k'"),
])
def test_text_flags_and_bad_values_on_an_image_run(runs: dict[str, Any], tmp_path: Path, flags: list[str],
                                                   words: str, capsys: pytest.CaptureFixture[str]):
    assert main(["generate", str(tmp_path / "a" / "ldm"), "--prompt", "x", *flags]) == 1
    assert words in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "a" / "ldm")]) == 1
    assert "give --prompt TEXT" in capsys.readouterr().err


class TextStub:
    """A text run's model: echoes the prompt and the decoding options that reached it."""

    task = "lm"

    def samples(self, **kw: Any) -> list[Any]:
        return [kw["prompt"]]

    def generate_samples(self, samples: list[Any], prompts: list[str] | None, options: Any,
                         batch_size: int = 16) -> list[str]:
        assert prompts is not None
        return [f"echo {prompts[0]} {options.max_new_tokens}"]


def test_text_runs_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(generate, "load_generator", lambda run, device="cpu": TextStub())
    run = str(tmp_path / "lm")   # not an image run (the real is_image_run)
    assert main(["generate", run, "--prompt", "what shape is"]) == 0
    assert capsys.readouterr().out == "echo what shape is 48\n"
    assert main(["generate", run, "--question", "first", "--prompt", "last", "--max-new-tokens", "7", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"task": "lm", "text": "echo last 7", "prompt": "last"}
    for flag in (["--n", "2"], ["--steps", "4"], ["--sampler", "ddim"], ["--overwrite"]):
        assert main(["generate", run, "--prompt", "x", *flag]) == 1
        assert f"{flag[0]} does not apply" in capsys.readouterr().err
    assert main(["generate", run]) == 1
    assert "give an input" in capsys.readouterr().err
