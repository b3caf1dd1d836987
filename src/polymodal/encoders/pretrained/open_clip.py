"""OpenCLIP towers (extra ``[openclip]``: the ``open_clip_torch`` package, which needs a torchvision that matches
the installed torch).

``model`` names the architecture: an open_clip built-in name (``"ViT-B-32"``), a JSON file in open_clip's format
(a bare model config ``{"embed_dim", "vision_cfg", "text_cfg", ...}`` or a hub-style ``open_clip_config.json``
``{"model_cfg": ..., "preprocess_cfg": ...}``), or a directory holding ``open_clip_config.json`` (the layout of
OpenCLIP checkpoints on the Hugging Face hub; its weights file is used when ``checkpoint`` is not given).
``checkpoint`` is a local state dict (``.safetensors``, or ``.bin``/``.pt`` read with ``weights_only=True``), loaded
with open_clip's own ``load_checkpoint`` (strict, with its format conversions). Nothing is downloaded: base weights
for timm / HF sub-towers are never fetched.

The model is built with open_clip's classes (``CLIP``, or ``CustomTextCLIP`` for custom-text configs; CoCa is
refused). The image tower is ``model.visual``; the text tower is the model without ``visual`` and its
temperature, called through ``encode_text``, so the pooling (argmax/EOS, last, first) and the causal mask are
open_clip's. Text is always re-padded with zeros to ``context_length`` -- the fixed length open_clip's tokenizer
produces and its attention mask assumes. Tokenization: open_clip's ``SimpleTokenizer`` (configs naming an HF
tokenizer, and SigLIP-named models, are not supported). Temperature: ``logit_scale`` (log) and, for SigLIP-style
checkpoints, ``logit_bias``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data.transforms.text import OpenClipTokenizer
from ...errors import ConfigError, InvalidInput, NotFound, require
from ..base import register_encoder
from .hf_clip import PretrainedTower, clean_ids, torch_dtype

_INTERP = {"bicubic": "bicubic", "bilinear": "bilinear"}
_CACHE: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
_CACHE_SIZE = 2


def clear_cache() -> None:
    _CACHE.clear()


def open_clip_module() -> Any:
    return require("open_clip", "openclip")


def read_config(model: str) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """-> (model_cfg, preprocess_cfg overrides, checkpoint found beside the config or None)."""
    p = Path(model).expanduser()
    if p.is_dir():
        cfg_file = p / "open_clip_config.json"
        if not cfg_file.is_file():
            raise NotFound("directory has no open_clip_config.json", field="model", source=str(p))
        found = open_clip_module().factory._find_checkpoint_in_dir(p)
        return (*_split(_read_json(cfg_file), str(cfg_file)), found)
    if p.suffix == ".json" or p.is_file():
        if not p.is_file():
            raise NotFound("model config file does not exist", field="model", source=str(p))
        return (*_split(_read_json(p), str(p)), None)
    cfg = open_clip_module().get_model_config(model)
    if cfg is None:
        raise ConfigError(f"unknown open_clip model {model!r} (a built-in name, a config JSON or a directory)",
                          field="model")
    return dict(cfg), {}, None


def _read_json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON: {exc}", source=str(p)) from exc
    if not isinstance(data, dict):
        raise InvalidInput("expected a JSON object", source=str(p))
    return data


def _split(data: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = data.get("model_cfg", data)
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise ConfigError("not an open_clip model config (needs vision_cfg and text_cfg)", source=source)
    return dict(cfg), dict(data.get("preprocess_cfg") or {})


def build_model(model: str, checkpoint: str | None) -> tuple[nn.Module, dict[str, Any]]:
    """(open_clip model in eval mode, preprocess cfg), as ``open_clip.create_model`` builds it, offline."""
    oc = open_clip_module()
    cfg, pre_over, found = read_config(model)
    cfg = json.loads(json.dumps(cfg))  # a deep copy: open_clip's registry returns shared dicts
    text_cfg, vision_cfg = cfg["text_cfg"], cfg["vision_cfg"]
    if "hf_tokenizer_name" in text_cfg or "siglip" in Path(model).name.lower():
        raise ConfigError("only open_clip models tokenized by SimpleTokenizer (OpenAI BPE) are supported",
                          field="model")
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False  # never download base weights
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
    custom = cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
    if "multimodal_cfg" in cfg:
        raise ConfigError("CoCa models are not supported", field="model")
    cls = oc.CustomTextCLIP if custom else oc.CLIP
    net: nn.Module = cls(**cfg, cast_dtype=None)
    path = checkpoint or found
    if path is not None:
        if not Path(path).is_file():
            raise NotFound("checkpoint file does not exist", field="checkpoint", source=str(path))
        oc.load_checkpoint(net, str(path), strict=True, weights_only=True)
    pre = dict(oc.transform.PreprocessCfg().__dict__)
    pre.update(pre_over)
    pre["size"] = getattr(net.visual, "image_size", pre["size"])  # create_model does the same
    return net.eval(), pre


def take_half(model: str, checkpoint: str | None, part: str, dtype: str | torch.dtype) -> dict[str, Any]:
    """One half (``{"module", "preprocess", "config", "logit_scale", "logit_bias"}``); the checkpoint is read
    once for a text + image pair, and again for a second tower of the same kind (no shared weights)."""
    dt = torch_dtype(dtype)
    key = (model, str(checkpoint), str(dt))
    halves = _CACHE.get(key)
    if halves is None or part not in halves:
        built, pre = build_model(model, checkpoint)
        net: Any = built.to(dt)
        scale = float(net.logit_scale.detach().float().reshape(-1)[0])
        bias_p = getattr(net, "logit_bias", None)
        bias = None if bias_p is None else float(bias_p.detach().float().reshape(-1)[0])
        visual = net.visual
        net.visual = None  # the text half keeps token embedding, transformer, ln_final, projection
        net.logit_scale = None
        if bias_p is not None:
            net.logit_bias = None
        cfg = read_config(model)[0]
        common = {"preprocess": pre, "config": cfg, "logit_scale": scale, "logit_bias": bias}
        halves = {"image": {"module": visual, **common}, "text": {"module": net, **common}}
        _CACHE[key] = halves
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    taken: dict[str, Any] = halves.pop(part)
    if not halves:
        _CACHE.pop(key, None)
    return taken


class _OpenClipTower(PretrainedTower):
    def __init__(self, model: str, checkpoint: str | None, part: str, dtype: str | torch.dtype) -> None:
        nn.Module.__init__(self)  # not a HF source: no resolve_source on the model name
        if not model:
            raise ConfigError("an open_clip model name, config JSON or directory is required", field="model")
        self.path = str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model
        self.checkpoint = None if checkpoint is None else str(Path(checkpoint).expanduser().resolve())
        half = take_half(self.path, self.checkpoint, part, dtype)
        setattr(self, "model" if part == "text" else "visual", half["module"])  # registered as a submodule
        self.logit_scale, self.logit_bias = half["logit_scale"], half["logit_bias"]
        self.half_config: dict[str, Any] = half["config"]
        self.preprocess_cfg: dict[str, Any] = half["preprocess"]
        self.output_dim = int(self.half_config["embed_dim"])


class OpenClipText(_OpenClipTower):
    """Text half of an OpenCLIP model; ``forward`` takes open_clip SimpleTokenizer ids (+ pad_mask)."""

    modality = "text"
    model: Any  # open_clip's CLIP / CustomTextCLIP without ``visual``: called through encode_text

    def __init__(self, model: str, checkpoint: str | None = None, dtype: str | torch.dtype = "float32") -> None:
        super().__init__(model, checkpoint, "text", dtype)
        text_cfg = self.half_config["text_cfg"]
        self.max_len = int(text_cfg.get("context_length", 77))
        self._tok_options = dict(text_cfg.get("tokenizer_kwargs") or {})
        self._tokenizer: OpenClipTokenizer | None = None

    @property
    def tokenizer(self) -> OpenClipTokenizer:
        if self._tokenizer is None:
            self._tokenizer = OpenClipTokenizer(self.max_len, self._tok_options)
        return self._tokenizer

    def preprocess(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict(), "max_len": self.max_len, "pad_to_max": True}

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.run_present(part, self._features)

    def _features(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, _ = clean_ids(part["values"], part.get("pad_mask"), 0, self.max_len)
        full = torch.zeros(ids.shape[0], self.max_len, dtype=torch.long, device=ids.device)
        full[:, : ids.shape[1]] = ids
        out: torch.Tensor = self.model.encode_text(full)
        return out

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Raw features (N, D), tokenized by open_clip's tokenizer."""
        chunks = []
        for i in range(0, len(texts), batch_size):
            ids = self.tokenizer._tok(list(texts[i : i + batch_size]), context_length=self.max_len)
            chunks.append(self.forward({"values": ids.to(self._device())}))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.output_dim)


