"""`polymodal quickstart`: the main job end to end on the built-in data (what `make demo` runs).

Generates `shapes` (text, image, speech) and `digits`, trains a tri-modal model (`audioclip_tiny`) for a fixed
number of steps (its recipe's 900 by default, so the result does not depend on the machine's speed or load;
``--minutes`` trades that for a wall-clock budget), evaluates retrieval in every direction on the test split, builds a
collection of the test images, runs example queries (text, spoken, speech + text hint), trains two fusion
classifiers on digits (their recipes' 200 steps each) for a robustness panel, and writes one self-contained
``report.html``, then trains a captioner, a VQA model and a speech recogniser for a short look (``--no-generation``
skips them). About 20-30 minutes on a 2-core CPU with the defaults; the training bar prints an estimate
for this machine after its first steps.

Re-running reuses finished steps (see `._steps`; the step budget is part of a training step's parameters, so a
new ``--steps`` retrains). ``--fresh`` redoes every step. An interrupted training resumes from its checkpoint."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from ..errors import InvalidInput
from ..rundir import CONFIG, MODEL
from ._steps import Steps
from ._steps import reset as _reset
from .quickstart_generation import DEFAULT_STEPS as DEFAULT_GEN_STEPS
from .quickstart_generation import RECIPES, generation_budgets, generation_pipeline
from .quickstart_queries import queries_json, query_specs, run_queries
from .quickstart_report import budget_text, report_results

RECIPE = "audioclip_tiny"
FUSIONS = ("late", "attention")  # late fusion first: it is the reference curve for effective robustness
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
ROBUST_MAX = 200  # test samples in the robustness sweeps (each noisy level re-computes log-mels)
DEFAULTS = {"n_shapes": 3000, "n_digits": 2000}
EPILOG = """\
steps (each reused on a re-run when its parameters are unchanged; --fresh redoes all):
  data shapes, data digits -> train (audioclip_tiny, --steps) -> evaluate -> collection -> fusion late,
  fusion attention (each --fusion-steps) -> robustness -> queries -> report.html

The budgets are step counts, so the result does not depend on the machine's speed or load; the training bar
estimates the time on this machine after its first steps. --minutes gives the main model a wall-clock budget
instead: how many steps that buys (and so the numbers) depends on the machine and on what else runs on it.

example:
  polymodal quickstart                      # ~20-30 min on a 2-core CPU, writes quickstart/report.html
  polymodal quickstart --steps 200 --n-shapes 1000 --no-fusion      # a faster, rougher look
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polymodal quickstart", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Generate data, train a text+image+speech model, evaluate it, build a "
                                            "collection, run example queries and write an HTML report.")
    p.add_argument("--out", default="quickstart", help="output folder (default: quickstart)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help=f"optimizer steps of the main model (default: the {RECIPE} "
                        "recipe's train.steps, 900): a fixed amount of training, so the result does not depend on the "
                        "machine's speed or load")
    budget.add_argument("--minutes", type=float, help="instead of --steps, train the main model for this many "
                        "wall-clock minutes (the schedule follows the clock); the step count, and so the result, "
                        "then depends on the machine and its load")
    p.add_argument("--model", metavar="MODEL", help="skip training: evaluate, index and report with this model "
                   "instead (anything polymodal.load accepts: a run, a Hugging Face CLIP/SigLIP/CLAP/Chinese-CLIP/ALIGN "
                   "folder, open_clip:ARCH:CHECKPOINT, a sentence-transformers folder); the collection holds the test "
                   "images, or the captions for a text-only model, and queries the model cannot embed are skipped")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="with --model: run its towers with torch or onnxruntime (an ONNX export needs onnx)")
    p.add_argument("--fusion-steps", type=int, help="optimizer steps of each fusion model (default: their recipes' "
                   "train.steps, 200)")
    p.add_argument("--fresh", action="store_true", help="redo every step instead of reusing finished ones")
    p.add_argument("--n-shapes", type=int, default=DEFAULTS["n_shapes"], help="shapes samples (default %(default)s)")
    p.add_argument("--n-digits", type=int, default=DEFAULTS["n_digits"], help="digits samples (default %(default)s)")
    p.add_argument("--no-fusion", action="store_true", help="skip the digits fusion models and the robustness panel")
    p.add_argument("--generation-steps", type=int, help="optimizer steps of each generative model (default: "
                   + ", ".join(f"{RECIPES[k]} {n}" for k, n in DEFAULT_GEN_STEPS.items())
                   + ": a short look, their recipes train longer)")
    p.add_argument("--no-generation", action="store_true",
                   help="skip the captioning, VQA and speech-recognition models and the report's generation section "
                        "(implied by --model, which trains nothing)")
    p.add_argument("--langs", default="en", help="caption languages: en, zh or en,zh (default en)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument("--workers", type=int, help="data generation processes (default: min(2, cores))")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, the core count); on a "
                   "machine busy with other work 1 is often faster")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (step lines still go to stderr)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    return p


