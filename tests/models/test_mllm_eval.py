"""`polymodal eval` on mllm runs: --task instruct / fewshot / embodied / vqa report what scoring the run's own
replies gives (recomputed here through the chat front), on data made by the real generators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from polymodal.commands import data as data_cmd
from polymodal.commands import eval as eval_cmd
from polymodal.eval.fewshot import first_word, task_examples
from polymodal.eval.instruct import instruct_items, score_reply
from polymodal.models.mllm_front import load_mllm

pytest.importorskip("transformers")
pytest.importorskip("gymnasium")

VISION = {"image_size": 64, "patch_size": 16, "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64}
LM = {"hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 64, "train": "full"}


def _train(data_dir: Path, run: Path, **model: Any) -> Path:
    from polymodal.recipes import Recipe
    from polymodal.train.trainer import Trainer

    recipe = Recipe.from_dict({
        "arch": "mllm", "model": {"tokenizer": {"vocab_size": 320}, "vision": VISION, "lm": LM, "max_len": 320,
                                  **model},
        "data": {"split": "train", "val_split": "val"},
        "train": {"batch_size": 8, "lr": 1e-2, "weight_decay": 0.0, "warmup_steps": 0, "steps": 3, "seed": 0}})
    Trainer(recipe, data_dir, run, progress=False).fit()
    return run


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mllm_eval")
    data = root / "data"
    assert data_cmd.main(["make", "shapes", "--out", str(data), "--n", "40", "--lang", "en,zh", "--modalities",
                          "image,text", "--conversations", "--no-progress", "--json"]) == 0
    return data, _train(data, root / "run", data=["conversations", "qa"])


def _eval(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    capsys.readouterr()
    assert eval_cmd.main([*argv, "--json", "--no-progress"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_instruct_scores_the_runs_own_replies(shapes_run: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from polymodal.data.formats import open_dataset

    data, run = shapes_run
    r = _eval(capsys, str(run), "--data", str(data), "--task", "instruct", "--max-new-tokens", "6")
    samples = list(open_dataset(data, split="test"))
    items = [it for it in instruct_items(samples, langs=["en", "zh"]) if not it.spoken]
    chat = load_mllm(run)
    replies = []
    from polymodal.lm.decoding import DecodingOptions

    for it in items:
        msgs = []
        for k, t in enumerate(it.history):
            first_user = t.role == "user" and all(h.role != "user" for h in it.history[:k])
            msgs.append(type("M", (), {"role": t.role, "content": t.content,
                                       "images": (it.sample.image,) if first_user else ()})())
        replies.append(chat.chat([msgs], DecodingOptions(max_new_tokens=6))[0])
    want = sum(score_reply(it, rep) for it, rep in zip(items, replies, strict=True)) / len(items)
    assert r["n"] == len(items) and r["accuracy"] == pytest.approx(want)
    assert {"pope", "by_skill", "by_lang"} <= set(r)
    text = eval_cmd.format_result({**r, "task": "instruct"})
    assert "pope" in text.lower()


def test_fewshot_and_vqa_on_an_mllm_run(shapes_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, run = shapes_run
    r = _eval(capsys, str(run), "--data", str(data), "--task", "fewshot", "--shots", "0,1",
              "--limit-queries", "4", "--max-new-tokens", "3")
    rep = r["color_of"]
    assert rep["n"] == 4 and set(rep) >= {"shots_0", "shots_1", "majority"}
    assert rep["shots_0"]["scored"] + rep["shots_0"]["skipped"] == 4
    from polymodal.data.formats import open_dataset

    examples = task_examples(list(open_dataset(data, split="test")), "color_of")
    assert examples and all(e.prompt.endswith("->") for e in examples)
    assert first_word(" Red star") == "red"
    preds = run.parent / "vqa.jsonl"
    v = _eval(capsys, str(run), "--data", str(data), "--task", "vqa", "--max-new-tokens", "4", "--train-split",
              "none", "--limit", "3", "--out", str(preds))
    assert v["task"] == "vqa" and v["n_items"] > 0
    from polymodal.lm.decoding import DecodingOptions

    chat = load_mllm(run)  # each answer is the run's reply to that question about that picture
    test = {s.id: s for s in open_dataset(data, split="test")}
    rows = [json.loads(line) for line in preds.read_text().splitlines()][:4]
    want = [chat.chat([[type("M", (), {"role": "user", "content": r["prompt"], "images": (test[r["id"]].image,)})()]],
                      DecodingOptions(max_new_tokens=4))[0] for r in rows]
    assert [r["text"] for r in rows] == want
    with pytest.raises(Exception, match="mllm"):
        eval_cmd.main([str(run), "--data", str(data), "--task", "retrieval"])


def test_embodied_closed_loop_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "table"
    assert data_cmd.main(["make", "tabletop", "--out", str(data), "--n", "40", "--no-progress", "--json"]) == 0
    run = _train(data, tmp_path / "run", data=["qa"], qa_types=["action"], langs=["en"])
    r = _eval(capsys, str(run), "--data", str(data), "--task", "embodied", "--limit", "3", "--max-new-tokens", "12")
    records = r["records"]
    assert r["n"] == len(records) == 3
    assert r["success"] == pytest.approx(sum(bool(x["success"]) for x in records) / len(records))
    assert "success" in eval_cmd.format_result(r)


def test_vqa_evaluation_asks_an_mllm_the_question(shapes_run: tuple[Path, Path]) -> None:
    """The generative evaluation gives an mllm each item's question (a captioning item none): its answers are
    the chat front's replies to those questions (weights drawn where replies depend on the words)."""
    from polymodal.data.formats import open_dataset
    from polymodal.data.transforms.compose import SampleTransform
    from polymodal.data.transforms.resolve import transform_config
    from polymodal.eval.generation import evaluate_vqa
    from polymodal.lm.decoding import DecodingOptions
    from polymodal.models.generative import GenerativeModel
    from polymodal.models.mllm_front import MLLMChat

    data, run = shapes_run
    model = load_mllm(run).model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 3.0 / p.shape[-1] ** 0.5)
    tf = SampleTransform.from_dict(transform_config(model.preprocess(), {}))
    gm = GenerativeModel(model.eval(), tf, {}, torch.device("cpu"))
    samples = list(open_dataset(data, split="test"))[:2]
    opts = DecodingOptions(max_new_tokens=5)
    rep = evaluate_vqa(gm, samples, langs=["en"], options=opts, progress=False)
    chat = MLLMChat(model, tf, torch.device("cpu"))
    by_id = {s.id: s for s in samples}
    rows = rep["predictions"][:4]
    want = [chat.chat([[type("M", (), {"role": "user", "content": r["prompt"], "images": (by_id[r["id"]].image,)})()]],
                      opts)[0] for r in rows]
    assert [r["text"] for r in rows] == want and len(set(want)) > 1
