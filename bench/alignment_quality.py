"""Benchmark: retrieval quality of the packaged alignment recipes on `shapes`, synonym queries through the
frozen MiniLM tower (lit_minilm), and zero-shot digit classification by prompts (written and spoken).

Every recipe is trained from scratch for a fixed number of steps (`RUNS`: the steps the published table
trained; ``--steps name=N`` to change one) in its own process, with ``--threads`` torch threads, then
evaluated on the test split (``--split val`` to tune without touching test). ``--minutes name=M`` gives a
run a wall-clock budget instead (the trainer's own clock, which starts after the data is in memory; the
schedule follows it): how many steps that buys depends on the machine and its load, so the numbers do too.
Each run's wall time is reported beside its numbers. Data sets are generated once into ``--data-root`` and
reused (same arguments -> byte-identical files).

    python bench/alignment_quality.py [--data-root data_cache/alignment] [--runs runs/alignment_bench]
        [--recipes clip_tiny,...] [--steps clip_tiny=1000,...] [--minutes clip_tiny=8,...] [--threads 1]
        [--split test] [--reuse] [--small]

Prints one JSON line and writes docs/results/alignment.md (test split only; ``--no-docs`` to skip).
``--small``: a smoke test (200 samples per data set, 3 steps per run, no docs file)."""

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

import numpy as np
import torch

import polymodal
from polymodal.data.formats import open_dataset
from polymodal.data.sample import Sample
from polymodal.data.synth import captions as cap
from polymodal.data.synth import make_dataset
from polymodal.data.synth import shapes as shp
from polymodal.eval.retrieval import RankStats, retrieval_ranks
from polymodal.eval.tasks import embed_modality, evaluate_retrieval, evaluate_zeroshot

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the reporting half, also when loaded by path
from alignment_report import markdown, merge_results, targets  # noqa: E402

DATA: dict[str, dict[str, Any]] = {  # key -> make_dataset arguments (shapes_ti: the same scenes, no speech)
    "shapes": {"name": "shapes", "n": 10_000, "langs": ["en"], "modalities": ["audio", "image", "text", "video"]},
    "shapes_ti": {"name": "shapes", "n": 10_000, "langs": ["en"], "modalities": ["image", "text"]},
    "digits": {"name": "digits", "n": 4_000, "langs": ["en", "zh"], "modalities": ["audio", "image", "text"]},
}
SMALL_N, SMALL_STEPS = 200, 3  # --small: samples per data set, steps per run
# run name -> (recipe, data key, default steps). The steps are what the runs of docs/results/alignment.md made
# in their wall-clock budgets (15 min for audioclip_tiny, 4 for digits, 10 for the others, one torch thread),
# so the table can be reproduced on any machine.
RUNS: dict[str, tuple[str, str, int]] = {
    "audioclip_tiny": ("audioclip_tiny", "shapes", 872),
    "lit_minilm": ("lit_minilm", "shapes_ti", 990),
    "clip_tiny": ("clip_tiny", "shapes_ti", 1587),
    "siglip_tiny": ("siglip_tiny", "shapes_ti", 1424),
    "imagebind_tiny": ("imagebind_tiny", "shapes", 243),
    "digits_audioclip": ("audioclip_tiny", "digits", 1152),
}
# Synonym query set: every color, shape and size word of a caption is replaced by a word the caption
# templates never use (checked against their whole vocabulary by `check_unseen`); picked a priori as plain
# English synonyms, never by trying them on the data. Two variants per word, alternating by item.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"), "green": ("emerald", "emerald"), "blue": ("azure", "navy"),
    "yellow": ("golden", "lemon"), "purple": ("violet", "violet"), "orange": ("tangerine", "amber"),
    "cyan": ("turquoise", "aqua"), "pink": ("rose", "rose"),
    "circle": ("ring", "disc"), "square": ("box", "box"), "triangle": ("pyramid", "wedge"),
    "diamond": ("rhombus", "lozenge"), "star": ("pentagram", "pentagram"), "cross": ("plus sign", "plus sign"),
    "small": ("tiny", "miniature"), "large": ("huge", "giant"),
}