def _check(args: argparse.Namespace) -> None:
    if args.minutes is not None and not args.minutes > 0:
        raise InvalidInput(f"must be > 0, got {args.minutes}", field="--minutes")
    for flag, steps in (("--steps", args.steps), ("--fusion-steps", args.fusion_steps),
                        ("--generation-steps", args.generation_steps)):
        if steps is not None and steps < 1:
            raise InvalidInput(f"must be >= 1, got {steps}", field=flag)
    for flag, n in (("--n-shapes", args.n_shapes), ("--n-digits", args.n_digits)):
        if n < 30:  # 10% test split: at least 3 items to retrieve among
            raise InvalidInput(f"must be >= 30, got {n}", field=flag)
    langs = [x for x in args.langs.split(",") if x]
    if not langs or any(x not in ("en", "zh") for x in langs):
        raise InvalidInput(f"expected en, zh or en,zh, got {args.langs!r}", field="--langs")
    args.langs = langs
    if args.model:  # a given model means no training at all: the generation models would be trained here
        args.no_generation = True
    if args.threads is not None and args.threads < 1:
        raise InvalidInput(f"must be >= 1, got {args.threads}", field="--threads")


def _n_train(data: Path) -> int:
    return int(json.loads((data / "manifest.json").read_text(encoding="utf-8"))["splits"]["train"]["count"])


# ------------------------------------------------------------------------------------------- data, training

def _data_step(steps: Steps, args: argparse.Namespace, name: str, n: int, path: Path) -> dict[str, Any]:
    mods = ["audio", "image", "text"]
    params = {"name": name, "n": n, "seed": args.seed, "langs": args.langs, "modalities": mods}

    def done() -> bool:
        try:
            man = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return bool(man.get("n") == n and man.get("seed") == args.seed and man.get("langs") == args.langs)

    def work() -> dict[str, Any]:
        from ..data.synth import make_dataset

        _reset(path)
        man = make_dataset(name, path, n=n, seed=args.seed, langs=args.langs, modalities=mods,
                           workers=args.workers, progress=not args.no_progress)
        return {"path": str(path), "splits": {s: v["count"] for s, v in man["splits"].items()}}

    return steps.run(f"data_{name}", f"data {name} ({n} samples, speech)", params, work, done)


