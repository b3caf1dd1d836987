"""The quickstart's generation steps: train a captioner, a VQA model and a speech recogniser (`caption_tiny`,
`vqa_tiny`, `asr_tiny`, each for ``--generation-steps``) on the tour's `shapes` data, score them on part of the
test split, and pick examples for the report (images with captions, questions with answers marked right or
wrong, spoken clips with transcripts and their error rate)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.sample import Sample
from ..eval.asr_metrics import cer, wer
from ..eval.caption_parse import attribute_accuracy
from ..eval.generation import evaluate_asr, evaluate_captioning, evaluate_vqa
from ..lm.decoding import DecodingOptions
from ..models.generative import GenerativeModel, load_generative_model
from ._steps import Steps

RECIPES: dict[str, str] = {"caption": "caption_tiny", "vqa": "vqa_tiny", "asr": "asr_tiny"}
EVAL_MAX = 150  # test samples scored per model (decoding is the cost)
SHOWN = {"caption": 6, "vqa": 8, "asr": 4}
TrainStep = Callable[[str, str, Path], dict[str, Any]]  # (step name, recipe, run dir) -> step marker


# steps per model in the quickstart: a short look (about 3-4 minutes each on 2 cores; a speech step costs ~4x an
# image step). The recipes' own budgets are longer: see docs/results/generation.md for what they reach.
DEFAULT_STEPS: dict[str, int] = {"caption": 300, "vqa": 300, "asr": 80}


def generation_budgets(steps: int | None) -> dict[str, dict[str, Any]]:
    return {f"gen_{key}": {"steps": steps if steps is not None else DEFAULT_STEPS[key]} for key in RECIPES}


def generation_pipeline(steps: Steps, train_step: TrainStep, out: Path, tests: list[Sample]) -> dict[str, Any]:
    """Train the three models (each step reused on a re-run) and return the report's generation section."""
    runs = {key: out / "runs" / recipe for key, recipe in RECIPES.items()}
    markers = {key: train_step(f"gen_{key}", recipe, runs[key]) for key, recipe in RECIPES.items()}
    token = {k: m["token"] for k, m in markers.items()}
    part = tests[:EVAL_MAX]

    def work() -> dict[str, Any]:
        models = {k: load_generative_model(runs[k]) for k in RECIPES}
        return examples(models, part)

    result = steps.run("generation", f"caption, answer and transcribe {len(part)} test samples", token, work,
                       cache=False)["result"]
    result["trained"] = {k: m.get("result", {}) for k, m in markers.items()}
    return dict(result)


def examples(models: dict[str, GenerativeModel], tests: list[Sample]) -> dict[str, Any]:
    opts = DecodingOptions(max_new_tokens=40)
    by_id = {s.id: s for s in tests}
    cap = evaluate_captioning(models["caption"], tests, options=opts, progress=False, meteor=False)
    vqa = evaluate_vqa(models["vqa"], tests, options=opts, progress=False)
    asr = evaluate_asr(models["asr"], tests, options=opts, progress=False)
    captions = []
    for row in cap["predictions"][:SHOWN["caption"]]:
        s = by_id[row["id"]]
        att = None
        if s.metadata.get("objects"):
            att = attribute_accuracy(row["text"], s.metadata["objects"], s.metadata.get("relation"), row["lang"])
        captions.append({"image": s.image, "text": row["text"], "references": row["references"], "attributes": att})
    questions: list[dict[str, Any]] = []
    seen_types: set[Any] = set()
    for row in vqa["predictions"]:  # one question per type first, then any
        if len(questions) >= SHOWN["vqa"]:
            break
        if row.get("type") in seen_types and len(seen_types) < 6:
            continue
        seen_types.add(row.get("type"))
        questions.append({"image": by_id[row["id"]].image, "question": row["prompt"], "answer": row["text"],
                          "expected": row["references"], "correct": bool(row.get("accuracy", 0) >= 1.0)})
    clips = []
    for row in asr["predictions"][:SHOWN["asr"]]:
        s = by_id[row["id"]]
        ref, zh = row["references"][0], row["lang"] == "zh"
        err = (cer if zh else wer)([ref], [row["text"]])
        clips.append({"audio": (s.audio, s.sample_rate), "text": row["text"], "reference": ref, "lang": row["lang"],
                      "error": float(err), "metric": "CER" if zh else "WER"})
    summary: dict[str, Any] = {}
    att = (cap.get("attributes") or {}).get("model", {}).get("overall", {})
    if att:
        summary["caption attribute accuracy (all attributes right)"] = att.get("all")
    for lang, sc in cap["scores"].items():
        summary[f"caption CIDEr-D ({lang})"] = sc["model"]["cider_d"]
    summary["VQA accuracy"] = vqa["accuracy"]["overall"]["model"]
    for lang, sc in asr["scores"]["all"].items():
        key = "cer" if "cer" in sc else "wer"
        summary[f"ASR {key.upper()} ({lang})"] = sc[key]
    summary["test samples scored"] = len(tests)
    return {"captions": captions, "vqa": questions, "asr": clips, "summary": summary}


__all__ = ["DEFAULT_STEPS", "RECIPES", "examples", "generation_budgets", "generation_pipeline"]
