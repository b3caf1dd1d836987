"""How `polymodal eval` prints a result as text (the JSON is the result itself): one function per kind of task."""

from __future__ import annotations

from typing import Any

from . import eval_t2i as t2i
from .eval_mllm import MLLM_TASKS, format_mllm
from .eval_vl import format_vl

GENERATION: tuple[str, ...] = ("captioning", "vqa", "asr")


def format_result(r: dict[str, Any]) -> str:
    lines = [f"{r['task']} on {r['data']} [{r['split'] or 'all'}]"]
    if r["task"] == t2i.T2I_TASK:
        return "\n".join(lines + t2i.format_t2i(r))
    if r.get("arch") in ("vl_encoder", "videobert"):
        return "\n".join(lines + format_vl(r))
    if r["task"] in MLLM_TASKS:
        return "\n".join(lines + format_mllm(r))
    if r["task"] == "classification":
        return "\n".join(lines + format_classification(r))
    if r["task"] in GENERATION:
        return "\n".join(lines + format_generation(r))
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
    if "modality_attribution" in r:
        from ..eval.attribution import format_attribution

        lines += ["", *format_attribution(r["modality_attribution"])]
    return lines



def _gcell(v: Any, width: int) -> str:
    if isinstance(v, bool) or v is None:
        return f"{'-':>{width}}"
    return f"{v:>{width}d}" if isinstance(v, int) else f"{v:>{width}.3f}" if isinstance(v, float) else f"{v:>{width}}"


def _grid(corner: str, header: list[str], rows: list[tuple[str, list[Any]]]) -> list[str]:
    """A table: a name column, then one right-aligned column per header entry."""
    first = max([len(corner)] + [len(name) for name, _ in rows]) + 2
    widths = [max(9, len(h) + 2) for h in header]
    return [f"{corner:<{first}}" + "".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True))] + [
        f"{name:<{first}}" + "".join(_gcell(v, w) for v, w in zip(values, widths, strict=True)) for name, values in rows]


def format_generation(r: dict[str, Any]) -> list[str]:
    """Captioning / VQA / ASR reports: the model and its baselines side by side."""
    systems: list[str] = r.get("systems", ["model"])
    base = r.get("baselines", {})
    names = {"retrieval": f"retrieval = nearest training caption by {base.get('retrieval')}",
             "prior": f"prior = most frequent '{base.get('train_split')}' answer per type",
             "blind": f"blind = {base.get('blind')} (question only)"}
    lines = [f"{r['n_items']} items" + (f" ({r['media']})" if "media" in r else "")
             + "".join(f"; {names[s]}" for s in systems if s in names), ""]
    if r["task"] == "captioning":
        cols = [(lang, s) for lang in r["scores"] for s in systems]
        metrics = list(r["scores"][next(iter(r["scores"]))]["model"])
        lines += _grid("metric", [f"{lang}:{s}" for lang, s in cols],
                       [(m, [r["scores"][lang][s][m] for lang, s in cols]) for m in metrics]
                       + [("n", [r["scores"][lang]["n"] for lang, _ in cols])])
        if "attributes" in r:
            attr = r["attributes"]
            groups = [(s, g) for s in systems for g in ("overall", "seen", "heldout")]
            lines += ["", "attribute accuracy (captions parsed back into the scene graph; heldout: an unseen "
                      "color+shape pair)"]
            lines += _grid("attribute", [f"{s}:{g}" for s, g in groups],
                           [(k, [attr[s][g][k] for s, g in groups])
                            for k in ("color", "shape", "size", "position", "relation", "all", "n")])
    elif r["task"] == "vqa":
        acc = r["accuracy"]
        rows = [(t, row) for t, row in acc["per_type"].items()] + [("overall", acc["overall"])]
        rows += [(f"lang {lang}", row) for lang, row in acc["per_lang"].items()]
        rows += [(g, acc[g]) for g in ("seen", "heldout") if g in acc]
        lines += _grid("question type", ["n", *systems], [(name, [row["n"], *(row[s] for s in systems)])
                                                          for name, row in rows])
    else:
        scores = r["scores"]
        subsets = list(scores)
        langs = sorted({lang for sub in scores.values() for lang in sub})
        rows = []
        for lang in langs:
            metric = "cer" if any("cer" in scores[sub].get(lang, {}) for sub in subsets) else "wer"
            rows.append((f"{lang} {metric}", [scores[sub].get(lang, {}).get(metric) for sub in subsets]))
            rows.append((f"{lang} n", [scores[sub].get(lang, {}).get("n") for sub in subsets]))
        lines += _grid("model", subsets, rows)
        if "train_overlap" in r:
            o = r["train_overlap"]
            lines.append(f"{o['in_train']} of {o['n']} test transcripts ({o['rate']:.1%}) occur verbatim in the "
                         f"'{base.get('train_split')}' split; unseen: the others")
    speed = r["speed"] if "model" in r["speed"] else {"model": r["speed"]}
    lines.append("")
    lines += [f"speed ({s}): {v['items_per_s']:.1f} items/s, {v['tokens_per_s']:.1f} "
              f"{'tokens' if v['counted'] == 'tokenizer' else 'words'}/s "
              f"({v['items']} items in {v['seconds']:.1f} s)" for s, v in speed.items()]
    if "out" in r:
        lines.append(f"predictions: {r['out']}")
    return lines