def _budgets(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each training step's budget: ``{"steps": N}`` (the recipe's own unless given) or ``{"minutes": M}``."""
    from ..recipes import load_recipe

    def steps(recipe: str, given: int | None) -> dict[str, Any]:
        n = given if given is not None else load_recipe(recipe).train.steps
        if n is None:
            raise InvalidInput(f"the {recipe} recipe sets no train.steps: give a step count", field="--steps")
        return {"steps": n}

    out = {"train": {"minutes": args.minutes} if args.minutes is not None else steps(RECIPE, args.steps)}
    for f in () if args.no_fusion else FUSIONS:
        out[f"fusion_{f}"] = steps(f"fusion_{f}", args.fusion_steps)
    if not args.no_generation:
        out.update(generation_budgets(args.generation_steps))
    return out


def _plan(budgets: dict[str, dict[str, Any]], default: bool) -> str:
    """The line printed before anything runs: what each training gets, and what that means for the time
    (``default``: the default sizes, whose total time docs/quickstart.md gives)."""
    parts = [f"{RECIPE if k == 'train' else k} {budget_text(b)}" for k, b in budgets.items()]
    fixed = all("steps" in b for b in budgets.values())
    how = ("fixed step counts: the result does not depend on this machine's speed or load" if fixed
           else "a wall-clock budget: how many steps it buys depends on this machine and its load")
    return (f"quickstart plan: {', '.join(parts)} ({how}). "
            + ("About 20-30 minutes in all on a 2-core CPU (10-20 without the generation models); the" if default
               else "The")
            + " training bar estimates the time on this machine after its first steps.")


def _train_step(steps: Steps, args: argparse.Namespace, name: str, recipe: str, budget: dict[str, Any],
                data: Path, data_token: str, run: Path) -> dict[str, Any]:
    from ..recipes import load_recipe

    base = load_recipe(recipe)
    batch = min(base.train.batch_size, _n_train(data))  # tiny data sets: one batch must fit the train split
    # typed (key, value) overrides, never a float through text; lists (not tuples) so the step marker's JSON
    # reads back equal
    overrides: list[list[Any]] = [["train.epochs", None], ["train.steps", budget.get("steps")],
                                  ["train.minutes", budget.get("minutes")], ["train.batch_size", batch],
                                  ["train.seed", args.seed], ["train.log_every", 2]]
    params = {"recipe": recipe, "budget": budget, "overrides": overrides, "data": data_token}
    started = steps.dir / f"{name}.started.json"

    def work() -> dict[str, Any]:
        from ..rundir import latest_checkpoint
        from ..train import train
        from ..train.monitor import format_duration

        resume = (not steps.fresh and run.exists() and latest_checkpoint(run) is not None and started.is_file()
                  and json.loads(started.read_text(encoding="utf-8")) == params)
        if not resume:
            _reset(run)
            steps.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(started, json.dumps(params).encode("utf-8"))
        result = train(base.with_overrides((k, v) for k, v in overrides), data, run, resume=resume, progress=not args.no_progress)
        print(f"    {recipe}: {result.step} steps in {format_duration(result.elapsed_s)} "
              f"({result.elapsed_s / max(result.step, 1):.2f} s/step; stopped by {result.stopped_by})",
              file=sys.stderr, flush=True)
        return {**result.to_dict(), "resumed": resume, "budget": budget}

    def done() -> bool:
        return (run / MODEL).is_file() and (run / CONFIG).is_file()

    return steps.run(name, f"train {recipe} ({budget_text(budget)})", params, work, done)


def _trained(marker: dict[str, Any]) -> dict[str, Any]:
    """What a training step did: its budget, the steps actually trained, the training loop's wall time and
    the whole step's (model set-up and data loading included; on a reused step, the original run's)."""
    r = marker["result"]
    return {"recipe": marker["params"]["recipe"], "budget": marker["params"]["budget"], "steps": r["step"],
            "train_s": round(r["elapsed_s"], 1), "wall_s": marker["seconds"], "stopped_by": r["stopped_by"]}


def _loss_curve(run: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"steps": [], "loss": [], "val_steps": [], "val_loss": []}
    path = run / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        for key, steps_key in (("loss", "steps"), ("val_loss", "val_steps")):
            if isinstance(row.get(key), int | float) and isinstance(row.get("step"), int):
                out[steps_key].append(row["step"])
                out[key].append(row[key])
    return out


# ------------------------------------------------------------------------------------------- eval, index

def _test_samples(data: Path) -> list[Any]:
    from ..data import open_dataset

    return list(open_dataset(data, "test"))


def collection_modality(modalities: tuple[str, ...]) -> str:
    """What the quickstart's collection holds: the test images, or the captions for a model without images."""
    return "image" if "image" in modalities else "text"


