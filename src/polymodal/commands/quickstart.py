"""`polymodal quickstart`: the main job end to end on the built-in data (what `make demo` runs).

Generates `shapes` (text, image, speech) and `digits`, trains a tri-modal model (`audioclip_tiny`) under a time
budget, evaluates retrieval in every direction on the test split, builds a collection of the test images, runs
example queries (text, spoken, speech + text hint), trains two fusion classifiers on digits for a robustness
panel, and writes one self-contained ``report.html``. About 10-15 minutes on 2 CPU cores with the defaults.

Re-running reuses finished steps. A step is finished when ``OUT/steps/<step>.json`` exists with the same
parameters and its output is still there (a data set's manifest, a run's model.safetensors, the collection);
each marker holds a fresh token that the parameters of later steps include, so redoing a step redoes
everything built on it. ``--fresh`` redoes every step. An interrupted training resumes from its checkpoint."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from ..errors import InvalidInput

RECIPE = "audioclip_tiny"
FUSION_SHARE = 8  # each fusion model trains for --minutes / 8 (1 minute by default; digits are easy)
FUSIONS = ("late", "attention")  # late fusion first: it is the reference curve for effective robustness
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
ROBUST_MAX = 200  # test samples in the robustness sweeps (each noisy level re-computes log-mels)
K = 8
DEFAULTS = {"minutes": 8.0, "n_shapes": 3000, "n_digits": 2000}
EPILOG = """\
steps (each reused on a re-run when its parameters are unchanged; --fresh redoes all):
  data shapes, data digits -> train (audioclip_tiny, --minutes) -> evaluate -> collection -> fusion late,
  fusion attention (each --minutes/8) -> robustness -> queries -> report.html

example:
  polymodal quickstart                      # ~10-15 min on 2 cores, writes quickstart/report.html
  polymodal quickstart --minutes 2 --n-shapes 1000 --no-fusion      # a faster, rougher look
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polymodal quickstart", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Generate data, train a text+image+speech model, evaluate it, build a "
                                            "collection, run example queries and write an HTML report.")
    p.add_argument("--out", default="quickstart", help="output folder (default: quickstart)")
    p.add_argument("--minutes", type=float, default=DEFAULTS["minutes"],
                   help="training budget of the main model in minutes (default %(default)s); each fusion model "
                        f"gets 1/{FUSION_SHARE} of it")
    p.add_argument("--fresh", action="store_true", help="redo every step instead of reusing finished ones")
    p.add_argument("--n-shapes", type=int, default=DEFAULTS["n_shapes"], help="shapes samples (default %(default)s)")
    p.add_argument("--n-digits", type=int, default=DEFAULTS["n_digits"], help="digits samples (default %(default)s)")
    p.add_argument("--no-fusion", action="store_true", help="skip the digits fusion models and the robustness panel")
    p.add_argument("--langs", default="en", help="caption languages: en, zh or en,zh (default en)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument("--workers", type=int, help="data generation processes (default: min(2, cores))")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, the core count); on a "
                   "machine busy with other work 1 is often faster, as is env OMP_WAIT_POLICY=PASSIVE")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (step lines still go to stderr)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    return p


def _check(args: argparse.Namespace) -> None:
    if not args.minutes > 0:
        raise InvalidInput(f"must be > 0, got {args.minutes}", field="--minutes")
    for flag, n in (("--n-shapes", args.n_shapes), ("--n-digits", args.n_digits)):
        if n < 30:  # 10% test split: at least 3 items to retrieve among
            raise InvalidInput(f"must be >= 30, got {n}", field=flag)
    langs = [x for x in args.langs.split(",") if x]
    if not langs or any(x not in ("en", "zh") for x in langs):
        raise InvalidInput(f"expected en, zh or en,zh, got {args.langs!r}", field="--langs")
    args.langs = langs
    if args.threads is not None and args.threads < 1:
        raise InvalidInput(f"must be >= 1, got {args.threads}", field="--threads")


# ------------------------------------------------------------------------------------------- steps

