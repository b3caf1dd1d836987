"""`polymodal generate RUN --prompt TEXT` for a text->image run (arch latent_diffusion or token_ar): PNG files.

    polymodal generate runs/ldm --prompt "a red star above a blue square" --n 4 --guidance 3 --steps 25 --seed 0
    polymodal generate runs/ldm --prompt "a red star" --prompt "一个蓝色的圆" --out pictures --json

Picture ``j`` of prompt ``i`` is ``OUT/RUNNAME_pII_JJ.png``, drawn with seed ``seed + i * n + j`` (no --seed: one is
drawn and printed), so one picture can be made again alone. ``OUT/generated.json`` records, for every file the
command wrote there, the run, prompt, seed and options; a file that exists and was not written by this run
(another run, or unknown) is never replaced without --overwrite. `generate.py` dispatches here, and keeps the
flags of one kind of run off the other."""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, json_bytes
from ..data.codec import encode_image
from ..errors import Conflict, InvalidInput, ModelOutputError
from ..models.t2i_front import SAMPLERS, ImageGenerator, ImageOptions, check_request, load_image_generator

MANIFEST = "generated.json"
DEFAULT_OUT = "generated"
MAX_SEED = 2**32 - 1
# dest -> flag of the options that apply to one kind of run only
IMAGE_ONLY = {"n": "--n", "guidance": "--guidance", "steps": "--steps", "sampler": "--sampler",
              "overwrite": "--overwrite"}
TEXT_ONLY = {"image": "--image", "video": "--video", "video_frames": "--video-frames", "audio": "--audio",
             "stream": "--stream", "data": "--data", "split": "--split", "limit": "--limit", "lang": "--lang",
             "max_new_tokens": "--max-new-tokens", "beams": "--beams", "sample": "--sample", "top_p": "--top-p",
             "repetition_penalty": "--repetition-penalty", "stop": "--stop", "use_cache": "--no-cache"}


def add_image_args(p: argparse.ArgumentParser) -> None:
    """The flags of text->image runs (`polymodal generate`'s other flags that apply: --prompt, --seed,
    --temperature and --top-k for token models, --out, --batch-size, --device, --json)."""
    g = p.add_argument_group("text->image runs (latent_diffusion, token_ar)", (  # the parser keeps line breaks
        "--prompt TEXT (repeatable) -> PNG files in --out DIR (default ./generated), named RUNNAME_pII_JJ.png\n"
        "(prompt i, picture j), recorded in DIR/generated.json; the paths are printed (--json: one object with\n"
        "prompt, seed and path per picture, and seconds per picture). --seed S: picture k of the call uses\n"
        "seed S + k (default: a random S, printed). --temperature and --top-k apply to token_ar runs."))
    g.add_argument("--n", type=int, metavar="N", help="pictures per prompt (default 1)")
    g.add_argument("--guidance", type=float, metavar="G",
                   help="classifier-free guidance scale (1: none; default: the run's)")
    g.add_argument("--steps", type=int, metavar="N", help="diffusion sampling steps (default: the run's)")
    g.add_argument("--sampler", choices=SAMPLERS, help="diffusion sampler: ddim (DDIM, eta 0) or dpm (DPM-Solver++ 2nd order, good at 10-20 steps); default: the run's")
    g.add_argument("--overwrite", action="store_true",
                   help="replace PNG files in --out that another run (or something else) wrote")


def given(args: argparse.Namespace, parser: argparse.ArgumentParser, flags: dict[str, str]) -> list[str]:
    """Which of ``flags`` the command line set (a value other than the parser's default)."""
    return [flag for dest, flag in flags.items() if getattr(args, dest) != parser.get_default(dest)]


def refuse_flags(args: argparse.Namespace, parser: argparse.ArgumentParser, image_run: bool) -> None:
    """Flags of the other kind of run are an error, not silently ignored."""
    wrong = given(args, parser, TEXT_ONLY if image_run else IMAGE_ONLY)
    if wrong:
        kind = "a text->image run, which draws pictures" if image_run else \
            "not a text->image run (--n, --guidance, --steps, --sampler and --overwrite are for those)"
        raise InvalidInput(f"{args.run} is {kind}: {', '.join(wrong)} does not apply", field=wrong[0])


# ------------------------------------------------------------------------------------------------ files

def run_stem(run: str) -> str:
    """The run folder's name, as file names hold it (``runs/ldm/`` -> ``ldm``)."""
    path = Path(run)
    name = path.name or path.resolve().name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


def file_names(stem: str, prompts: int, n: int) -> list[str]:
    """Prompt-major, as the pictures come: ``stem_pII_JJ.png``."""
    wp, wn = max(2, len(str(prompts - 1))), max(2, len(str(n - 1)))
    return [f"{stem}_p{i:0{wp}d}_{j:0{wn}d}.png" for i in range(prompts) for j in range(n)]