def template_vocabulary() -> set[str]:
    """Every word the English caption templates can produce (templates, synonyms, attribute names)."""
    texts: list[str] = [*shp.COLORS, *shp.SHAPES, *cap.ONE_EN, *cap.TWO_EN, *cap.MOVE_EN]
    for table in (cap.SIZE_EN, cap.POSITION_EN, cap.RELATION_EN, cap.DIRECTION_EN):
        texts += [w for opts in table.values() for w in opts]
    words = " ".join(texts).lower().replace("{", " {").replace("}", "} ").replace(",", " ").split()
    return {w for w in words if not w.startswith("{")}


def check_unseen() -> None:
    vocab = template_vocabulary()
    used = sorted({w for opts in SYNONYMS.values() for o in opts for w in o.split()} & vocab)
    if used:
        raise SystemExit(f"synonym words {used} occur in the caption templates")


def synonym_caption(meta: dict[str, Any], i: int) -> str:
    """The scene in ``meta`` described with `SYNONYMS` for its sizes, colors and shapes."""
    def obj(o: dict[str, Any]) -> str:
        return " ".join(SYNONYMS[o[k]][i % 2] for k in ("size", "color", "shape"))

    objs, rel = meta["objects"], meta.get("relation")
    if rel is None:
        return f"a {obj(objs[0])} {cap.POSITION_EN[objs[0]['position']][0]}"
    return f"a {obj(objs[0])} {cap.RELATION_EN[rel][0]} a {obj(objs[1])}"


def ensure_data(root: Path, key: str, n: int | None = None) -> Path:
    """Generate data set ``key`` under ``root`` unless an identical one is already there (``n``: fewer
    samples than `DATA` says)."""
    spec, out = {**DATA[key], **({"n": n} if n else {})}, root / key
    mf = out / "manifest.json"
    if mf.is_file():
        m = json.loads(mf.read_text(encoding="utf-8"))
        if (m.get("name"), m.get("n"), m.get("seed"), m["args"]["langs"], sorted(m["args"]["modalities"])) == (
                spec["name"], spec["n"], 0, spec["langs"], sorted(spec["modalities"])):
            return out
    print(f"generating {key} into {out} ...", file=sys.stderr)
    make_dataset(spec["name"], out, n=spec["n"], seed=0, langs=spec["langs"], modalities=spec["modalities"])
    return out


def budgets(names: list[str], steps: str = "", minutes: str = "", small: bool = False) -> dict[str, dict[str, Any]]:
    """Each run's budget from ``--steps``/``--minutes`` (``name=value,...``): ``{"steps": N}`` (`RUNS`' count
    by default, `SMALL_STEPS` with --small) or ``{"minutes": M}`` (a wall-clock budget, asked for by name)."""
    def parse(text: str, flag: str) -> dict[str, str]:
        pairs = dict(kv.split("=", 1) for kv in text.split(",") if kv)
        unknown = sorted(set(pairs) - set(RUNS))
        if unknown:
            raise SystemExit(f"{flag}: unknown run names {unknown} (known: {', '.join(RUNS)})")
        return pairs

    if unknown_runs := [n for n in names if n not in RUNS]:
        raise SystemExit(f"--recipes: unknown run names {unknown_runs} (known: {', '.join(RUNS)})")
    by_steps, by_minutes = parse(steps, "--steps"), parse(minutes, "--minutes")
    if set(by_steps) & set(by_minutes):
        raise SystemExit(f"give a run --steps or --minutes, not both: {sorted(set(by_steps) & set(by_minutes))}")
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name in by_minutes:
            out[name] = {"minutes": float(by_minutes[name])}
        else:
            out[name] = {"steps": int(by_steps.get(name, SMALL_STEPS if small else RUNS[name][2]))}
    return out


def budget_args(budget: dict[str, Any]) -> list[str]:
    """The `polymodal train` flags for a budget."""
    return ["--steps", str(budget["steps"])] if "steps" in budget else ["--minutes", repr(float(budget["minutes"]))]


