"""`polymodal eval RUN --data DIR [--split test] --task retrieval|zeroshot|classification [--json]`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import InvalidInput


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="polymodal eval",
        description="Evaluate a trained run on a data set split. retrieval: R@1/5/10, median/mean rank in every "
                    "direction between the modalities the model and data share (CLIP_benchmark definitions), "
                    "attribute-match R@k and the caption duplicate rate; zeroshot: prompt-ensemble "
                    "classification (acc1, acc5, mean per-class recall); classification: a fusion run's "
                    "accuracy and macro-F1, with --robustness the missing-modality and noise sweeps.")
    p.add_argument("run", help="run directory written by `polymodal train`")
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
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..data.formats import open_dataset

    ds = open_dataset(args.data, split=args.split)
    samples = []
    for s in ds:
        samples.append(s)
        if args.limit is not None and len(samples) >= args.limit:
            break
    if not samples:
        raise InvalidInput("no samples to evaluate", source=args.data)
    mods = args.modalities.split(",") if args.modalities else None
    result: dict[str, Any] = {"run": args.run, "data": args.data, "split": args.split, "task": args.task}
    if args.task == "classification":
        from ..eval.classification import evaluate_classification

        late = None
        if args.late_fusion:
            late = evaluate_classification(args.late_fusion, samples, robustness=True)
        result.update(evaluate_classification(args.run, samples, robustness=args.robustness,
                                              late_fusion_report=late))
    else:
        from ..api import load
        from ..eval.tasks import evaluate_retrieval, evaluate_zeroshot

        model = load(args.run)
        if args.task == "retrieval":
            result.update(evaluate_retrieval(model, samples, all_captions=args.all_captions, modalities=mods))
        else:
            prompt_names, label_names = _classes(ds, args.label_field, args.lang, args.classes)
            result.update(evaluate_zeroshot(model, samples, prompt_names, label_names=label_names,
                                            label_field=args.label_field, lang=args.lang, modalities=mods))
    print(json.dumps(result, ensure_ascii=False) if args.json else format_result(result))
    return 0


def format_result(r: dict[str, Any]) -> str:
    lines = [f"{r['task']} on {r['data']} [{r['split']}]"]
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
                         f"mean_per_class_recall={v['mean_per_class_recall']:.3f} n={v['n']}")
    if r["task"] == "classification":
        lines.append(json.dumps({k: v for k, v in r.items() if k not in ("run", "data", "split", "task")},
                                ensure_ascii=False, indent=1))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
