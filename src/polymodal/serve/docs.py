"""The interactive API docs, offline: ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) load their scripts and styles
from this server, never from a CDN. The files come with the ``[serve]`` extra (the ``fastapi-offline`` package
ships Swagger UI and ReDoc); without it the pages say so and point at ``/openapi.json``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse, Response

from ..errors import NotFound

try:
    import fastapi_offline

    _VENDORED: Path | None = Path(fastapi_offline.__file__).parent / "static"
except ImportError:  # pragma: no cover - the [serve] extra installs it
    _VENDORED = None

STATIC = Path(__file__).parent / "static"
ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
          "redoc.standalone.js": "text/javascript; charset=utf-8"}
# Swagger UI and ReDoc set inline styles and ReDoc runs a worker from a blob: URL; nothing may leave the server
DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
MISSING = ("<!doctype html><title>polymodal API</title><p>The interactive docs need the <code>fastapi-offline</code> "
           "package (<code>pip install 'polymodal[serve]'</code>). The OpenAPI schema is at "
           "<a href=\"/openapi.json\">/openapi.json</a>.</p>")

router = APIRouter(include_in_schema=False)


def asset_dir() -> Path | None:
    """The folder of Swagger UI's and ReDoc's files, if they are installed."""
    if _VENDORED is None or not all((_VENDORED / name).is_file() for name in ASSETS):  # pragma: no cover
        return None
    return _VENDORED


@router.get("/docs")
def swagger() -> HTMLResponse:
    if asset_dir() is None:  # pragma: no cover
        return HTMLResponse(MISSING, headers=DOCS_HEADERS)
    return HTMLResponse((STATIC / "docs.html").read_text(encoding="utf-8"), headers=DOCS_HEADERS)


@router.get("/redoc")
def redoc() -> HTMLResponse:
    if asset_dir() is None:  # pragma: no cover
        return HTMLResponse(MISSING, headers=DOCS_HEADERS)
    page = get_redoc_html(openapi_url="/openapi.json", title="polymodal API",
                          redoc_js_url="/docs/assets/redoc.standalone.js", redoc_favicon_url="/favicon.ico",
                          with_google_fonts=False)
    return HTMLResponse(page.body, headers=DOCS_HEADERS)


@router.get("/docs/assets/{name}")
def asset(name: str) -> Response:
    folder = asset_dir()
    if name not in ASSETS or folder is None:  # a fixed list: the URL never becomes a path
        raise NotFound(f"no docs asset {name!r}", field="name")
    return Response((folder / name).read_bytes(), media_type=ASSETS[name],
                    headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=86400"})
