"""`polymodal <command>`: the command-line layer. Each command is a module here with ``main(argv) -> int``;
argparse lives only in this package, and the library layers below never import it.

A command's module is imported only when that command runs, so ``polymodal --help`` does not load FAISS,
FastAPI or transformers; the imports are still plain ``import`` statements, so the import contracts see every
edge. A new command: a module here with ``main(argv) -> int``, one entry function and one line in COMMANDS."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .._version import __version__
from ..errors import PolymodalError

Main = Callable[[list[str]], int]


def _data(argv: list[str]) -> int:
    from . import data
    return data.main(argv)


def _train(argv: list[str]) -> int:
    from . import train
    return train.main(argv)


def _eval(argv: list[str]) -> int:
    from . import eval
    return eval.main(argv)


def _index(argv: list[str]) -> int:
    from . import index
    return index.main(argv)


def _search(argv: list[str]) -> int:
    from . import search
    return search.main(argv)


def _serve(argv: list[str]) -> int:
    from . import serve
    return serve.main(argv)


def _export(argv: list[str]) -> int:
    from . import export
    return export.main(argv)


def _embed(argv: list[str]) -> int:
    from . import embed
    return embed.main(argv)


def _generate(argv: list[str]) -> int:
    from . import generate
    return generate.main(argv)


def _chat(argv: list[str]) -> int:
    from . import chat
    return chat.main(argv)


def _quickstart(argv: list[str]) -> int:
    from . import quickstart
    return quickstart.main(argv)


# command -> (entry point, one-line help)
COMMANDS: dict[str, tuple[Main, str]] = {
    "data": (_data, "make built-in data sets, inspect and convert data dirs"),
    "train": (_train, "train a recipe (alignment, fusion or generative), 1 process or torchrun"),
    "eval": (_eval, "evaluate a run: retrieval, zero-shot, classification/robustness, captioning/VQA/ASR"),
    "index": (_index, "build, inspect and tune a persistent FAISS collection"),
    "search": (_search, "query a collection with text/image/audio/video"),
    "serve": (_serve, "HTTP API + search page over a model and a collection"),
    "export": (_export, "export a model's towers to ONNX (fp32 or INT8) to run without torch"),
    "generate": (_generate, "captions, answers, transcripts from a generative run (one input or a data set)"),
    "chat": (_chat, "chat with a run about pictures and clips (one message, or a conversation on stdin)"),
    "embed": (_embed, "batch-embed a data set into sharded arrays (local or on Ray), resumable"),
    "quickstart": (_quickstart, "the main job end to end on built-in data"),
}


def _usage() -> str:
    lines = ["usage: polymodal <command> [options]", "", "Multimodal learning and cross-modal retrieval.", "",
             "commands:"]
    lines += [f"  {n:<11} {h}" for n, (_, h) in COMMANDS.items()]
    lines += ["", "Run `polymodal <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"polymodal: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        return int(COMMANDS[name][0](rest) or 0)
    except PolymodalError as err:
        print(f"polymodal {name}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"polymodal {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
