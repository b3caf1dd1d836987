"""``polymodal serve``: the HTTP API and search page over a trained model and its collections."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidInput, require

if TYPE_CHECKING:
    from ..serve.service import ServeSettings

DESCRIPTION = """Serve a model and its collections over HTTP: a JSON API (/v1/embed, /v1/search,
/v1/collections/..., OpenAPI docs at /docs), Prometheus metrics (/metrics) and a search page (/).

--collection DIR is one of:
  a collection (e.g. built by `polymodal index build`)  served as the default collection; new collections
                                                         are created beside it (or under --root)
  a folder that does not exist                          created as an empty collection (cosine, auto index)
  a folder of collections                               every collection in it is served
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polymodal serve", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a trained alignment run directory")
    p.add_argument("--collection", required=True, help="a collection, a new folder, or a folder of collections")
    p.add_argument("--root", help="folder where POST /v1/collections/NAME creates collections "
                                  "(default: beside --collection)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("POLYMODAL_API_KEY"),
                   help="key required for writes (header 'Authorization: Bearer KEY' or 'X-API-Key'); "
                        "default: env POLYMODAL_API_KEY")
    p.add_argument("--auth-reads", action="store_true", help="require the key for reads (search, embed, media) too")
    p.add_argument("--max-batch", type=int, default=32, help="items per model call (dynamic batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    p.add_argument("--queue-size", type=int, default=256, help="embedding requests that may wait; more get 503")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body limit in MiB (larger: 413)")
    p.add_argument("--max-audio-seconds", type=float, default=60.0)
    p.add_argument("--max-pixels", type=int, default=4096 * 4096)
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls from this origin (repeatable); CORS is off by default")
    p.add_argument("--device", default="cpu", help="torch device for the model")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def settings_from_args(args: argparse.Namespace) -> ServeSettings:  # fastapi (an extra) is imported on use
    from ..serve.media import MediaLimits
    from ..serve.service import ServeSettings

    for name in ("max_batch", "queue_size", "port"):
        if getattr(args, name) < 1:
            raise InvalidInput(f"must be >= 1, got {getattr(args, name)}", field=f"--{name.replace('_', '-')}")
    if args.max_wait_ms < 0 or args.max_body_mb <= 0:
        raise InvalidInput("--max-wait-ms must be >= 0 and --max-body-mb > 0", field="--max-wait-ms")
    body = int(args.max_body_mb * 2**20)
    limits = MediaLimits(max_bytes=body, max_pixels=args.max_pixels, max_seconds=args.max_audio_seconds)
    return ServeSettings(api_key=args.api_key or None, auth_reads=args.auth_reads, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, max_body_bytes=body,
                         limits=limits, cors_origins=tuple(args.cors_origin))


def layout(collection: str, root: str | None) -> tuple[Path | None, Path | None]:
    """(root, pinned collection) from --collection and --root (see DESCRIPTION)."""
    from ..index import is_collection

    path = Path(collection)
    if path.exists() and not path.is_dir():
        raise InvalidInput("not a folder", field="--collection", source=str(path))
    if path.is_dir() and not is_collection(path) and any(path.iterdir()):
        return Path(root) if root else path, None
    return (Path(root) if root else path.resolve().parent), path


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    require("fastapi", "serve")
    uvicorn = require("uvicorn", "serve")
    settings = settings_from_args(args)
    if args.auth_reads and not settings.api_key:
        raise InvalidInput("--auth-reads needs --api-key (or env POLYMODAL_API_KEY)", field="--auth-reads")
    if not _is_loopback(args.host) and not settings.api_key:
        print(f"polymodal serve: warning: listening on {args.host} without an API key: anyone who can reach it "
              "can change collections", file=sys.stderr)
    from ..api import load
    from ..serve.app import create_app

    model = load(args.model, device=args.device)
    root, pinned = layout(args.collection, args.root)
    app = create_app(model, root, settings, collection=pinned)
    print(f"polymodal serve: http://{args.host}:{args.port}/  (API docs: /docs, metrics: /metrics)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0
