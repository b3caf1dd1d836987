"""Benchmark: the generative recipes of issue #13 on `shapes`, each trained for a fixed number of steps and scored
with the field's metrics beside its baselines, plus decoding speed with and without the KV cache.

- captioning (`caption_tiny`): BLEU-4, CIDEr-D, caption attribute accuracy on seen vs held-out color+shape
  pairs, against the nearest-neighbour caption retrieved by `clip_tiny` trained on the same data;
- VQA (`vqa_tiny`): accuracy per question type, seen vs held-out, against the per-type prior answer and a
  question-only model (`vqa_blind_tiny`);
- ASR (`asr_tiny`): WER (English) and CER (Mandarin) on test utterances whose sentences never occur in training;
- speed: generated tokens/s of the captioner at batch 1 and 32, with and without the KV cache (greedy, the same
  images), and the ratio cache/no-cache.

Every run trains in its own process (``--threads`` torch threads) for its recipe's steps or ``--steps
name=N``; the wall time is reported beside the numbers. Data are generated once into ``--data-root``.

    python bench/generation.py [--data-root data_cache/generation] [--runs runs/generation_bench]
        [--only caption,vqa,asr] [--steps caption_tiny=800,...] [--threads 2] [--reuse] [--small]

Prints one JSON line and writes docs/results/generation.md (``--no-docs`` to skip; ``--small`` is a smoke
test: 300 samples, 3 steps, no docs)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from polymodal.api import load_embedding, load_generator
from polymodal.data.formats import open_dataset
from polymodal.data.synth import make_dataset
from polymodal.eval.generation import evaluate_asr, evaluate_captioning, evaluate_vqa
from polymodal.lm.decoding import DecodingOptions
from polymodal.recipes import load_recipe

DATA: dict[str, dict[str, Any]] = {
    "vision": {"name": "shapes", "n": 6000, "langs": ["en"], "modalities": ["image", "video"]},
    "vision_text": {"name": "shapes", "n": 6000, "langs": ["en"], "modalities": ["image", "text"]},
    "speech": {"name": "shapes", "n": 6000, "langs": ["en", "zh"], "modalities": ["audio"]},
}
# run -> (recipe, data key); the steps are the recipe's unless --steps says otherwise
RUNS: dict[str, tuple[str, str]] = {
    "clip_tiny": ("clip_tiny", "vision_text"), "caption_tiny": ("caption_tiny", "vision"),
    "vqa_tiny": ("vqa_tiny", "vision"), "vqa_blind_tiny": ("vqa_blind_tiny", "vision"),
    "asr_tiny": ("asr_tiny", "speech"),
}
GROUPS = {"caption": ["caption_tiny"], "vqa": ["vqa_tiny", "vqa_blind_tiny"], "asr": ["asr_tiny"]}
TARGETS = {"caption attribute accuracy, seen": 0.95, "caption attribute accuracy, held-out": 0.80,
           "VQA accuracy, seen": 0.95, "VQA accuracy, held-out": 0.85, "VQA relation accuracy": 0.90,
           "ASR WER en (unseen sentences)": 0.05, "ASR CER zh (unseen sentences)": 0.10}
LOWER_IS_BETTER = ("ASR",)


def ensure_data(root: Path, key: str, small: bool) -> Path:
    spec = dict(DATA[key])
    if small:
        spec["n"] = 300
    out = root / (key + ("_small" if small else ""))
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("n") == spec["n"]:
        return out
    make_dataset(spec.pop("name"), out, **spec, progress=False)
    return out


def adopt(recipe: str, out: Path, steps: int) -> dict[str, Any] | None:
    """A finished run of ``recipe`` at ``steps`` trained by `polymodal train` outside this script (e.g. the same
    command run by hand): its numbers from its own config and metrics.jsonl, so it is not trained twice."""
    try:
        cfg = json.loads((out / "config.json").read_text())
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return None
    if cfg.get("recipe", {}).get("name") != recipe or cfg.get("step") != steps:
        return None
    timed = [x for x in lines if "elapsed_s" in x]
    vals = [x for x in lines if "val_loss" in x]
    last = timed[-1] if timed else {}
    return {"recipe": recipe, "steps_budget": steps, "steps": cfg.get("step"),
            "train_s": round(float(last.get("elapsed_s", 0.0)), 1), "samples_per_s": last.get("samples_per_s"),
            "loss": last.get("loss"), "val_loss": vals[-1]["val_loss"] if vals else None, "adopted": True}


def train(recipe: str, data: Path, out: Path, steps: int, threads: int, reuse: bool) -> dict[str, Any]:
    info = out / "bench_train.json"
    if reuse and info.is_file():
        row = dict(json.loads(info.read_text()))
        if row.get("steps_budget") == steps:
            return row
    if reuse and (row := adopt(recipe, out, steps)) is not None:
        info.write_text(json.dumps(row) + "\n")
        return row
    if out.exists():
        import shutil

        shutil.rmtree(out)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "polymodal", "train", recipe, "--data", str(data), "--out", str(out),
           "--steps", str(steps), "--threads", str(threads), "--no-progress", "--json"]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"training {recipe} failed ({proc.returncode}): {' '.join(cmd)}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    row = {"recipe": recipe, "steps_budget": steps, "steps": res["step"], "train_s": round(res["elapsed_s"], 1),
           "samples_per_s": round(res["samples_per_s"], 1), "loss": res["loss"], "val_loss": res["val_loss"]}
    info.write_text(json.dumps(row) + "\n")
    return row


def read(data: Path, split: str, limit: int | None = None) -> list[Any]:
    out = []
    for s in open_dataset(data, split=split):
        out.append(s)
        if limit is not None and len(out) >= limit:
            break
    return out


def speed(run: Path, images: list[Any]) -> dict[str, Any]:
    """Generated tokens/s of a captioner, batch 1 and 32, KV cache on and off (greedy, same images)."""
    model = load_generator(run)
    tok = model.model.tokenizer
    assert tok is not None
    out: dict[str, Any] = {}
    model.generate_samples(images[:2], None, DecodingOptions(max_new_tokens=4), batch_size=2)  # warm-up, untimed
    for batch in (1, 32):
        for cache in (True, False):
            part = images[:batch if batch > 1 else 8]
            opts = DecodingOptions(max_new_tokens=32, use_cache=cache)
            t0 = time.perf_counter()
            texts = model.generate_samples(part, None, opts, batch_size=batch)
            dt = time.perf_counter() - t0
            tokens = sum(len(tok.encode(t)) + 1 for t in texts)  # + </s>
            out[f"b{batch}_{'cache' if cache else 'nocache'}"] = {"tokens": tokens, "s": round(dt, 3),
                                                                    "tokens_per_s": round(tokens / dt, 1)}
    for b in (1, 32):
        out[f"b{b}_cache_speedup"] = round(out[f"b{b}_cache"]["tokens_per_s"] / out[f"b{b}_nocache"]["tokens_per_s"], 2)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="data_cache/generation")
    p.add_argument("--runs", default="runs/generation_bench")
    p.add_argument("--only", default="caption,vqa,asr")
    p.add_argument("--steps", default="", help="name=N,... (default: each recipe's train.steps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--retrieval-run", default="runs/alignment_bench/clip_tiny",
                   help="the alignment run of the captioning retrieval baseline (default: bench/alignment_quality.py's "
                        "clip_tiny, trained on another draw of shapes; trained here on this data when missing)")
    p.add_argument("--eval-limit", type=int, default=600, help="test samples scored per task")
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--small", action="store_true")
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    given = dict(kv.split("=") for kv in args.steps.split(",") if kv)
    groups = [g for g in args.only.split(",") if g]
    root, runs = Path(args.data_root), Path(args.runs)
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                                          "torch": torch.__version__, "threads": args.threads,
                                          "load_start": round(os.getloadavg()[0], 2)}, "train": {}}
    trained: dict[str, Path] = {}
    for g in groups:
        for name in GROUPS[g]:
            recipe, key = RUNS[name]
            steps = 3 if args.small else int(given.get(name, load_recipe(recipe).train.steps or 500))
            data = ensure_data(root, key, args.small)
            result["train"][name] = train(recipe, data, runs / name, steps, args.threads, args.reuse)
            trained[name] = runs / name
    retrieval = Path(args.retrieval_run)
    if "caption" in groups and (args.small or not (retrieval / "model.safetensors").is_file()):
        steps = 3 if args.small else int(given.get("clip_tiny", load_recipe("clip_tiny").train.steps or 500))
        data = ensure_data(root, "vision_text", args.small)
        result["train"]["clip_tiny"] = train("clip_tiny", data, runs / "clip_tiny", steps, args.threads, args.reuse)
        retrieval = runs / "clip_tiny"
    result["retrieval_run"] = str(retrieval)
    limit = 40 if args.small else args.eval_limit
    quiet = DecodingOptions(max_new_tokens=40)
    if "caption" in groups:
        data = ensure_data(root, "vision", args.small)
        test, tr = read(data, "test", limit), read(data, "train")
        model = load_generator(trained["caption_tiny"])
        t0 = time.perf_counter()
        result["captioning"] = evaluate_captioning(model, test, train_samples=tr,
                                                   retrieval_model=load_embedding(retrieval),
                                                   options=quiet, progress=False, meteor=False)
        result["captioning"]["eval_s"] = round(time.perf_counter() - t0, 1)
        result["speed"] = speed(trained["caption_tiny"], [s for s in test if s.image is not None])
    if "vqa" in groups:
        data = ensure_data(root, "vision", args.small)
        test, tr = read(data, "test", limit), read(data, "train")
        t0 = time.perf_counter()
        result["vqa"] = evaluate_vqa(load_generator(trained["vqa_tiny"]), test, train_samples=tr,
                                     blind_model=load_generator(trained["vqa_blind_tiny"]), options=quiet,
                                     progress=False)
        result["vqa"]["eval_s"] = round(time.perf_counter() - t0, 1)
    if "asr" in groups:
        data = ensure_data(root, "speech", args.small)
        t0 = time.perf_counter()
        result["asr"] = evaluate_asr(load_generator(trained["asr_tiny"]), read(data, "test", limit),
                                     train_samples=read(data, "train"), options=quiet, progress=False)
        result["asr"]["eval_s"] = round(time.perf_counter() - t0, 1)
    result["machine"]["load_end"] = round(os.getloadavg()[0], 2)
    result["targets"] = check_targets(result)
    print(json.dumps(result, default=str))
    print("\n".join(markdown(result)), file=sys.stderr)
    if not args.small and not args.no_docs:
        Path("docs/results").mkdir(parents=True, exist_ok=True)
        Path("docs/results/generation.md").write_text("\n".join(markdown(result)) + "\n", encoding="utf-8")
    return 0


def _get(d: Any, *path: str) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def measured(result: dict[str, Any]) -> dict[str, float | None]:
    att = _get(result, "captioning", "attributes", "model") or {}
    acc = _get(result, "vqa", "accuracy") or {}
    unseen = _get(result, "asr", "scores", "unseen") or {}
    return {"caption attribute accuracy, seen": _get(att, "seen", "all"),
            "caption attribute accuracy, held-out": _get(att, "heldout", "all"),
            "VQA accuracy, seen": _get(acc, "seen", "model"), "VQA accuracy, held-out": _get(acc, "heldout", "model"),
            "VQA relation accuracy": _get(acc, "per_type", "relation", "model"),
            "ASR WER en (unseen sentences)": _get(unseen, "en", "wer"),
            "ASR CER zh (unseen sentences)": _get(unseen, "zh", "cer")}


def check_targets(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in measured(result).items():
        target = TARGETS[name]
        ok = None if value is None else (value <= target if name.startswith(LOWER_IS_BETTER) else value >= target)
        out[name] = {"target": target, "measured": value, "met": ok}
    return out


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    lines = ["# Generation: captioning, VQA, ASR (generated by bench/generation.py)", "",
             f"Machine: {m['cpus']} CPUs ({m['processor']}), torch {m['torch']}, {m['threads']} torch threads per "
             f"run; load average {m['load_start']} at the start, {m['load_end']} at the end.", "",
             "## Training (fixed step budgets; wall time beside them)", "",
             "| run | steps | train s | samples/s | final loss | val loss |", "|---|---|---|---|---|---|"]
    for name, t in r["train"].items():
        lines.append(f"| {name} | {t['steps']} | {t['train_s']} | {t['samples_per_s']} | {_f(t['loss'])} | "
                     f"{_f(t['val_loss'])} |")
    lines += ["", "## Targets of issue #13", "", "| target | wanted | measured | met |", "|---|---|---|---|"]
    for name, t in r["targets"].items():
        sign = "<=" if name.startswith(LOWER_IS_BETTER) else ">="
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {name} | {sign} {t['target']} | {_f(t['measured'])} | {met} |")
    cap = r.get("captioning")
    if cap:
        lines += ["", f"## Captioning (test split; retrieval = nearest train caption by {r.get('retrieval_run')})", "",
                  "| lang | system | BLEU-4 | CIDEr-D | ROUGE-L |", "|---|---|---|---|---|"]
        for lang, sc in cap["scores"].items():
            for system in ("model", "retrieval"):
                s = sc.get(system) or {}
                lines.append(f"| {lang} | {system} | {_f(s.get('bleu4'))} | {_f(s.get('cider_d'))} | "
                             f"{_f(s.get('rouge_l'))} |")
        lines += ["", "| attribute accuracy | system | n | color | shape | size | all |", "|---|---|---|---|---|---|---|"]
        for system, parts in cap["attributes"].items():
            for part, a in parts.items():
                lines.append(f"| {part} | {system} | {a.get('n')} | {_f(a.get('color'))} | {_f(a.get('shape'))} | "
                             f"{_f(a.get('size'))} | {_f(a.get('all'))} |")
    vqa = r.get("vqa")
    if vqa:
        acc = vqa["accuracy"]
        lines += ["", "## VQA (test split; prior = most frequent train answer per type; blind = question only)", "",
                  "| rows | n | model | prior | blind |", "|---|---|---|---|---|"]
        rows = [("overall", acc["overall"]), ("seen", acc.get("seen")), ("held-out", acc.get("heldout"))]
        rows += [(f"type {t}", v) for t, v in acc["per_type"].items()]
        for name, row in rows:
            if row:
                lines.append(f"| {name} | {row.get('n')} | {_f(row.get('model'))} | {_f(row.get('prior'))} | "
                             f"{_f(row.get('blind'))} |")
    asr = r.get("asr")
    if not asr:
        lines += ["", "## ASR", "", "Not measured in this run of the script (`--only` left it out): see docs/generation.md for "
                  "the state of `asr_tiny`."]
    if asr:
        lines += ["", "## ASR (test split; unseen = sentences that never occur in training)", "",
                  "| subset | lang | n | WER / CER |", "|---|---|---|---|"]
        for subset, per in asr["scores"].items():
            for lang, v in per.items():
                lines.append(f"| {subset} | {lang} | {v.get('n')} | {_f(v.get('wer', v.get('cer')))} |")
    sp = r.get("speed")
    if sp:
        lines += ["", "## Decoding speed (caption_tiny, greedy, 32 new tokens at most)", "",
                  "| batch | KV cache | tokens | s | tokens/s |", "|---|---|---|---|---|"]
        for b in (1, 32):
            for c in ("cache", "nocache"):
                v = sp[f"b{b}_{c}"]
                lines.append(f"| {b} | {'on' if c == 'cache' else 'off'} | {v['tokens']} | {v['s']} | "
                             f"{v['tokens_per_s']} |")
        lines.append(f"\nKV cache speed-up: {sp['b1_cache_speedup']}x at batch 1, {sp['b32_cache_speedup']}x at "
                     "batch 32.")
    return lines


if __name__ == "__main__":
    sys.exit(main())
