"""Benchmark: multimodal LLMs on `shapes` and the tabletop world (issue #15), fixed step budgets.

Pipeline (every run in its own `polymodal train` process, 1 torch thread; ``--reuse`` adopts finished runs):

1. sources: ``lm_tiny`` (the frozen LM; 500 steps) and ``caption_tiny`` (its ViT is every bridge's vision tower;
   also the task-specific captioner BLIP-2 is compared with);
2. LLaVA: stage 1 (projector on captions) -> stage 2 (the LM on en/zh conversations, 800 steps) -> 1000 more
   steps with the ViT unfrozen too (as Qwen-VL's later stages do) -> `eval --task instruct`; optionally
   (``--only variants``) stage 2 with LoRA, and a text-only twin that never sees the picture;
3. BLIP-2: stage 1 (Q-Former: ITC + ITM + ITG) -> stage 2 (queries prompt the frozen LM) -> captioning and VQA;
4. Flamingo: resampler + gated cross-attention in the frozen LM, interleaved training -> `eval --task fewshot`
   on a question form never trained ("star ->" asks the star's colour);
5. PaLM-E: the policy reading the picture, the scene as text (state-only), or neither (text-only), closed-loop
   on unseen tabletop tasks, beside the oracle, an instruction-order policy and a random one.

    python bench/mllm.py [--reuse] [--limit 150] [--only llava,blip2,flamingo,palme,variants]

Prints one JSON line and writes docs/results/mllm.md from these results merged with earlier invocations' (kept in
RUNS/bench_results.json, so ``--only`` groups can be run one after another) (the VQA reference is vqa_tiny's row of
docs/results/generation.md, a separate 2000-step run; the captioning reference is this script's caption_tiny)."""

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

from architectures import adopt  # the same run-adoption rule as the architectures bench

RUNS: dict[str, tuple[str, str, int, list[str]]] = {  # name -> (recipe, data key, steps, extra --set)
    "llava_s1": ("mllm_llava_align_tiny", "instruct", 300, []),
    "llava": ("mllm_llava_tiny", "instruct", 800, ["model.init_from={runs}/llava_s1"]),
    "llava_ft": ("mllm_llava_tiny", "instruct", 1000, ["model.init_from={runs}/llava", "model.vision.train=true"]),
    "llava_lora": ("mllm_llava_tiny", "instruct", 800, ["model.init_from={runs}/llava_s1", "model.lm.train=lora"]),
    "llava_blind": ("mllm_llava_tiny", "instruct", 800, ["model.init_from={runs}/llava_s1", "model.input=text"]),
    "blip2_s1": ("mllm_blip2_qformer_tiny", "base", 300, []),
    "blip2": ("mllm_blip2_tiny", "base", 500, ["model.init_from={runs}/blip2_s1"]),
    "flamingo": ("mllm_flamingo_tiny", "base", 400, []),
    "palme_vision": ("palme_tiny", "tabletop", 600, []),
    "palme_vision_ft": ("palme_tiny", "tabletop", 1000, ["model.init_from={runs}/palme_vision"]),
    "palme_state": ("palme_tiny", "tabletop", 600, ["model.input=state"]),
    "palme_text": ("palme_tiny", "tabletop", 600, ["model.input=text"]),
}
GROUPS = {"llava": ["llava_s1", "llava", "llava_ft"], "variants": ["llava_lora", "llava_blind"], "blip2": ["blip2_s1", "blip2"], "flamingo": ["flamingo"],
          "palme": ["palme_vision", "palme_state", "palme_text", "palme_vision_ft"]}
VQA_REFERENCE = {"overall": 0.600, "seen": 0.619, "heldout": 0.585}  # docs/results/generation.md, vqa_tiny


