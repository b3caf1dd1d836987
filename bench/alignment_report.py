"""Reporting half of `bench/alignment_quality.py`: the targets of issue #3, the Markdown table written to
docs/results/alignment.md, and merging the JSON results of several bench runs (``--merge``). Pure functions
of the result dict: no model, no data."""

from __future__ import annotations

from typing import Any

TARGETS = {"audioclip_tiny text->image R@1": 0.80,
           "audioclip_tiny text->image scene-match R@1 (see note)": 0.80,
           "audioclip_tiny speech->image R@5": 0.70,
           "lit_minilm synonym captions text->image R@5": 0.60,
           "lit_minilm synonym object queries text->image R@5": 0.60}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1.5 else f"{v:.1f}"
    return "-" if v is None else str(v)


def budget(train: dict[str, Any]) -> str:
    """A run's budget as the table shows it: ``872 steps``, or ``15 min`` (a wall-clock budget; also
    results written before the budgets were step counts, which have only ``minutes_budget``)."""
    if train.get("steps_budget") is not None:
        return f"{train['steps_budget']} steps"
    return f"{train['minutes_budget']:g} min" if train.get("minutes_budget") is not None else "-"


def _md_shapes(result: dict[str, Any]) -> list[str]:
    m, sc = result["machine"], result.get("scenes", {})
    lines = [f"Machine: {m['cpus']} CPUs ({m['processor']}), torch {m['torch']}, {m['threads']} torch thread(s) "
             f"per run; load average {m['load_start']} at the start, {m['load_end']} at the end (other jobs may "
             "share the cores: `train s` is the training loop's wall time, `CPU s` the CPU time of the whole "
             "training process, data loading included). `budget`: each run's fixed step count (`--steps`), "
             "or a wall-clock budget in minutes (`--minutes`: then the steps it bought depend on the machine "
             "and its load)."
             + (f" Merged from {m['merged_from']} bench runs (`--merge`)." if m.get("merged_from") else "")
             + (f" {m['note']}" if m.get("note") else ""), "",
             f"`shapes` split `{result['split']}`: {result['n_test']} items, {result['n_heldout']} of them with a "
             "held-out color+shape pair (never in training). R@k: identity retrieval (the query's own item). "
             f"But {_fmt(sc.get('scene_duplicate_rate'))} of the items show the same scene as another item (same "
             "objects, sizes, colors and positions; only the jitter differs), which no caption or utterance can "
             f"separate, so identity R@1 can reach at most about {_fmt(sc.get('R@1 ceiling all'))} "
             f"({_fmt(sc.get('R@1 ceiling heldout'))} on held-out, {_fmt(sc.get('R@1 ceiling seen'))} on seen "
             "items). `scene R@1`: a hit is any image of the query's scene. `attribute R@5`: any image whose "
             "first object has the query's color+shape. `held-out` / `seen`: text->image over the queries with "
             "/ without a held-out pair, against the whole gallery. `dup`: caption duplicate rate.", "",
             "| recipe | data | budget | train s | steps | CPU s | peak RSS MB | text->image R@1 | scene R@1 "
             "| R@5 | attribute R@5 | speech->image R@1 | speech R@5 | held-out R@1 | held-out scene R@1 "
             "| seen R@1 | dup |", "|" + "---|" * 17]
    for name, r in result["shapes"].items():
        t, e = r["train"], r["eval"]
        ti, ai = e["directions"].get("text->image", {}), e["directions"].get("audio->image", {})
        lines.append("| " + " | ".join(_fmt(x) for x in (
            name, t["data"], budget(t), t["train_s"], t["steps"], t["process_cpu_s"], t["peak_rss_mb"],
            ti.get("R@1"), e.get("text->image scene R@1"), ti.get("R@5"), (ti.get("attribute") or {}).get("R@5"),
            ai.get("R@1"), ai.get("R@5"), e.get("text->image heldout R@1"), e.get("text->image heldout scene R@1"),
            e.get("text->image seen R@1"), e["caption_duplicate_rate"])) + " |")
    return lines