def train_run(recipe: str, data: Path, out: Path, budget: dict[str, Any], threads: int, reuse: bool
              ) -> dict[str, Any]:
    """Train in a child process (its own thread count, CPU time and peak RSS); reuse a finished run with the
    same budget."""
    info = out / "bench_train.json"
    wanted = {"steps_budget": budget.get("steps"), "minutes_budget": budget.get("minutes")}
    if reuse and info.is_file():
        row = dict(json.loads(info.read_text()))
        if {k: row.get(k) for k in wanted} != wanted:
            raise SystemExit(f"{out} was trained with another budget ({row.get('steps_budget')} steps, "
                             f"{row.get('minutes_budget')} min): remove it or drop --reuse")
        return row
    if reuse and out.exists():  # never delete a run that may still be training
        raise SystemExit(f"{out} holds an unfinished run (no bench_train.json): remove it or drop --reuse")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "polymodal", "train", recipe, "--data", str(data), "--out", str(out),
           *budget_args(budget), "--threads", str(threads), "--no-progress", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    stdout = proc.stdout.read() if proc.stdout else ""
    if status != 0:
        raise SystemExit(f"training {recipe} failed (status {status}): {cmd}")
    res = json.loads(stdout.strip().splitlines()[-1])
    row = {"recipe": recipe, "data": data.name, **wanted, "threads": threads, "steps": res["step"], "samples_seen": res["samples_seen"], "train_s": round(res["elapsed_s"], 1),
           "process_wall_s": round(time.perf_counter() - t0, 1),
           "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
           "peak_rss_mb": round(usage.ru_maxrss / 1024), "val_loss": res["val_loss"]}
    info.write_text(json.dumps(row))
    return row


def _recall(stats: RankStats | None, k: int) -> float | None:
    return None if stats is None else round(stats.recall(k), 4)


def _row(identity: RankStats, n: int, scene: RankStats | None = None, attribute: RankStats | None = None
         ) -> dict[str, Any]:
    """One row of the synonym table: R@1/R@5 of the given positives, scene- and attribute-match R@5."""
    return {"R@1": _recall(identity, 1), "R@5": _recall(identity, 5), "scene R@5": _recall(scene, 5),
            "attribute R@5": _recall(attribute, 5), "n": n}


def scene_groups(samples: list[Sample]) -> list[list[int]]:
    """For every item, the items showing the same scene (every object's size, color, shape and position;
    only the jitter differs): no caption can tell them apart, whatever its wording."""
    keys = [json.dumps(sorted(sorted(o.items()) for o in s.metadata["objects"])) for s in samples]
    members: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    return [members[k] for k in keys]


def scene_stats(samples: list[Sample]) -> dict[str, float | None]:
    """Scene duplicate rate, and the best identity R@1 any model can expect (ties broken at random: a query
    whose scene k items share is right 1 time in k), overall and for held-out / seen items."""
    groups = scene_groups(samples)
    held = [bool(s.metadata.get("heldout")) for s in samples]
    out: dict[str, float | None] = {"scene_duplicate_rate": round(sum(len(g) > 1 for g in groups) / len(groups), 4)}
    for part, rows in (("all", range(len(groups))), ("heldout", [i for i, h in enumerate(held) if h]),
                       ("seen", [i for i, h in enumerate(held) if not h])):
        out[f"R@1 ceiling {part}"] = round(sum(1 / len(groups[i]) for i in rows) / len(rows), 4) if rows else None
    return out


def eval_shapes(run: Path, samples: list[Sample]) -> dict[str, Any]:
    """`evaluate_retrieval`, plus identity and scene-match ranks (a hit: an image of the same scene) of
    every query modality against the images, for all items and for held-out / seen items apart."""
    model = polymodal.load(run)
    res = evaluate_retrieval(model, samples)
    d = res["directions"]
    row: dict[str, Any] = {"caption_duplicate_rate": round(res["caption_duplicate_rate"], 4),
                           "directions": {k: {m: round(v, 4) if isinstance(v, float) else v
                                              for m, v in r.items() if m != "attribute"}
                                          | {"attribute": r.get("attribute")} for k, r in d.items()}}
    held = np.array([bool(s.metadata.get("heldout")) for s in samples])
    parts = {"": np.ones_like(held), "heldout ": held, "seen ": ~held}
    gallery = embed_modality(model, samples, "image")
    groups, identity = scene_groups(samples), [[i] for i in range(len(samples))]
    for q in [m for m in ("text", "audio", "video") if m in model.modalities]:
        emb = embed_modality(model, samples, q)
        ident = retrieval_ranks(emb, gallery, positives=identity).ranks
        scene = retrieval_ranks(emb, gallery, positives=groups).ranks
        for part, rows in parts.items():  # None where the split has no such item (val: no held-out pairs)
            for name, ranks in (("R@1", ident), ("R@5", ident), ("scene R@1", scene)):
                stats = RankStats(ranks[rows]) if rows.any() else None
                row[f"{q}->image {part}{name}"] = _recall(stats, int(name[-1]))
    return row


