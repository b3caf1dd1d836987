"""The HTTP endpoints. Blocking work (decoding media, FAISS searches, collection writes and saves) runs in the
thread pool; embedding goes through the micro-batcher's worker thread; the event loop only awaits."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from pydantic_core import to_json

from ..errors import InvalidInput, NotFound
from ..index import search_query
from .items import decode_groups, decode_items, decode_query, embed_choices, write_delete, write_items
from .jsonbody import CheckedRoute
from .schemas import (
    INT64_MAX,
    NAME_PATTERN,
    CollectionInfo,
    CollectionList,
    CreateCollection,
    DeleteItemsRequest,
    DeleteItemsResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    Health,
    Hit,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResponse,
)
from .service import Service
from .store import Handle

STATIC = pathlib.Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
                "docs.js": "text/javascript; charset=utf-8", "favicon.ico": "image/x-icon"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: data:; "
                               "style-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
_ERR = {"model": ErrorResponse}
_BAD_JSON = {"model": ErrorResponse, "description": "Malformed JSON, or a body that is not UTF-8 (field: body)"}
_TOO_BIG = {"model": ErrorResponse, "description": "The body is larger than the server's limit, or holds too many "
                                                   "numbers (field: body)"}
READ_ERRORS: dict[int | str, dict[str, Any]] = {401: _ERR, 403: _ERR, 404: _ERR, 422: _ERR}
JSON_ERRORS: dict[int | str, dict[str, Any]] = {**READ_ERRORS, 400: _BAD_JSON, 413: _TOO_BIG, 503: _ERR}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {**JSON_ERRORS, 409: _ERR}  # writes with a JSON body
MEDIA_TYPES = {"image": "image/png", "audio": "audio/flac"}  # what MediaStore writes: PNG thumbnails, FLAC audio
_BINARY = {"schema": {"type": "string", "format": "binary"}}
# a collection name in a path (checked by the store, which names the rule in its error)
Name = Annotated[str, Path(description="collection name", json_schema_extra={"pattern": NAME_PATTERN})]

router = APIRouter(route_class=CheckedRoute)


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


# async: FastAPI would run a plain def dependency in the thread pool, a thread hop per request for nothing
async def reader(request: Request) -> Service:
    svc = service(request)
    svc.check_auth(request, write=False)
    return svc


async def writer(request: Request) -> Service:
    svc = service(request)
    svc.check_auth(request, write=True)
    return svc


# ------------------------------------------------------------------------------------- page, health, metrics

@router.get("/", include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in STATIC_FILES:  # a fixed list: the URL never becomes a path
        raise NotFound(f"no static file {name!r}", field="name")
    return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name], headers=PAGE_HEADERS)


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    return static("favicon.ico")


@router.get("/health", response_model=Health, tags=["service"])
def health(request: Request) -> Health:
    svc = service(request)
    return Health(status="ok", modalities=list(svc.modalities), dim=svc.dim, queue_depth=svc.batcher.depth())


@router.get("/metrics", response_class=PlainTextResponse, tags=["service"], responses=READ_ERRORS)
def metrics(svc: Service = Depends(reader)) -> PlainTextResponse:
    return PlainTextResponse(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


# ------------------------------------------------------------------------------------------- embed / search

@router.post("/v1/embed", response_model=EmbedResponse, tags=["embed"], responses=JSON_ERRORS)
async def embed(body: EmbedRequest, svc: Service = Depends(reader)) -> Response:
    """Embed lists of texts, images, audio clips and/or videos; one vector list per modality, in input order."""
    groups = {m: v for m in ("audio", "image", "text", "video") if (v := getattr(body, m)) is not None}
    if not groups:
        raise InvalidInput("give at least one of text, image, audio, video", field="body")
    for m, values in groups.items():
        if len(values) > svc.settings.max_items:
            raise InvalidInput(f"{len(values)} inputs exceed the limit of {svc.settings.max_items}", field=m)
    if groups.keys() == {"text"}:  # cheap: no need to leave the event loop
        decoded = decode_groups(groups, svc.settings)
    else:
        decoded = await run_in_threadpool(decode_groups, groups, svc.settings)
    names = [m for m in decoded if decoded[m]]
    outs = await asyncio.gather(*(svc.embed(m, decoded[m], m) for m in names))
    for out in outs:
        finite_rows(out)
    vectors = {m: [] for m in decoded} | {m: v.tolist() for m, v in zip(names, outs, strict=True)}
    # written directly (EmbedResponse is its schema): building and validating the model costs more than writing it
    return Response(to_json({"dim": svc.dim, "vectors": vectors}), media_type="application/json")


def finite_rows(vectors: np.ndarray) -> np.ndarray:
    """The model's vectors, refused (a 500: the model's fault, not the client's) if any is NaN or infinite, which
    JSON cannot carry. (pydantic_core's ``to_json`` writes floats ~10x faster than ``json.dumps``, whose float
    ``repr`` took 150 us for one 128-d vector, but would write ``NaN``.)"""
    if not np.isfinite(vectors).all():
        raise RuntimeError("the model returned NaN or infinite embeddings")
    return vectors


@router.post("/v1/search", response_model=SearchResponse, tags=["search"], responses=JSON_ERRORS)
async def search(body: SearchRequest, svc: Service = Depends(reader)) -> SearchResponse:
    """Search a collection with text, an image, audio, a video and/or a raw vector; several inputs are fused
    (weighted sum of the normalized embeddings, renormalized)."""
    if body.k > svc.settings.max_k:
        raise InvalidInput(f"k={body.k} exceeds the limit of {svc.settings.max_k}", field="k")
    handle = svc.store.cached(body.collection)
    if handle is None:  # first use: opening reads files, so it happens off the event loop
        handle = await run_in_threadpool(svc.store.get, body.collection)
    fields = body.model_dump(include={"text", "image", "audio", "video", "vector"}, exclude_none=True)
    if not fields:
        raise InvalidInput("give text, image, audio, video or vector to search with", field="query")
    if fields.keys() <= {"text", "vector"}:  # cheap: no need to leave the event loop
        inputs = decode_query(fields, svc.settings, "")
    else:
        inputs = await run_in_threadpool(decode_query, fields, svc.settings, "")
    # the pipeline of polymodal.search (index.search_query), but the embeddings come from the micro-batcher
    media = [m for m in inputs if m != "vector"]
    outs = await asyncio.gather(*(svc.embed(m, [inputs[m]], m) for m in media))
    embs: dict[str, np.ndarray] = {m: o[0] for m, o in zip(media, outs, strict=True)}
    if "vector" in inputs:
        embs["vector"] = inputs["vector"]  # raw: search_query normalises it
    hits = await run_in_threadpool(_search, handle, embs, body, svc.model)
    return SearchResponse(collection=handle.name, k=body.k, inputs=list(embs), hits=hits)


def _search(handle: Handle, embs: dict[str, np.ndarray], body: SearchRequest, model: Any = None) -> list[Hit]:
    params = body.params.as_dict() if body.params is not None else None
    # readable(): a read-only fallback first picks up what the other writer saved; model: refused (409) when
    # the collection was filled by another model and the query was embedded
    res = search_query(handle.readable(), embs, body.weights, k=body.k, filter=body.filter or None, params=params,
                       model=model)
    return [Hit(**h, media=media_urls(handle, h["id"])) for h in res.hits(0)]


def media_urls(handle: Handle, item_id: int) -> dict[str, str]:
    return {k: f"/v1/items/{handle.name}/{item_id}/media?kind={k}" for k in handle.media.kinds(item_id)}


# -------------------------------------------------------------------------------------------- collections

def _info(handle: Handle) -> CollectionInfo:
    info = handle.coll.info()
    return CollectionInfo(name=handle.name, dim=info["dim"], metric=info["metric"], index=info["index"],
                          count=info["count"])


@router.get("/v1/collections", response_model=CollectionList, tags=["collections"], responses=READ_ERRORS)
def list_collections(svc: Service = Depends(reader)) -> CollectionList:
    return CollectionList(default=svc.store.default, collections=svc.store.names())


@router.get("/v1/collections/{name}", response_model=CollectionInfo, tags=["collections"], responses=READ_ERRORS)
def get_collection(name: Name, svc: Service = Depends(reader)) -> CollectionInfo:
    return _info(svc.store.get(name))


@router.post("/v1/collections/{name}", response_model=CollectionInfo, status_code=201, tags=["collections"],
             responses=WRITE_ERRORS)
def create_collection(name: Name, body: CreateCollection | None = None,
                      svc: Service = Depends(writer)) -> CollectionInfo:
    """Create an empty collection of the model's dimension."""
    body = body or CreateCollection.model_validate({})
    if body.dim is not None and body.dim != svc.dim:
        raise InvalidInput(f"dim must equal the model's dimension {svc.dim}, got {body.dim}", field="dim")
    return _info(svc.store.create(name, svc.dim, body.metric, body.index))


