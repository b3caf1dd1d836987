"""`polymodal <command>`: parses the command name, then hands the rest to that module's ``main(argv)``."""

from __future__ import annotations

import importlib
import importlib.util
import sys

from .errors import PolymodalError

# command -> (module, function, one-line help). Modules are imported lazily so `--help` stays fast.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("polymodal.data.cli", "main", "make built-in data sets, inspect data dirs"),
    "train": ("polymodal.train.cli", "main", "train a recipe (alignment or fusion), 1 process or torchrun"),
    "eval": ("polymodal.eval.cli", "main", "evaluate a run: retrieval, zero-shot, classification/robustness"),
    "index": ("polymodal.index.cli", "main", "build a persistent FAISS collection from a data set"),
    "search": ("polymodal.index.cli", "search_main", "query a collection with text/image/audio/video"),
    "serve": ("polymodal.serve.cli", "main", "HTTP API + search page over a model and a collection"),
    "quickstart": ("polymodal.quickstart", "main", "the main job end to end on built-in data"),
}


def _available() -> dict[str, tuple[str, str, str]]:
    out = {}
    for name, spec in COMMANDS.items():
        try:
            found = importlib.util.find_spec(spec[0]) is not None
        except ImportError:  # a parent package needs an extra that is not installed
            found = False
        if found:
            out[name] = spec
    return out


def _usage(cmds: dict[str, tuple[str, str, str]]) -> str:
    lines = ["usage: polymodal <command> [options]", "", "Multimodal learning and cross-modal retrieval.", "",
             "commands:"]
    lines += [f"  {n:<11} {h}" for n, (_, _, h) in cmds.items()]
    lines += ["", "Run `polymodal <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:

    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = _available()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(cmds))
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in cmds:
        print(f"polymodal: unknown command '{name}'\n\n{_usage(cmds)}", file=sys.stderr)
        return 2
    module, func, _ = cmds[name]
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except PolymodalError as err:
        print(f"polymodal {name}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"polymodal {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
