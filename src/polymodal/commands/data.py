"""`polymodal data`: make built-in data sets, inspect any data set, convert between formats, clean noisy captions
(CapFilt)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..data.sample import MODALITIES
from ..data.synth import DATASETS, make_dataset
from ..errors import InvalidInput, NotFound, PolymodalError

_FORMATS_HELP = ("PATH may be a generated data set dir (manifest.json + split shard dirs), a WebDataset shard "
                 "dir (sizes.json / *.tar), a .jsonl manifest, or a folder of media files with .txt captions.")


def _add_read_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="data set to read. " + _FORMATS_HELP)
    p.add_argument("--split", default=None, help="one split of a generated data set dir (default: all splits)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="bad items (corrupt/missing file, unknown field, wrong rate): stop with an error naming "
                        "the file (raise, default) or skip them and report count + first names (skip)")
    p.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                   help="require all audio at this sample rate; other rates are bad items")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polymodal data", description="Make built-in data sets, inspect data sets, convert formats.",
        epilog="Run `polymodal data <command> --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = sub.add_parser("inspect", help="summarize a data set (counts, shapes, durations, captions)",
                       description="Stream through a data set once and print counts per modality, image sizes, "
                                   "audio durations and sample rates, video frame counts, caption lengths "
                                   "(characters) and languages, and what was skipped.")
    _add_read_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    p = sub.add_parser("make", help="generate a built-in benchmark data set (deterministic from --seed)",
                       description="Write a built-in data set as WebDataset shards per split plus manifest.json "
                                   "(byte-identical for the same arguments), then print its inspect summary.")
    p.add_argument("name", metavar="NAME", help="built-in data set: shapes, digits, or tabletop (oracle episodes of "
                   "the embodied world: one sample per step, --n tasks split 80/10/10; docs/embodied.md)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--n", type=int, default=1000, metavar="N", help="number of samples over all splits (default 1000)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--lang", default="en", metavar="L1,L2",
                   help="caption languages, comma-separated: en, zh (default en)")
    p.add_argument("--modalities", default=None, metavar="M1,M2",
                   help=f"modalities to generate, comma-separated from {','.join(MODALITIES)} "
                        "(default: all the data set has)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="K", help="samples per tar shard (default 1000)")
    p.add_argument("--caption-noise", type=float, default=0.0, metavar="P",
                   help="shapes only: give a fraction P of the TRAIN samples noisy alt-text instead of their "
                        "caption, half 'wrong' (another scene's caption), half 'unrelated' (file names, "
                        "'click here', random words); val/test stay clean (default 0)")
    p.add_argument("--conversations", action="store_true",
                   help="shapes only: add instruction-tuning conversations (describe, count, compare, relation, "
                        "format, follow-up; parallel in every --lang; held-out phrasings in test) and POPE "
                        "yes/no probes to every sample")
    p.add_argument("--spoken-questions", type=float, default=0.0, metavar="P",
                   help="with --conversations: a fraction P of each split's samples gets its first question "
                        "spoken (eSpeak NG) as the sample's audio, that conversation marked spoken (default 0)")
    p.add_argument("--workers", type=int, default=None, metavar="W",
                   help="worker processes (default: min(2, CPU count)); the output does not depend on it")
    p.add_argument("--json", action="store_true", help="print {manifest, inspect} as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")

    p = sub.add_parser("convert", help="rewrite a data set in another format",
                       description="Stream a data set into WebDataset shards, a folder, or a JSONL manifest.")
    _add_read_options(p)
    p.add_argument("--to", required=True, choices=("webdataset", "folder", "jsonl"), help="output format")
    p.add_argument("--out", required=True, type=Path, metavar="DEST",
                   help="output folder (webdataset, folder) or .jsonl file (jsonl; media go to DEST's folder/media)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="K", help="samples per tar shard (webdataset)")

    p = sub.add_parser("capfilt", help="clean noisy captions: a captioner writes, an ITM filter judges (BLIP CapFilt)",
                       description="For every sample of --split with a picture: a synthetic caption from the "
                                   "captioner run, and the filter run's image-text matching score of the original "
                                   "text and of the synthetic one. Keep the original if it scores >= T, else the "
                                   "synthetic one if it does, else drop the sample. Other splits are copied. "
                                   "Writes a new data set dir (shards + manifest.json with the counts).")
    p.add_argument("path", metavar="DATA", help="data set to clean. " + _FORMATS_HELP)
    p.add_argument("--captioner", required=True, type=Path, metavar="RUN", help="a captioner run (arch captioner)")
    p.add_argument("--filter", required=True, type=Path, metavar="RUN",
                   help="a vl_encoder run trained with image-text matching")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (new or empty)")
    p.add_argument("--threshold", type=float, default=0.5, metavar="T", help="P(match) to keep a text (default 0.5)")
    p.add_argument("--split", default="train", metavar="S", help="split to clean (default train)")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="caption by nucleus sampling (seed 0) as BLIP did, e.g. 0.9 (default: greedy)")
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def _csv(value: str | None, field: str, allowed: tuple[str, ...] | None = None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InvalidInput("expected a comma-separated list", field=field)
    bad = [v for v in items if allowed is not None and v not in allowed]
    if bad:
        raise InvalidInput(f"unknown value(s) {bad}; choose from {', '.join(allowed or ())}", field=field)
    return items


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise InvalidInput(f"must be >= 1, got {getattr(args, name)}", field="--" + name.replace("_", "-"))


def _open(args: argparse.Namespace) -> Any:
    from ..data.formats.dataset import open_dataset

    return open_dataset(args.path, split=args.split, on_error=args.on_error, expect_sample_rate=args.sample_rate)


def _warn_skipped(ds: Any) -> None:
    line = ds.policy.warning()
    if line is not None:
        print(f"polymodal data: warning: {line}", file=sys.stderr)


def _add_noise(info: dict[str, Any], manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's caption noise record (`make_dataset`), when the data set has noisy train captions."""
    noise = (manifest or {}).get("caption_noise")
    if isinstance(noise, dict) and noise.get("noisy"):
        info["caption_noise"] = noise
    return info


