"""`polymodal eval RUN --data DIR [--split test] --task retrieval|zeroshot|classification [--json] [--no-progress]`.

The run's arch is checked before anything is read (a fusion run needs --task classification, an alignment run
retrieval or zeroshot); then the samples are read and encoded with progress bars on stderr, and the result is
printed as tables (or one JSON object)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import InvalidInput


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="polymodal eval",
        description="Evaluate a trained run (or a pretrained checkpoint) on a data set split. retrieval: R@1/5/10, median/mean rank in every "
                    "direction between the modalities the model and data share (CLIP_benchmark definitions), "
                    "attribute-match R@k and the caption duplicate rate; zeroshot: prompt-ensemble "
                    "classification (acc1, acc5, mean per-class recall); both need an alignment run. "
                    "classification: a fusion run's accuracy and macro-F1, with --robustness the "
                    "missing-modality and noise sweeps. Tables on stdout (--json: one JSON object), progress "
                    "on stderr.")
    p.add_argument("run", metavar="MODEL", help="run directory written by `polymodal train`, or (retrieval, "
                   "zeroshot) a pretrained checkpoint: a Hugging Face CLIP/SigLIP/CLAP/Chinese-CLIP/ALIGN folder, "
                   "open_clip:ARCH:CHECKPOINT, a sentence-transformers folder (see docs/pretrained.md)")
    p.add_argument("--data", required=True, help="data set (generated dir, shard dir, .jsonl or folder)")
    p.add_argument("--split", default="test", help="split of a generated data set (default: test)")
    p.add_argument("--task", choices=("retrieval", "zeroshot", "classification"), default="retrieval")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many samples")
    p.add_argument("--all-captions", action="store_true",
                   help="retrieval: every metadata caption (e.g. English and Chinese) is an extra caption")
    p.add_argument("--modalities", default=None, help="comma list restricting the modalities evaluated")
    p.add_argument("--label-field", default="label",
                   help="zeroshot: metadata field holding the label, dotted (e.g. labels.color)")
    p.add_argument("--classes", default=None, help="zeroshot: comma list of class names (default: from the "
                   "data set manifest)")
    p.add_argument("--lang", default="en", choices=("en", "zh"), help="zeroshot: prompt language")
    p.add_argument("--robustness", action="store_true", help="classification: missing-modality and noise sweeps")
    p.add_argument("--late-fusion", default=None, help="classification: a late-fusion run for effective robustness")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="retrieval/zeroshot: run the towers with torch or onnxruntime (extra [onnx]; an ONNX export "
                        "written by `polymodal export` needs onnx)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the status lines still go to stderr)")
    return p


def _classes(ds: Any, field: str, lang: str, given: str | None) -> tuple[list[str], list[str]]:
    """(prompt class names, label names) from --classes or the manifest's labels."""
    if given:
        names = [c.strip() for c in given.split(",") if c.strip()]
        return names, names
    labels = (getattr(ds, "manifest", None) or {}).get("labels", {})
    key = "classes" if field == "label" else field.split(".")[-1] + "s"
    if key not in labels:
        raise InvalidInput(f"cannot find class names '{key}' in the manifest labels; pass --classes",
                           field="classes")
    names = list(labels[key])
    zh = labels.get(f"{key}_zh") or (labels.get("zh") or {}).get(key)  # digits: a list; shapes: a name map
    if isinstance(zh, dict):
        zh = [zh.get(n, n) for n in names]
    return (list(zh) if lang == "zh" and zh else names), names


def _say(text: str) -> None:
    print(f"polymodal eval: {text}", file=sys.stderr, flush=True)


def check_task(run: str, task: str) -> str:
    """The run's arch, after checking that ``task`` can evaluate it; the error names the task that can. Anything
    that is not a polymodal run is taken for a pretrained embedding model (`polymodal.load` checks it)."""
    from pathlib import Path

    from ..models import is_polymodal_run, resolve_run
    from ..rundir import read_run_config

    if not is_polymodal_run(Path(run).expanduser()):
        if task == "classification":
            raise InvalidInput(f"{run} is not a polymodal run: --task classification needs a fusion run; a "
                               "pretrained checkpoint is evaluated with --task retrieval or --task zeroshot",
                               field="--task")
        return "alignment"
    arch = str(read_run_config(resolve_run(run))["arch"])
    if arch == "fusion" and task != "classification":
        raise InvalidInput(f"{run} is a fusion classifier: evaluate it with --task classification (add "
                           f"--robustness for the missing-modality and noise sweeps); --task {task} needs an "
                           "alignment run", field="--task")
    if arch == "alignment" and task == "classification":
        raise InvalidInput(f"{run} is an alignment (embedding) run: evaluate it with --task retrieval or --task "
                           "zeroshot; --task classification needs a fusion run", field="--task")
    return arch