def sh(cmd: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return proc.stdout


def polymodal(*args: str) -> str:
    return sh([sys.executable, "-m", "polymodal", *args])


def train(recipe: str, data: Path, out: Path, steps: int, sets: list[str], reuse: bool) -> dict[str, Any]:
    if reuse and (row := adopt(out, steps)) is not None:
        return {"recipe": recipe, **row}
    res = json.loads(polymodal("train", recipe, "--data", str(data), "--out", str(out), "--steps", str(steps),
                               "--threads", "1", "--no-progress", "--json", *(["--set", *sets] if sets else []))
                     .strip().splitlines()[-1])
    return {"recipe": recipe, "steps": res["step"], "train_s": round(res["elapsed_s"], 1), "loss": res["loss"]}


def evaluate(run: Path, data: Path, task: str, *extra: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    out: dict[str, Any] = json.loads(polymodal("eval", str(run), "--data", str(data), "--task", task, "--json",
                                               "--no-progress", *extra))
    out["eval_s"] = round(time.perf_counter() - t0, 1)
    return out


def ensure_data(root: Path, n: int, tasks: int) -> dict[str, Path]:
    paths = {"base": root / "base", "instruct": root / "instruct", "tabletop": root / "tabletop"}
    common = ["--n", str(n), "--lang", "en,zh", "--modalities", "image,text", "--no-progress", "--json"]
    if not (paths["base"] / "manifest.json").is_file():
        polymodal("data", "make", "shapes", "--out", str(paths["base"]), *common)
    if not (paths["instruct"] / "manifest.json").is_file():
        polymodal("data", "make", "shapes", "--out", str(paths["instruct"]), *common, "--conversations")
    if not (paths["tabletop"] / "manifest.json").is_file():
        polymodal("data", "make", "tabletop", "--out", str(paths["tabletop"]), "--n", str(tasks), "--lang", "en,zh",
                  "--no-progress", "--json")
    return paths


def reference_policies(tabletop: Path) -> dict[str, Any]:
    from polymodal.eval.embodied import instruction_policy, oracle_policy, random_policy
    from polymodal.eval.embodied_policy import run_embodied

    return {name: {k: v for k, v in run_embodied(tabletop, pol).items() if k != "records"}
            for name, pol in (("oracle", oracle_policy), ("instruction order", instruction_policy),
                              ("random", random_policy(0)))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data_cache/mllm")
    p.add_argument("--runs", default="runs/mllm")
    p.add_argument("--n", type=int, default=6000, help="shapes samples (default 6000)")
    p.add_argument("--tasks", type=int, default=2000, help="tabletop tasks (default 2000)")
    p.add_argument("--limit", type=int, default=150, help="test samples for instruct/captioning/vqa (150)")
    p.add_argument("--only", default="llava,blip2,flamingo,palme", help="groups: llava, variants (LoRA and "
                   "text-only stage 2), blip2, flamingo, palme")
    p.add_argument("--reuse", action="store_true", help="adopt finished runs with the same step count")
    p.add_argument("--out", default="docs/results/mllm.md")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from RUNS/bench_results.json")
    args = p.parse_args()
    if args.report_only:
        from mllm_report import write_report

        stored = json.loads((Path(args.runs) / "bench_results.json").read_text())
        write_report(Path(args.out), stored["machine"], stored["training"], stored["results"], VQA_REFERENCE)
        return 0
    runs, only = Path(args.runs), args.only.split(",")
    load0 = os.getloadavg()[0]
    data = ensure_data(Path(args.data_root), args.n, args.tasks)
    lm_ckpt = runs / "lm" / "checkpoints" / "step_00000500"
    training: dict[str, Any] = {}
    if args.reuse and (lm_ckpt / "model.safetensors").is_file():
        lm_source = lm_ckpt  # the step-500 checkpoint of a longer lm_tiny run
        training["lm"] = {"recipe": "lm_tiny", "steps": 500, "note": "checkpoint of a 1500-step schedule"}
    else:
        training["lm"] = train("lm_tiny", data["base"], runs / "lm", 500, [], args.reuse)
        lm_source = runs / "lm"
    training["cap"] = train("caption_tiny", data["base"], runs / "cap", 1500, [], args.reuse)
    sources = [f"model.vision.from_run={runs / 'cap'}", f"model.lm.from_run={lm_source}"]
    results: dict[str, Any] = {}
    for group in only:
        for name in GROUPS[group]:
            recipe, key, steps, sets = RUNS[name]
            training[name] = train(recipe, data[key], runs / name, steps,
                                   [s.format(runs=runs) for s in sets] + sources, args.reuse)
    lim = ["--limit", str(args.limit)]
    if "llava" in only:
        results["llava_instruct"] = evaluate(runs / "llava_ft", data["instruct"], "instruct", *lim,
                                             "--max-new-tokens", "32")
        results["llava_800_instruct"] = evaluate(runs / "llava", data["instruct"], "instruct", *lim,
                                                 "--max-new-tokens", "32")
    if "variants" in only:
        for name in GROUPS["variants"]:
            results[f"{name}_instruct"] = evaluate(runs / name, data["instruct"], "instruct", *lim,
                                                   "--max-new-tokens", "32")
    if "blip2" in only:
        results["blip2_vqa"] = evaluate(runs / "blip2", data["base"], "vqa", *lim, "--train-split", "none",
                                        "--lang", "en", "--max-new-tokens", "8")
        results["blip2_captioning"] = evaluate(runs / "blip2", data["base"], "captioning", *lim, "--train-split",
                                               "none", "--lang", "en", "--no-meteor")
        results["cap_captioning"] = evaluate(runs / "cap", data["base"], "captioning", *lim, "--train-split",
                                             "none", "--lang", "en", "--no-meteor")
    if "flamingo" in only:
        results["flamingo_fewshot"] = evaluate(runs / "flamingo", data["base"], "fewshot", "--limit", "600",
                                               "--limit-queries", str(args.limit), "--max-new-tokens", "3")
        results["flamingo_vqa"] = evaluate(runs / "flamingo", data["base"], "vqa", *lim, "--train-split", "none",
                                           "--lang", "en", "--max-new-tokens", "8")
    if "palme" in only:
        for name in GROUPS["palme"]:
            r = evaluate(runs / name, data["tabletop"], "embodied", "--max-new-tokens", "24")
            r.pop("records", None)
            results[name] = r
        results["palme_references"] = reference_policies(data["tabletop"])
    machine = {"cpus": os.cpu_count(), "processor": platform.machine(), "torch": torch.__version__,
               "load_start": round(load0, 2), "load_end": round(os.getloadavg()[0], 2)}
    print(json.dumps({"machine": machine, "training": training, "results": results}, ensure_ascii=False))
    # earlier invocations' groups (--only) stay in the report: results merge into runs/bench_results.json
    store = runs / "bench_results.json"
    if store.is_file():
        old = json.loads(store.read_text())
        training, results = {**old.get("training", {}), **training}, {**old.get("results", {}), **results}
    store.write_text(json.dumps({"machine": machine, "training": training, "results": results}, ensure_ascii=False))
    from mllm_report import write_report

    write_report(Path(args.out), machine, training, results, VQA_REFERENCE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
