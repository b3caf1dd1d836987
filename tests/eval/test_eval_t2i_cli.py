"""`polymodal eval RUN --task text_to_image` on a tiny real latent-diffusion run (random weights, saved as the
trainer saves a run), a tiny untrained CLIP run as the embedding judge and a parser fitted with a shrunken budget:
the JSON must equal `evaluate_t2i` run here on the same pictures, --real must score the data's own pictures,
--out holds every picture's marks, report.html the gallery; the standard parser is fitted once and then reused;
wrong tasks, archs and flags are refused before anything is read or fitted."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

import polymodal.eval.t2i as t2i  # noqa: E402
from polymodal import __version__, rundir  # noqa: E402
from polymodal.commands import main  # noqa: E402
from polymodal.data.formats import open_dataset  # noqa: E402
from polymodal.data.synth import make_dataset, shapes  # noqa: E402
from polymodal.data.transforms.resolve import transform_config  # noqa: E402
from polymodal.errors import InvalidInput  # noqa: E402
from polymodal.eval.scene_parser import fit_parser, load_parser  # noqa: E402
from polymodal.eval.t2i_judges import image_scores  # noqa: E402
from polymodal.models import build_model, load_embedding_model  # noqa: E402
from polymodal.models.t2i_front import ImageOptions, load_image_generator  # noqa: E402
from polymodal.report.html_media import png_data_uri  # noqa: E402
from polymodal.train.checkpoint import write_checkpoint  # noqa: E402

VQ = {"kind": "vq", "image_size": 64, "channels": [8, 8, 16, 16], "latent_channels": 4, "codebook_size": 32,
      "norm_groups": 8}
TEXT = {"encoder": {"name": "text_transformer", "width": 32, "layers": 1, "heads": 2, "max_len": 96},
        "tokenizer": {"kind": "byte"}, "max_len": 96}
LDM = {"autoencoder": {"config": VQ}, "text": {"config": TEXT},
       "unet": {"channels": [32, 32], "layers_per_block": 1, "head_dim": 16, "norm_groups": 8},
       "latent_scale": 1.0, "steps": 3}
CLIP = {"dim": 16, "loss": "clip", "pairing": "all", "encoders": {
    "image": {"name": "image_vit", "image_size": 32, "patch_size": 8, "width": 16, "layers": 1, "heads": 2},
    "text": {"name": "text_transformer", "width": 16, "layers": 1, "heads": 2, "max_len": 96}}}
SCENES, STEPS = 48, 4  # the standard parser's budget in these tests (the real one: 2000 scenes, 1500 steps)


def write_run(out: Path, arch: str, model_cfg: dict[str, Any]) -> str:
    """A run folder as the trainer writes it (config.json + model.safetensors + checkpoints/), random weights."""
    torch.manual_seed(0)
    model = build_model(arch, model_cfg)
    with torch.no_grad():   # off the init, so pictures and embeddings depend on their inputs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = {"format": rundir.RUN_FORMAT, "version": rundir.RUN_VERSION, "polymodal_version": __version__,
           "arch": arch, "model": model.config, "transform": transform_config(model.preprocess(), {}),
           "world_size": 1, "step": 0, "samples_seen": 0}
    write_checkpoint(out, 0, model.state_dict(), cfg)
    return str(out)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("t2i_cli")
    make_dataset("shapes", root / "shapes", n=60, seed=0, langs=("en", "zh"), modalities=("text", "image"),
                 workers=1, progress=False)
    return {"root": root, "data": str(root / "shapes"), "ldm": write_run(root / "ldm", "latent_diffusion", LDM),
            "clip": write_run(root / "clip", "alignment", CLIP),
            "test": list(open_dataset(root / "shapes", split="test"))}


@pytest.fixture(autouse=True)
def small_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(t2i, "STANDARD_SCENES", SCENES)
    monkeypatch.setattr(t2i, "STANDARD_STEPS", STEPS)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["eval", *argv])
    io = capsys.readouterr()
    return rc, io.out, io.err


def reference(world: dict[str, Any], parser_dir: Path, generate: bool, **kw: Any) -> dict[str, Any]:
    gen = load_image_generator(world["ldm"]) if generate else None
    report, _ = t2i.evaluate_t2i(gen, world["test"], parser=load_parser(parser_dir),
                                 embedder=load_embedding_model(world["clip"]), langs=("en", "zh"), **kw)
    return report


def test_json_equals_evaluate_t2i_and_the_report_shows_the_gallery(world: dict[str, Any], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    pdir, lines, page = tmp_path / "parser", tmp_path / "marks.jsonl", tmp_path / "page" / "r.html"
    rc, out, err = run_cli(capsys, world["ldm"], "--data", world["data"], "--task", "text_to_image", "--judge",
                           world["clip"], "--parser", str(pdir), "--n-per-prompt", "2", "--seed", "3", "--steps", "2",
                           "--json", "--out", str(lines), "--gallery", "5", "--report", str(page))
    assert rc == 0, err
    got = json.loads(out)
    samples = world["test"]
    assert (got["task"], got["split"], got["source"], got["samples"]) == ("text_to_image", "test", world["ldm"], 6)
    assert got["images"] == 24 and got["langs"] == ["en", "zh"] and got["options"]["seed"] == 3
    assert got["judges"] == {"parser": str(pdir), "parser_fitted": True, "embedding": world["clip"]}
    assert {"all", "lang:en", "lang:zh", "one_object", "two_objects"} <= set(got["groups"])
    for g in got["groups"].values():
        assert {"attribute", "color", "shape", "size", "position", "count", "scene"} <= set(g["parser"])
        assert {"clip_score", "r_precision", "frechet"} <= set(g)
    want = reference(world, pdir, True, n_per_prompt=2, options=ImageOptions(seed=3, steps=2))
    assert got["groups"] == want["groups"] and got["r_precision_candidates"] == want["r_precision_candidates"]
    # the standard parser was fitted (as it says) on seed-1 test scenes, and recorded so
    assert "fitting the standard one" in err and "24/24" in err   # and the generation bar reached the end
    record = json.loads((pdir / t2i.FITTED_ON).read_text(encoding="utf-8"))
    assert (record["split"], record["data_seed"], record["scenes"], record["steps"]) == ("test", 1, SCENES, STEPS)
    # --out: one line per picture, its marks those of what the parser read
    rows = [json.loads(x) for x in lines.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 24 and [r["picture"] for r in rows[:4]] == [0, 1, 0, 1]
    by_id = {s.id: s for s in samples}
    assert rows[2]["prompt"] == samples[0].metadata["captions"]["zh"]
    for r in rows:
        assert r["marks"] == json.loads(json.dumps(image_scores(by_id[r["sample_id"]].metadata["objects"],
                                                                r["parsed"])))
    # report.html: 5 pictures (cards of 2, 2, 1), their prompts, and the groups
    text = page.read_text(encoding="utf-8")
    assert got["report_html"] == str(page) and "Generated images" in text and text.count("<img ") == 5
    for r in (rows[0], rows[2], rows[4]):
        assert html.escape(r["prompt"]) in text
    assert html.escape(rows[6]["prompt"]) not in text and "group lang:zh" in text


def test_parser_reused_table_and_default_report(world: dict[str, Any], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pdir = tmp_path / "p"
    assert t2i.standard_parser(pdir).width == 16
    saved = (pdir / rundir.MODEL).read_bytes()

    def no_fit(*a: Any, **k: Any) -> Any:
        raise AssertionError("the saved parser must be loaded, not fitted again")

    monkeypatch.setattr(t2i, "fit_parser", no_fit)
    rc, out, err = run_cli(capsys, world["ldm"], "--data", world["data"], "--task", "text_to_image", "--parser",
                           str(pdir), "--lang", "zh", "--max-samples", "4", "--no-progress")
    assert rc == 0, err
    assert "fitting" not in err and f"scene parser: {pdir}" in err and (pdir / rundir.MODEL).read_bytes() == saved
    lines = out.splitlines()
    head = next(i for i, x in enumerate(lines) if x.startswith("group"))
    assert lines[head].split() == ["group", "images", "attribute", "color", "shape", "size", "position", "count",
                                   "relation", "scene"]   # no judge: no CLIP, R-precision or FD columns
    rows = {x.split()[0]: x.split() for x in lines[head + 1:] if x and x.split()[0] in ("all", "lang:zh")}
    assert rows["all"][1] == rows["lang:zh"][1] == "4"
    assert "4 samples, 4 prompts (zh), 4 pictures" in out
    default = Path(world["ldm"]) / "judges" / "report.html"
    assert f"report: {default}" in out and default.is_file()


def test_real_scores_the_data_pictures(world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def no_model(*a: Any, **k: Any) -> Any:
        raise AssertionError("--real draws nothing")

    monkeypatch.setattr("polymodal.models.t2i_front.load_image_generator", no_model)
    monkeypatch.setattr(t2i, "STANDARD_SCENES", 200)   # a parser that reads real pictures a little (seconds)
    monkeypatch.setattr(t2i, "STANDARD_STEPS", 60)
    pdir, page = tmp_path / "p", tmp_path / "real.html"
    rc, out, err = run_cli(capsys, world["ldm"], "--data", world["data"], "--task", "text_to_image", "--real",
                           "--judge", world["clip"], "--parser", str(pdir), "--json", "--report", str(page),
                           "--gallery", "3")
    assert rc == 0, err
    got = json.loads(out)
    assert got["source"] == "real" and got["speed"] is None and got["options"] is None and got["images"] == 12
    want = reference(world, pdir, False)
    assert got["groups"] == want["groups"] and got["groups"]["all"]["parser"]["attribute"] > 0.2
    text = page.read_text(encoding="utf-8")
    assert text.count("<img ") == 3 and "the data&#x27;s own (--real)" in text
    # the real pictures themselves are shown: the first card is sample 0's picture
    assert png_data_uri(world["test"][0].image) in text


def test_standard_parser_fits_on_seed_1_test_scenes_then_loads(tmp_path: Path) -> None:
    got = t2i.standard_parser(tmp_path / "std")
    scenes = [shapes.make_sample(i, "test", seed=1, modalities=("image",)) for i in range(SCENES)]
    want = fit_parser(np.stack([s.image for s in scenes]), [s.metadata["objects"] for s in scenes], steps=STEPS,
                      seed=0)
    for (k, a), (_, b) in zip(got.state_dict().items(), want.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    again = t2i.standard_parser(tmp_path / "std")
    x = np.stack([s.image for s in scenes[:4]])
    assert again.parse(x) == got.parse(x)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput, match="not a folder"):
        t2i.standard_parser(tmp_path / "file")


T2I = ["--task", "text_to_image", "--parser", "PDIR"]


@pytest.mark.parametrize(("which", "flags", "words"), [
    ("ldm", [], "evaluate it with --task text_to_image"),
    ("ldm", ["--task", "captioning"], "evaluate it with --task text_to_image"),
    ("clip", T2I, "needs a text->image run (latent_diffusion or token_ar); "),
    ("data", T2I, "is not a polymodal run: --task text_to_image needs a text->image run"),
    ("clip", ["--judge", "x"], "--judge is for --task text_to_image"),
    ("clip", ["--task", "zeroshot", "--lang", "en,zh"], "takes one language"),
    ("ldm", [*T2I, "--beams", "2"], "--beams does not apply to --task text_to_image"),
    ("ldm", [*T2I, "--steps", "0"], "field '--steps'"),
    ("ldm", [*T2I, "--n-per-prompt", "0"], "field '--n-per-prompt'"),
    ("ldm", [*T2I, "--real", "--guidance", "2"], "nothing is drawn, so --guidance does not apply"),
    ("ldm", [*T2I, "--real", "--n-per-prompt", "2"], "so --n-per-prompt does not apply"),
    ("ldm", [*T2I, "--judge", "LDM"], "embedding needs an 'alignment' run"),
    ("ldm", ["--task", "text_to_image", "--real", "--parser", "FILE"], "not a folder"),
])
def test_wrong_task_arch_and_flags(world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   which: str, flags: list[str], words: str) -> None:
    (tmp_path / "file").write_text("x")
    pdir = tmp_path / "parser"
    names = {"LDM": world["ldm"], "FILE": str(tmp_path / "file"), "PDIR": str(pdir)}
    rc, _, err = run_cli(capsys, world[which], "--data", world["data"], *(names.get(f, f) for f in flags))
    assert rc == 1 and words in err, err
    assert not pdir.exists() and "fitting" not in err   # refused before a parser is fitted


def test_bad_language_is_a_usage_error(world: dict[str, Any]) -> None:
    with pytest.raises(SystemExit):
        main(["eval", world["ldm"], "--data", world["data"], "--task", "text_to_image", "--lang", "fr"])
