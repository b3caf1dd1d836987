"""Request and response bodies of the HTTP API (pydantic models; they also make the OpenAPI schema).

Media travel as base64 strings (a ``data:...;base64,`` prefix is accepted): images as PNG, JPEG, WebP, BMP, GIF
or TIFF files (`IMAGE_FORMATS`), audio as WAV, FLAC, OGG or MP3 files (`AUDIO_FORMATS`), video as a film strip
(T frames stacked vertically in one image) plus ``frames``. Bounds that are settings of the server (k, frames,
items per request) are checked by the endpoints and written into the OpenAPI schema by ``app.py``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..data.codec import AUDIO_FORMATS, IMAGE_FORMATS, format_list

Modality = Literal["audio", "image", "text", "video"]
Metric = Literal["cosine", "ip", "l2"]

# the service accepts exactly IMAGE_FORMATS and AUDIO_FORMATS (Pillow's and libsndfile's names); others: 422
IMAGE_DOC = f"base64 image file ({format_list(IMAGE_FORMATS)})"
AUDIO_DOC = f"base64 audio file ({format_list(AUDIO_FORMATS)})"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # collection names (enforced by store.check_name)
MAX_VECTOR_DIM = 65_536    # longest raw vector a request may carry (it must also equal the collection's dim)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# ANN parameter bounds: beyond them a search only burns memory (k_factor multiplies the candidates re-ranked,
# and the fallback for starved filtered searches multiplies efSearch by 16 and k_factor by 4)
MAX_NPROBE, MAX_EF_SEARCH, MAX_K_FACTOR = 65_536, 32_768, 16
# Static caps on request lists (ServeSettings.max_items, at most MAX_INPUTS, is the working limit): with them
# pydantic refuses an overlong list by its length, instead of building one error per wrong-typed element.
MAX_INPUTS, MAX_DELETE_IDS = 4096, 200_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VideoIn(_Strict):
    data: str = Field(description=f"base64 film strip: T frames stacked vertically in one image "
                                  f"({format_list(IMAGE_FORMATS)})")
    frames: int = Field(ge=1, strict=True, description="number of frames T in the strip")


class EmbedRequest(_Strict):
    text: list[str] | None = Field(None, max_length=MAX_INPUTS, description="texts to embed")
    image: list[str] | None = Field(None, max_length=MAX_INPUTS, description=f"{IMAGE_DOC}s")
    audio: list[str] | None = Field(None, max_length=MAX_INPUTS, description=f"{AUDIO_DOC}s")
    video: list[VideoIn] | None = Field(None, max_length=MAX_INPUTS, description="film strips")


class EmbedResponse(BaseModel):
    dim: int
    vectors: dict[str, list[list[float]]] = Field(description="one list of L2-normalized vectors per modality, "
                                                               "in input order")


class QueryFields(_Strict):
    text: str | None = None
    image: str | None = Field(None, description=IMAGE_DOC)
    audio: str | None = Field(None, description=AUDIO_DOC)
    video: VideoIn | None = None
    vector: list[float] | None = Field(None, min_length=1, max_length=MAX_VECTOR_DIM,
                                       description="a raw vector of the collection's dimension")


class SearchParams(_Strict):
    """ANN parameters (each optional; the collection's tuned defaults otherwise)."""

    nprobe: int | None = Field(None, ge=1, le=MAX_NPROBE, description="IVF lists visited")
    efSearch: int | None = Field(None, ge=1, le=MAX_EF_SEARCH, description="HNSW candidate list size")
    k_factor: int | None = Field(None, ge=1, le=MAX_K_FACTOR,
                                 description="lossy (PQ) indexes re-rank k * k_factor candidates exactly")
    exact: bool | None = Field(None, description="true: exact search, no ANN")

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class SearchRequest(QueryFields):
    collection: str | None = Field(None, json_schema_extra={"pattern": NAME_PATTERN},
                                   description="collection name; the server's default when omitted")
    k: int = Field(10, ge=1, description="number of hits")
    filter: dict[str, Any] | None = Field(None, description='metadata filter: {"f": v} equality, {"f": [a, b]} '
                                                            'IN, {"f": {"gte": 1, "lt": 5}} range; integers '
                                                            'must fit in int64')
    params: SearchParams | None = None
    weights: dict[str, float] | None = Field(None, description="fusion weight per given input (default 1.0): the "
                                                               "query is the renormalized weighted sum")


class Hit(BaseModel):
    id: int
    score: float
    metadata: dict[str, Any]
    media: dict[str, str] = Field(default_factory=dict, description="kind -> URL of media the server stored")


class SearchResponse(BaseModel):
    collection: str
    k: int
    inputs: list[str] = Field(description="the inputs fused into the query")
    hits: list[Hit]


class ItemIn(QueryFields):
    id: int = Field(ge=0, le=INT64_MAX, description="stable id, a non-negative int64")
    metadata: dict[str, Any] | None = None
    embed: Modality | None = Field(None, description="which raw input gives the vector when several are given "
                                                     "(default: image, video, audio, then text)")


class UpsertRequest(_Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_INPUTS)


class UpsertResponse(BaseModel):
    collection: str
    upserted: int
    count: int


class DeleteItemsRequest(_Strict):
    ids: list[int] = Field(min_length=1, max_length=MAX_DELETE_IDS,
                           description="ids (int64); ids not in the collection are ignored")


class DeleteItemsResponse(BaseModel):
    collection: str
    deleted: int
    count: int


class CreateCollection(_Strict):
    metric: Metric = "cosine"
    index: str = Field("auto", description="auto, flat, hnsw, ivf_flat, ivf_pq, or a FAISS factory string")
    dim: int | None = Field(None, description="must equal the model's dimension when given")


class CollectionInfo(BaseModel):
    name: str
    dim: int
    metric: str
    index: str
    count: int


class CollectionList(BaseModel):
    default: str | None
    collections: list[str]


class Health(BaseModel):
    status: str
    modalities: list[str]
    dim: int
    queue_depth: int


class ErrorBody(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