def _md_synonyms(result: dict[str, Any]) -> list[str]:
    if not result.get("synonyms"):
        return []
    lines = ["", "Synonym queries: `captions` = every caption rewritten with size, color and shape words the "
             "caption templates never use (`SYNONYMS` in the script, checked against the templates' "
             "vocabulary); `objects` = short queries \"a crimson ring\" for every color+shape pair (a hit: any "
             "item showing that pair). `template ...`: the same queries in the templates' own words. "
             "`captions, text->text`: the model's text tower alone retrieving each item's template caption "
             "from its synonym caption (for lit_minilm: the frozen MiniLM, the ceiling its image tower is "
             "trained towards); `objects, text->text`: the same for the short queries, \"a crimson ring\" "
             "against the 48 template phrases \"a red circle\", ... (a hit: the same color and shape).", "",
             "| model | queries (n) | R@1 | R@5 | scene R@5 | attribute R@5 |", "|---|---|---|---|---|---|"]
    for name, r in result["synonyms"].items():
        for q in ("template captions", "captions", "captions, text->text", "template objects", "objects",
                  "objects, text->text"):
            lines.append(f"| {name} | {q} ({r[q]['n']}) | {r[q]['R@1']:.3f} | {r[q]['R@5']:.3f} | "
                         f"{_fmt(r[q]['scene R@5'])} | {_fmt(r[q]['attribute R@5'])} |")
    ex = next(iter(result["synonyms"].values()))["example"]
    return lines + ["", "Examples: " + " · ".join(f"\"{q}\"" for q in ex)]


def _md_digits(result: dict[str, Any]) -> list[str]:
    if not result.get("digits"):
        return []
    z = result["digits"]
    lines = ["", f"Zero-shot digits: `audioclip_tiny` trained on `digits` (text = the digit's name in English or "
             f"Chinese, its image, the name spoken in that language) for {z['train']['train_s']} s, "
             f"{z['train']['steps']} steps (budget {budget(z['train'])}); {z['eval']['n']} test items; written and spoken digits classified by "
             "prompt ensembles (\"a photo of the digit seven\", ... / \"数字七\", ...).", "",
             "| prompts | image acc1 | speech acc1 | spoken en | spoken zh |", "|---|---|---|---|---|"]
    for lang in ("en", "zh"):
        r = z["eval"][lang]
        lines.append(f"| {lang} | {r['image acc1']:.3f} | {r['speech acc1']:.3f} | "
                     f"{r['speech (en) acc1']:.3f} | {r['speech (zh) acc1']:.3f} |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Alignment quality (generated by `bench/alignment_quality.py`)", ""]
    lines += _md_shapes(result) + _md_synonyms(result) + _md_digits(result)
    lines += ["", "What limits each number (the scene ceiling, SigLIP's collapse on these tiny towers, ImageBind's "
              "step budget, MiniLM's synonym ceiling): [docs/alignment.md](../alignment.md#measured-quality)."]
    sc = result.get("scenes", {})
    lines += ["", "Targets (issue #3). The identity R@1 target is read against its ceiling: with "
              f"{_fmt(sc.get('scene_duplicate_rate'))} of the test items sharing their scene with another item, no "
              f"model can exceed about {_fmt(sc.get('R@1 ceiling all'))}; the scene-match row counts any image "
              "of the described scene as the right answer (the one-right-answer reading of the target).", "",
              "| target | measured | met |", "|---|---|---|"]
    for k, (goal, got) in result["targets"].items():
        lines.append(f"| {k} >= {goal} | {_fmt(got)} | {'yes' if got is not None and got >= goal else 'no'} |")
    return "\n".join(lines) + "\n"


def targets(result: dict[str, Any]) -> dict[str, tuple[float, float | None]]:
    s, syn = result["shapes"], result.get("synonyms", {}).get("lit_minilm", {})
    ac = s.get("audioclip_tiny", {}).get("eval", {}).get("directions", {})
    scene = s.get("audioclip_tiny", {}).get("eval", {}).get("text->image scene R@1")
    got = [ac.get("text->image", {}).get("R@1"), scene, ac.get("audio->image", {}).get("R@5"),
           syn.get("captions", {}).get("R@5"), syn.get("objects", {}).get("R@5")]
    return {k: (goal, g) for (k, goal), g in zip(TARGETS.items(), got, strict=True)}


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several (same split and test set): runs, synonyms and digits united; the machine
    load is the widest range seen."""
    if len({p["split"] for p in parts}) != 1 or len({(p["n_test"], p["n_heldout"]) for p in parts
                                                     if p["n_test"]}) > 1:
        raise SystemExit("--merge: the results were not measured on the same split / test set")
    base = next((p for p in parts if p["n_test"]), parts[0])  # a digits-only part has no shapes test set
    out: dict[str, Any] = {**base, "shapes": {}, "synonyms": {}}
    for p in parts:
        out["shapes"].update(p["shapes"])
        out["synonyms"].update(p.get("synonyms", {}))
        if p.get("digits"):
            out["digits"] = p["digits"]
        if p.get("scenes"):
            out["scenes"] = p["scenes"]
    m = out["machine"] = dict(base["machine"])
    m["load_start"] = [max(p["machine"]["load_start"][i] for p in parts) for i in range(3)]
    m["load_end"] = [max(p["machine"]["load_end"][i] for p in parts) for i in range(3)]
    m["merged_from"] = len(parts)
    return out
