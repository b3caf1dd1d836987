"""The front door: ``polymodal.load(RUN).embed(text=[...])`` and ``polymodal.search(collection, model, text=...)``.

Only `polymodal/__init__` and `polymodal.commands` import this module; the library layers below never do."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import InvalidInput
from .models import EmbeddingModel, load_embedding_model
from .models.generative import GENERATIVE_ARCHS, GenerativeModel, load_generative_model, run_arch
from .models.t2i_front import IMAGE_ARCHS, TextToImageModel, load_image_generator
from .models.vl_front import VideoBertModel, VLModel, load_vl_model

if TYPE_CHECKING:  # the index needs the [index] extra; imported on use
    from .index import Collection, SearchResult


def load(model: str | os.PathLike[str], device: str | torch.device = "cpu", runtime: str = "torch"
         ) -> EmbeddingModel | GenerativeModel | VLModel | VideoBertModel | TextToImageModel:
    """Load a model: a text->image run (latent_diffusion, token_ar) as a `TextToImageModel`
    (``.generate_images(prompts, n, options)``), a generative run (lm, captioner, vqa, asr) as a `GenerativeModel` (``.generate(...)``), a
    vision-language encoder run (vl_encoder) as a `VLModel` (``.match``, ``.attention``, ``.answer``), a
    videobert run as a `VideoBertModel` (``.predict_motion``, ``.describe``), anything else as an
    `EmbeddingModel` (``.embed(...)``, see `load_embedding`)."""
    arch = run_arch(model)
    if arch in IMAGE_ARCHS:
        if runtime != "torch":
            raise InvalidInput(f"a {arch} run runs on torch, not {runtime!r}", field="runtime")
        return load_image_generator(model, device)
    if arch in ("vl_encoder", "videobert"):
        if runtime != "torch":
            raise InvalidInput(f"a {arch} run runs on torch, not {runtime!r}", field="runtime")
        return load_vl_model(model, device)
    if arch in GENERATIVE_ARCHS:
        if runtime != "torch":
            raise InvalidInput(f"a generative run runs on torch, not {runtime!r}", field="runtime")
        return load_generative_model(model, device)
    return load_embedding(model, device, runtime)


def load_embedding(model: str | os.PathLike[str], device: str | torch.device = "cpu", runtime: str = "torch"
                   ) -> EmbeddingModel:
    """Load a model for embedding (see `EmbeddingModel.embed`): a trained alignment run, a pretrained checkpoint
    (Hugging Face CLIP / SigLIP / CLAP / Chinese-CLIP / ALIGN folder, ``open_clip:ARCH:CHECKPOINT``, a
    sentence-transformers folder), or an ONNX export. ``runtime="onnx"`` runs the towers with onnxruntime."""
    return load_embedding_model(model, device, runtime)


def load_generator(run: str | os.PathLike[str], device: str | torch.device = "cpu") -> GenerativeModel:
    """Load a generative run (see `GenerativeModel.generate`); any other model is an error naming its arch."""
    return load_generative_model(run, device)


def search(collection: Collection | str | os.PathLike[str],
           model: EmbeddingModel | str | os.PathLike[str] | None = None, *, text: str | None = None,
           image: np.ndarray | None = None, audio: tuple[np.ndarray, int] | None = None,
           video: np.ndarray | None = None, vector: np.ndarray | None = None,
           weights: Mapping[str, float] | None = None, k: int = 10, filter: dict[str, Any] | None = None,
           params: dict[str, Any] | None = None, allow_model_mismatch: bool = False) -> SearchResult:
    """Embed a query (``text=``, ``image=``, ``audio=(wave, sr)``, ``video=``, ``vector=``; several are fused
    with ``weights=``) and search a collection (a `polymodal.index.Collection` or its directory, opened
    read-only). ``model`` is a loaded model or a run directory (None when only ``vector`` is given); a
    collection filled by another model is refused unless ``allow_model_mismatch=True`` (then a warning).
    Needs the ``[index]`` extra."""
    from .index import Collection, search_with_model

    if isinstance(model, str | os.PathLike):
        model = load_embedding(model)
    query: dict[str, Any] = {"text": text, "image": image, "audio": audio, "video": video, "vector": vector,
                             "weights": weights, "k": k, "filter": filter, "params": params,
                             "allow_model_mismatch": allow_model_mismatch}
    if isinstance(collection, Collection):
        return search_with_model(collection, model, **query)
    coll = Collection.open(Path(collection), readonly=True)
    try:
        return search_with_model(coll, model, **query)
    finally:
        coll.close(save=False)


__all__ = ["load", "load_embedding", "load_generator", "search"]
