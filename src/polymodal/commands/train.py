"""`polymodal train RECIPE --data DIR --out RUN ...` (also under ``torchrun --nproc_per_node N -m polymodal``)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from ..config import Override, Recipe
from ..errors import ConfigError, InvalidInput, NotFound
from ..recipes import list_recipes, load_recipe
from ..rundir import CONFIG

DESCRIPTION = """\
Train a recipe on a data dir into a run dir, in one process or data-parallel under torchrun. Every kind of
recipe trains the same way (same flags, checkpoints, --resume and run dir):
  alignment  contrastive towers, one encoder per modality (CLIP, SigLIP, LiT, AudioCLIP, ImageBind style);
             the run embeds any of its modalities into one space (polymodal.load, index, search, serve)
  fusion     classifiers: modality encoders, a fusion (early, late, attention, tensor, low-rank tensor,
             cross-modal, shared-private) and a class head; trained with missing-modality dropout,
             evaluated with `polymodal eval` (accuracy, robustness to missing/noisy modalities)
A modality-completion head is fitted on a trained fusion model from Python (polymodal.train.completion).
"""

EXAMPLES = """\
examples:
  polymodal data make shapes --out data/shapes --n 3000
  polymodal train clip_tiny --data data/shapes --out runs/clip
  polymodal train clip_tiny --data data/shapes --out runs/clip2 --set train.lr=5e-4 model.encoders.text.layers=4
  polymodal train lit_minilm --data data/shapes --out runs/lit --lock text --minutes 10
  polymodal data make digits --out data/digits --n 2000
  polymodal train fusion_late --data data/digits --out runs/late --steps 400
  polymodal train --resume --data data/shapes --out runs/clip            (continue exactly where it stopped)
  torchrun --standalone --nproc_per_node 2 -m polymodal train clip_tiny --data data/shapes --out runs/ddp

