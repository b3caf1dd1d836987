"""Benchmark: text->image on `shapes` (issue #16), fixed step budgets, judged by models trained on real pictures.

Pipeline (every run in its own `polymodal train` process, 1 torch thread; ``--reuse`` adopts finished runs):

1. judges and sources: ``clip_judge`` (clip_tiny, seed 1: CLIP score, R-precision, the Frechet distance's image
   features), ``clip_cond`` (clip_tiny, seed 0: the frozen text tower that conditions diffusion; a different run
   from the judge, so the judge does not grade its own embedding), the scene parser (`standard_parser`: fitted on
   real pictures of every color+shape pair, seed-1 scenes), ``vq`` (vq_tiny) and ``kl`` (kl_tiny);
2. generators at one step budget (``--steps``, 32 pictures a step): ``ldm`` (latent diffusion on the KL latents,
   Stable Diffusion's layout), ``dalle`` (GPT-2 over the VQ codes), ``ernie`` (the same, 30% image->text rows),
   ``ldm_lm`` (the diffusion conditioned on ``lm_tiny``'s last-layer states instead of the CLIP text tower);
3. every judge on the real test pictures first (the ceiling), and on the autoencoders' reconstructions (the
   ceiling of what each generator can draw through its decoder); then each generator on the test captions in
   English and Chinese (``--samples`` scenes x 2 languages), broken down by seen / held-out pairs, one / two
   objects (relations, counts) and language;
4. sampling cost: seconds per picture and pictures/s at 10/25/50 DDIM steps with and without guidance, the token
   models with and without guidance, each in a fresh process for its peak memory (ru_maxrss).

    python bench/text_to_image.py [--reuse] [--steps 1500] [--samples 200] [--only train,judges,eval,cost,gallery]

Prints one JSON line and a table, writes RUNS/bench_results.json (merged across ``--only`` invocations) and
docs/results/text_to_image.md (bench/t2i_report.py) with a gallery picture docs/results/text_to_image.png."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from architectures import adopt

ROOT = Path(__file__).resolve().parent.parent
SOURCES: dict[str, tuple[str, int, list[str]]] = {  # name -> (recipe, steps, --set)
    "clip_cond": ("clip_tiny", 1500, ["train.seed=0"]),
    "clip_judge": ("clip_tiny", 1500, ["train.seed=1"]),
    "vq": ("vq_tiny", 1200, []),
    "kl": ("kl_tiny", 1200, []),
    "lm": ("lm_tiny", 500, []),  # the LM whose states condition ldm_lm (Imagen's comparison of text encoders)
}
GENERATORS: dict[str, tuple[str, list[str]]] = {  # name -> (recipe, --set); steps: --steps
    "ldm": ("ldm_tiny", ["model.autoencoder.from_run={runs}/kl", "model.text.from_run={runs}/clip_cond"]),
    "dalle": ("dalle_tiny", ["model.autoencoder.from_run={runs}/vq"]),
    "ernie": ("ernievilg_tiny", ["model.autoencoder.from_run={runs}/vq"]),
    "ldm_lm": ("ldm_tiny", ["model.autoencoder.from_run={runs}/kl", "model.text.from_run={runs}/lm"]),
}
LONGER = {"ldm_long": "ldm", "dalle_long": "dalle"}  # the same runs continued to 3x the budget (--long-steps)
# (row name, run, options): what the table compares; guidance 1 = no guidance
EVAL_ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("ldm (DDIM 25, guidance 3)", "ldm", {"steps": 25, "guidance": 3.0}),
    ("ldm (DDIM 25, no guidance)", "ldm", {"steps": 25, "guidance": 1.0}),
    ("ldm (DPM-Solver++ 10, guidance 3)", "ldm", {"steps": 10, "guidance": 3.0, "sampler": "dpm"}),
    ("ldm, lm_tiny states (DDIM 25, guidance 3)", "ldm_lm", {"steps": 25, "guidance": 3.0}),
    ("dalle (no guidance)", "dalle", {"guidance": 1.0}),
    ("dalle (guidance 3)", "dalle", {"guidance": 3.0}),
    ("ernie (guidance 3)", "ernie", {"guidance": 3.0}),
    ("ldm, 3x steps (DDIM 25, guidance 3)", "ldm_long", {"steps": 25, "guidance": 3.0}),
    ("dalle, 3x steps (no guidance)", "dalle_long", {"guidance": 1.0}),
]
GALLERY_ROWS = [EVAL_ROWS[0], EVAL_ROWS[3], EVAL_ROWS[4], EVAL_ROWS[6]]  # ldm, ldm_lm, dalle, ernie
COST: list[tuple[str, dict[str, Any]]] = [
    *[("ldm", {"steps": s, "guidance": g}) for s in (10, 25, 50) for g in (1.0, 3.0)],
    *[("ldm", {"steps": s, "guidance": 3.0, "sampler": "dpm"}) for s in (10, 25)],
    *[(r, {"guidance": g}) for r in ("dalle",) for g in (1.0, 3.0)],
]
COST_IMAGES = 16


def polymodal(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-m", "polymodal", *args], env=env, stdout=subprocess.PIPE, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): polymodal {' '.join(args)}")
    return proc.stdout


def train(recipe: str, data: Path, out: Path, steps: int, sets: list[str], reuse: bool) -> dict[str, Any]:
    if reuse and (row := adopt(out, steps)) is not None:
        return {"recipe": recipe, "set": sets, **row}
    res = json.loads(polymodal("train", recipe, "--data", str(data), "--out", str(out), "--steps", str(steps),
                               "--threads", "1", "--no-progress", "--json", *(["--set", *sets] if sets else []))
                     .strip().splitlines()[-1])
    return {"recipe": recipe, "set": sets, "steps": res["step"], "train_s": round(res["elapsed_s"], 1),
            "loss": res["loss"]}


def continue_run(base: Path, out: Path, steps: int, reuse: bool, data: Path) -> dict[str, Any]:
    """``base`` copied to ``out`` and trained on to ``steps`` (`polymodal train --resume --steps`: the cosine
    schedule is laid out again over the new length, a warm restart from the base's last step)."""
    if reuse and (row := adopt(out, steps)) is not None:
        return {"continued_from": base.name, **row}
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out)
    res = json.loads(polymodal("train", "--resume", "--data", str(data), "--out",
                               str(out), "--steps", str(steps), "--threads", "1", "--no-progress", "--json")
                     .strip().splitlines()[-1])
    return {"continued_from": base.name, "steps": res["step"], "train_s": round(res["elapsed_s"], 1),
            "loss": res["loss"]}


