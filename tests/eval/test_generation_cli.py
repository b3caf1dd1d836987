"""`polymodal eval --task captioning|vqa|asr` end to end on generated data, with fake generative runs (a run folder
whose config names the arch; the loader is replaced by fakes that answer from the samples' targets): the JSON and
the tables must agree with the metric functions run on the predictions the command wrote."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import polymodal.api
from polymodal.commands.eval import check_task
from polymodal.commands.eval import main as eval_main
from polymodal.data.formats import open_dataset
from polymodal.data.formats.jsonl import write_jsonl
from polymodal.data.sample import Batch, Sample
from polymodal.data.synth import make_dataset
from polymodal.data.targets import Targets, Transcript
from polymodal.data.transforms.compose import SampleTransform
from polymodal.errors import InvalidInput
from polymodal.eval.asr_metrics import asr_report
from polymodal.eval.text_metrics import caption_scores
from polymodal.eval.vqa_metrics import vqa_report
from polymodal.lm.decoding import DecodingOptions
from polymodal.models.generative import GenerativeModel
from polymodal.models.generator import TextGenerator, TokenStreamer, check_prompts

Answer = Callable[[str, str | None], str]


class Fake(TextGenerator):
    def __init__(self, task: str, modalities: tuple[str, ...], answer: Answer):
        super().__init__({"tokenizer": {"vocab_size": 16}})
        self.task, self.modalities, self.answer = task, modalities, answer
        self.options: list[DecodingOptions | None] = []

    def generate(self, batch: Batch, prompts: Sequence[str | None] | None = None,
                 options: DecodingOptions | None = None, streamer: TokenStreamer | None = None) -> list[str]:
        self.options.append(options)
        return [self.answer(sid, p) for sid, p in zip(batch.ids, check_prompts(prompts, len(batch)), strict=True)]


class Embedder:
    modalities = ("image", "text")

    def embed(self, **kw: Any) -> np.ndarray:
        (_, inputs), = kw.items()
        keys = [x.encode() if isinstance(x, str) else np.asarray(x).tobytes() for x in inputs]
        vecs = [np.random.default_rng(zlib.crc32(k)).standard_normal(64) for k in keys]
        return np.stack([v / np.linalg.norm(v) for v in vecs]).astype(np.float32)


def fake_run(root: Path, arch: str) -> Path:
    run = root / arch
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"format": "polymodal-run", "arch": arch, "model": {},
                                                 "transform": {}}))
    save_file({}, str(run / "model.safetensors"))
    return run


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], dict[str, Sample]]:
    root = tmp_path_factory.mktemp("gen_cli")
    data = root / "shapes"
    make_dataset("shapes", data, n=60, seed=2, langs=("en", "zh"), modalities=("text", "image"), workers=1,
                 progress=False)
    runs = {arch: fake_run(root, arch) for arch in ("captioner", "vqa", "lm", "asr", "alignment")}
    test = {s.id: s for s in open_dataset(data, split="test")}
    return data, runs, test


@pytest.fixture()
def fakes(shapes: tuple[Path, dict[str, Path], dict[str, Sample]], monkeypatch: pytest.MonkeyPatch
          ) -> dict[str, Fake]:
    _, runs, test = shapes
    answers = {(sid, q.question): q.answer for sid, s in test.items() for q in s.targets.qa}
    models = {
        "captioner": Fake("captioning", ("image",), lambda sid, p: test[sid].targets.captions_for("image", "en")[0].text),
        "vqa": Fake("vqa", ("image",), lambda sid, p: "no" if answers[(sid, p or "")] == "yes" else answers[(sid, p or "")]),
        "lm": Fake("lm", (), lambda sid, p: "yes"),
    }
    by_path = {str(runs[arch]): m for arch, m in models.items()}

    def load_generator(run: Any, device: Any = "cpu") -> GenerativeModel:
        return GenerativeModel(by_path[str(run)], SampleTransform(), {}, torch.device("cpu"))

    monkeypatch.setattr(polymodal.api, "load_generator", load_generator)
    monkeypatch.setattr(polymodal.api, "load_embedding", lambda *a, **k: Embedder())
    return models


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_captioning_cli(shapes: tuple[Path, dict[str, Path], dict[str, Sample]], fakes: dict[str, Fake],
                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, runs, test = shapes
    out = tmp_path / "captions.jsonl"
    args = [str(runs["captioner"]), "--data", str(data), "--task", "captioning", "--baseline-model", "clip-fake",
            "--no-meteor", "--no-progress", "--out", str(out), "--beams", "2", "--max-new-tokens", "20"]
    assert eval_main([*args, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    rows = _jsonl(out)
    assert got["split"] == "test" and got["systems"] == ["model", "retrieval"] and "predictions" not in got
    assert len(rows) == got["n_items"] == 2 * len(test) and {r["lang"] for r in rows} == {"en", "zh"}
    train_caps = {c.text for s in open_dataset(data, split="train") for c in s.targets.captions}
    assert all(r["retrieval"] in train_caps for r in rows)
    for lang in ("en", "zh"):
        part = [r for r in rows if r["lang"] == lang]
        refs = {str(i): r["references"] for i, r in enumerate(part)}
        for name, key in (("model", "text"), ("retrieval", "retrieval")):
            want = caption_scores(refs, {str(i): r[key] for i, r in enumerate(part)}, lang=lang, meteor=False)
            assert got["scores"][lang][name] == pytest.approx(want)
    assert {"seen", "heldout", "overall"} <= set(got["attributes"]["model"])
    assert fakes["captioner"].options[0] == DecodingOptions(max_new_tokens=20, num_beams=2)
    assert got["baselines"] == {"retrieval": "clip-fake", "train_split": "train"}
    assert eval_main(args) == 0
    table = capsys.readouterr().out.splitlines()
    bleu = next(line for line in table if line.startswith("bleu4"))
    assert bleu.split()[1:] == [f"{got['scores'][lang][s]['bleu4']:.3f}" for lang in ("en", "zh")
                                for s in ("model", "retrieval")]
    heldout = next(line for line in table if line.startswith("all "))
    assert heldout.split()[1:] == [f"{got['attributes'][s][g]['all']:.3f}" for s in ("model", "retrieval")
                                   for g in ("overall", "seen", "heldout")]
    assert any(line.startswith("speed (model):") for line in table)


def test_vqa_cli_with_prior_and_blind(shapes: tuple[Path, dict[str, Path], dict[str, Sample]],
                                      fakes: dict[str, Fake], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    data, runs, test = shapes
    out = tmp_path / "answers.jsonl"
    args = [str(runs["vqa"]), "--data", str(data), "--task", "vqa", "--blind", str(runs["lm"]), "--no-progress",
            "--out", str(out), "--lang", "en"]
    assert eval_main([*args, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    rows = _jsonl(out)
    assert got["systems"] == ["model", "prior", "blind"] and {r["lang"] for r in rows} == {"en"}
    acc = got["accuracy"]
    for name, key in (("model", "text"), ("prior", "prior"), ("blind", "blind")):
        want = vqa_report([(r[key], r["references"], r["type"]) for r in rows])
        assert acc["overall"][name] == pytest.approx(want["overall"])
        assert {t: v[name] for t, v in acc["per_type"].items()} == pytest.approx(
            {t: v["accuracy"] for t, v in want["per_type"].items()})
    assert all(r["blind"] == "yes" for r in rows)
    for t, v in acc["per_type"].items():  # the fake answers "no" where the answer is "yes", else right
        part = [r for r in rows if r["type"] == t]
        assert v["model"] == pytest.approx(sum(r["references"] != ["yes"] for r in part) / len(part))
        assert v["blind"] == pytest.approx(sum(r["references"] == ["yes"] for r in part) / len(part))
    assert acc["per_type"]["shape"]["model"] == 1.0 and acc["per_type"]["existence"]["model"] < 1.0
    assert set(acc) >= {"seen", "heldout"} and acc["seen"]["n"] + acc["heldout"]["n"] == len(rows)
    assert eval_main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[3].split() == ["question", "type", "n", "model", "prior", "blind"]
    color = next(line for line in table if line.startswith("color "))
    row = acc["per_type"]["color"]
    assert color.split()[1:] == [str(row["n"])] + [f"{row[s]:.3f}" for s in ("model", "prior", "blind")]
    assert any(line.startswith("heldout ") for line in table) and any(line.startswith("lang en") for line in table)


def test_asr_cli_on_jsonl_without_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    texts = [("the red circle", "en"), ("a blue square moves", "en"), ("红色的圆形", "zh")]
    samples = [Sample(id=f"u{i}", audio=np.zeros(1600, np.float32), sample_rate=16000,
                      targets=Targets(transcript=Transcript(t, lang))) for i, (t, lang) in enumerate(texts)]
    write_jsonl(samples, tmp_path / "speech.jsonl")
    run = fake_run(tmp_path, "asr")
    fake = Fake("asr", ("audio",), lambda sid, p: "the red" if sid == "u0" else texts[int(sid[1:])][0])
    monkeypatch.setattr(polymodal.api, "load_generator",
                        lambda *a, **k: GenerativeModel(fake, SampleTransform(), {}, torch.device("cpu")))
    args = [str(run), "--data", str(tmp_path / "speech.jsonl"), "--task", "asr", "--no-progress"]
    assert eval_main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    assert "no baselines from training data" not in captured.err or got["split"] is None
    assert got["split"] is None and "train_overlap" not in got
    assert got["scores"]["all"] == asr_report([("the red circle", "the red", "en"),
                                               ("a blue square moves", "a blue square moves", "en"),
                                               ("红色的圆形", "红色的圆形", "zh")])
    assert got["scores"]["all"]["en"]["wer"] == pytest.approx(1 / 7)
    assert eval_main(args) == 0
    table = capsys.readouterr().out
    assert "en wer" in table and f"{1 / 7:.3f}" in table and "zh cer" in table


@pytest.mark.parametrize(("arch", "task", "right"), [
    ("captioner", "vqa", "--task captioning"), ("vqa", "captioning", "--task vqa"), ("asr", "vqa", "--task asr"),
    ("lm", "captioning", "--task vqa (text-only question answering)"), ("captioner", "retrieval", "--task captioning"),
    ("alignment", "captioning", "needs a generative captioner run; evaluate this one with --task retrieval"),
    ("alignment", "asr", "needs an asr run"),
])
def test_check_task_names_the_right_task(shapes: tuple[Path, dict[str, Path], dict[str, Sample]], tmp_path: Path,
                                         arch: str, task: str, right: str) -> None:
    _, runs, _ = shapes
    run = runs.get(arch) or fake_run(tmp_path, arch)
    with pytest.raises(InvalidInput, match=right.replace("(", r"\(").replace(")", r"\)")):
        check_task(str(run), task)


def test_generation_flags_are_checked_before_reading(shapes: tuple[Path, dict[str, Path], dict[str, Sample]]) -> None:
    data, runs, _ = shapes
    with pytest.raises(InvalidInput, match="--blind is the question-only VQA baseline"):
        eval_main([str(runs["captioner"]), "--data", str(data), "--task", "captioning", "--blind", str(runs["lm"])])
    with pytest.raises(InvalidInput, match="--blind: .* generative captioner run: evaluate it with --task captioning"):
        eval_main([str(runs["vqa"]), "--data", str(data), "--task", "vqa", "--blind", str(runs["captioner"])])
    with pytest.raises(InvalidInput, match="--baseline-model: .* generative vqa run"):
        eval_main([str(runs["captioner"]), "--data", str(data), "--task", "captioning", "--baseline-model",
                   str(runs["vqa"])])
    with pytest.raises(InvalidInput, match="not a polymodal run: --task vqa needs"):
        eval_main(["open_clip:ViT-B-32:x", "--data", str(data), "--task", "vqa"])
    with pytest.raises(InvalidInput, match="for --task captioning and vqa"):
        eval_main([str(runs["alignment"]), "--data", str(data), "--task", "retrieval", "--blind", str(runs["lm"])])
