"""Hugging Face CLIP and SigLIP towers (extra ``[hf]``), plus the pieces every pretrained tower shares.

One checkpoint holds both towers. Each tower keeps only its own backbone + projection, so parameter counts and
freezing are per tower; a small cache hands the two halves of one loaded model to the two towers, so building the
text and the image tower of one checkpoint reads it once.

Features are the raw projected outputs (what ``get_text_features``/``get_image_features`` return in transformers
5.x as ``pooler_output``); the alignment model normalises them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError, InvalidInput, NotFound, require
from ..base import Encoder, register_encoder
from .processors import image_preprocess


def transformers_module() -> Any:
    """transformers, or a one-line install hint."""
    return require("transformers", "hf")


def resolve_source(path: str | Path | None, field_name: str = "path") -> tuple[str, bool]:
    """-> (name for from_pretrained, local_files_only). A directory is read offline; anything that looks like
    a filesystem path but is not a directory is an error here rather than a confusing hub lookup."""
    if path is None or str(path) == "":
        raise ConfigError("a checkpoint directory or hub id is required", field=field_name)
    p = Path(path).expanduser()
    if p.is_dir():
        return str(p.resolve()), True
    text = str(path)
    if p.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise NotFound("checkpoint directory does not exist", field=field_name, source=text)
    return text, False


def from_pretrained(loader: Any, path: str | Path, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` with our error types (the file/id is named in the message)."""
    name, local = resolve_source(path)
    try:
        return loader.from_pretrained(name, local_files_only=local, **kwargs)
    except OSError as exc:  # transformers raises OSError for missing files / unreachable hub
        raise NotFound(f"cannot load {getattr(loader, '__name__', loader)}: {exc}", source=name) from exc


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise ConfigError(f"unknown dtype '{name}'", field="dtype")
    return dt


# ---- shared loading: each half of a two-tower checkpoint is handed out once --------------------------------
class Part(NamedTuple):
    """One tower's share of a loaded checkpoint, plus the pair's contrastive temperature (read from the full
    model before it is split: neither half holds it)."""

    backbone: nn.Module
    projection: nn.Module | None
    config: Any
    logit_scale: float | None
    logit_bias: float | None


_CACHE: OrderedDict[tuple[str, str, str], dict[str, Part]] = OrderedDict()
_CACHE_SIZE = 2  # bounds memory held for halves nobody asked for yet


def clear_cache() -> None:
    """Drop halves of loaded checkpoints that no tower has taken yet."""
    _CACHE.clear()


def take_part(family: Family, path: str | Path, part: str, dtype: str | torch.dtype) -> Part:
    """One tower's `Part`. Loads the checkpoint only when this part of it was already handed out (a second tower
    of the same kind must not share weights with the first)."""
    dt = torch_dtype(dtype)
    key = (family.model_cls, resolve_source(path)[0], str(dt))
    parts = _CACHE.get(key)
    if parts is None or part not in parts:
        cls = getattr(transformers_module(), family.model_cls)
        model = from_pretrained(cls, path, dtype=dt)
        scale, bias = family.scales(model)
        for dotted in family.unused:  # modules the features never use (e.g. BERT's CLS pooler)
            owner, _, name = dotted.rpartition(".")
            setattr(getattr(model, owner) if owner else model, name, None)
        parts = {
            name: Part(getattr(model, bb), getattr(model, proj) if proj else None, model.config, scale, bias)
            for name, (bb, proj) in family.parts.items()
        }
        _CACHE[key] = parts
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    taken = parts.pop(part)
    if not parts:
        _CACHE.pop(key, None)
    return taken


def _scalar(param: torch.Tensor) -> float:
    return float(param.detach().float())


def log_scale(model: Any) -> tuple[float | None, float | None]:
    """CLIP-style: logits = exp(logit_scale) * cos; the parameter already holds the log."""
    return _scalar(model.logit_scale), None


def log_scale_and_bias(model: Any) -> tuple[float | None, float | None]:
    """SigLIP: logits = exp(logit_scale) * cos + logit_bias."""
    return _scalar(model.logit_scale), _scalar(model.logit_bias)


