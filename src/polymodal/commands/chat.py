"""`polymodal chat RUN`: talk with a run that chats (vqa, lm, captioner, asr; an mllm run), one message from the
command line or a conversation on stdin.

    polymodal chat runs/vqa --message "what color is the star?" --image pic.png [--json]
    polymodal chat runs/vqa                      # a conversation: one message per line

In a conversation, `/image PATH` and `/audio PATH` attach a file to your next message (any non-blank line),
`/reset` starts over and `/exit` (or the end of input) leaves; replies are printed as they are decoded (not with --beams; with --json, one
JSON line per reply). vqa, lm, captioner and asr runs answer single turns: they read the last message and the
latest picture or clip. Decoding flags are `polymodal generate`'s: greedy by default; --beams N, --sample
[--temperature T --top-k K --top-p P --seed S], --repetition-penalty R, --stop STR, --max-new-tokens N."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from ..errors import InvalidInput, PolymodalError
from ..lm.decoding import DecodingOptions
from ..models.chat import ChatMessage, ChatModel, finish_reason, load_chat_model
from .generate import TextStreamer, _options, add_decoding_args
from .search import load_inputs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polymodal chat", description=(
        "Chat with a run: one message (--message, with --image/--audio files), or a conversation read from stdin."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("run", metavar="RUN", help="a run that chats (arch vqa, lm, captioner, asr, or a chat arch such "
                                              "as mllm)")
    g = p.add_argument_group("one message (without --message: a conversation on stdin)")
    g.add_argument("--message", "-m", metavar="TEXT", help="your message")
    g.add_argument("--image", action="append", default=[], metavar="FILE", help="attach an image (repeatable)")
    g.add_argument("--audio", action="append", default=[], metavar="FILE", help="attach an audio file (repeatable)")
    g.add_argument("--stream", action="store_true", help="print the reply as it is decoded")
    p.add_argument("--system", metavar="TEXT", help="a system message before the conversation")
    add_decoding_args(p)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print {reply, finish_reason, usage, timing} as JSON")
    return p


def _tokenizer(model: ChatModel) -> Any:
    """The tokenizer of the TextGenerator the chat model decodes with (None if it has none)."""
    return getattr(getattr(model, "model", None), "tokenizer", None)


def reply(model: ChatModel, conversation: list[ChatMessage], options: DecodingOptions,
          stream: TextIO | None) -> dict[str, Any]:
    """The next reply to ``conversation`` as {reply, finish_reason, usage, timing}; ``stream``: write its text
    there as it is decoded (then the rest of the reply, which the stream may not have shown, and a newline)."""
    start = time.perf_counter()
    prompt_tokens = model.count_tokens(conversation)
    tok = _tokenizer(model)
    streamer = TextStreamer(tok.decode, stream, strip=True, end_line=False) if stream is not None and tok is not None and \
        options.streamable else None
    (text,) = model.chat([conversation], options, streamer)
    seconds = time.perf_counter() - start
    if stream is not None:
        shown = streamer.shown if streamer is not None else ""
        stream.write((text[len(shown):] if text.startswith(shown) else f"\n{text}") + "\n")
        stream.flush()
    tokens = len(tok.encode(text)) if tok is not None else len(text.split())
    return {"reply": text, "finish_reason": finish_reason(model, prompt_tokens, tokens, options),
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                      "total_tokens": prompt_tokens + tokens},
            "timing": {"reply_s": round(seconds, 4), "tokens_per_s": round(tokens / max(seconds, 1e-9), 2)}}


def _media(images: list[str], audio: list[str]) -> dict[str, Any]:
    def one(kind: str, path: str) -> Any:
        spec = {"text": None, "image": None, "audio": None, "video": None, "video_frames": None,
                "vector_file": None, kind: path}
        return load_inputs(argparse.Namespace(**spec))[kind]

    return {"images": tuple(one("image", p) for p in images), "audio": tuple(one("audio", p) for p in audio)}


def _one(model: ChatModel, args: argparse.Namespace, options: DecodingOptions, start: list[ChatMessage],
         load_s: float) -> int:
    conversation = [*start, ChatMessage("user", args.message, **_media(args.image, args.audio))]
    stream = sys.stdout if args.stream and not args.json else None
    out = reply(model, conversation, options, stream)
    if args.json:
        out["timing"]["load_s"] = round(load_s, 4)
        print(json.dumps({"model": args.run, **out}, ensure_ascii=False))
    elif stream is None:
        print(out["reply"])
    return 0


def converse(model: ChatModel, options: DecodingOptions, start: list[ChatMessage], lines: TextIO,
             as_json: bool) -> int:
    """The conversation on ``lines``: each line a message or a command; a reply per message. An error (a
    missing file, a message the model cannot answer) is printed and the conversation goes on without it."""
    conversation = list(start)
    images: list[str] = []
    audio: list[str] = []
    tty = lines.isatty()
    while True:
        if tty:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = lines.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.rstrip("\n")
        command, _, rest = text.strip().partition(" ")
        if command in ("/image", "/audio") and rest.strip():
            (images if command == "/image" else audio).append(rest.strip())
            print(f"(attached {rest.strip()} to your next message)", file=sys.stderr)
            continue
        if not text.strip():   # a blank line sends nothing (attachments wait for a message)
            continue
        if command == "/reset":
            conversation, images, audio = list(start), [], []
            print("(a new conversation)", file=sys.stderr)
            continue
        try:
            message = ChatMessage("user", text, **_media(images, audio))
            out = reply(model, [*conversation, message], options, None if as_json else sys.stdout)
        except PolymodalError as err:
            print(f"error: {err}", file=sys.stderr)
            continue
        finally:
            images, audio = [], []
        if as_json:
            print(json.dumps(out, ensure_ascii=False), flush=True)
        conversation += [message, ChatMessage("assistant", out["reply"])]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = _options(args)
    if args.message is None and (args.image or args.audio or args.stream):
        raise InvalidInput("--image, --audio and --stream go with --message (in a conversation: /image PATH)",
                           field="--message")
    start = [ChatMessage("system", args.system)] if args.system else []
    t0 = time.perf_counter()
    model = load_chat_model(args.run, args.device)
    load_s = time.perf_counter() - t0
    if args.message is not None:
        return _one(model, args, options, start, load_s)
    return converse(model, options, start, sys.stdin, args.json)