def read_manifest(out: Path) -> dict[str, Any]:
    """``{file name: {"run", "prompt", "seed", ...}}`` of what earlier calls wrote in ``out``."""
    path = out / MANIFEST
    if not path.is_file():
        return {}
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        raise InvalidInput(f"{path} is not a manifest of `polymodal generate`: move it, or give another --out",
                           field="--out") from None
    return files if isinstance(files, dict) else {}


def check_targets(out: Path, names: list[str], run: str, manifest: dict[str, Any], overwrite: bool) -> int:
    """How many of ``names`` exist already (written earlier by this run); another run's file -> `Conflict`."""
    if out.exists() and not out.is_dir():
        raise InvalidInput("not a folder", field="--out", source=str(out))
    existing = [n for n in names if (out / n).exists()]
    if not overwrite:
        for name in existing:
            owner = (manifest.get(name) or {}).get("run")
            if owner != run:
                by = f"the run {owner}" if owner else "something other than `polymodal generate`"
                raise Conflict(f"{out / name} was written by {by}: give another --out, or --overwrite to replace "
                               "it", field="--out")
    return len(existing)


# ------------------------------------------------------------------------------------------------ generate

def image_options(args: argparse.Namespace) -> ImageOptions:
    """The sampling options; without --seed a seed is drawn here, so that it can be printed and recorded."""
    seed = args.seed if args.seed is not None else secrets.randbelow(MAX_SEED + 1)
    return ImageOptions(steps=args.steps, guidance=args.guidance, seed=seed, sampler=args.sampler,
                        temperature=args.temperature, top_k=args.top_k)


def draw(gen: ImageGenerator, prompts: list[str], n: int, options: ImageOptions,
         batch_size: int) -> tuple[list[np.ndarray], float]:
    """(pictures, seconds), with a progress bar (and its ETA) on stderr."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    with tqdm(total=len(prompts) * n, desc="generate", unit="image", file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        images = gen.generate_images(prompts, n=n, options=options, progress=progress, batch_size=batch_size)
    if len(images) != len(prompts) * n:
        raise ModelOutputError(f"the run returned {len(images)} pictures for {len(prompts)} prompts x n={n}")
    return images, time.perf_counter() - t0


def write_pictures(out: Path, names: list[str], images: list[np.ndarray], prompts: list[str], n: int,
                   options: ImageOptions, run: str, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Write the PNG files and the manifest; one row (prompt, indices, seed, path) per picture."""
    assert options.seed is not None
    out.mkdir(parents=True, exist_ok=True)
    recorded = {k: v for k, v in asdict(options).items() if k != "seed" and v is not None}
    rows: list[dict[str, Any]] = []
    for k, (name, img) in enumerate(zip(names, images, strict=True)):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ModelOutputError(f"the run returned a {got} picture, not uint8 (H, W, 3)")
        atomic_write_bytes(out / name, encode_image(np.ascontiguousarray(img)), fsync=False)
        rows.append({"prompt": prompts[k // n], "prompt_index": k // n, "image_index": k % n,
                     "seed": options.seed + k, "path": str(out / name)})
        manifest[name] = {"run": run, "prompt": rows[-1]["prompt"], "seed": rows[-1]["seed"], "options": recorded}
    atomic_write_bytes(out / MANIFEST, json_bytes({"files": manifest}))
    return rows


def main_images(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`polymodal generate` for a text->image run (``args`` parsed by `generate._parser`)."""
    refuse_flags(args, parser, image_run=True)
    if not args.prompt:
        raise InvalidInput(f"{args.run} draws pictures: give --prompt TEXT (repeatable)", field="--prompt")
    n = 1 if args.n is None else args.n
    try:
        prompts, options = check_request(args.prompt, n, image_options(args))
    except InvalidInput as exc:   # name the flag, not the option's field
        raise InvalidInput(exc.message, field=f"--{exc.field.replace('_', '-')}" if exc.field else None) from None
    if args.batch_size < 1:
        raise InvalidInput(f"must be >= 1, got {args.batch_size}", field="--batch-size")
    out, run = Path(args.out or DEFAULT_OUT), str(Path(args.run).resolve())
    names = file_names(run_stem(args.run), len(prompts), n)
    manifest = read_manifest(out)
    replaced = check_targets(out, names, run, manifest, args.overwrite)
    gen = load_image_generator(args.run, args.device)
    again = f" (replacing {replaced} from an earlier call)" if replaced else ""
    print(f"polymodal generate: {len(names)} pictures of {len(prompts)} prompt(s) into {out}/{again}, seed "
          f"{options.seed}", file=sys.stderr)
    images, seconds = draw(gen, prompts, n, options, args.batch_size)
    rows = write_pictures(out, names, images, prompts, n, options, run, manifest)
    per_image = seconds / len(rows)
    if args.json:
        print(json.dumps({"run": args.run, "out": str(out), "seconds_per_image": round(per_image, 4),
                          "images": rows}, ensure_ascii=False))
    else:
        print("\n".join(r["path"] for r in rows))
        print(f"polymodal generate: {len(rows)} pictures in {seconds:.1f} s ({per_image:.2f} s each)",
              file=sys.stderr)
    return 0
