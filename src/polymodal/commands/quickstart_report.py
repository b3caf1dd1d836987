"""The quickstart's report content (`report_results`) and how a training budget reads (`budget_text`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._steps import Steps


def budget_text(budget: dict[str, Any]) -> str:
    return f"{budget['steps']} steps" if "steps" in budget else f"{budget['minutes']:g} min of wall clock"


def report_results(args: argparse.Namespace, state: dict[str, Any], steps: Steps, serve: str, recipe: str
                   ) -> dict[str, Any]:
    """What report.html shows: the plan, the steps, training (unless a model was given), retrieval, queries and
    robustness."""
    if args.model:
        meta = {"data": f"shapes {args.n_shapes} (captions {'+'.join(args.langs)}, spoken)"
                        + ("" if args.no_fusion else f", digits {args.n_digits}"),
                "model": f"{args.model} (given with --model: not trained here)", "output": str(Path(args.out).resolve())}
        return {"title": "polymodal quickstart", "subtitle": "a given model evaluated, indexed and queried on the "
                "built-in data", "meta": meta,
                "steps": [{k: s.get(k) for k in ("name", "status", "seconds", "took")} for s in steps.log],
                "training": None, "retrieval": state["retrieval"], "queries": state["queries"],
                "robustness": state.get("robustness"), "serve_command": serve,
                "generation": state.get("generation"), "notes": _notes(state)}
    train = state["train"]
    summary = {"steps": train.get("step"), "samples seen": train.get("samples_seen"),
               "samples/s": train.get("samples_per_s"), "final loss": train.get("loss"),
               "validation loss": train.get("val_loss"), "stopped by": train.get("stopped_by"),
               "train seconds": train.get("elapsed_s")}
    budgets = ", ".join(f"{t['recipe']} {budget_text(t['budget'])} -> {t['steps']} steps in {t['train_s']:g} s"
                        for t in state["trained"].values())
    meta = {"data": f"shapes {args.n_shapes} (captions {'+'.join(args.langs)}, spoken)"
                    + ("" if args.no_fusion else f", digits {args.n_digits}"),
            "recipe": recipe, "training budget": budgets, "output": str(Path(args.out).resolve())}
    return {"title": "polymodal quickstart", "subtitle": "text + image + speech in one embedding space, "
            "trained from scratch on the built-in data", "meta": meta,
            "steps": [{k: s.get(k) for k in ("name", "status", "seconds", "took")} for s in steps.log],
            "training": {**state["curve"], "summary": summary}, "retrieval": state["retrieval"],
            "queries": state["queries"], "robustness": state.get("robustness"), "serve_command": serve,
            "generation": state.get("generation"), "notes": _notes(state)}


def _notes(state: dict[str, Any]) -> list[str]:
    out = [] if state.get("robustness") else ["Robustness panel: skipped (--no-fusion)."]
    if not state.get("generation"):
        out.append("Generation section: skipped (--no-generation).")
    return out


__all__ = ["budget_text", "report_results"]