def _read(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    from tqdm import tqdm

    from ..data.formats import open_dataset

    ds = open_dataset(args.data, split=args.split)
    total = len(ds) if args.limit is None else min(len(ds), args.limit)
    _say(f"reading {total} samples of {args.data} [{args.split}]")
    samples = []
    with tqdm(total=total, desc="reading", unit="sample", disable=args.no_progress) as bar:
        for s in ds:
            samples.append(s)
            bar.update(1)
            if args.limit is not None and len(samples) >= args.limit:
                break
    if not samples:
        raise InvalidInput("no samples to evaluate", source=args.data)
    return ds, samples


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_task(args.run, args.task)
    if args.late_fusion:
        check_task(args.late_fusion, "classification")
    ds, samples = _read(args)
    mods = args.modalities.split(",") if args.modalities else None
    progress = not args.no_progress
    result: dict[str, Any] = {"run": args.run, "data": args.data, "split": args.split, "task": args.task}
    if args.task == "classification":
        from ..eval.classification import evaluate_classification

        late = None
        what = "clean, each modality missing" + (", noise sweeps" if args.robustness else "")
        if args.late_fusion:
            _say(f"classifying with the late-fusion reference {args.late_fusion} (noise sweeps)")
            late = evaluate_classification(args.late_fusion, samples, robustness=True, progress=progress)
        _say(f"classifying {len(samples)} samples with {args.run} ({what})")
        result.update(evaluate_classification(args.run, samples, robustness=args.robustness,
                                              late_fusion_report=late, progress=progress))
    else:
        from ..api import load_embedding as load
        from ..eval.tasks import evaluate_retrieval, evaluate_zeroshot

        _say(f"loading the model {args.run}")
        model = load(args.run, runtime=args.runtime)
        _say(f"encoding {len(samples)} samples ({args.task})")
        if args.task == "retrieval":
            result.update(evaluate_retrieval(model, samples, all_captions=args.all_captions, modalities=mods,
                                             progress=progress))
        else:
            prompt_names, label_names = _classes(ds, args.label_field, args.lang, args.classes)
            result.update(evaluate_zeroshot(model, samples, prompt_names, label_names=label_names,
                                            label_field=args.label_field, lang=args.lang, modalities=mods,
                                            progress=progress))
    print(json.dumps(result, ensure_ascii=False) if args.json else format_result(result))
    return 0


def format_result(r: dict[str, Any]) -> str:
    lines = [f"{r['task']} on {r['data']} [{r['split']}]"]
    if r["task"] == "classification":
        return "\n".join(lines + format_classification(r))
    if "caption_duplicate_rate" in r:
        lines.append(f"caption duplicate rate: {r['caption_duplicate_rate']:.3f}")
    for d, m in r.get("directions", {}).items():
        attr = m.get("attribute", {})
        extra = "  attr " + " ".join(f"{k}={v:.3f}" for k, v in attr.items()) if attr else ""
        lines.append(f"{d:<14} R@1={m['R@1']:.3f} R@5={m['R@5']:.3f} R@10={m['R@10']:.3f} "
                     f"medR={m['median_rank']:.0f} n={m['n_queries']}{extra}")
    for k, v in r.items():
        if isinstance(v, dict) and "acc1" in v:
            lines.append(f"{k:<8} acc1={v['acc1']:.3f} acc5={v['acc5']:.3f} "
                         f"mean_per_class_recall={v['mean_per_class_recall']:.3f} n={v['n']}"
                         + (f" nll={v['nll']:.3f} (logit scale {v['logit_scale']:.1f})" if "nll" in v else ""))
    return "\n".join(lines)


def _cell(v: Any, width: int = 6) -> str:
    return f"{v:>{width}.3f}" if isinstance(v, int | float) else f"{'-':>{width}}"


def format_classification(r: dict[str, Any]) -> list[str]:
    """A fusion run's report as tables: accuracy and macro-F1 per condition, then (``--robustness``) the
    accuracy at every noise level per sweep with its relative and effective robustness."""
    classes = f", {len(r['classes'])} classes" if r.get("classes") else ""
    lines = [f"{r['n']} samples{classes}, modalities {', '.join(r['modalities'])}", "",
             f"{'condition':<16}{'acc':>7}{'macro-F1':>10}"]
    rows = [("clean", r["clean"])] + [(f"{m} missing", v) for m, v in r.get("removed", {}).items()]
    lines += [f"{name:<16}{_cell(v.get('acc'), 7)}{_cell(v.get('macro_f1'), 10)}" for name, v in rows]
    noise = r.get("noise") or {}
    if noise:
        levels = r["levels"]
        eff = any("effective_robustness" in c for c in noise.values())
        lines += ["", "accuracy under noise (level 0 = clean, 1 = strongest)",
                  f"{'noise':<8}" + "".join(f"{v:>6g}" for v in levels) + f"{'rel.rob':>9}"
                  + (f"{'eff.rob':>9}" if eff else "")]
        for name, c in noise.items():
            lines.append(f"{name:<8}" + "".join(_cell(a) for a in c["acc"]) + _cell(c.get("relative_robustness"), 9)
                         + (_cell(c.get("effective_robustness"), 9) if eff else ""))
        lines.append("rel.rob: area under accuracy vs noise level, on the accuracy scale 0-1 (a curve that")
        lines.append("         never drops scores its clean accuracy)")
        if eff:
            lines.append("eff.rob: accuracy (0-1) kept beyond the late-fusion curve shifted to this model's clean")
            lines.append(f"         accuracy, summed over the {len(levels)} levels (0 = as robust as late fusion)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