@router.delete("/v1/collections/{name}", tags=["collections"], responses={**READ_ERRORS, 409: _ERR})
def delete_collection(name: Name, svc: Service = Depends(writer)) -> dict[str, str]:
    svc.store.delete(name)
    return {"deleted": name}


@router.post("/v1/collections/{name}/items", response_model=UpsertResponse, tags=["collections"],
             responses=WRITE_ERRORS)
async def upsert_items(name: Name, body: UpsertRequest, svc: Service = Depends(writer)) -> UpsertResponse:
    """Insert or replace items given as vectors or raw media (embedded by the server); media thumbnails and
    audio are stored for `GET /v1/items/{collection}/{id}/media`."""
    if len(body.items) > svc.settings.max_items:
        raise InvalidInput(f"{len(body.items)} items exceed the limit of {svc.settings.max_items}", field="items")
    handle = await run_in_threadpool(svc.store.get, name)
    decoded = await run_in_threadpool(decode_items, body.items, svc.settings)
    plan = embed_choices(body.items, decoded)
    vectors: list[np.ndarray | None] = [d.get("vector") for d in decoded]
    for modality, rows in plan.items():
        out = await svc.embed(modality, [decoded[i][modality] for i in rows], f"items.{modality}")
        for i, v in zip(rows, out, strict=True):
            vectors[i] = v
    count = await run_in_threadpool(write_items, handle, body.items, decoded, vectors, svc.settings, svc.model)
    return UpsertResponse(collection=handle.name, upserted=len(body.items), count=count)


