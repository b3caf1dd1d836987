"""Request and response bodies of the HTTP API (pydantic models; they also make the OpenAPI schema).

Media travel as base64 strings (a ``data:...;base64,`` prefix is accepted): images as PNG/JPEG/WebP/BMP files,
audio as WAV/FLAC/OGG files, video as a film strip (T frames stacked vertically in one image) plus ``frames``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Modality = Literal["audio", "image", "text", "video"]
Metric = Literal["cosine", "ip", "l2"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VideoIn(_Strict):
    data: str = Field(description="base64 film strip: T frames stacked vertically in one PNG/JPEG")
    frames: int = Field(description="number of frames T in the strip")


class EmbedRequest(_Strict):
    text: list[str] | None = Field(None, description="texts to embed")
    image: list[str] | None = Field(None, description="base64 image files")
    audio: list[str] | None = Field(None, description="base64 audio files (wav/flac/ogg)")
    video: list[VideoIn] | None = Field(None, description="film strips")


class EmbedResponse(BaseModel):
    dim: int
    vectors: dict[str, list[list[float]]] = Field(description="one list of L2-normalized vectors per modality, "
                                                               "in input order")


class QueryFields(_Strict):
    text: str | None = None
    image: str | None = Field(None, description="base64 image file")
    audio: str | None = Field(None, description="base64 audio file")
    video: VideoIn | None = None
    vector: list[float] | None = Field(None, description="a raw query vector of the collection's dimension")


class SearchRequest(QueryFields):
    collection: str | None = Field(None, description="collection name; the server's default when omitted")
    k: int = Field(10, ge=1, description="number of hits")
    filter: dict[str, Any] | None = Field(None, description='metadata filter: {"f": v} equality, {"f": [a, b]} '
                                                            'IN, {"f": {"gte": 1, "lt": 5}} range')
    params: dict[str, Any] | None = Field(None, description="ANN parameters: nprobe, efSearch, k_factor, exact")
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
    id: int = Field(description="stable int64 id")
    metadata: dict[str, Any] | None = None
    embed: Modality | None = Field(None, description="which raw input gives the vector when several are given "
                                                     "(default: image, video, audio, then text)")


class UpsertRequest(_Strict):
    items: list[ItemIn] = Field(min_length=1)


class UpsertResponse(BaseModel):
    collection: str
    upserted: int
    count: int


class DeleteItemsRequest(_Strict):
    ids: list[int] = Field(min_length=1)


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
