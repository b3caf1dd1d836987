"""``POST /v1/images/generations``: OpenAI's image API over the served text->image models
(`Service.image_models`, `polymodal.models.t2i_front.ImageGenerator`), so OpenAI's clients
(``client.images.generate``) draw with a latent-diffusion or token run.

- ``prompt``: required, not blank, at most ``ServeSettings.max_text_chars`` characters.
- ``model``: a served image model (``GET /v1/models``, task ``text_to_image``); may be left out when the server
  serves exactly one. Another name is a 404 ``model_not_found``, as on the chat route.
- ``n``: 1..`MAX_IMAGES` pictures of the prompt.
- ``size``: ``"WxH"`` equal to the model's own size (a run makes pictures of one size only), ``"auto"`` or left
  out; anything else is a 400 that names the size the model makes.
- ``response_format``: ``b64_json`` (the default here, unlike OpenAI's ``url``: this server keeps no files to link
  to, so ``url`` is a 400 that says so). ``output_format``: ``png`` only. ``quality``, ``style`` and ``user`` are
  accepted and ignored.
- polymodal's extensions (OpenAI's client sends them with ``extra_body``): ``guidance``, ``steps``, ``seed``,
  ``sampler``, ``temperature``, ``top_k`` (the fields of `ImageOptions`). Picture ``i`` is drawn with seed
  ``seed + i``; without a seed the server draws one. Each picture comes back with its seed, so any of them can
  be made again (``n=1, seed=...``).

The reply: ``{"created": unix time, "data": [{"b64_json": PNG in base64, "revised_prompt": the prompt, "seed"}]}``.

Sampling is CPU-bound: it runs on the model's own worker thread (`service.ImageWorkers`), one request per model at
a time, at most ``queue_size`` requests held per model (more: 503 with Retry-After), never on the event loop; the
PNGs are encoded there too. Errors use OpenAI's envelope (`openai_api.openai_error`)."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from functools import partial

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from ..data.codec import encode_image
from ..errors import ApiError, InvalidInput, ModelOutputError
from ..models.t2i_front import (
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_STEPS,
    ImageGenerator,
    ImageOptions,
    check_request,
)
from .jsonbody import CheckedRoute
from .openai_api import ERRORS as OPENAI_ERRORS
from .openai_api import IMAGES_PATH, OPENAI_TAG
from .routes import reader
from .service import Service

MAX_SEED = 2**32 - 1
SIZE = re.compile(r"(\d{1,5})x(\d{1,5})", re.ASCII)
router = APIRouter(route_class=CheckedRoute, tags=[OPENAI_TAG])


# ------------------------------------------------------------------------------------------------ schemas

class ImagesRequest(BaseModel):
    """OpenAI's ``POST /v1/images/generations`` body, plus polymodal's sampling options (unknown fields are
    refused, as OpenAI does)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="what to draw (at most the server's max_text_chars characters)")
    model: str | None = Field(None, description="a served text_to_image model (GET /v1/models); may be left out "
                                                "when the server serves one")
    n: int = Field(1, strict=True, ge=1, le=MAX_IMAGES, description="pictures to make")
    size: str | None = Field(None, description='"WxH": the model\'s own size only (e.g. "64x64"), or "auto"')
    response_format: str | None = Field(None, description="b64_json only (the default here): no URLs")
    output_format: str | None = Field(None, description="png only")
    quality: str | None = Field(None, description="accepted and ignored")
    style: str | None = Field(None, description="accepted and ignored")
    user: str | None = Field(None, description="accepted and ignored")
    # polymodal's extensions (ImageOptions)
    guidance: float | None = Field(None, ge=0, le=MAX_GUIDANCE, description="classifier-free guidance (1: none)")
    steps: int | None = Field(None, strict=True, ge=1, le=MAX_STEPS, description="diffusion sampling steps")
    seed: int | None = Field(None, strict=True, ge=0, le=MAX_SEED,
                             description="picture i is drawn with seed + i (left out: the server draws one)")
    sampler: str | None = Field(None, max_length=32, description="diffusion sampler: ddim or dpm")
    temperature: float | None = Field(None, gt=0, le=10, description="token models: sampling temperature")
    top_k: int | None = Field(None, strict=True, ge=1, description="token models: sample among the K most likely")


class ImageData(BaseModel):
    b64_json: str = Field(description="the picture as a PNG file, in base64")
    revised_prompt: str = Field(description="the prompt, as drawn (never rewritten here)")
    seed: int = Field(description="polymodal's extension: the seed this picture was drawn with")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


# ------------------------------------------------------------------------------------------------ request -> model

