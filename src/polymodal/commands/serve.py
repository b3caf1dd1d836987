"""``polymodal serve``: the HTTP API and search page over a trained model and its collections."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidInput, require

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

if TYPE_CHECKING:
    from ..serve.service import ServeSettings

DESCRIPTION = """Serve a model and its collections over HTTP: a JSON API (/v1/embed, /v1/search,
/v1/collections/..., OpenAPI docs at /docs), the OpenAI-compatible /v1/embeddings and /v1/models, Prometheus
metrics (/metrics) and a search page (/). With --generate, generative runs too: POST /v1/generate (captions,
answers, with token streaming), the OpenAI-compatible POST /v1/audio/transcriptions and POST
/v1/chat/completions (an mllm run chats with pictures and audio; vqa/lm/captioner/asr runs answer single
turns); a text->image run (latent_diffusion, token_ar) draws with the OpenAI-compatible POST
/v1/images/generations. --model and --collection are then optional (a generation-only service).

--collection DIR is one of:
  a collection (e.g. built by `polymodal index build`)  served as the default collection; new collections
                                                         are created beside it (or under --root)
  a folder that does not exist                          created as an empty collection (cosine, auto index)
  a folder of collections                               every collection in it is served
"""


def _int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi], with an error that says so."""
    bounds = f"in {lo}..{hi}" if hi is not None else f">= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def _number(lo: float, strict: bool) -> Callable[[str], float]:
    """An argparse type: a number > lo (strict) or >= lo."""
    bounds = f"{'>' if strict else '>='} {lo:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {bounds}, got {text!r}") from None
        if not math.isfinite(value) or value < lo or (strict and value == lo):
            raise argparse.ArgumentTypeError(f"must be a number {bounds}, got {text}")
        return value

    return parse


# The defaults are those of ServeSettings / MediaLimits (tests check that they agree); they are spelled out
# here so that `--help` works without the [serve] extra.
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polymodal serve", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="MODEL", help="a trained alignment run, a pretrained checkpoint (Hugging Face "
                   "CLIP/SigLIP/CLAP/Chinese-CLIP/ALIGN folder, open_clip:ARCH:CHECKPOINT, sentence-transformers folder) "
                   "or an ONNX export (with --runtime onnx); see docs/pretrained.md")
    p.add_argument("--collection", help="a collection, a new folder, or a folder of collections (with --model)")
    p.add_argument("--generate", action="append", default=[], metavar="[NAME=]RUN",
                   help="a generative run (captioner, vqa, asr, lm, mllm, or text->image: latent_diffusion, token_ar) "
                        "to serve, under the run folder's name or NAME (repeatable); clients name it as \"model\" "
                        "(e.g. --generate whisper-1=runs/asr)")
    p.add_argument("--root", help="folder where POST /v1/collections/NAME creates collections "
                                  "(default: beside --collection)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_int_in(0, 65535), default=8000,
                   help="port to listen on, 0..65535 (0: any free port; the URL printed says which) (default 8000)")
    p.add_argument("--api-key", default=os.environ.get("POLYMODAL_API_KEY"),
                   help="key required for writes (header 'Authorization: Bearer KEY' or 'X-API-Key: KEY', sent "
                        "as UTF-8); default: env POLYMODAL_API_KEY")
    p.add_argument("--auth-reads", action="store_true", help="require the key for reads (search, embed, media) too")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch", type=_int_in(1), default=32, help="items per model call (default 32)")
    g.add_argument("--max-chat-messages", type=_int_in(1), default=32,
                   help="messages per /v1/chat/completions request (default 32)")
    g.add_argument("--max-wait-ms", type=_number(0, strict=False), default=5.0,
                   help="longest wait for a batch to fill (default 5)")
    g.add_argument("--queue-size", type=_int_in(1), default=256,
                   help="embedding requests that may wait; more get 503 (default 256)")
    g = p.add_argument_group("limits per request (beyond them: 413 for the body, 422 for media)")
    g.add_argument("--max-body-mb", type=_number(0, strict=True), default=32.0,
                   help="request body limit in MiB; also the limit of one media file (default 32)")
    g.add_argument("--max-pixels", type=_int_in(1), default=4096 * 4096,
                   help="pixels of one image, or of all frames of one video (default 16777216 = 4096x4096)")
    g.add_argument("--max-aspect", type=_number(1, strict=False), default=64.0,
                   help="long side / short side of one image or video frame (default 64): a thin image is scaled up "
                        "to the model's size before its crop, so its cost grows with this ratio")
    g.add_argument("--max-request-pixels", type=_int_in(1), default=2 * 4096 * 4096,
                   help="pixels of all images and videos of one request together, checked from their headers "
                        "before any is decoded (default 33554432)")
    g.add_argument("--max-audio-seconds", type=_number(0, strict=True), default=60.0,
                   help="duration of one audio clip (default 60)")
    g.add_argument("--max-request-samples", type=_int_in(1), default=32 * 2**20,
                   help="audio samples (frames x channels) of all clips of one request together, checked from "
                        "their headers before any is decoded (default 33554432: 128 MiB as float32)")
    g = p.add_argument_group("connections")
    g.add_argument("--max-connections", type=_int_in(1), default=256,
                   help="open connections; requests beyond get 503 (default 256)")
    g.add_argument("--keep-alive-s", type=_int_in(1), default=5,
                   help="seconds an idle keep-alive connection stays open (default 5)")
    g.add_argument("--header-timeout-s", type=_number(0, strict=True), default=10.0,
                   help="seconds a connection has to send a request's line and headers; then it is closed "
                        "(default 10)")
    g.add_argument("--body-timeout-s", type=_number(0, strict=True), default=30.0,
                   help="seconds a request has, from the end of its headers, to send its whole body; then it is "
                        "answered 408 and closed (handling it afterwards is not timed) (default 30)")
    g.add_argument("--max-header-kb", type=_int_in(1), default=16,
                   help="size of a request's line and headers in KiB; larger: 400 (default 16)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls from this origin (repeatable); CORS is off by default")
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--model-name", metavar="ID", default=None,
                   help="the model id of the OpenAI-compatible endpoints (/v1/embeddings, /v1/models): what a client "
                        "sends as \"model\" (default: the name of the model's folder, e.g. runs/clip -> clip)")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="run the model's towers with torch or onnxruntime (extra [onnx]; an export dir of "
                        "`polymodal export` needs onnx) (default torch)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default info)")
    return p


