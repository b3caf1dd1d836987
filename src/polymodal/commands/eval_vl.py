"""`polymodal eval` for vision-language encoder runs (``arch: "vl_encoder"``, docs/architectures.md):

- ``--task matching``: ITM accuracy (own caption vs another picture's) and text -> image R@1, contrastive and
  re-ranked by the matching head (top ``--rerank-k``); the contrastive ranking is the run's own (BLIP family) or
  that of ``--candidates MODEL`` (an alignment run or pretrained embedding model), required for the others;
- ``--task grounding``: the pointing game over the family's text -> visual attention;
- ``--task vqa``: answer-classification accuracy, overall, seen/held-out and per question type.

A VideoBERT run (``arch: "videobert"``, docs/videobert.md) takes ``--task motion``: zero-shot motion prediction
(object masked, and named), the majority baseline and video -> text word accuracy."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import InvalidInput

VL_TASKS: tuple[str, ...] = ("matching", "grounding", "vqa")
VIDEOBERT_TASKS: tuple[str, ...] = ("motion",)


def check_vl_task(run: str, task: str, arch: str = "vl_encoder") -> None:
    if arch == "videobert":
        if task not in VIDEOBERT_TASKS:
            raise InvalidInput(f"{run} is a VideoBERT run: evaluate it with --task motion", field="--task")
        return
    if task not in VL_TASKS:
        raise InvalidInput(f"{run} is a vision-language encoder (vl_encoder) run: evaluate it with --task "
                           f"{', '.join(VL_TASKS)}", field="--task")


def evaluate_vl(args: argparse.Namespace, samples: list[Any]) -> dict[str, Any]:
    from ..eval import vl
    from ..models.loading import load_model
    from ..models.vl_encoder import VLEncoder

    model, transform, cfg = load_model(args.run, args.device)
    if cfg["arch"] == "videobert":
        from ..eval.videobert import evaluate_videobert

        report = evaluate_videobert(model, samples)  # type: ignore[arg-type]
        predictions = report.pop("predictions", [])
        if args.out:  # one JSON line per clip
            from .._io import atomic_write_bytes

            text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
            atomic_write_bytes(args.out, text.encode("utf-8"))
        return {"arch": "videobert", **report}
    assert isinstance(model, VLEncoder)
    out: dict[str, Any] = {"arch": "vl_encoder", "family": model.family, "visual": model.c.visual}
    if args.task == "matching":
        if not model.c.tasks.get("pretrain"):
            raise InvalidInput(f"{args.run} was trained without the pretraining task: it has no matching head",
                               field="--task")
        out["itm"] = vl.itm_accuracy_eval(model, transform, samples)
        candidates = None
        if args.candidates:
            from ..api import load_embedding

            items = vl.usable(model, samples)
            emb = load_embedding(args.candidates)
            candidates = (emb.embed(text=[model.captions_of(s.targets)[0] for s in items]),
                          emb.embed(image=[s.image for s in items if s.image is not None]))
            out["candidates"] = args.candidates
        elif not model.has_itc:
            raise InvalidInput(f"the {model.family} family has no contrastive vectors to rank with: give "
                               "--candidates MODEL (e.g. a clip_tiny run) whose top k the matching head re-ranks",
                               field="--candidates")
        out["retrieval"] = vl.retrieval_eval(model, transform, samples, candidates=candidates, k=args.rerank_k)
    elif args.task == "grounding":
        out["pointing"] = vl.pointing_eval(model, transform, samples)
    else:
        out["vqa"] = vl.vqa_eval(model, transform, samples)
    return out


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) else "-"


def format_vl(r: dict[str, Any]) -> list[str]:
    if r.get("arch") == "videobert":
        lines = [f"VideoBERT on {r['n']} clips: motion accuracy (zero-shot)"]
        for key, name in (("motion_zero_shot", "object masked"), ("motion_zero_shot_named", "object named"),
                          ("majority_baseline", "majority")):
            row = r[key]
            lines.append(f"  {name:<14} {_f(row['accuracy'])} (seen {_f(row['seen'])}, held-out {_f(row['heldout'])})")
        lines.append("video -> text words: " + ", ".join(
            f"{a} {_f(v['accuracy'])} (majority {_f(v['majority']['accuracy'])})"
            for a, v in r["video_to_text"].items() if isinstance(v, dict)))
        return lines
    lines = [f"{r['family']} ({r['visual']})"]
    if "itm" in r:
        lines.append(f"ITM accuracy {_f(r['itm']['accuracy'])} over {r['itm']['n']} pairs")
    if "retrieval" in r:
        ret = r["retrieval"]
        lines.append(f"text->image R@1 over {ret['gallery']} pictures ({ret['source']}; ITM re-ranks the top "
                     f"{ret['k']}, which hold the answer for {_f(ret['recall_at_k'])} of the queries)")
        lines.append(f"{'':<14}{'all':>7}{'seen':>7}{'held-out':>10}")
        for name in ("contrastive_r1", "itm_r1"):
            row = ret[name]
            lines.append(f"{name[:-3]:<14}{_f(row['all']):>7}{_f(row['seen']):>7}{_f(row['heldout']):>10}")
    if "pointing" in r:
        p = r["pointing"]
        lines.append(f"pointing game over {p['n']} named objects: attention {_f(p.get('attention'))}, Grad-CAM "
                     f"{_f(p.get('gradcam'))} (chance {_f(p['chance'])})")
    if "vqa" in r:
        q = r["vqa"]
        lines.append(f"VQA accuracy {_f(q['overall'])} (seen {_f(q['seen'])}, held-out {_f(q['heldout'])}) over "
                     f"{q['n']} questions")
        lines += [f"  {t:<10} {_f(v)}" for t, v in q["per_type"].items()]
    return lines


__all__ = ["VIDEOBERT_TASKS", "VL_TASKS", "check_vl_task", "evaluate_vl", "format_vl"]