def object_queries(samples: list[Sample], synonyms: bool) -> tuple[list[str], list[list[int]]]:
    """Short queries "a crimson ring" (two variants per color+shape pair); positives: every item with an
    object of that color and shape (either object, unlike ``metadata["labels"]``)."""
    texts, positives = [], []
    for color in shp.COLORS:
        for shape in shp.SHAPES:
            pos = [i for i, s in enumerate(samples)
                   if any(o["color"] == color and o["shape"] == shape for o in s.metadata["objects"])]
            for v in (0, 1) if pos else ():
                words = (SYNONYMS[color][v], SYNONYMS[shape][v]) if synonyms else (color, shape)
                texts.append(f"a {words[0]} {words[1]}")
                positives.append(pos)
    return texts, positives


def eval_synonyms(run: Path, samples: list[Sample]) -> dict[str, Any]:
    """text->image with words the templates never use: whole captions rewritten (identity, scene and
    attribute hits) and short object queries (a hit: any item showing that color+shape); template wording
    beside, and the text tower's own text->text ceiling for both."""
    model = polymodal.load(run)
    n, groups, identity = len(samples), scene_groups(samples), [[i] for i in range(len(samples))]
    keys = [json.dumps(s.metadata["labels"], sort_keys=True) for s in samples]
    num = {k: i for i, k in enumerate(sorted(set(keys)))}
    lab = [num[k] for k in keys]
    queries = [synonym_caption(s.metadata, i) for i, s in enumerate(samples)]
    syn_obj, obj_pos = object_queries(samples, True)
    tpl_obj, _ = object_queries(samples, False)
    gallery = embed_modality(model, samples, "image")
    syn_emb, tpl_emb = model.embed(text=queries), model.embed(text=[s.text or "" for s in samples])
    syn_obj_emb = model.embed(text=syn_obj)
    out: dict[str, Any] = {"example": queries[:2] + syn_obj[:2]}
    for name, q in (("captions", syn_emb), ("template captions", tpl_emb)):
        out[name] = _row(retrieval_ranks(q, gallery, positives=identity), n,
                         scene=retrieval_ranks(q, gallery, positives=groups),
                         attribute=retrieval_ranks(q, gallery, query_labels=lab, gallery_labels=lab))
    # Reference: the text tower alone, synonym caption -> the same item's template caption. A frozen tower
    # (LiT) bounds what the image tower can learn: it can only be as synonym-aware as this.
    out["captions, text->text"] = _row(retrieval_ranks(syn_emb, tpl_emb, positives=identity), n,
                                       scene=retrieval_ranks(syn_emb, tpl_emb, positives=groups))
    for name, q, texts in (("objects", syn_obj_emb, syn_obj), ("template objects", model.embed(text=tpl_obj),
                                                               tpl_obj)):
        out[name] = _row(retrieval_ranks(q, gallery, positives=obj_pos), len(texts))
    # The same reference for the short queries: "a crimson ring" -> which of the 48 template phrases
    # "a red circle", ... does the text tower put nearest (a hit: the one with the same color and shape)?
    phrases = sorted(set(tpl_obj))
    out["objects, text->text"] = _row(retrieval_ranks(syn_obj_emb, model.embed(text=phrases),
                                                      positives=[[phrases.index(t)] for t in tpl_obj]),
                                      len(syn_obj))
    return out