@dataclass(frozen=True)
class Family:
    """What differs between CLIP-like checkpoints: the model class, which attributes make up each tower, the
    output width per tower, how the text tower pools and was trained to see padding, and where the checkpoint
    keeps its temperature."""

    model_cls: str
    parts: dict[str, tuple[str, str | None]]  # modality -> (backbone attribute, projection attribute)
    dims: dict[str, str | Callable[[Any], int]]  # modality -> dotted config field (or function) of the width
    pad_text_to_max: bool = False  # SigLIP: fixed-length text padded with pad tokens, no attention mask
    text_positions_reserved: int = 0  # RoBERTa-style position ids start after pad_id, using 2 positions
    text_pool: str = "pooler"  # "pooler": the backbone's pooler_output; "cls": last_hidden_state[:, 0] (BERT)
    text_max_tokens: int | None = None  # the processor's own text limit when below the position table
    unused: tuple[str, ...] = ()  # dotted module attributes set to None after loading (never in the features)
    image_size_from_processor: bool = False  # convolutional towers take any size; the processor fixes one
    scales: Callable[[Any], tuple[float | None, float | None]] = log_scale  # full model -> (logit_scale, bias)

    def dim(self, config: Any, modality: str) -> int:
        field = self.dims[modality]
        if callable(field):
            return int(field(config))
        value = config
        for name in field.split("."):
            value = getattr(value, name)
        return int(value)

    def text_max_len(self, config: Any) -> int:
        n = int(config.text_config.max_position_embeddings) - self.text_positions_reserved
        return n if self.text_max_tokens is None else min(n, self.text_max_tokens)


CLIP = Family(
    "CLIPModel",
    {"text": ("text_model", "text_projection"), "image": ("vision_model", "visual_projection")},
    {"text": "projection_dim", "image": "projection_dim"},
)
SIGLIP = Family(
    "SiglipModel",
    {"text": ("text_model", None), "image": ("vision_model", None)},  # the heads live inside the backbones
    {"text": "text_config.projection_size", "image": "vision_config.hidden_size"},
    pad_text_to_max=True,
    scales=log_scale_and_bias,
)


class PretrainedTower(Encoder):
    """Shared behaviour: per-tower freezing, running only the samples that are present, and the checkpoint's
    contrastive temperature: ``logit_scale`` is the natural log of the logit multiplier (the parameterisation of
    polymodal's ``AlignmentModel.logit_scale``), ``logit_bias`` SigLIP's additive bias; None where the checkpoint
    has none (sentence-transformers)."""

    logit_scale: float | None
    logit_bias: float | None

    def __init__(self, path: str | Path | None) -> None:
        super().__init__()
        self.path = resolve_source(path)[0]
        self.logit_scale = None
        self.logit_bias = None

    def take(self, family: Family, part: str, dtype: str | torch.dtype) -> Part:
        """This tower's `Part` of the checkpoint at ``self.path``; records the pair's temperature."""
        taken = take_part(family, self.path, part, dtype)
        self.logit_scale, self.logit_bias = taken.logit_scale, taken.logit_bias
        return taken

    def freeze(self, frozen: bool = True) -> PretrainedTower:
        """Lock the tower (LiT). A tower without trainable parameters also stays in eval mode, so dropout and
        batch-norm statistics of the pretrained weights are not disturbed while the others train."""
        for p in self.parameters():
            p.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> PretrainedTower:
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.parameters()):
            super().train(False)
            self.training = True  # the wrapper reports the requested mode; its children stay in eval
        return self

    def run_present(self, part: dict[str, torch.Tensor], fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]
                    ) -> torch.Tensor:
        """Apply ``fn`` to the rows whose ``mask`` is True; absent rows get zero features."""
        values = part["values"]
        mask = part.get("mask")
        if mask is None or bool(mask.all()):
            return fn(part)
        idx = mask.nonzero(as_tuple=True)[0]
        out = torch.zeros(values.shape[0], self.output_dim, dtype=self._dtype(), device=values.device)
        if idx.numel() == 0:
            return out
        sub = {k: v[idx] for k, v in part.items() if isinstance(v, torch.Tensor) and k != "mask"}
        return out.index_put((idx,), fn(sub).to(out.dtype))

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def square_images(self, part: dict[str, torch.Tensor], size: int) -> torch.Tensor:
        """``part["values"]`` as (B, 3, size, size) pixels in the tower's dtype; any other shape is InvalidInput."""
        x = part["values"].to(self._dtype())
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (size, size):
            raise InvalidInput(f"expected images (B, 3, {size}, {size}), got {tuple(x.shape)}", field="image")
        return x

    def _device(self) -> torch.device:
        return next(self.parameters()).device


def pad_token_id(tokenizer: Any) -> int:
    """The id the checkpoint's tokenizer pads with (eos when it defines no pad token, as GPT-style ones do)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


def clean_ids(ids: torch.Tensor, pad_mask: torch.Tensor | None, pad_id: int, max_len: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids as the checkpoint's own tokenizer would pad them: padded positions hold ``pad_id`` (some
    poolers search the ids, e.g. CLIP's EOS lookup) and trailing all-padding columns are dropped."""
    ids = ids.long()
    if ids.ndim != 2:
        raise InvalidInput(f"expected token ids (B, L), got {tuple(ids.shape)}", field="text")
    mask = torch.ones_like(ids, dtype=torch.bool) if pad_mask is None else pad_mask.bool()
    used = mask.any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    ids, mask = ids[:, :length].masked_fill(~mask[:, :length], pad_id), mask[:, :length]
    if length > max_len:
        raise InvalidInput(f"{length} tokens exceed the checkpoint's max_len {max_len}", field="text")
    return ids, mask