def settings_from_args(args: argparse.Namespace) -> ServeSettings:  # fastapi (an extra) is imported on use
    from ..serve.media import MediaLimits
    from ..serve.service import ServeSettings

    body = int(args.max_body_mb * 2**20)
    limits = MediaLimits(max_bytes=body, max_pixels=args.max_pixels, max_seconds=args.max_audio_seconds,
                         max_request_pixels=args.max_request_pixels, max_request_samples=args.max_request_samples,
                         max_aspect=args.max_aspect)
    return ServeSettings(api_key=args.api_key or None, auth_reads=args.auth_reads, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, max_body_bytes=body,
                         limits=limits, cors_origins=tuple(args.cors_origin), max_connections=args.max_connections,
                         keep_alive_s=args.keep_alive_s, header_timeout_s=args.header_timeout_s,
                         body_timeout_s=args.body_timeout_s, max_header_bytes=args.max_header_kb * 1024,
                         model_name=args.model_name, max_chat_messages=args.max_chat_messages)


def layout(collection: str, root: str | None) -> tuple[Path | None, Path | None]:
    """(root, pinned collection) from --collection and --root (see DESCRIPTION)."""
    from ..index import is_collection

    path = Path(collection)
    if path.exists() and not path.is_dir():
        raise InvalidInput("not a folder", field="--collection", source=str(path))
    if path.is_dir() and not is_collection(path) and any(path.iterdir()):
        return Path(root) if root else path, None
    return (Path(root) if root else path.resolve().parent), path


def generate_specs(values: list[str]) -> dict[str, Path]:
    """``--generate`` values -> {served name: run folder}: ``NAME=RUN``, or ``RUN`` served under its folder name."""
    specs: dict[str, Path] = {}
    for value in values:
        name, sep, run = value.partition("=")
        if not sep or not _MODEL_NAME.fullmatch(name):   # no NAME= (a path may hold "=" itself)
            name, run = "", value
        path = Path(run)
        name = name or path.name or path.resolve().name
        if not _MODEL_NAME.fullmatch(name):
            raise InvalidInput(f"cannot serve {value!r} under the name {name!r}: names are 1-64 letters, digits, "
                               "'.', '_' or '-' (give NAME=RUN)", field="--generate")
        if name in specs:
            raise InvalidInput(f"two generative models named {name!r} (give NAME=RUN)", field="--generate")
        specs[name] = path
    return specs


def check_services(args: argparse.Namespace) -> None:
    """--model and --collection go together; without them, --generate must give something to serve."""
    if args.model is None and not args.generate:
        raise InvalidInput("give --model MODEL --collection DIR, and/or --generate RUN", field="--model")
    if (args.model is None) != (args.collection is None):
        given, missing = ("--model", "--collection") if args.collection is None else ("--collection", "--model")
        raise InvalidInput(f"{given} needs {missing}", field=missing)
    if args.model is None and args.root is not None:
        raise InvalidInput("--root needs --model and --collection", field="--root")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    check_services(args)
    specs = generate_specs(args.generate)
    require("fastapi", "serve")
    require("uvicorn", "serve")
    settings = settings_from_args(args)
    if args.auth_reads and not settings.api_key:
        raise InvalidInput("--auth-reads needs --api-key (or env POLYMODAL_API_KEY)", field="--auth-reads")
    from ..serve.server import bind, make_server, url_of

    sock = bind(args.host, args.port)  # first: a busy port fails now, not after loading the model
    try:
        if not _is_loopback(args.host) and not settings.api_key:
            print(f"polymodal serve: warning: listening on {args.host} without an API key: anyone who can reach "
                  "it can change collections", file=sys.stderr)
        from .. import api
        from ..models.generative import GenerativeModel, load_generative_model
        from ..models.t2i_front import is_image_run, load_image_generator
        from ..serve.app import create_app

        drawing = {name for name, run in specs.items() if is_image_run(run)}
        images = {name: load_image_generator(specs[name], args.device) for name in drawing}
        generators = {name: load_generative_model(run, args.device) for name, run in specs.items()
                      if name not in drawing}
        model = root = pinned = None
        if args.model is not None:
            if is_image_run(args.model):
                raise InvalidInput(f"{args.model} is a text->image run: serve it with --generate, --model embeds",
                                   field="--model")
            model = api.load(args.model, device=args.device, runtime=args.runtime)
            if isinstance(model, GenerativeModel):
                raise InvalidInput(f"{args.model} is a generative run ({model.task}): serve it with --generate, "
                                   "--model embeds", field="--model")
            root, pinned = layout(args.collection, args.root)
        app = create_app(model, root, settings, collection=pinned, generators=generators, image_models=images)
        url = url_of(sock, args.host)

        def announce() -> None:
            print(f"polymodal serve: {url}  (API docs: {url}docs, metrics: {url}metrics)", file=sys.stderr,
                  flush=True)

        make_server(app, settings, log_level=args.log_level, on_listening=announce).run(sockets=[sock])
    finally:
        sock.close()
    return 0