def _print_inspect(info: dict[str, Any], extra: dict[str, Any] | None, as_json: bool) -> None:
    from ..data.inspect import format_summary

    if as_json:
        print(json.dumps({**(extra or {}), "inspect": info} if extra else info, ensure_ascii=False, indent=1))
        return
    print(format_summary(info))
    noise = info.get("caption_noise")
    if noise:
        print(f"caption noise: {noise['noisy']} train samples (p {noise['p']:g}): "
              + ", ".join(f"{k} {v}" for k, v in noise.items() if k not in ("p", "noisy")))


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import inspect_dataset

    ds = _open(args)
    info = _add_noise(inspect_dataset(ds, progress=not args.no_progress), ds.manifest)
    _print_inspect(info, None, args.json)
    if args.json:  # the text summary lists them; with JSON on stdout, the console still says so
        _warn_skipped(ds)
    return 0


def cmd_make(args: argparse.Namespace) -> int:
    _positive(args, "n", "shard_size", *(["workers"] if args.workers is not None else []))
    langs = _csv(args.lang, "--lang", ("en", "zh")) or ["en"]
    modalities = _csv(args.modalities, "--modalities", MODALITIES)
    if args.name == "tabletop":
        return _make_tabletop(args, langs)
    if args.name not in DATASETS:
        raise NotFound(f"unknown data set '{args.name}'; available: {', '.join([*DATASETS, 'tabletop'])}",
                       field="NAME")
    optional = {"modalities": modalities} if modalities is not None else {}  # default: all the set has
    manifest = make_dataset(args.name, args.out, n=args.n, seed=args.seed, langs=langs,
                                  shard_size=args.shard_size, workers=args.workers,
                                  progress=not args.no_progress, caption_noise=args.caption_noise,
                                  conversations=args.conversations, spoken_questions=args.spoken_questions,
                                  **optional)
    from ..data.formats.dataset import open_dataset
    from ..data.inspect import inspect_dataset

    info = _add_noise(inspect_dataset(open_dataset(args.out), progress=not args.no_progress), manifest)
    _print_inspect(info, {"manifest": manifest}, args.json)
    return 0


def _make_tabletop(args: argparse.Namespace, langs: list[str]) -> int:
    """Oracle episodes of the tabletop world (`polymodal.envs`), ``--n`` tasks split 80/10/10."""
    from ..data.formats.dataset import open_dataset
    from ..data.inspect import inspect_dataset
    from ..envs.episodes import write_tabletop

    if args.caption_noise or args.conversations or args.spoken_questions or args.modalities:
        raise InvalidInput("tabletop takes --n, --seed, --lang and --shard-size only", field="NAME")
    n_val = n_test = max(1, args.n // 10)
    n_train = max(1, args.n - n_val - n_test)
    manifest = write_tabletop(args.out, n_train, n_val, n_test, seed=args.seed, langs=langs,
                              shard_size=args.shard_size)
    info = inspect_dataset(open_dataset(args.out), progress=not args.no_progress)
    _print_inspect(info, {"manifest": manifest}, args.json)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..data.formats import ShardWriter, write_folder, write_jsonl

    _positive(args, "shard_size")
    ds = _open(args)
    if args.to == "webdataset":
        with ShardWriter(args.out, args.shard_size) as writer:
            for s in ds:
                writer.write(s)
        n = sum(writer.sizes.values())
    elif args.to == "folder":
        n = write_folder(ds, args.out)
    else:
        n = write_jsonl(ds, args.out)
    print(f"wrote {n} samples to {args.out} ({args.to}); {ds.policy.summary()}")
    _warn_skipped(ds)
    return 0


def cmd_capfilt(args: argparse.Namespace) -> int:
    from ..jobs.capfilt import capfilt

    decoding = None if args.top_p is None else {"do_sample": True, "top_p": args.top_p, "seed": 0}
    result = capfilt(args.path, args.out, captioner=args.captioner, filter=args.filter, split=args.split,
                     threshold=args.threshold, decoding=decoding, progress=not args.no_progress)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
        return 0
    print(f"capfilt {result['split']}: {result['samples']} pictures: kept {result['original']} original, "
          f"{result['synthetic']} replaced by synthetic, {result['dropped']} dropped; wrote {args.out}")
    noise = result.get("noise")
    if noise:
        print(f"noisy texts removed {noise['noisy_removed']}/{noise['noisy']}, "
              f"clean texts removed {noise['clean_removed']}/{noise['clean']}")
    return 0


COMMANDS = {"inspect": cmd_inspect, "make": cmd_make, "convert": cmd_convert, "capfilt": cmd_capfilt}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): keep main() a plain function returning a code
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except PolymodalError as err:
        print(f"polymodal data {args.command}: error: {err}", file=sys.stderr)
        return 1