@router.post("/v1/collections/{name}/items/delete", response_model=DeleteItemsResponse, tags=["collections"],
             responses=WRITE_ERRORS)
def delete_items(name: Name, body: DeleteItemsRequest, svc: Service = Depends(writer)) -> DeleteItemsResponse:
    handle = svc.store.get(name)
    deleted, count = write_delete(handle, body.ids)
    return DeleteItemsResponse(collection=handle.name, deleted=deleted, count=count)


@router.get("/v1/items/{collection}/{item_id}/media", tags=["collections"], response_class=FileResponse,
            responses={**READ_ERRORS, 200: {"description": "The stored file: a PNG thumbnail (kind=image) or FLAC "
                                                           "audio (kind=audio)",
                                            "content": {t: _BINARY for t in MEDIA_TYPES.values()}}})
def item_media(collection: Name, item_id: Annotated[int, Path(ge=0, le=INT64_MAX)],
               kind: Literal["image", "audio"] | None = None, svc: Service = Depends(reader)) -> FileResponse:
    """The PNG thumbnail or FLAC audio clip the server stored when the item was upserted with raw media;
    without ``kind``, the thumbnail if there is one."""
    handle = svc.store.get(collection)
    found = handle.media.find(item_id, kind)
    if found is None:
        raise NotFound(f"no stored {kind or 'media'} for id {item_id} in {collection!r}", field="id")
    path, media_type = found
    return FileResponse(path, media_type=media_type,
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