class HFTextTower(PretrainedTower):
    """Text half of a CLIP-like checkpoint. ``forward`` takes token ids from the checkpoint's own tokenizer."""

    modality = "text"

    def __init__(self, path: str | Path | None, family: Family, dtype: str | torch.dtype = "float32") -> None:
        super().__init__(path)
        self.family = family
        backbone, projection, cfg, _, _ = self.take(family, "text", dtype)
        self.backbone = backbone
        self.projection = projection
        self.output_dim = family.dim(cfg, "text")
        self.max_len = family.text_max_len(cfg)
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = from_pretrained(transformers_module().AutoTokenizer, self.path)
        return self._tokenizer

    def preprocess(self) -> dict[str, Any]:
        return {"tokenizer": {"kind": "hf", "path": self.path}, "max_len": self.max_len,
                "pad_to_max": self.family.pad_text_to_max}

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.run_present(part, self._features)

    def _features(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        pad_id = pad_token_id(self.tokenizer)
        ids, pad_mask = clean_ids(part["values"], part.get("pad_mask"), pad_id, self.max_len)
        attention: torch.Tensor | None = pad_mask.long()
        if self.family.pad_text_to_max:
            # SigLIP pools the last position and was trained on max-length padding without a mask.
            full = torch.full((ids.shape[0], self.max_len), pad_id, dtype=torch.long, device=ids.device)
            ids, attention = full.index_copy(1, torch.arange(ids.shape[1], device=ids.device), ids), None
        out = self.backbone(input_ids=ids, attention_mask=attention)
        pooled: torch.Tensor = out.last_hidden_state[:, 0] if self.family.text_pool == "cls" else out.pooler_output
        return pooled if self.projection is None else _call(self.projection, pooled)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Raw features (N, D) for strings, tokenized exactly like the checkpoint's processor."""
        padding: str | bool = "max_length" if self.family.pad_text_to_max else True
        chunks = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[i : i + batch_size]), padding=padding, truncation=True,
                                 max_length=self.max_len, return_tensors="pt")
            ids = enc["input_ids"].to(self._device())
            mask = enc.get("attention_mask", torch.ones_like(enc["input_ids"])).bool().to(ids.device)
            chunks.append(self.forward({"values": ids, "pad_mask": mask}))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.output_dim)


class HFImageTower(PretrainedTower):
    """Image half of a CLIP-like checkpoint. ``forward`` takes (B, 3, S, S) pixels normalised as ``preprocess()``."""

    modality = "image"

    def __init__(self, path: str | Path | None, family: Family, dtype: str | torch.dtype = "float32") -> None:
        super().__init__(path)
        self.family = family
        backbone, projection, cfg, _, _ = self.take(family, "image", dtype)
        self.backbone = backbone
        self.projection = projection
        self.output_dim = family.dim(cfg, "image")
        self._processor: Any = None
        self.image_size = int(self.preprocess()["size"] if family.image_size_from_processor
                              else cfg.vision_config.image_size)

    @property
    def processor(self) -> Any:
        if self._processor is None:
            # PIL backend: the same numbers with or without torchvision installed.
            self._processor = from_pretrained(transformers_module().AutoImageProcessor, self.path, backend="pil")
        return self._processor

    def preprocess(self) -> dict[str, Any]:
        return image_preprocess(self.processor)

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.run_present(part, self._features)

    def _features(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.square_images(part, self.image_size)
        pooled: torch.Tensor = self.backbone(pixel_values=x).pooler_output
        return pooled if self.projection is None else _call(self.projection, pooled)

    @torch.no_grad()
    def encode_images(self, images: Sequence[np.ndarray], batch_size: int = 64) -> torch.Tensor:
        """Raw features (N, D) for uint8 HxWx3 arrays, preprocessed by the checkpoint's image processor."""
        chunks = []
        for i in range(0, len(images), batch_size):
            px = self.processor(images=list(images[i : i + batch_size]), return_tensors="pt")["pixel_values"]
            chunks.append(self.forward({"values": px.to(self._device())}))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.output_dim)


@register_encoder("hf_clip_text")
def hf_clip_text(path: str | None = None, dtype: str = "float32") -> HFTextTower:
    return HFTextTower(path, CLIP, dtype)


@register_encoder("hf_clip_image")
def hf_clip_image(path: str | None = None, dtype: str = "float32") -> HFImageTower:
    return HFImageTower(path, CLIP, dtype)


@register_encoder("hf_siglip_text")
def hf_siglip_text(path: str | None = None, dtype: str = "float32") -> HFTextTower:
    return HFTextTower(path, SIGLIP, dtype)


@register_encoder("hf_siglip_image")
def hf_siglip_image(path: str | None = None, dtype: str = "float32") -> HFImageTower:
    return HFImageTower(path, SIGLIP, dtype)


def _call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` typed: an nn.Module call is ``Any`` to the type checker."""
    out: torch.Tensor = module(x)
    return out