def _collection_step(steps: Steps, model: Any, tests: list[Any], path: Path, token: str) -> dict[str, Any]:
    from ..index import Collection, MediaStore
    from ..index.records import item_metadata

    mod = collection_modality(model.modalities)

    def work() -> dict[str, Any]:
        _reset(path)
        vecs = model.embed(**{mod: [getattr(s, mod) for s in tests]})
        thumbs = MediaStore(path)
        with Collection.create(path, dim=vecs.shape[1]) as coll:
            coll.add(list(range(len(tests))), vecs, [item_metadata(s, mod, "test") for s in tests])
            for i, s in enumerate(tests):
                thumbs.put_media(i, image=s.image)
            info = coll.info()
        return {"path": str(path), "count": info["count"], "kind": info["kind"], "thumbnails": True,
                "modality": mod}

    def done() -> bool:
        try:
            coll = Collection.open(path, readonly=True)
        except Exception:  # anything unreadable means: build it again
            return False
        n = len(coll)
        coll.close()
        return n == len(tests)

    what = "images" if mod == "image" else "captions"
    return steps.run("collection", f"collection of {len(tests)} test {what}", {"train": token, "modality": mod},
                     work, done)


def _robustness_step(steps: Steps, runs: dict[str, Path], tokens: dict[str, str], digits: Path) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        from ..eval.classification import evaluate_classification

        samples = _test_samples(digits)[:ROBUST_MAX]
        models: dict[str, Any] = {}
        for name, run in runs.items():  # late first: the others' effective robustness is measured against it
            models[name] = evaluate_classification(run, samples, robustness=True, levels=LEVELS,
                                                   late_fusion_report=models.get("late"))
        return {"levels": list(LEVELS), "n": len(samples), "models": models}

    params = {"runs": tokens, "levels": list(LEVELS), "max_samples": ROBUST_MAX}
    return steps.run("robustness", f"robustness of {', '.join(runs)} ({len(LEVELS)} noise levels)", params, work)


# ------------------------------------------------------------------------------------------- main