class OpenClipImage(_OpenClipTower):
    """Image half (``model.visual``); ``forward`` takes (B, 3, S, S) pixels normalised as ``preprocess()``."""

    modality = "image"
    visual: nn.Module

    def __init__(self, model: str, checkpoint: str | None = None, dtype: str | torch.dtype = "float32") -> None:
        super().__init__(model, checkpoint, "image", dtype)
        size = self.preprocess_cfg["size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size[0] != size[1]:
            raise ConfigError(f"image size {size} is not square", field="model")
        self.image_size = int(size[0])

    def preprocess(self) -> dict[str, Any]:
        """open_clip's eval transform for the default ``resize_mode="shortest"``: resize the shorter side to the size
        (bicubic), center crop, mean/std; ``"squash"`` stretches to the square. Other modes are refused."""
        pre = self.preprocess_cfg
        mode = pre.get("resize_mode", "shortest")
        if mode not in ("shortest", "squash") or pre.get("interpolation", "bicubic") not in _INTERP:
            raise ConfigError(f"unsupported open_clip preprocessing: resize_mode={mode!r}, interpolation="
                              f"{pre.get('interpolation')!r}", field="preprocess_cfg")
        return {"size": self.image_size, "center_crop": mode == "shortest", "resize_to": self.image_size,
                "interpolation": _INTERP[pre.get("interpolation", "bicubic")],
                "mean": [float(x) for x in pre["mean"]], "std": [float(x) for x in pre["std"]],
                "crop_rounding": "round"}

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.run_present(part, self._features)

    def _features(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.square_images(part, self.image_size)
        out: torch.Tensor = self.visual(x)
        return out

    @torch.no_grad()
    def encode_images(self, images: Sequence[np.ndarray], batch_size: int = 64) -> torch.Tensor:
        """Raw features (N, D) for uint8 HxWx3 arrays through the transform ``preprocess()`` describes."""
        from ...data.transforms.image import ImageTransform

        pre = self.preprocess()
        tf = ImageTransform(size=pre["size"], crop="center" if pre["center_crop"] else "squash",
                            crop_rounding="round", interpolation=pre["interpolation"], mean=tuple(pre["mean"]), std=tuple(pre["std"]))
        chunks = []
        for i in range(0, len(images), batch_size):
            px = torch.stack([tf(im) for im in images[i : i + batch_size]])
            chunks.append(self.forward({"values": px.to(self._device())}))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.output_dim)


@register_encoder("open_clip_text")
def open_clip_text(model: str = "", checkpoint: str | None = None, dtype: str = "float32") -> OpenClipText:
    return OpenClipText(model, checkpoint, dtype)


@register_encoder("open_clip_image")
def open_clip_image(model: str = "", checkpoint: str | None = None, dtype: str = "float32") -> OpenClipImage:
    return OpenClipImage(model, checkpoint, dtype)
