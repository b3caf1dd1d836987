"""``POST /v1/explain``: which part of an image matched a text query -- an occlusion map
(`polymodal.models.explain`) of a collection item's stored thumbnail (``id``) or of a base64 ``image``, as a
nested list plus a PNG heat overlay (base64), for the search page's "why?" button.

The original and the gh * gw occluded copies are embedded as ONE request to the micro-batcher (so a map costs
one model call of at most 257 images, and never holds up the event loop); decoding, occluding and drawing run
in the thread pool. Errors are the service's: 422 naming the field, 404 for an unknown collection, item or
model."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from ..data.codec import decode_image
from ..errors import InvalidInput, NotFound
from ..models.explain import MAX_GRID, MAX_SIDE, fit_image, map_from_embeddings, occluded_images, overlay_png
from .items import decode_query
from .jsonbody import CheckedRoute
from .openai_api import check_model
from .routes import JSON_ERRORS, finite_rows, reader
from .schemas import IMAGE_DOC, INT64_MAX, NAME_PATTERN
from .service import Service
from .store import Handle

router = APIRouter(route_class=CheckedRoute)


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="the text query to explain the match of")
    collection: str | None = Field(None, json_schema_extra={"pattern": NAME_PATTERN},
                                   description="the collection of ``id``; the server's default when omitted")
    id: int | None = Field(None, ge=0, le=INT64_MAX, description="a collection item whose stored image (its "
                                                                 "thumbnail) is explained")
    image: str | None = Field(None, description=f"or an image to explain: {IMAGE_DOC}")
    model: str | None = Field(None, description="the served embedding model's id (GET /v1/models); optional")
    grid: int = Field(8, ge=1, le=MAX_GRID, strict=True, description="patches a side (the map is grid x grid)")
    fill: Literal["mean", "grey"] = Field("mean", description="what covers a patch: the image's mean colour, "
                                                              "or mid grey")


class ExplainResponse(BaseModel):
    collection: str | None = Field(description="the collection of ``id`` (null for a given image)")
    id: int | None
    method: Literal["occlusion"] = Field(description="how the map was made")
    grid: list[int] = Field(description="[rows, columns] of the map")
    score: float = Field(description="cosine similarity of the whole image and the query")
    map: list[list[float]] = Field(description="per patch (row-major, top-left first): the drop in cosine "
                                               "similarity when the patch is covered; high = what matched")
    overlay: str = Field(description="base64 PNG: the image under a heat overlay of the map's positive part")


def _stored_image(handle: Handle, item_id: int) -> np.ndarray:
    found = handle.media.find(item_id, "image")
    if found is None:
        raise NotFound(f"no stored image for id {item_id} in {handle.name!r}", field="id")
    return decode_image(found[0].read_bytes(), source=f"{handle.name}/{item_id}", field="id")


async def _image(body: ExplainRequest, svc: Service) -> tuple[np.ndarray, str | None]:
    """The image to explain, shrunk to `MAX_SIDE`, and the collection it came from (None for a given image)."""
    if body.id is None and body.image is None:
        raise InvalidInput("give the id of a collection item, or a base64 image", field="id")
    if body.id is not None and body.image is not None:
        raise InvalidInput("give an id or an image, not both", field="image")
    if body.id is None:
        decoded = await run_in_threadpool(decode_query, {"image": body.image}, svc.settings, "")
        return await run_in_threadpool(fit_image, decoded["image"], MAX_SIDE), None
    item_id: int = body.id
    handle = svc.store.cached(body.collection)
    if handle is None:  # first use: opening reads files, so it happens off the event loop
        handle = await run_in_threadpool(svc.store.get, body.collection)
    image = await run_in_threadpool(_stored_image, handle, item_id)
    return await run_in_threadpool(fit_image, image, MAX_SIDE), handle.name


@router.post("/v1/explain", response_model=ExplainResponse, tags=["search"], responses=JSON_ERRORS)
async def explain(body: ExplainRequest, svc: Service = Depends(reader)) -> ExplainResponse:
    """Which part of an image matched a text query: an occlusion map (each patch covered in turn; the map is
    the drop in cosine similarity) of a collection item's stored image or of a given image, plus a heat overlay."""
    text = decode_query({"text": body.text}, svc.settings, "")["text"]
    if body.model is not None:
        check_model(svc, body.model)
    image, collection = await _image(body, svc)
    copies = await run_in_threadpool(occluded_images, image, body.grid, body.fill)
    query = finite_rows(await svc.embed("text", [text], "text"))[0]
    embeddings = finite_rows(await svc.embed("image", copies, "image"))
    heat, score = map_from_embeddings(embeddings, query, body.grid)
    png = await run_in_threadpool(overlay_png, image, heat)
    return ExplainResponse(collection=collection, id=body.id, method="occlusion", grid=list(heat.shape), score=score,
                           map=heat.tolist(), overlay=base64.b64encode(png).decode("ascii"))


__all__ = ["ExplainRequest", "ExplainResponse", "router"]
