"""`VLModel`: a trained vision-language encoder run (``arch: "vl_encoder"``) behind plain inputs — pictures as
uint8 HxWx3 arrays (with optional object boxes for the region families), texts as strings.

    m = polymodal.load("runs/vl_visualbert")        # a VLModel
    m.match(images, captions)                        # P(match) per (picture, text) pair
    m.attention(images, captions)                    # text -> visual attention, per pair
    m.answer(images, questions)                      # VQA (a run trained with the vqa task)
    m.embed(text=[...]) / m.embed(image=[...])       # contrastive vectors (blip family only)

    v = polymodal.load("runs/videobert")             # a VideoBertModel
    v.predict_motion(clips)                          # zero-shot direction words; v.describe(clips)

Region families read ``objects`` (each ``{"box": [x0, y0, x1, y1], "color", "shape"}``, fractions of the side:
what `shapes` writes into ``metadata["objects"]``); without them a picture has the global region only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.collate import collate
from ..data.sample import Batch, Sample
from ..data.transforms.compose import SampleTransform
from ..errors import InvalidInput
from .loading import load_model
from .videobert import VideoBert
from .vl_encoder import VLEncoder


class VLModel:
    def __init__(self, model: VLEncoder, transform: SampleTransform, config: dict[str, Any], name: str = ""):
        self.model, self.transform, self.config, self.name = model, transform, config, name

    @property
    def family(self) -> str:
        return self.model.family

    def _batch(self, images: Sequence[np.ndarray], objects: Sequence[Sequence[dict[str, Any]]] | None) -> Batch:
        if objects is not None and len(objects) != len(images):
            raise InvalidInput(f"expected {len(images)} object lists (one per picture), got {len(objects)}",
                               field="objects")
        samples = [Sample(id=str(i), image=np.asarray(img), metadata={"objects": list(objects[i]) if objects else []})
                   for i, img in enumerate(images)]
        batch = collate(samples, lambda s: {k: v for k, v in self.transform(s).items() if k == "image"})
        return batch.to(self.model.itm_head.weight.device)

    def _pairs(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> None:
        if len(images) != len(texts) or not texts:
            raise InvalidInput(f"expected one text per picture, got {len(texts)} texts for {len(images)} pictures",
                               field="text")

    def match(self, images: Sequence[np.ndarray], texts: Sequence[str],
              objects: Sequence[Sequence[dict[str, Any]]] | None = None) -> np.ndarray:
        """P(picture i matches text i), float32 (N,)."""
        self._pairs(images, texts)
        out: np.ndarray = self.model.itm_scores(self._batch(images, objects), list(texts)).cpu().numpy()
        return out

    def attention(self, images: Sequence[np.ndarray], texts: Sequence[str],
                  objects: Sequence[Sequence[dict[str, Any]]] | None = None, method: str = "attention"
                  ) -> list[dict[str, Any]]:
        """Per pair: ``tokens`` (the text's tokens), ``boxes`` (each visual token's box) and ``map`` (tokens x
        visual tokens relevance, rows sum to 1; ``method`` "attention" or "gradcam", see `VLEncoder.attention`)."""
        self._pairs(images, texts)
        att, v = self.model.attention(self._batch(images, objects), list(texts), method=method)
        tok = self.model._tok()
        out = []
        for i, text in enumerate(texts):
            ids, _ = self.model.texts([text])
            n = int(ids.shape[1])
            out.append({"tokens": [tok.decode([t]) for t in ids[0].tolist()],
                        "boxes": v.boxes[i, :, :4].cpu().tolist(), "valid": v.valid[i].cpu().tolist(),
                        "map": att[i, :n].cpu().numpy()})
        return out

    def answer(self, images: Sequence[np.ndarray], questions: Sequence[str],
               objects: Sequence[Sequence[dict[str, Any]]] | None = None) -> list[str]:
        self._pairs(images, questions)
        return self.model.generate(self._batch(images, objects), list(questions))

    def embed(self, text: Sequence[str] | None = None, image: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Contrastive vectors (blip family), float32 (N, D), L2-normalised; exactly one of text= / image=."""
        if not self.model.has_itc:
            raise InvalidInput(f"the {self.family} family has no contrastive vectors (only blip has)", field="embed")
        if (text is None) == (image is None):
            raise InvalidInput("give exactly one of text= / image=", field="embed")
        with torch.no_grad():
            emb = (self.model.text_embeddings(list(text)) if text is not None
                   else self.model.image_embeddings(self._batch(list(image or []), None)))
        out: np.ndarray = emb.float().cpu().numpy()
        return out


class VideoBertModel:
    """A trained VideoBERT run (``arch: "videobert"``) behind uint8 TxHxWx3 clips: ``predict_motion(videos)``
    (zero-shot direction words, optionally given ``phrases`` naming the moving object) and ``describe(videos)``."""

    def __init__(self, model: VideoBert, transform: SampleTransform, config: dict[str, Any], name: str = ""):
        self.model, self.transform, self.config, self.name = model, transform, config, name

    def _batch(self, videos: Sequence[np.ndarray]) -> Batch:
        if not len(videos):
            raise InvalidInput("give at least one clip", field="video")
        samples = [Sample(id=str(i), video=np.asarray(v)) for i, v in enumerate(videos)]
        return collate(samples, self.transform).to(next(self.model.parameters()).device)

    def predict_motion(self, videos: Sequence[np.ndarray], phrases: Sequence[str | None] | None = None) -> list[str]:
        if phrases is not None and len(phrases) != len(videos):
            raise InvalidInput(f"expected {len(videos)} phrases (one per clip), got {len(phrases)}", field="phrases")
        with torch.no_grad():
            return self.model.predict_motion(self._batch(videos), phrases)

    def describe(self, videos: Sequence[np.ndarray]) -> list[str]:
        with torch.no_grad():
            return self.model.describe(self._batch(videos))


def load_vl_model(run: str | os.PathLike[str], device: str | torch.device = "cpu") -> VLModel | VideoBertModel:
    """A vl_encoder run as a `VLModel`, a videobert run as a `VideoBertModel`."""
    model, transform, cfg = load_model(run, device)
    if isinstance(model, VideoBert):
        return VideoBertModel(model, transform, cfg, str(run))
    if not isinstance(model, VLEncoder):
        raise InvalidInput(f"{run} is an {cfg.get('arch')!r} run, not a vl_encoder or videobert one", field="arch")
    return VLModel(model, transform, cfg, str(run))


__all__ = ["VLModel", "VideoBertModel", "load_vl_model"]