def eval_digits(run: Path, data: Path, split: str) -> dict[str, Any]:
    model = polymodal.load(run)
    samples = list(open_dataset(data, split=split))
    labels = json.loads((data / "manifest.json").read_text(encoding="utf-8"))["labels"]
    out: dict[str, Any] = {"n": len(samples)}
    for lang, key in (("en", "classes"), ("zh", "classes_zh")):
        r = evaluate_zeroshot(model, samples, labels[key], label_names=labels["classes"], lang=lang)
        row = {"image acc1": round(r["image"]["acc1"], 4), "speech acc1": round(r["audio"]["acc1"], 4)}
        for spoken in ("en", "zh"):  # spoken digits in each language separately
            sub = [s for s in samples if s.metadata.get("lang") == spoken]
            rs = evaluate_zeroshot(model, sub, labels[key], label_names=labels["classes"], lang=lang,
                                   modalities=["audio"])
            row[f"speech ({spoken}) acc1"] = round(rs["audio"]["acc1"], 4)
        out[lang] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="data_cache/alignment")
    p.add_argument("--runs", default="runs/alignment_bench")
    p.add_argument("--recipes", default=",".join(RUNS), help="comma list of run names: " + ", ".join(RUNS))
    p.add_argument("--steps", default="", help="per-run step counts instead of the defaults (RUNS: the steps the "
                   "published table trained), e.g. clip_tiny=1000,lit_minilm=500")
    p.add_argument("--minutes", default="", help="per-run wall-clock budgets instead of step counts, e.g. "
                   "clip_tiny=8: the steps they buy, and so the numbers, depend on the machine and its load")
    p.add_argument("--small", action="store_true", help=f"smoke test: {SMALL_N} samples per data set under "
                   f"DATA_ROOT/small, {SMALL_STEPS} steps per run under RUNS/small, no docs file")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training/eval process")
    p.add_argument("--split", default="test", help="evaluation split (tune on val)")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs in --runs instead of retraining")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/results/alignment.md")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="no training or evaluation: merge the JSON "
                   "lines of earlier runs (e.g. two --recipes subsets run side by side, one per core) and "
                   "write the table from them")
    p.add_argument("--note", default="", help="with --merge: a sentence for the table's header (how the runs "
                   "shared the machine)")
    args = p.parse_args(argv)
    if args.merge:
        merged = merge_results([json.loads(Path(f).read_text(encoding="utf-8").strip().splitlines()[-1])
                                for f in args.merge])
        merged["machine"]["note"] = args.note
        return write_result(merged, args)
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    budget = budgets(names, args.steps, args.minutes, args.small)
    root, runs = Path(args.data_root), Path(args.runs)
    small = SMALL_N if args.small else None
    if args.small:
        root, runs, args.no_docs = root / "small", runs / "small", True
    load0 = os.getloadavg()
    result: dict[str, Any] = {"split": args.split, "shapes": {}, "synonyms": {}}
    test: list[Sample] | None = None
    for name in names:
        recipe, key, _ = RUNS[name]
        data = ensure_data(root, key, small)
        tr = train_run(recipe, data, runs / name, budget[name], args.threads, args.reuse)
        print(json.dumps({"trained": name, **tr}), file=sys.stderr)
        if key == "digits":
            result["digits"] = {"train": tr, "eval": eval_digits(runs / name, data, args.split)}
            continue
        if test is None:
            test = list(open_dataset(ensure_data(root, "shapes", small), split=args.split))
        result["shapes"][name] = {"train": tr, "eval": eval_shapes(runs / name, test)}
        if name in ("lit_minilm", "clip_tiny"):
            result["synonyms"][name] = eval_synonyms(runs / name, test)
    check_unseen()
    n_held = sum(bool(s.metadata.get("heldout")) for s in test or [])
    result["scenes"] = scene_stats(test) if test else {}
    result.update(n_test=len(test or []), n_heldout=n_held, machine={
        "cpus": os.cpu_count(), "processor": platform.machine(), "torch": torch.__version__,
        "threads": args.threads, "load_start": [round(x, 2) for x in load0],
        "load_end": [round(x, 2) for x in os.getloadavg()]})
    return write_result(result, args)


def write_result(result: dict[str, Any], args: argparse.Namespace) -> int:
    result["targets"] = targets(result)
    print(json.dumps(result, ensure_ascii=False))
    if result["split"] == "test" and not args.no_docs:
        out = Path(__file__).resolve().parents[1] / "docs" / "results" / "alignment.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown(result), encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