class Steps:
    """Runs named steps, skipping those whose marker matches; logs one line per step to stderr."""

    def __init__(self, out: Path, fresh: bool, total: int):
        self.dir, self.fresh, self.total = out / "steps", fresh, total
        self.log: list[dict[str, Any]] = []

    def _marker(self, name: str) -> dict[str, Any] | None:
        try:
            obj = json.loads((self.dir / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    def say(self, label: str, text: str) -> None:
        print(f"[quickstart {len(self.log) + 1}/{self.total}] {label}{text}", file=sys.stderr, flush=True)

    def run(self, name: str, label: str, params: dict[str, Any], work: Callable[[], dict[str, Any]],
            done: Callable[[], bool] = lambda: True, cache: bool = True) -> dict[str, Any]:
        """The step's marker ``{params, token, seconds, finished, result}``: the stored one when its
        parameters match and ``done()`` confirms the output, else after running ``work()``."""
        params = json.loads(json.dumps(params))  # tuples -> lists, as they come back from the file
        old = None if self.fresh or not cache else self._marker(name)
        if old is not None and old.get("params") == params and done():
            self.say(label, f": reused (finished {old.get('finished')})")
            self.log.append({"name": name, "status": "reused", "seconds": 0.0, "token": old["token"],
                             "took": old.get("seconds")})
            return old
        self.say(label, " ...")
        (self.dir / f"{name}.json").unlink(missing_ok=True)  # an interrupted redo must not look finished
        t0 = time.perf_counter()
        result = work()
        seconds = round(time.perf_counter() - t0, 2)
        marker = {"params": params, "token": uuid.uuid4().hex, "seconds": seconds,
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "result": result}
        if cache:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.dir / f"{name}.json", json.dumps(marker, ensure_ascii=False).encode("utf-8"))
        self.log.append({"name": name, "status": "ran", "seconds": seconds, "token": marker["token"]})
        print(f"    {label}: done in {seconds:.1f} s", file=sys.stderr, flush=True)
        return marker


def _reset(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


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


def _train_step(steps: Steps, args: argparse.Namespace, name: str, recipe: str, minutes: float, data: Path,
                data_token: str, run: Path) -> dict[str, Any]:
    from ..recipes import load_recipe

    base = load_recipe(recipe)
    batch = min(base.train.batch_size, _n_train(data))  # tiny data sets: one batch must fit the train split
    overrides = ["train.steps=null", "train.epochs=null", f"train.minutes={minutes:g}", f"train.batch_size={batch}",
                 f"train.seed={args.seed}", "train.log_every=2"]
    params = {"recipe": recipe, "overrides": overrides, "data": data_token}
    started = steps.dir / f"{name}.started.json"

    def work() -> dict[str, Any]:
        from ..train import train
        from ..train.checkpoint import latest_checkpoint

        resume = (not steps.fresh and run.exists() and latest_checkpoint(run) is not None and started.is_file()
                  and json.loads(started.read_text(encoding="utf-8")) == params)
        if not resume:
            _reset(run)
            steps.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(started, json.dumps(params).encode("utf-8"))
        result = train(base.with_overrides(overrides), data, run, resume=resume, progress=not args.no_progress)
        return {**result.to_dict(), "resumed": resume}

    def done() -> bool:
        return (run / "model.safetensors").is_file() and (run / "config.json").is_file()

    return steps.run(name, f"train {recipe} ({minutes:g} min)", params, work, done)


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


def _collection_step(steps: Steps, model: Any, tests: list[Any], path: Path, token: str) -> dict[str, Any]:
    from ..index import Collection, MediaStore
    from ..index.records import item_metadata

    def work() -> dict[str, Any]:
        _reset(path)
        vecs = model.embed(image=[s.image for s in tests])
        thumbs = MediaStore(path)
        with Collection.create(path, dim=vecs.shape[1]) as coll:
            coll.add(list(range(len(tests))), vecs, [item_metadata(s, "image", "test") for s in tests])
            for i, s in enumerate(tests):
                thumbs.put_media(i, image=s.image)
            info = coll.info()
        return {"path": str(path), "count": info["count"], "kind": info["kind"], "thumbnails": True}

    def done() -> bool:
        try:
            coll = Collection.open(path, readonly=True)
        except Exception:  # anything unreadable means: build it again
            return False
        n = len(coll)
        coll.close()
        return n == len(tests)

    return steps.run("collection", f"collection of {len(tests)} test images", {"train": token}, work, done)


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


# ------------------------------------------------------------------------------------------- queries

def _query_specs(tests: list[Any], langs: list[str]) -> list[dict[str, Any]]:
    """Example queries: test captions, spoken captions, speech + a text hint, hand-written text
    (one of them a colour+shape pair held out of training)."""
    plain = [s for s in tests if s.audio is not None and not s.metadata.get("heldout")] or tests
    a = next((s for s in plain if s.metadata.get("lang", "en") == "en"), plain[0])
    rest = [s for s in plain if s is not a] or plain
    b, c = rest[0], rest[1 % len(rest)]
    hint = ", ".join(f"{o.get('size', '')} {o.get('color', '')} {o.get('shape', '')}".strip()
                     for o in c.metadata.get("objects") or [] if isinstance(o, dict)) or None
    specs: list[dict[str, Any]] = [
        {"title": "Text: a test caption", "kind": "text", "text": a.text, "target": a.id},
        {"title": "Speech: a spoken test caption", "kind": "speech", "audio": (b.audio, b.sample_rate),
         "target": b.id, "note": f"what is said: {b.text}"},
        {"title": "Speech + text hint (fused)", "kind": "fused", "audio": (c.audio, c.sample_rate),
         "text": hint, "target": c.id,
         "note": f"what is said: {c.text}"},
        {"title": "Text, hand-written", "kind": "text", "text": "a big yellow circle",
         "labels": {"color": "yellow", "shape": "circle", "size": "large"}},
        {"title": "Text, held-out pair (red stars never appear in training)", "kind": "text", "text": "a red star",
         "labels": {"color": "red", "shape": "star"}},
    ]
    zh = next((s for s in tests if s.metadata.get("lang") == "zh" and s.text), None)
    if "zh" in langs and zh is not None:
        specs.insert(1, {"title": "Text (中文): a test caption", "kind": "text", "text": zh.text, "target": zh.id})
    return specs


def _shows(sample: Any, want: dict[str, str]) -> bool:
    """Whether any object in the scene has the wanted attributes (e.g. colour and shape)."""
    objects = sample.metadata.get("objects") or [sample.metadata.get("labels") or {}]
    return bool(want) and any(all(o.get(k) == v for k, v in want.items()) for o in objects if isinstance(o, dict))


def _run_queries(model: Any, coll_path: Path, tests: list[Any], langs: list[str]) -> list[dict[str, Any]]:
    from ..index import Collection, search_with_model

    by_id = {s.id: s for s in tests}
    out = []
    with Collection.open(coll_path, readonly=True) as coll:
        for spec in _query_specs(tests, langs):
            res = search_with_model(coll, model, text=spec.get("text"), audio=spec.get("audio"), k=K)
            hits = []
            for h in res.hits(0):
                meta = h["metadata"]
                sample = by_id.get(meta.get("sample_id", ""))
                match = (meta.get("sample_id") == spec.get("target") if spec.get("target")
                         else sample is not None and _shows(sample, spec.get("labels") or {}))
                hits.append({"id": h["id"], "score": float(h["score"]), "sample_id": meta.get("sample_id"),
                             "caption": meta.get("caption"), "match": match,
                             "image": sample.image if sample is not None else None})
            out.append({**spec, "hits": hits})
    return out


def _queries_json(queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The queries without media, for --json and summary.json."""
    out = []
    for q in queries:
        hits = [{k: h[k] for k in ("id", "sample_id", "score", "caption", "match")} for h in q["hits"]]
        rank = next((i + 1 for i, h in enumerate(hits) if h["match"]), None)
        out.append({"title": q["title"], "kind": q["kind"], "text": q.get("text"), "target": q.get("target"),
                    "first_match_rank": rank, "hits": hits})
    return out


# ------------------------------------------------------------------------------------------- main

def _report(args: argparse.Namespace, state: dict[str, Any], steps: Steps, serve: str) -> dict[str, Any]:
    train = state["train"]
    summary = {"steps": train.get("step"), "samples seen": train.get("samples_seen"),
               "samples/s": train.get("samples_per_s"), "final loss": train.get("loss"),
               "validation loss": train.get("val_loss"), "stopped by": train.get("stopped_by"),
               "train seconds": train.get("elapsed_s")}
    meta = {"data": f"shapes {args.n_shapes} (captions {'+'.join(args.langs)}, spoken)"
                    + ("" if args.no_fusion else f", digits {args.n_digits}"),
            "recipe": RECIPE, "training budget (min)": args.minutes, "output": str(Path(args.out).resolve())}
    return {"title": "polymodal quickstart", "subtitle": "text + image + speech in one embedding space, "
            "trained from scratch on the built-in data", "meta": meta,
            "steps": [{k: s.get(k) for k in ("name", "status", "seconds", "took")} for s in steps.log],
            "training": {**state["curve"], "summary": summary}, "retrieval": state["retrieval"],
            "queries": state["queries"], "robustness": state.get("robustness"), "serve_command": serve,
            "notes": [] if state.get("robustness") else ["Robustness panel: skipped (--no-fusion)."]}


def _pipeline(args: argparse.Namespace, steps: Steps, out: Path, run: Path, coll_path: Path) -> dict[str, Any]:
    """Every step but the report; returns what the report and the summary show."""
    shapes_dir, digits_dir = out / "data" / "shapes", out / "data" / "digits"
    state: dict[str, Any] = {}
    shapes = _data_step(steps, args, "shapes", args.n_shapes, shapes_dir)
    digits = None if args.no_fusion else _data_step(steps, args, "digits", args.n_digits, digits_dir)
    trained = _train_step(steps, args, "train", RECIPE, args.minutes, shapes_dir, shapes["token"], run)
    state["train"] = trained["result"]
    from ..api import load
    from ..eval.tasks import evaluate_retrieval

    model = load(run)
    tests = _test_samples(shapes_dir)
    state["retrieval"] = steps.run("evaluate", "evaluate retrieval (test split, every direction)",
                                   {"train": trained["token"]}, lambda: evaluate_retrieval(model, tests))["result"]
    coll = _collection_step(steps, model, tests, coll_path, trained["token"])
    if digits is not None:
        runs = {f: out / "runs" / f"fusion_{f}" for f in FUSIONS}
        tokens = {f: _train_step(steps, args, f"fusion_{f}", f"fusion_{f}", args.minutes / FUSION_SHARE, digits_dir,
                                 digits["token"], runs[f])["token"] for f in FUSIONS}
        state["robustness"] = _robustness_step(steps, runs, tokens, digits_dir)["result"]
    state["queries"] = steps.run("queries", f"{len(_query_specs(tests, args.langs))} example queries",
                                 {"collection": coll["token"]},
                                 lambda: {"queries": _run_queries(model, coll_path, tests, args.langs)},
                                 cache=False)["result"]["queries"]
    state["curve"] = _loss_curve(run)
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
    steps = Steps(out, args.fresh, 6 if args.no_fusion else 10)
    run, coll_path = out / "runs" / "audioclip", out / "collection"
    state = _pipeline(args, steps, out, run, coll_path)
    serve = f"polymodal serve --model {shlex.quote(str(run))} --collection {shlex.quote(str(coll_path))}"
    from ..report import write_report

    report = steps.run("report", "report.html", {}, lambda: {"path": str(write_report(
        _report(args, state, steps, serve), out / "report.html"))}, cache=False)["result"]["path"]
    summary = {"report": report, "serve_command": serve, "run": str(run), "collection": str(coll_path),
               "seconds": round(time.perf_counter() - t0, 1), "steps": steps.log,
               "training": state["train"], "retrieval": state["retrieval"],
               "queries": _queries_json(state["queries"]), "robustness": state.get("robustness")}
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False).encode("utf-8"))
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        _print_done(summary)
    return 0


def _print_done(summary: dict[str, Any]) -> None:
    dirs = summary["retrieval"].get("directions", {})
    for d in ("text->image", "audio->image", "image->text"):
        if d in dirs:
            r = dirs[d]
            print(f"{d:<13} R@1 {r['R@1']:.3f}  R@5 {r['R@5']:.3f}  R@10 {r['R@10']:.3f}")
    print(f"report: {summary['report']}")
    print(f"browse: {summary['serve_command']}")


__all__ = ["main"]
