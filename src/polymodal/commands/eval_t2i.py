"""`polymodal eval RUN --task text_to_image`: a text->image run (latent_diffusion, token_ar) draws the captions of
a `shapes` split and judges trained on real pictures score what it drew (`polymodal.eval.t2i`):

    polymodal eval runs/ldm --data data/shapes --task text_to_image --judge runs/clip --n-per-prompt 2

- the scene parser (``--parser DIR``, default ``RUN/judges/parser``; an empty DIR gets the standard parser,
  fitted once and saved there) reads every picture back into objects: attribute accuracy, counts, relations;
- ``--judge MODEL`` (an alignment run or any embedding model): CLIP score, R-precision, Frechet distance;
- ``--real`` scores the data's own pictures instead (the judges' ceiling: nothing is generated).

Output: a table of groups x metrics (``--json``: one object), ``--out FILE`` one JSON line per picture, and
``report.html`` (``--report FILE``) with a gallery of the first ``--gallery K`` pictures, their prompts and marks.
`eval.py` calls `add_t2i_args`, `check_t2i_flags`, `check_t2i_task`, `evaluate_text_to_image` and `format_t2i`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInput
from ..models.t2i_config import LANGS
from ..models.t2i_front import IMAGE_ARCHS, SAMPLERS, ImageGenerator, ImageOptions
from ..report.gallery import GalleryItem

if TYPE_CHECKING:  # the judges import scipy: loaded when a text_to_image evaluation runs
    from ..eval.scene_parser import SceneParser
    from ..eval.t2i import T2IImage

T2I_TASK = "text_to_image"
NEEDS_T2I = f"a text->image run ({' or '.join(IMAGE_ARCHS)})"
# dest -> flag of the options only --task text_to_image takes (refused on the other tasks)
T2I_FLAGS = {"judge": "--judge", "parser": "--parser", "n_per_prompt": "--n-per-prompt", "guidance": "--guidance",
             "steps": "--steps", "seed": "--seed", "sampler": "--sampler", "max_samples": "--max-samples",
             "real": "--real", "gallery": "--gallery", "report": "--report"}
# dest -> flag of the other tasks' options that mean nothing here (refused with --task text_to_image)
OTHER_FLAGS = {"all_captions": "--all-captions", "modalities": "--modalities", "label_field": "--label-field",
               "classes": "--classes", "robustness": "--robustness", "late_fusion": "--late-fusion",
               "runtime": "--runtime", "candidates": "--candidates", "rerank_k": "--rerank-k", "shots": "--shots",
               "fewshot_tasks": "--fewshot-tasks", "limit_queries": "--limit-queries",
               "baseline_model": "--baseline-model", "blind": "--blind", "train_split": "--train-split",
               "beams": "--beams", "max_new_tokens": "--max-new-tokens", "meteor": "--no-meteor",
               "batch_size": "--batch-size"}
PARSER_DIR = ("judges", "parser")  # under the run: the default --parser
TABLE = (("attribute", "attribute"), ("color", "color"), ("shape", "shape"), ("size", "size"),
         ("position", "position"), ("count", "count"), ("relation", "relation"), ("scene", "scene"))
JUDGE_TABLE = (("clip_score", "CLIP"), ("r_precision", "R-prec"), ("frechet", "FD"))


def lang_arg(text: str) -> str:
    """--lang: one language, or (text_to_image) a comma list of them, each of `LANGS`."""
    parts = [x.strip() for x in text.split(",")]
    if not all(parts) or any(x not in LANGS for x in parts) or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(f"expected {' or '.join(LANGS)}, or (--task text_to_image) a comma list "
                                         f"of them, got {text!r}")
    return ",".join(parts)


def add_t2i_args(p: argparse.ArgumentParser) -> None:
    """The flags of --task text_to_image (`polymodal eval`'s --data, --split, --limit, --lang, --out, --json,
    --device and --no-progress apply too)."""
    g = p.add_argument_group("text->image runs (--task text_to_image: latent_diffusion, token_ar)", (
        "The captions of --data's split are drawn and judged (docs/evaluation.md); --lang en,zh: the languages "
        "(default: the run's); --out FILE: one JSON line per picture (prompt, what the parser read, marks)."))
    g.add_argument("--judge", metavar="MODEL", help="an alignment run or pretrained embedding model: CLIP score, "
                   "R-precision and Frechet distance in its image space (default: only the scene parser's numbers)")
    g.add_argument("--parser", metavar="DIR", help="a saved scene parser; a DIR without one gets the standard "
                   "parser, fitted now (~2 min on one core) and saved there (default: RUN/judges/parser)")
    g.add_argument("--n-per-prompt", type=int, default=1, metavar="K", help="pictures per prompt (1)")
    g.add_argument("--guidance", type=float, metavar="G", help="classifier-free guidance scale (default: the run's)")
    g.add_argument("--steps", type=int, metavar="N", help="diffusion sampling steps (default: the run's)")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="picture k is drawn with seed S + k (0)")
    g.add_argument("--sampler", choices=SAMPLERS, help="diffusion sampler (default: the run's)")
    g.add_argument("--max-samples", type=int, default=200, metavar="N",
                   help="samples whose captions are drawn (200; one prompt per sample and language)")
    g.add_argument("--real", action="store_true", help="score the data's own pictures instead of generating "
                   "(the judges' ceiling)")
    g.add_argument("--gallery", type=int, default=24, metavar="K", help="pictures shown in report.html (24)")
    g.add_argument("--report", metavar="FILE", help="where report.html goes (default: RUN/judges/report.html; "
                   "report_real.html with --real)")


def _given(args: argparse.Namespace, p: argparse.ArgumentParser, flags: dict[str, str]) -> list[str]:
    return [flag for dest, flag in flags.items() if getattr(args, dest) != p.get_default(dest)]


def check_t2i_flags(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """Before anything is read: flags of one kind of task are refused on the other, and the values checked.
    For text_to_image, ``args.limit`` becomes the number of samples to read (--limit, else --max-samples)."""
    if args.task != T2I_TASK:
        wrong = _given(args, p, T2I_FLAGS)
        if wrong:
            raise InvalidInput(f"{wrong[0]} is for --task text_to_image (a text->image run)", field=wrong[0])
        if args.lang and "," in args.lang:
            raise InvalidInput(f"--task {args.task} takes one language, got {args.lang}", field="--lang")
        return
    wrong = _given(args, p, OTHER_FLAGS)
    if wrong:
        raise InvalidInput(f"{wrong[0]} does not apply to --task text_to_image", field=wrong[0])
    for flag, value, low in (("--n-per-prompt", args.n_per_prompt, 1), ("--max-samples", args.max_samples, 1),
                             ("--gallery", args.gallery, 0), ("--limit", args.limit, 1)):
        if value is not None and value < low:
            raise InvalidInput(f"must be >= {low}, got {value}", field=flag)
    if args.limit is not None and args.max_samples != p.get_default("max_samples"):
        raise InvalidInput("give --max-samples or --limit, not both", field="--max-samples")
    drawing = {"guidance": "--guidance", "steps": "--steps", "sampler": "--sampler", "seed": "--seed",
               "n_per_prompt": "--n-per-prompt"}
    if args.real and (wrong := _given(args, p, drawing)):
        raise InvalidInput(f"--real scores the data's pictures: nothing is drawn, so {wrong[0]} does not apply",
                           field=wrong[0])
    image_options(args)
    args.limit = args.max_samples if args.limit is None else args.limit


def check_t2i_task(run: str, task: str, arch: str) -> None:
    """An image run needs --task text_to_image, and --task text_to_image an image run."""
    if arch in IMAGE_ARCHS and task != T2I_TASK:
        raise InvalidInput(f"{run} is a text->image ({arch}) run: evaluate it with --task text_to_image",
                           field="--task")
    if task == T2I_TASK and arch not in IMAGE_ARCHS:
        raise InvalidInput(f"--task text_to_image needs {NEEDS_T2I}; {run} is a{'n' if arch[:1] in 'aeiou' else ''} "
                           f"{arch!r} run", field="--task")


def image_options(args: argparse.Namespace) -> ImageOptions:
    """The sampling options, checked (the error names the flag)."""
    options = ImageOptions(steps=args.steps, guidance=args.guidance, seed=args.seed, sampler=args.sampler)
    try:
        options.check()
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field=f"--{exc.field}" if exc.field else None) from None
    return options


# ----------------------------------------------------------------------------------------------- evaluate

def _say(text: str) -> None:
    print(f"polymodal eval: {text}", file=sys.stderr, flush=True)


def _langs(args: argparse.Namespace, gen: ImageGenerator | None) -> list[str]:
    """--lang, else the languages the run reads; a language the run does not read is refused."""
    if gen is not None:
        run_langs = list(gen.langs)
    else:
        from ..models import resolve_run
        from ..models.registry import model_config
        from ..rundir import read_run_config

        cfg = read_run_config(resolve_run(args.run))
        run_langs = list(model_config(str(cfg["arch"]), cfg["model"]).langs)
    langs = args.lang.split(",") if args.lang else run_langs
    bad = [x for x in langs if x not in run_langs]
    if bad:
        raise InvalidInput(f"{args.run} reads {', '.join(run_langs)}, not {bad[0]}", field="--lang")
    return langs


def _parser(args: argparse.Namespace) -> tuple[SceneParser, str, bool]:
    """(scene parser, its folder, whether it was fitted now)."""
    from tqdm import tqdm

    from ..eval import t2i
    from ..rundir import CONFIG

    folder = Path(args.parser) if args.parser else Path(args.run).joinpath(*PARSER_DIR)
    if folder.exists() and not folder.is_dir():
        raise InvalidInput("not a folder (a scene parser is a folder)", field="--parser", source=str(folder))
    if (folder / CONFIG).is_file():
        _say(f"scene parser: {folder}")
        return t2i.standard_parser(folder), str(folder), False
    _say(f"no scene parser in {folder}: fitting the standard one ({t2i.STANDARD_SCENES} real shapes pictures of "
         f"seed {t2i.STANDARD_SEED}, {t2i.STANDARD_STEPS} steps; ~2 min on one core) and saving it there")
    with tqdm(total=t2i.STANDARD_STEPS, desc="fit parser", unit="step", disable=args.no_progress) as bar:
        def progress(step: int, steps: int, loss: float) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        parser = t2i.standard_parser(folder, progress)
    return parser, str(folder), True


def _marks_line(item: T2IImage) -> str:
    """What the parser read in a picture, and which asked-for parts it did not find."""
    read = ", ".join(f"{o['size']} {o['color']} {o['shape']} ({o['position']})" for o in item.parsed) or "nothing"
    wrong = [f"object {i + 1} {part}" for i, o in enumerate(item.marks["objects"])
             for part in ("color", "shape", "size", "position") if not o[part]]
    return f"read: {read}" + (f"; wrong: {', '.join(wrong)}" if wrong else "")


def gallery(images: list[T2IImage], n: int, k: int) -> list[GalleryItem]:
    """The first ``k`` judged pictures as gallery cards, one card per prompt (its ``n`` pictures together):
    mean attribute accuracy and scenes right as scores, what the parser read in the first as the caption."""
    from ..eval.t2i_judges import PARTS

    cards = []
    for lo in range(0, min(k, len(images)), n):
        rows = images[lo:min(lo + n, k)]
        attribute = [float(np.mean([o[p] for o in r.marks["objects"] for p in PARTS])) for r in rows]
        scenes = sum(bool(r.marks["scene"]) for r in rows)
        cards.append(GalleryItem(rows[0].prompt, [r.image for r in rows], lang=rows[0].lang,
                                 scores={"attribute": float(np.mean(attribute)), "scene": scenes / len(rows)},
                                 caption=_marks_line(rows[0])))
    return cards


def _write_lines(path: str, images: list[T2IImage], n: int) -> None:
    from .._io import atomic_write_bytes

    rows = [{"sample_id": im.sample_id, "prompt": im.prompt, "lang": im.lang, "picture": i % n,
             "parsed": im.parsed, "marks": im.marks} for i, im in enumerate(images)]
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def _html(args: argparse.Namespace, result: dict[str, Any], images: list[T2IImage]) -> str:
    from ..report import write_report

    path = Path(args.report) if args.report else Path(args.run).joinpath(
        PARSER_DIR[0], "report_real.html" if args.real else "report.html")
    meta: dict[str, Any] = {"run": args.run, "data": f"{args.data} [{args.split or 'all'}]",
                            "pictures": "the data's own (--real)" if args.real else
                            f"drawn by {result['source']}, {result['n_per_prompt']} per prompt",
                            "scene parser": result["judges"]["parser"],
                            "embedding judge": result["judges"]["embedding"] or "none (--judge)",
                            "samples": result["samples"], "images": result["images"]}
    meta.update({f"group {name}": " | ".join(f"{label} {_text(g.get(key, g['parser'].get(key)))}"
                                             for key, label in (*TABLE, *JUDGE_TABLE)
                                             if key in g or key in g["parser"])
                 for name, g in result["groups"].items()})
    results = {"title": "polymodal eval: text -> image", "subtitle": f"{args.run} on {args.data}", "meta": meta,
               "generated_images": gallery(images, result["n_per_prompt"], args.gallery),
               "notes": ["attribute: per asked-for object, color, shape, size and position as the scene parser "
                         "read them; scene: every object and the count right. CLIP: 100 x cosine; R-prec: "
                         "R-precision; FD: Frechet distance in the judge's image space (lower is better)."]}
    return str(write_report(results, path))


def evaluate_text_to_image(args: argparse.Namespace, samples: list[Any]) -> dict[str, Any]:
    """Load the run (unless --real), the judge and the parser; draw and judge; write --out and report.html."""
    from tqdm import tqdm

    from ..eval.t2i import evaluate_t2i
    from ..models import load_embedding_model
    from ..models.t2i_front import load_image_generator

    options = image_options(args)
    gen = None
    if not args.real:
        _say(f"loading the model {args.run}")
        gen = load_image_generator(args.run, args.device)
    langs = _langs(args, gen)
    judge = None
    if args.judge:  # before the parser: a wrong judge fails before a long fit
        _say(f"loading the embedding judge {args.judge}")
        judge = load_embedding_model(args.judge, device=args.device)
    parser, parser_dir, fitted = _parser(args)
    what = "scoring the data's own pictures" if gen is None else f"drawing {args.n_per_prompt} picture(s) per prompt"
    _say(f"{what}: {len(samples)} samples x {len(langs)} language(s) ({', '.join(langs)})")
    total = len(samples) * len(langs) * args.n_per_prompt
    with tqdm(total=total, desc="generate", unit="image", disable=args.no_progress or gen is None) as bar:
        report, images = evaluate_t2i(gen, samples, parser=parser, embedder=judge, n_per_prompt=args.n_per_prompt,
                                      options=options, langs=langs, progress=lambda done, _: bar.update(done - bar.n))
    result: dict[str, Any] = {**report, "options": None if gen is None else asdict(options),
                              "judges": {"parser": parser_dir, "parser_fitted": fitted, "embedding": args.judge}}
    if args.out:
        _write_lines(args.out, images, args.n_per_prompt)
        result["out"] = args.out
        _say(f"wrote {len(images)} judged pictures to {args.out}")
    result["report_html"] = _html(args, result, images)
    _say(f"report: {result['report_html']}")
    return result


# ----------------------------------------------------------------------------------------------- table

def _text(v: Any) -> str:
    return "-" if v is None or isinstance(v, bool) else f"{v:.3f}" if isinstance(v, float) else str(v)


def format_t2i(r: dict[str, Any]) -> list[str]:
    """Groups x metrics: the scene parser's marks, then (with a judge) CLIP score, R-precision and FD."""
    judged = r["judges"]["embedding"] is not None
    cols = [*TABLE, *(JUDGE_TABLE if judged else ())]
    source = "the data's own pictures (--real)" if r["speed"] is None else f"{r['n_per_prompt']} per prompt"
    lines = [f"{r['samples']} samples, {r['prompts']} prompts ({', '.join(r['langs'])}), {r['images']} pictures: "
             f"{source}", f"scene parser: {r['judges']['parser']}"
             + (" (fitted now)" if r["judges"]["parser_fitted"] else "")
             + (f"; embedding judge: {r['judges']['embedding']}" if judged else ""), ""]
    first = max(len("group"), *(len(g) for g in r["groups"])) + 2
    widths = [max(8, len(label) + 2) for _, label in cols]
    lines.append(f"{'group':<{first}}{'images':>8}" + "".join(f"{label:>{w}}" for (_, label), w
                                                               in zip(cols, widths, strict=True)))
    for name, g in r["groups"].items():
        values = [g.get(key, g["parser"].get(key)) for key, _ in cols]
        lines.append(f"{name:<{first}}{g['images']:>8}" + "".join(f"{_text(v):>{w}}" for v, w
                                                                  in zip(values, widths, strict=True)))
    if judged:
        lines.append(f"R-precision candidates per language: {r['r_precision_candidates']}")
    if r["speed"] is not None:
        s = r["speed"]
        lines.append(f"speed: {s['seconds_per_image']:.3f} s per picture ({s['images']} in {s['seconds']:.1f} s, "
                     f"{s['calls']} calls; median call {s['median_call_seconds_per_image']:.3f} s per picture)")
    lines.append(f"report: {r['report_html']}" + (f"; pictures' marks: {r['out']}" if "out" in r else ""))
    return lines


__all__ = ["T2I_TASK", "add_t2i_args", "check_t2i_flags", "check_t2i_task", "evaluate_text_to_image",
           "format_t2i", "gallery", "image_options", "lang_arg"]
