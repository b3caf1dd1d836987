"""Benchmark: the vision-language architecture families side by side on `shapes` (issue #14), equal step budgets.

Rows: CLIP (`clip_tiny`, the dual-encoder reference), VisualBERT (regions and patches), LXMERT, ViLBERT, ALBEF/BLIP
(`vl_*_tiny` recipes), each trained for ``--steps`` on the same data; then a multi-task comparison (VisualBERT with
pretraining + VQA vs each alone), caption noise (CLIP on 30% noisy alt-text, before and after BLIP's CapFilt) and
VideoBERT's zero-shot motion prediction.

Columns: parameters (trained, without ALBEF's momentum copy), train wall time, text->image R@1 on the test split
(contrastive: the family's own vectors, or CLIP's; ITM: the top 16 of that ranking re-ranked by the family's
matching head) on seen and held-out pairs, ITM accuracy, VQA accuracy (seen / held-out / relation questions) and the
pointing game (with the chance rate of a random candidate token).

    python bench/architectures.py [--steps 1000] [--only families,multitask,noise,videobert] [--reuse] [--small]

Every run trains in its own process (`polymodal train`, 1 torch thread, as two runs share the 2 cores); ``--reuse``
adopts finished runs in ``--runs``. Prints one JSON line and writes docs/results/architectures.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polymodal.api import load_embedding
from polymodal.data.formats import open_dataset
from polymodal.data.synth import make_dataset
from polymodal.eval import vl
from polymodal.models.loading import load_model

FAMILIES: dict[str, tuple[str, list[str]]] = {  # run -> (recipe, --set overrides)
    "clip": ("clip_tiny", ["train.batch_size=32"]),  # every row trains on 32 samples per step
    "visualbert_regions": ("vl_visualbert_tiny", []),
    "lxmert_regions": ("vl_lxmert_tiny", []),
    "vilbert_regions": ("vl_vilbert_tiny", []),
    "visualbert_patches": ("vl_visualbert_patches_tiny", []),
    "blip": ("vl_blip_tiny", []),
    "concat": ("vl_concat_tiny", []),
}
MULTITASK: dict[str, tuple[str, list[str]]] = {
    "visualbert_vqa_only": ("vl_visualbert_tiny", ['model.tasks={"vqa": 1.0}']),
    "visualbert_pretrain_only": ("vl_visualbert_tiny", ['model.tasks={"pretrain": 1.0}']),
}
TARGETS = {"ITM re-ranking gain on held-out R@1 (best family)": 0.0, "CapFilt recovery of the R@1 lost to noise": 0.5,
           "VideoBERT zero-shot motion accuracy": 0.90, "pointing game (best family, attention or Grad-CAM)": 0.80}


def ensure_data(path: Path, n: int, noise: float = 0.0, modalities: str = "text,image") -> Path:
    if not (path / "manifest.json").is_file():
        make_dataset("shapes", path, n=n, seed=0, langs=["en"], modalities=modalities.split(","),
                     caption_noise=noise, progress=False)
    return path


def adopt(out: Path, steps: int) -> dict[str, Any] | None:
    try:
        cfg = json.loads((out / "config.json").read_text())
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return None
    if cfg.get("step") != steps:
        return None
    timed = [x for x in lines if "elapsed_s" in x]
    last = timed[-1] if timed else {}
    return {"steps": cfg.get("step"), "train_s": round(float(last.get("elapsed_s", 0.0)), 1),
            "loss": last.get("loss"), "adopted": True}


def train(recipe: str, sets: list[str], data: Path, out: Path, steps: int, reuse: bool) -> dict[str, Any]:
    if reuse and (row := adopt(out, steps)) is not None:
        return {"recipe": recipe, "set": sets, **row}
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "polymodal", "train", recipe, "--data", str(data), "--out", str(out), "--steps",
           str(steps), "--threads", "1", "--no-progress", "--json"] + (["--set", *sets] if sets else [])
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}): {' '.join(cmd)}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"recipe": recipe, "set": sets, "steps": res["step"], "train_s": round(res["elapsed_s"], 1),
            "loss": res["loss"]}


def read(data: Path, split: str, limit: int | None = None) -> list[Any]:
    out = []
    for s in open_dataset(data, split=split):
        out.append(s)
        if limit is not None and len(out) >= limit:
            break
    return out


def clip_vectors(run: Path, items: list[Any], caps: list[str]) -> tuple[np.ndarray, np.ndarray]:
    emb = load_embedding(run)
    return emb.embed(text=caps), emb.embed(image=[s.image for s in items])


def clip_recall(run: Path, test: list[Any], caption_of: Any) -> dict[str, Any]:
    items = [s for s in test if s.image is not None and caption_of(s)]
    caps = [caption_of(s) for s in items]
    q, g = clip_vectors(run, items, caps)
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")
    ranks = [int(np.nonzero(order[i] == i)[0][0]) for i in range(len(items))]
    flags = [s.metadata.get("heldout") for s in items]
    return vl._recall(ranks, flags)


def score_family(run: Path, test: list[Any], clip_run: Path | None) -> dict[str, Any]:
    model, transform, _ = load_model(run)
    out: dict[str, Any] = {"params": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("teacher"))}
    t0 = time.perf_counter()
    pre = model.c.tasks.get("pretrain", 0) > 0
    if pre:
        out["itm"] = vl.itm_accuracy_eval(model, transform, test)
        items = vl.usable(model, test)
        cand = None
        if not model.has_itc and clip_run is not None:
            cand = clip_vectors(clip_run, items, [model.captions_of(s.targets)[0] for s in items])
        if cand is not None or model.has_itc:
            out["retrieval"] = vl.retrieval_eval(model, transform, test, candidates=cand)
        if model.family != "concat":  # the fusion baseline has no cross-modal attention
            out["pointing"] = vl.pointing_eval(model, transform, test)
    if model.c.tasks.get("vqa", 0) > 0:
        out["vqa"] = vl.vqa_eval(model, transform, test)
    out["eval_s"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data_cache/arch")
    p.add_argument("--runs", default="runs/arch_bench")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--only", default="families,multitask,noise,videobert")
    p.add_argument("--eval-limit", type=int, default=400)
    p.add_argument("--clean-captioner", default="runs/generation_bench/caption_tiny",
                   help="noise: the captioner trained on clean data for BLIP's CapFilt protocol (bench/generation.py's "
                        "caption_tiny; that variant is skipped when the run is missing)")
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--small", action="store_true")
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    groups = set(args.only.split(","))
    steps, n = (3, 300) if args.small else (args.steps, args.n)
    root, runs = Path(args.data_root + ("_small" if args.small else "")), Path(args.runs + ("_small" if args.small else ""))
    clean = ensure_data(root / "shapes", n)
    test = read(clean, "test", args.eval_limit)
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                                          "torch": torch.__version__, "load_start": round(os.getloadavg()[0], 2)},
                              "steps": steps, "n": n, "n_test": len(test), "train": {}, "families": {}}
    rows = {**(FAMILIES if "families" in groups else {"clip": FAMILIES["clip"]}),
            **(MULTITASK if "multitask" in groups else {})}
    for name, (recipe, sets) in rows.items():
        result["train"][name] = train(recipe, sets, clean, runs / name, steps, args.reuse)
    clip_run = runs / "clip"

    def caption_of(s: Any) -> str | None:
        caps = [c.text for c in s.targets.captions if c.media == "image" and c.lang == "en"]
        return caps[0] if caps else None

    result["families"]["clip"] = {"params": sum(p.numel() for p in load_model(clip_run)[0].parameters()),
                                  "retrieval": {"contrastive_r1": clip_recall(clip_run, test, caption_of)}}
    for name in rows:
        if name != "clip":
            result["families"][name] = score_family(runs / name, test, clip_run)
    if "noise" in groups:
        result["noise"] = noise_rows(args, root, runs, clean, test, steps, n, caption_of, result)
    if "videobert" in groups:
        result["videobert"] = videobert_row(args, root, runs, steps, n)
    result["machine"]["load_end"] = round(os.getloadavg()[0], 2)
    result["targets"] = check_targets(result)
    print(json.dumps(result, default=str))
    text = "\n".join(markdown(result)) + "\n"
    print(text, file=sys.stderr)
    if not args.small and not args.no_docs:
        Path("docs/results/architectures.md").write_text(text, encoding="utf-8")
    return 0


def noise_rows(args: Any, root: Path, runs: Path, clean: Path, test: list[Any], steps: int, n: int, caption_of: Any,
               result: dict[str, Any]) -> dict[str, Any]:
    """CLIP on 30% noisy captions, then on the CapFilt'ed data (captioner + VisualBERT ITM filter, both trained on
    the noisy data)."""
    from polymodal.jobs.capfilt import capfilt

    noisy = ensure_data(root / "shapes_noise30", n, noise=0.3)
    out: dict[str, Any] = {"train": {}}
    b32 = ["train.batch_size=32"]
    for name, recipe, sets in (("clip_noise30", "clip_tiny", b32), ("captioner_noise30", "caption_tiny", b32),
                               ("filter_noise30", "vl_visualbert_tiny", ['model.tasks={"pretrain": 1.0}'])):
        out["train"][name] = train(recipe, sets, noisy, runs / name, steps, args.reuse)
    out["r1"] = {"clean": result["families"]["clip"]["retrieval"]["contrastive_r1"],
                 "noise30": clip_recall(runs / "clip_noise30", test, caption_of)}
    # CapFilt twice: bootstrapped (captioner and filter trained on the noisy data itself) and BLIP's protocol
    # (both trained on clean data: the captioner of bench/generation.py, the pretraining-only VisualBERT here)
    variants = {"capfilt": (runs / "captioner_noise30", runs / "filter_noise30"),
                "capfilt_clean": (Path(args.clean_captioner), runs / "visualbert_pretrain_only")}
    out["capfilt"] = {}
    for key, (captioner, filt) in variants.items():
        if not (captioner / "config.json").is_file() or not (filt / "config.json").is_file():
            continue
        filtered = root / f"shapes_noise30_{key}"
        if not (filtered / "manifest.json").is_file():
            capfilt(noisy, filtered, captioner=captioner, filter=filt, progress=False)
        record = json.loads((filtered / "manifest.json").read_text()).get("capfilt") or {}
        out["capfilt"][key] = {"captioner": str(captioner), "filter": str(filt), **(record.get("counts") or record)}
        out["train"][f"clip_{key}"] = train("clip_tiny", b32, filtered, runs / f"clip_{key}", steps, args.reuse)
        out["r1"][key] = clip_recall(runs / f"clip_{key}", test, caption_of)
    for name, data in (("align", clean), ("align_noise30", noisy)):  # ALIGN: the dual encoder made for noisy text
        out["train"][name] = train("align_tiny", b32, data, runs / name, steps, args.reuse)
        out["r1"][name] = clip_recall(runs / name, test, caption_of)
    a, b = out["r1"]["clean"]["all"], out["r1"]["noise30"]["all"]
    out["recovered"] = {k: (out["r1"][k]["all"] - b) / (a - b) for k in variants
                        if k in out["r1"] and a is not None and b is not None and a > b}
    return out


def videobert_row(args: Any, root: Path, runs: Path, steps: int, n: int) -> dict[str, Any]:
    from polymodal.eval.videobert import evaluate_videobert

    data = ensure_data(root / "shapes_video", n, modalities="text,video")
    row = {"train": train("videobert_tiny", [], data, runs / "videobert", steps, args.reuse)}
    model, _, _ = load_model(runs / "videobert")
    t0 = time.perf_counter()
    report = evaluate_videobert(model, read(data, "test", args.eval_limit))  # type: ignore[arg-type]
    report.pop("predictions", None)
    row["eval"] = report
    row["eval_s"] = round(time.perf_counter() - t0, 1)
    return row


def _get(d: Any, *path: str) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def check_targets(r: dict[str, Any]) -> dict[str, Any]:
    fams = r.get("families", {})
    gains = [(_get(f, "retrieval", "itm_r1", "heldout") or 0) - (_get(f, "retrieval", "contrastive_r1", "heldout") or 0)
             for f in fams.values() if _get(f, "retrieval", "itm_r1") is not None]
    pointing = [_get(f, "pointing", m) for f in fams.values() for m in ("attention", "gradcam")
                if _get(f, "pointing", m) is not None]
    measured = {"ITM re-ranking gain on held-out R@1 (best family)": max(gains) if gains else None,
                "CapFilt recovery of the R@1 lost to noise": max((_get(r, "noise", "recovered") or {}).values(),
                                                                 default=None),
                "VideoBERT zero-shot motion accuracy": _get(r, "videobert", "eval", "motion_zero_shot", "accuracy"),
                "pointing game (best family, attention or Grad-CAM)": max(pointing) if pointing else None}
    return {k: {"target": TARGETS[k], "measured": v,
                "met": None if v is None else (v > TARGETS[k] if k.startswith("ITM") else v >= TARGETS[k])}
            for k, v in measured.items()}


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    lines = ["# Vision-language architectures side by side (generated by bench/architectures.py)", "",
             f"Data: `shapes` ({r['n']} samples, image + caption, boxes from the scene graph); scored on the first "
             f"{r['n_test']} test pictures. Every run: {r['steps']} steps of 32 samples, 1 torch thread (up to five "
             f"runs shared the 2 cores while training, so the train minutes are upper bounds). Machine: "
             f"{m['cpus']} CPUs ({m['processor']}), torch {m['torch']}; load average {m['load_start']} / "
             f"{m['load_end']} at the start / end of the scoring.", "",
             "Contrastive R@1 ranks by the family's own vectors (BLIP) or CLIP's (the other families have none); ITM "
             "R@1 re-ranks that ranking's top 16 by the family's matching head. Pointing game: two-object test "
             "scenes, the shape word's most relevant visual token must lie inside the named object's box, by the "
             "last cross-modal layer's attention (att.) and by the middle layer's Grad-CAM (cam); chance = a random "
             "candidate token.", "",
             "| family | params | train min | R@1 contr. seen | R@1 contr. held-out | R@1 ITM seen | R@1 ITM held-out "
             "| ITM acc | VQA seen | VQA held-out | VQA relation | pointing att. | pointing cam | chance |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, f in r.get("families", {}).items():
        t = r["train"].get(name, {})
        ret = f.get("retrieval", {})
        lines.append("| " + " | ".join([
            name, _f(f.get("params")), f"{t['train_s'] / 60:.1f}" if t.get("train_s") else "-",
            _f(_get(ret, "contrastive_r1", "seen")), _f(_get(ret, "contrastive_r1", "heldout")),
            _f(_get(ret, "itm_r1", "seen")), _f(_get(ret, "itm_r1", "heldout")), _f(_get(f, "itm", "accuracy")),
            _f(_get(f, "vqa", "seen")), _f(_get(f, "vqa", "heldout")), _f(_get(f, "vqa", "per_type", "relation")),
            _f(_get(f, "pointing", "attention")), _f(_get(f, "pointing", "gradcam")),
            _f(_get(f, "pointing", "chance"))]) + " |")
    if "visualbert_vqa_only" in r.get("families", {}):
        lines += ["", "## Multi-task vs single-task (VisualBERT, regions, same steps)", "",
                  "| run | tasks | ITM acc | R@1 ITM held-out | VQA seen | VQA held-out |", "|---|---|---|---|---|---|"]
        for name, tasks in (("visualbert_regions", "pretrain + vqa"), ("visualbert_pretrain_only", "pretrain"),
                            ("visualbert_vqa_only", "vqa")):
            f = r["families"].get(name, {})
            lines.append(f"| {name} | {tasks} | {_f(_get(f, 'itm', 'accuracy'))} | "
                         f"{_f(_get(f, 'retrieval', 'itm_r1', 'heldout'))} | {_f(_get(f, 'vqa', 'seen'))} | "
                         f"{_f(_get(f, 'vqa', 'heldout'))} |")
    if "noise" in r:
        nz = r["noise"]
        lines += ["", "## Noisy captions, ALIGN and CapFilt (text->image R@1 on the clean test split)", "",
                  "CapFilt rewrites/filters the noisy training texts (threshold 0.5) and CLIP is retrained on the "
                  "result, twice: bootstrapped (a captioner, `caption_tiny`, and a matching filter, "
                  "`vl_visualbert_tiny` pretraining only, both trained on the noisy data, 1000 steps of 32) and "
                  "BLIP's protocol (both trained on clean data: bench/generation.py's `caption_tiny`, 2000 steps of "
                  "64, and the clean pretraining-only VisualBERT above).", "",
                  "| model, training data | R@1 all | R@1 seen | R@1 held-out |", "|---|---|---|---|"]
        for k, label in (("clean", "CLIP, clean"), ("noise30", "CLIP, 30% noisy alt-text"),
                         ("capfilt", "CLIP, noisy after CapFilt (captioner + filter trained on the noisy data)"),
                         ("capfilt_clean", "CLIP, noisy after CapFilt (captioner + filter trained on clean data)"),
                         ("align", "ALIGN, clean"), ("align_noise30", "ALIGN, 30% noisy alt-text")):
            row = nz["r1"].get(k)
            if row:
                rec = (nz.get("recovered") or {}).get(k)
                extra = f" (recovers {_f(rec)} of the loss)" if rec is not None else ""
                lines.append(f"| {label}{extra} | {_f(row['all'])} | {_f(row['seen'])} | {_f(row['heldout'])} |")
        lines += ["", "| CapFilt | kept original | synthetic | dropped | noisy texts removed | precision | clean "
                  "removed |", "|---|---|---|---|---|---|---|"]
        for k, c in (nz.get("capfilt") or {}).items():
            noise = c.get("noise") or {}
            lines.append(f"| {k} | {c.get('original')} | {c.get('synthetic')} | {c.get('dropped')} | "
                         f"{noise.get('noisy_removed')} of {noise.get('noisy')} ({_f(noise.get('recall'))}) | "
                         f"{_f(noise.get('precision'))} | {noise.get('clean_removed')} |")
    if "videobert" in r:
        vb = r["videobert"]
        ev = vb.get("eval", {})
        lines += ["", "## VideoBERT (visual words + BERT, masked modelling; `videobert_tiny` on clips of `shapes`)", "",
                  f"Trained {vb['train'].get('steps')} steps in {vb['train'].get('train_s', 0) / 60:.1f} "
                  f"min; {ev.get('n')} test clips. Zero-shot: the direction word read from the [MASK] of \"The "
                  "[MASK] [MASK] [MASK] moves [MASK].\" given the clip's visual words (no classifier, no training "
                  "on this prompt).", "", "| prediction | all | seen | held-out |", "|---|---|---|---|"]
        for key, label in (("motion_zero_shot", "motion, object masked"), ("motion_zero_shot_named", "motion, object "
                           "named"), ("majority_baseline", "majority direction")):
            row = ev.get(key, {})
            lines.append(f"| {label} | {_f(row.get('accuracy'))} | {_f(row.get('seen'))} | {_f(row.get('heldout'))} |")
        for a, row in (ev.get("video_to_text") or {}).items():
            if isinstance(row, dict):
                lines.append(f"| video -> text: {a} word (majority {_f(_get(row, 'majority', 'accuracy'))}) | "
                             f"{_f(row.get('accuracy'))} | {_f(row.get('seen'))} | {_f(row.get('heldout'))} |")
    lines += ["", "## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for k, t in r.get("targets", {}).items():
        lines.append(f"| {k} | {t['target']} | {_f(t['measured'])} | {t['met']} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