train.batch_size is the GLOBAL batch per optimizer step: the same recipe trains on the same batches with
1 or N processes and any --set train.accum_freq=K (it must divide by processes x accum_freq).
Overrides: --set KEY=VALUE with dotted keys into the recipe JSON; the value must have the key's type and
range (+KEY=VALUE adds a key inside model or data.transform). An invalid recipe, override or flag exits
with code 2, a failure while training with code 1.
"""

ARCHS = {"alignment": "contrastive alignment", "fusion": "fusion classifiers"}


def _recipe_listing() -> str:
    """The packaged recipes grouped by arch (read from their JSON: no model code is loaded for --help)."""
    by_arch: dict[str, list[str]] = {}
    for name in list_recipes():
        try:
            arch = load_recipe(name).arch
        except ConfigError:
            arch = "?"
        by_arch.setdefault(arch, []).append(name)
    lines = ["packaged recipes (`polymodal train --list` describes each one):"]
    for arch, names in sorted(by_arch.items()):
        lines.append(f"  {arch} ({ARCHS.get(arch, 'arch ' + arch)}):")
        lines += textwrap.wrap(", ".join(names), width=108, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="polymodal train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION, epilog=EXAMPLES + "\n" + _recipe_listing())
    p.add_argument("recipe", nargs="?", help="packaged recipe name (any arch, see below) or path to a recipe "
                   ".json (optional with --resume: the run's own recipe)")
    p.add_argument("--data", help="data dir (generated data set, WebDataset shards, JSONL or folder) holding "
                   "the modalities the recipe needs (and the labels, for a fusion classifier)")
    p.add_argument("--out", help="run dir to create (or to continue with --resume)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override recipe values, e.g. train.lr=1e-3 model.encoders.text.layers=4 "
                        "model.fusion.hidden=32")
    p.add_argument("--lock", action="append", default=[], metavar="MODALITY",
                   help="alignment recipes: freeze this tower (LiT), e.g. --lock text; repeat or comma-separate "
                        "(a fusion recipe freezes encoders taken from an alignment run with "
                        "model.init_from.freeze=true)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint that verifies")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_int_at_least(1), metavar="N",
                        help="optimizer steps, >= 1 (replaces the recipe's length)")
    length.add_argument("--epochs", type=_positive_float, metavar="E", help="passes over the training split, > 0")
    length.add_argument("--minutes", type=_positive_float, metavar="M",
                        help="wall-clock budget, > 0; the cosine schedule follows time")
    p.add_argument("--stop-after", type=_int_at_least(1), metavar="N",
                   help="stop with a checkpoint once N >= 1 steps are done, without changing the schedule "
                        "(resume later)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--threads", type=_int_at_least(1), metavar="N",
                   help="torch CPU threads per process, >= 1 (default: torch's; tiny models on a few busy "
                        "cores often train fastest with 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe JSON and exit")
    p.add_argument("--list", action="store_true", help="list the packaged recipes and exit")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def resolve_recipe(args: argparse.Namespace) -> Recipe:
    """Recipe from the name/path (or the run dir when resuming), then --set, --lock and the length flags."""
    if args.recipe is not None:
        recipe = load_recipe(args.recipe)
    elif args.resume and args.out:
        recipe = _run_recipe(Path(args.out))
    else:
        raise ConfigError("give a recipe name or path (see --list)", field="recipe")
    # --set is text to parse; the flags are already typed values, so they go in as (key, value) pairs.
    overrides: list[Override] = list(args.overrides)
    locks = [m.strip() for item in args.lock for m in item.split(",") if m.strip()]
    if locks:
        current = list(recipe.model.get("locked", []))
        overrides.append(("+model.locked", sorted(set(current) | set(locks))))
    if args.steps is not None:
        overrides += [("train.steps", args.steps), ("train.epochs", None)]
    if args.epochs is not None:
        overrides += [("train.epochs", args.epochs), ("train.steps", None)]
    if args.minutes is not None:
        overrides += [("train.minutes", args.minutes), ("train.steps", None), ("train.epochs", None)]
    recipe = recipe.with_overrides(overrides) if overrides else recipe
    from ..models.registry import model_config

    model_config(recipe.arch, recipe.model)  # the arch and its model section, checked before any run starts
    return recipe


def _run_recipe(run: Path) -> Recipe:
    """The recipe a run was trained with: from RUN/config.json, else (damaged or missing) from the config of
    its newest checkpoint that has a readable one."""
    from ..rundir import checkpoint_candidates, read_run_config

    errors: list[InvalidInput | NotFound] = []
    for folder in (run, *checkpoint_candidates(run)):
        try:
            cfg = read_run_config(folder)
        except (InvalidInput, NotFound) as err:
            errors.append(err)
            continue
        return Recipe.from_dict(cfg["recipe"], source=str(folder / CONFIG))
    raise errors[0]  # the run's own config.json: the first place looked


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, printed): main() returns the code
        return int(exc.code or 0)
    if args.list:
        names = list_recipes()
        width = max(map(len, names), default=0) + 2
        for name in names:
            r = load_recipe(name)
            print(f"{name:<{width}}{r.arch:<11}{r.description}")
        return 0
    try:  # an invalid recipe, override or flag: one line and exit code 2, like a usage error
        recipe = resolve_recipe(args)
        if not args.print_recipe:
            for flag in ("data", "out"):
                if not getattr(args, flag):
                    raise ConfigError(f"--{flag} is required", field=f"--{flag}")
    except ConfigError as err:
        print(f"polymodal train: error: {err}", file=sys.stderr)
        return 2
    if args.print_recipe:
        print(json.dumps(recipe.to_dict(), indent=1))
        return 0
    from ..train.trainer import train

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    result = train(recipe, args.data, args.out, resume=args.resume, device=args.device,
                   progress=not args.no_progress, stop_after=args.stop_after)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        loss = "n/a" if result.loss is None else f"{result.loss:.4f}"
        val = "" if result.val_loss is None else f", val loss {result.val_loss:.4f}"
        n_bad = result.skipped["count"]
        bad = f", skipped {n_bad} bad item(s) (data.on_error=skip)" if n_bad else ""
        print(f"trained {result.step} steps ({result.samples_seen} samples, {result.samples_per_s:.0f}/s), "
              f"loss {loss}{val}{bad} -> {result.run_dir}")
    return 0