def ensure_data(root: Path, n: int) -> Path:
    if not (root / "manifest.json").is_file():
        polymodal("data", "make", "shapes", "--out", str(root), "--n", str(n), "--lang", "en,zh", "--modalities",
                  "text,image", "--no-progress")
    return root


def test_samples(data: Path, count: int) -> list[Any]:
    from polymodal.data.formats import open_dataset

    ds = open_dataset(data, split="test")
    out = []
    for s in ds:
        out.append(s)
        if len(out) >= count:
            break
    return out


def judges(runs: Path) -> tuple[Any, Any]:
    from polymodal.eval.t2i import standard_parser
    from polymodal.models import load_embedding_model

    return standard_parser(runs / "parser"), load_embedding_model(runs / "clip_judge")


def reconstructed(samples: list[Any], run: Path) -> list[Any]:
    from polymodal.models.loading import load_model

    ae = load_model(run)[0]
    pictures = ae.reconstruct([s.image for s in samples])
    return [s.replace(image=p) for s, p in zip(samples, pictures, strict=True)]


def slim(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "gallery"}


def evaluate_all(runs: Path, data: Path, count: int, results: dict[str, Any]) -> None:
    from polymodal.eval.t2i import evaluate_t2i
    from polymodal.models.t2i_front import ImageOptions, load_image_generator

    parser, embedder = judges(runs)
    samples = test_samples(data, count)
    reference = embedder.embed(image=[s.image for s in test_samples(data, 1600)])
    common = {"parser": parser, "embedder": embedder, "real_features": reference}
    rows: dict[str, Any] = {}
    report, _ = evaluate_t2i(None, samples, **common)
    rows["real pictures (ceiling)"] = report
    for name in ("vq", "kl"):
        report, _ = evaluate_t2i(None, reconstructed(samples, runs / name), **common)
        rows[f"{name} reconstructions"] = report
    for row, run, opts in EVAL_ROWS:
        if not (runs / run / "config.json").is_file():
            continue
        gen = load_image_generator(runs / run)
        t0 = time.perf_counter()
        report, judged = evaluate_t2i(gen, samples, options=ImageOptions(seed=0, **opts), **common)
        report["eval_s"] = round(time.perf_counter() - t0, 1)
        rows[row] = report
        print(f"{row}: attribute {report['groups']['all']['parser']['attribute']:.3f}", file=sys.stderr)
    results["eval"] = rows
    results["captions"] = ernie_captions(runs / "ernie", samples) if (runs / "ernie" / "config.json").is_file() else None
    save_gallery(runs, samples[:8], ROOT / "docs" / "results" / "text_to_image.png")


