"""`polymodal train RECIPE --data DIR --out RUN ...` (also under ``torchrun --nproc_per_node N -m polymodal``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..config import Override, Recipe
from ..errors import ConfigError
from ..recipes import list_recipes, load_recipe
from ..rundir import CONFIG

EPILOG = """\
examples:
  polymodal data make shapes --out data/shapes --n 3000
  polymodal train clip_tiny --data data/shapes --out runs/clip
  polymodal train clip_tiny --data data/shapes --out runs/clip2 --set train.lr=5e-4 model.encoders.text.layers=4
  polymodal train lit_minilm --data data/shapes --out runs/lit --lock text --minutes 10
  polymodal train --resume --data data/shapes --out runs/clip            (continue exactly where it stopped)
  torchrun --standalone --nproc_per_node 2 -m polymodal train clip_tiny --data data/shapes --out runs/ddp

train.batch_size is the GLOBAL batch per optimizer step: the same recipe trains on the same batches with
1 or N processes and any --set train.accum_freq=K (it must divide by processes x accum_freq).
Overrides: --set KEY=VALUE with dotted keys into the recipe JSON; the value must have the key's type
(+KEY=VALUE adds a key inside model or data.transform). Packaged recipes: """


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="polymodal train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a recipe (alignment: CLIP/SigLIP/LiT/ImageBind-style) on a data dir into a run dir.",
        epilog=EPILOG + ", ".join(list_recipes()))
    p.add_argument("recipe", nargs="?", help="packaged recipe name or path to a recipe .json "
                   "(optional with --resume: the run's own recipe)")
    p.add_argument("--data", help="data dir (generated data set, WebDataset shards, JSONL or folder)")
    p.add_argument("--out", help="run dir to create (or to continue with --resume)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override recipe values, e.g. train.lr=1e-3 model.encoders.text.layers=4")
    p.add_argument("--lock", action="append", default=[], metavar="MODALITY",
                   help="freeze this tower (LiT), e.g. --lock text; repeat or comma-separate")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (replaces the recipe's length)")
    length.add_argument("--epochs", type=float, help="passes over the training split")
    length.add_argument("--minutes", type=float, help="wall-clock budget; the cosine schedule follows time")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop with a checkpoint after N steps without changing the schedule (resume later)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads per process (default: torch's; tiny models on a few busy cores "
                        "often train fastest with 1)")
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
        from ..rundir import read_run_config

        recipe = Recipe.from_dict(read_run_config(args.out)["recipe"], source=str(Path(args.out) / CONFIG))
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        names = list_recipes()
        width = max(map(len, names), default=0) + 2
        for name in names:
            r = load_recipe(name)
            print(f"{name:<{width}}{r.arch:<11}{r.description}")
        return 0
    recipe = resolve_recipe(args)
    if args.print_recipe:
        print(json.dumps(recipe.to_dict(), indent=1))
        return 0
    for flag in ("data", "out"):
        if not getattr(args, flag):
            raise ConfigError(f"--{flag} is required", field=f"--{flag}")
    from ..train.trainer import train

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads must be >= 1", field="--threads")
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
        print(f"trained {result.step} steps ({result.samples_seen} samples, {result.samples_per_s:.0f}/s), "
              f"loss {loss}{val} -> {result.run_dir}")
    return 0