def _pipeline(args: argparse.Namespace, steps: Steps, budgets: dict[str, dict[str, Any]], out: Path, run: Path,
              coll_path: Path) -> dict[str, Any]:
    """Every step but the report; returns what the report and the summary show."""
    shapes_dir, digits_dir = out / "data" / "shapes", out / "data" / "digits"
    state: dict[str, Any] = {}
    shapes = _data_step(steps, args, "shapes", args.n_shapes, shapes_dir)
    digits = None if args.no_fusion else _data_step(steps, args, "digits", args.n_digits, digits_dir)
    from ..api import load_embedding as load
    from ..eval.tasks import evaluate_retrieval

    if args.model:
        model = load(args.model, runtime=args.runtime)
        model_token = f"model:{model.fingerprint}"
        state["train"], state["trained"] = {}, {}
    else:
        trained = _train_step(steps, args, "train", RECIPE, budgets["train"], shapes_dir, shapes["token"], run)
        state["train"], state["trained"] = trained["result"], {"train": _trained(trained)}
        model, model_token = load(run), trained["token"]
    tests = _test_samples(shapes_dir)
    state["retrieval"] = steps.run("evaluate", "evaluate retrieval (test split, every direction)",
                                   {"train": model_token}, lambda: evaluate_retrieval(model, tests))["result"]
    coll = _collection_step(steps, model, tests, coll_path, model_token)
    if digits is not None:
        runs = {f: out / "runs" / f"fusion_{f}" for f in FUSIONS}
        tokens = {}
        for f in FUSIONS:
            marker = _train_step(steps, args, f"fusion_{f}", f"fusion_{f}", budgets[f"fusion_{f}"], digits_dir,
                                 digits["token"], runs[f])
            tokens[f], state["trained"][f"fusion_{f}"] = marker["token"], _trained(marker)
        state["robustness"] = _robustness_step(steps, runs, tokens, digits_dir)["result"]
    n_queries = len(query_specs(tests, args.langs, model.modalities))
    state["queries"] = steps.run("queries", f"{n_queries} example queries",
                                 {"collection": coll["token"]},
                                 lambda: {"queries": run_queries(model, coll_path, tests, args.langs)},
                                 cache=False)["result"]["queries"]
    state["curve"] = _loss_curve(run) if not args.model else None
    if not args.no_generation:
        def train_gen(name: str, recipe: str, gen_run: Path) -> dict[str, Any]:
            marker = _train_step(steps, args, name, recipe, budgets[name], shapes_dir, shapes["token"], gen_run)
            state["trained"][name] = _trained(marker)
            return marker

        state["generation"] = generation_pipeline(steps, train_gen, out, tests)
    return state


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _check(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    budgets = _budgets(args)
    if args.model:
        budgets.pop("train")
    default = (args.steps, args.minutes, args.fusion_steps, args.n_shapes, args.n_digits) == (
        None, None, None, DEFAULTS["n_shapes"], DEFAULTS["n_digits"])
    plan = _plan(budgets, default) if not args.model else (
        f"quickstart plan: the given model {args.model} (no training): evaluate, index, query"
        + ("" if args.no_fusion else "; fusion " + ", ".join(f"{k} {budget_text(b)}" for k, b in budgets.items())))
    print(plan, file=sys.stderr, flush=True)
    steps = Steps(out, args.fresh, (6 if args.no_fusion else 10) - (1 if args.model else 0)
                  + (0 if args.no_generation else 4))
    run, coll_path = out / "runs" / "audioclip", out / "collection"
    state = _pipeline(args, steps, budgets, out, run, coll_path)
    served = args.model or str(run)
    serve = shlex.join([*polymodal_command(), "serve", "--model", served, "--collection", str(coll_path)])
    from ..report import write_report

    report = steps.run("report", "report.html", {}, lambda: {"path": str(write_report(
        report_results(args, state, steps, serve, RECIPE), out / "report.html"))}, cache=False)["result"]["path"]
    # written again now that the step table can list the report step too, with the time it took (~0.1 s)
    write_report(report_results(args, state, steps, serve, RECIPE), report)
    summary = {"report": report, "serve_command": serve, "run": served, "collection": str(coll_path),
               "seconds": round(time.perf_counter() - t0, 1), "steps": steps.log,
               "training": state["train"], "trained": state["trained"], "retrieval": state["retrieval"],
               "queries": queries_json(state["queries"]), "robustness": state.get("robustness"),
               "generation": (state.get("generation") or {}).get("summary")}
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False).encode("utf-8"))
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        _print_done(summary)
    return 0


def polymodal_command() -> list[str]:
    """The words that run polymodal with this interpreter, for commands printed to copy: the `polymodal` script
    beside it (a virtualenv's bin/, which `make demo` never puts on PATH), else ``python -m polymodal``. Relative
    to the working directory when inside it (``.venv/bin/polymodal``), like the other paths printed."""
    exe = Path(sys.executable)
    script = exe.parent / ("polymodal.exe" if os.name == "nt" else "polymodal")
    return [_shorter(script)] if script.is_file() else [_shorter(exe), "-m", "polymodal"]


def _shorter(path: Path) -> str:
    try:
        rel = str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
    return rel if os.sep in rel else os.path.join(os.curdir, rel)  # a bare name would be looked up on PATH


def _print_done(summary: dict[str, Any]) -> None:
    dirs = summary["retrieval"].get("directions", {})
    for d in ("text->image", "audio->image", "image->text"):
        if d in dirs:
            r = dirs[d]
            print(f"{d:<13} R@1 {r['R@1']:.3f}  R@5 {r['R@5']:.3f}  R@10 {r['R@10']:.3f}")
    print(f"report: {summary['report']}")
    print(f"browse: {summary['serve_command']}")


__all__ = ["main", "polymodal_command"]