def ernie_captions(run: Path, samples: list[Any]) -> dict[str, Any]:
    """The bidirectional model's other direction: its captions of real test pictures, scored by the caption
    parser (polymodal.eval.caption_parse) against the scene."""
    from polymodal.eval.caption_parse import attribute_report
    from polymodal.models.loading import load_model

    model = load_model(run)[0]
    caps: list[str] = []
    for i in range(0, len(samples), 32):
        caps.extend(model.caption_images([s.image for s in samples[i:i + 32]]))
    items = [(c, s.metadata["objects"], s.metadata["relation"], "en" if c.isascii() else "zh")
             for c, s in zip(caps, samples, strict=True)]
    return {"report": attribute_report(items), "examples": caps[:6]}


def save_gallery(runs: Path, samples: list[Any], out: Path) -> None:
    """Rows: the real pictures, then each generator's picture of the same scenes' English captions (seed 0)."""
    from PIL import Image

    from polymodal.models.t2i_front import ImageOptions, load_image_generator

    rows = [np.concatenate([s.image for s in samples], axis=1)]
    prompts = [s.metadata["captions"]["en"] for s in samples]
    for _, run, opts in GALLERY_ROWS:
        if (runs / run / "config.json").is_file():
            pics = load_image_generator(runs / run).generate_images(prompts, options=ImageOptions(seed=0, **opts))
            rows.append(np.concatenate(pics, axis=1))
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(out)


def cost_probe(run: str, opts: dict[str, Any]) -> dict[str, Any]:
    """In this (fresh) process: time COST_IMAGES pictures after one warm-up call; peak memory of the process."""
    from polymodal.models.t2i_front import ImageOptions, load_image_generator

    torch.set_num_threads(1)
    gen = load_image_generator(run)
    loaded = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    prompts = ["a small red star above a large blue square"] * COST_IMAGES
    gen.generate_images(prompts[:2], options=ImageOptions(seed=0, **opts))
    t0 = time.perf_counter()
    gen.generate_images(prompts, options=ImageOptions(seed=0, **opts), batch_size=8)
    sec = time.perf_counter() - t0
    return {"s_per_image": round(sec / COST_IMAGES, 4), "images_per_s": round(COST_IMAGES / sec, 2),
            "loaded_rss_mb": round(loaded, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def costs(runs: Path) -> list[dict[str, Any]]:
    out = []
    for run, opts in COST:
        if not (runs / run / "config.json").is_file():
            continue
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        proc = subprocess.run([sys.executable, __file__, "--cost-probe", str(runs / run), json.dumps(opts)], env=env,
                              stdout=subprocess.PIPE, text=True, check=True)
        out.append({"run": run, **opts, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return out


def machine() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "threads_per_run": 1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "t2i")
    ap.add_argument("--data", type=Path, default=ROOT / "data_cache" / "t2i" / "base")
    ap.add_argument("--n", type=int, default=16000, help="scenes in the generated data (all splits)")
    ap.add_argument("--steps", type=int, default=1500, help="training steps of every generator (equal budget)")
    ap.add_argument("--samples", type=int, default=200, help="test scenes judged (x2 languages)")
    ap.add_argument("--reuse", action="store_true", help="adopt finished runs of the same step count")
    ap.add_argument("--only", default="train,judges,eval,cost")
    ap.add_argument("--cost-probe", nargs=2, metavar=("RUN", "OPTIONS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cost_probe:
        print(json.dumps(cost_probe(args.cost_probe[0], json.loads(args.cost_probe[1]))))
        return 0
    only = set(args.only.split(","))
    runs = args.runs
    runs.mkdir(parents=True, exist_ok=True)
    store = runs / "bench_results.json"
    results: dict[str, Any] = json.loads(store.read_text()) if store.is_file() else {}
    data = ensure_data(args.data, args.n)
    if "train" in only:
        training = results.setdefault("training", {})
        for name, (recipe, steps, sets) in SOURCES.items():
            training[name] = train(recipe, data, runs / name, steps, sets, args.reuse)
        for name, (recipe, sets) in GENERATORS.items():
            sets = [s.format(runs=runs) for s in sets]
            training[name] = train(recipe, data, runs / name, args.steps, sets, args.reuse)
        for name, base in LONGER.items():
            training[name] = continue_run(runs / base, runs / name, 3 * args.steps, args.reuse, data)
    if "judges" in only:
        judges(runs)  # fits and saves the parser once
    if "eval" in only:
        evaluate_all(runs, data, args.samples, results)
    if "gallery" in only:
        save_gallery(runs, test_samples(data, 8), ROOT / "docs" / "results" / "text_to_image.png")
    if "cost" in only:
        results["cost"] = costs(runs)
    results["machine"] = machine()
    store.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    from t2i_report import summary_line, write_report

    text = write_report(ROOT / "docs" / "results" / "text_to_image.md", results)
    print(text)
    print(json.dumps(summary_line(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
