"""Retrieval engine: persistent FAISS collections with stable ids, SQLite metadata and filters, an automatic
and tuned index choice, crash-safe saves, and queries from any modality (extra ``[index]``: faiss-cpu)."""

from ..errors import require

require("faiss", "index")

from .bulk import VectorSource, build_from_vectors  # noqa: E402
from .collection import Collection, Items  # noqa: E402
from .media import MediaStore  # noqa: E402
from .persist import is_collection  # noqa: E402
from .query import Embedder, embed_query, fuse, search_query, search_with_model  # noqa: E402
from .searching import SearchResult  # noqa: E402

__all__ = ["Collection", "Embedder", "Items", "MediaStore", "SearchResult", "embed_query", "fuse", "is_collection",
           "search_query", "search_with_model", "VectorSource", "build_from_vectors"]