def pick_image_model(svc: Service, name: str | None) -> tuple[str, ImageGenerator]:
    """The image model a request names (404 if no model has that name); left out: the only one."""
    models = svc.image_models
    if name is None:
        if len(models) == 1:
            return next(iter(models.items()))
        if not models:
            raise ApiError(404, "ModelNotFound", "this server serves no image model (start it with --generate RUN "
                           "of a text->image run)", field="model")
        raise InvalidInput(f"give model: this server makes images with {', '.join(models)}", field="model")
    gen = models.get(name)
    if gen is not None:
        return name, gen
    served = ", ".join(repr(n) for n in models) or "none"
    if name in svc.generators or name == svc.model_id:
        what = f"a {svc.generators[name].task} model" if name in svc.generators else "the embedding model"
        raise InvalidInput(f"{name!r} is {what}, which makes no images (image models of this server: {served})",
                           field="model")
    raise ApiError(404, "ModelNotFound", f"the model {name!r} does not exist (image models of this server: "
                   f"{served}; GET /v1/models)", field="model")


def check_body(body: ImagesRequest, gen: ImageGenerator, max_chars: int) -> None:
    """What the schema cannot say: the prompt's length, the one size the model makes, the formats."""
    if not body.prompt.strip():
        raise InvalidInput("prompt is empty: say what to draw", field="prompt")
    if len(body.prompt) > max_chars:
        raise InvalidInput(f"prompt has {len(body.prompt)} characters, more than the limit of {max_chars}",
                           field="prompt")
    side = int(gen.image_size)
    if body.size is not None and body.size != "auto":
        m = SIZE.fullmatch(body.size)
        if m is None or (int(m.group(1)), int(m.group(2))) != (side, side):
            raise InvalidInput(f"this model makes {side}x{side} images only: give size \"{side}x{side}\" or leave "
                               f"size out, got {body.size!r}", field="size")
    if body.response_format == "url":
        raise InvalidInput("this server returns images as b64_json only (it keeps no files to link to): leave "
                           "response_format out or give \"b64_json\"", field="response_format")
    if body.response_format not in (None, "b64_json"):
        raise InvalidInput(f"response_format must be \"b64_json\", got {body.response_format!r}",
                           field="response_format")
    if body.output_format not in (None, "png"):
        raise InvalidInput(f"output_format must be \"png\" (the only format this server writes), got "
                           f"{body.output_format!r}", field="output_format")


def image_options(body: ImagesRequest) -> ImageOptions:
    """The request's sampling options, checked, with a seed (drawn here when left out, so it can be returned)."""
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    extra = {"temperature": body.temperature} if body.temperature is not None else {}
    options = ImageOptions(steps=body.steps, guidance=body.guidance, seed=seed, sampler=body.sampler,
                           top_k=body.top_k, **extra)
    return check_request(body.prompt, body.n, options, MAX_IMAGES)[1]


def make_pngs(gen: ImageGenerator, prompt: str, n: int, options: ImageOptions) -> list[bytes]:
    """The model's pictures as PNG files (on the model's worker thread). A picture of the wrong kind is the
    model's fault: a 500, not the client's 400."""
    images = gen.generate_images(prompt, n=n, options=options, max_images=MAX_IMAGES)
    if len(images) != n:
        raise ModelOutputError(f"the image model returned {len(images)} pictures for n={n}")
    side = int(gen.image_size)
    for img in images:
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.shape != (side, side, 3):
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ModelOutputError(f"the image model returned a {got} picture, not uint8 ({side}, {side}, 3)")
    return [encode_image(img) for img in images]


# ------------------------------------------------------------------------------------------------ the route

@router.post(IMAGES_PATH, response_model=ImagesResponse, responses=OPENAI_ERRORS)
async def images_generations(body: ImagesRequest, svc: Service = Depends(reader)) -> Response:
    """OpenAI-compatible image generation: ``n`` pictures of ``prompt`` from a served text->image model, as PNG
    files in base64."""
    name, gen = pick_image_model(svc, body.model)
    check_body(body, gen, svc.settings.max_text_chars)
    options = image_options(body)
    future = svc.images.submit(name, partial(make_pngs, gen, body.prompt, body.n, options))
    try:
        pngs = await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        svc.images.cancel(name, future)   # the client left while it waited: its turn is skipped
        raise
    assert options.seed is not None
    data = [{"b64_json": base64.b64encode(png).decode("ascii"), "revised_prompt": body.prompt,
             "seed": options.seed + i} for i, png in enumerate(pngs)]
    return Response(to_json({"created": int(time.time()), "data": data}), media_type="application/json")
