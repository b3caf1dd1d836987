"""Trainable ALIGN towers (Jia et al. 2021), built from scratch on transformers' own ALIGN classes (extra ``[hf]``;
nothing is downloaded): ``align_image`` is an `AlignVisionModel` (EfficientNet) and ``align_text`` an
`AlignTextModel` (BERT) from small configs, so a tiny ALIGN trains on CPU and its features are exactly
``AlignModel.get_image_features`` / ``get_text_features`` on the same weights (tests/encoders/test_align_encoders.py).

- Image: the EfficientNet's globally average-pooled last block, no projection (as ALIGN). Width and depth scale the
  EfficientNet-B0 stages by ``width_coefficient``/``depth_coefficient`` (ALIGN's B7 is 2.0/3.1); the pooled size is
  the last stage's 320 channels times the width coefficient, rounded to a multiple of 8 (0.4 -> 128). Pixels are
  normalised to [-1, 1], ALIGN's ``x / 127.5 - 1``. The stem and four stride-2 stages need ``image_size >= 32``.
- Text: BERT's last hidden state at the first token, then ``projection`` (Linear with bias), as
  ``get_text_features``. The first token is our tokenizer's BOS, which plays BERT's [CLS]; the text is tokenized
  like ``text_transformer`` (byte-level by default, vocab 259, pad id 0: see `polymodal.data.transforms.text`).
  BERT's own pooler is never used by ALIGN, so it is not built.
- BatchNorm: EfficientNet normalises over the batch while training (ALIGN trained with very large batches). The
  tower runs only the rows that have an image, so absent rows never enter the statistics; in eval mode the running
  statistics make every row independent of the others. transformers passes ``batch_norm_momentum`` (0.99) to
  PyTorch as is, so the running statistics follow the last batches closely.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InvalidInput
from .base import Encoder, register_encoder
from .image import check_image, image_preprocess
from .layers import check_heads, ensure_one_real
from .pretrained.hf_clip import transformers_module

MIN_IMAGE_SIZE = 32  # stem + four stride-2 stages: smaller inputs shrink to nothing before the last one


def _positive(value: float, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"must be a positive number, got {value!r}", field=field)


def _rate(value: float, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigError(f"must be a number in [0, 1), got {value!r}", field=field)


def vision_config(image_size: int = 64, width_coefficient: float = 0.4, depth_coefficient: float = 0.5,
                  drop_connect_rate: float = 0.2, batch_norm_momentum: float = 0.99) -> Any:
    """transformers' `AlignVisionConfig` for these settings (the other fields keep ALIGN's EfficientNet)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"must be an int >= {MIN_IMAGE_SIZE}, got {image_size!r}", field="image.image_size")
    _positive(width_coefficient, "image.width_coefficient")
    _positive(depth_coefficient, "image.depth_coefficient")
    _rate(drop_connect_rate, "image.drop_connect_rate")
    _rate(batch_norm_momentum, "image.batch_norm_momentum")
    return transformers_module().AlignVisionConfig(
        image_size=image_size, width_coefficient=float(width_coefficient), depth_coefficient=float(depth_coefficient),
        drop_connect_rate=float(drop_connect_rate), batch_norm_momentum=float(batch_norm_momentum))


def text_config(vocab_size: int = 259, width: int = 128, layers: int = 2, heads: int = 4, max_len: int = 64,
                mlp_ratio: float = 4.0, dropout: float = 0.1, pad_id: int = 0) -> Any:
    """transformers' `AlignTextConfig` (BERT) for these settings."""
    check_heads(width, heads, "text.width")
    for field, value in (("text.vocab_size", vocab_size), ("text.layers", layers), ("text.max_len", max_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"must be a positive int, got {value!r}", field=field)
    _positive(mlp_ratio, "text.mlp_ratio")
    _rate(dropout, "text.dropout")
    if not 0 <= pad_id < vocab_size:
        raise ConfigError(f"must lie in [0, vocab_size), got {pad_id!r}", field="text.pad_id")
    return transformers_module().AlignTextConfig(
        vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=int(round(width * mlp_ratio)), max_position_embeddings=max_len,
        hidden_dropout_prob=float(dropout), attention_probs_dropout_prob=float(dropout), pad_token_id=pad_id)


def image_output_dim(config: Any) -> int:
    """Channels of the last EfficientNet stage (the pooled feature size), by transformers' own rounding."""
    modeling = transformers_module().models.align.modeling_align
    return int(modeling.round_filters(config, config.out_channels[-1]))


def _present_rows(present: torch.Tensor, n_out: int, dtype: torch.dtype,
                  run: Callable[[torch.Tensor | None], torch.Tensor]) -> torch.Tensor:
    """``run(rows)`` on the present rows only (``rows`` None: all of them); absent rows come out as zeros."""
    if bool(present.all()):
        return run(None)
    rows = present.nonzero(as_tuple=True)[0]
    out = torch.zeros(present.shape[0], n_out, dtype=dtype, device=present.device)
    if rows.numel() == 0:
        return out
    return out.index_put((rows,), run(rows).to(dtype))


def _init_convs(module: nn.Module) -> None:
    """EfficientNet's own initialisation, as TF's reference: N(0, 2 / fan_out) with fan_out = k * k * output
    channels per group (k * k for a depthwise conv; PyTorch's ``kaiming_normal_`` would ignore the groups).
    transformers' generic N(0, 0.02) makes a fresh network's activations vanish with depth wherever BatchNorm uses
    its running statistics (eval mode), so an untrained tower would output ~0 and pass back no gradient."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / (m.out_channels // m.groups * kh * kw)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register_encoder("align_image")
class AlignImage(Encoder):
    """Input part: ``values`` float (B, 3, S, S) normalised to [-1, 1], ``mask`` (B,)."""

    modality = "image"

    def __init__(self, image_size: int = 64, width_coefficient: float = 0.4, depth_coefficient: float = 0.5,
                 drop_connect_rate: float = 0.2, batch_norm_momentum: float = 0.99):
        super().__init__()
        config = vision_config(image_size, width_coefficient, depth_coefficient, drop_connect_rate,
                               batch_norm_momentum)
        self.image_size = image_size
        self.backbone = transformers_module().AlignVisionModel(config)
        self.output_dim = image_output_dim(config)
        _init_convs(self.backbone)

    def preprocess(self) -> dict[str, Any]:
        return image_preprocess(self.image_size)

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        x = part["values"]
        check_image(x, self.image_size)
        present = part.get("mask", torch.ones(x.shape[0], dtype=torch.bool, device=x.device))

        def run(rows: torch.Tensor | None) -> torch.Tensor:
            pooled: torch.Tensor = self.backbone(pixel_values=x if rows is None else x[rows]).pooler_output
            return pooled

        return _present_rows(present, self.output_dim, x.dtype, run)


@register_encoder("align_text")
class AlignText(Encoder):
    """Input part: ``values`` LongTensor (B, L) token ids, ``pad_mask`` (B, L), ``mask`` (B,)."""

    modality = "text"

    def __init__(self, vocab_size: int = 259, width: int = 128, layers: int = 2, heads: int = 4,
                 max_len: int = 64, mlp_ratio: float = 4.0, dropout: float = 0.1, output_dim: int | None = None,
                 tokenizer: dict[str, Any] | None = None):
        super().__init__()
        config = text_config(vocab_size, width, layers, heads, max_len, mlp_ratio, dropout)
        if output_dim is not None and (isinstance(output_dim, bool) or not isinstance(output_dim, int)
                                       or output_dim <= 0):
            raise ConfigError(f"must be a positive int or null, got {output_dim!r}", field="text.output_dim")
        self.vocab_size, self.max_len, self.pad_id = vocab_size, max_len, int(config.pad_token_id)
        # Byte-level by default, as text_transformer: ids 0 pad, 1 bos (our [CLS]), 2 eos, 3.. bytes.
        self.tokenizer = dict(tokenizer) if tokenizer is not None else {"kind": "byte"}
        self.backbone = transformers_module().AlignTextModel(config, add_pooling_layer=False)
        self.output_dim = output_dim or width
        self.projection = nn.Linear(width, self.output_dim)  # AlignModel.text_projection, initialised as there
        nn.init.xavier_uniform_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    def preprocess(self) -> dict[str, Any]:
        return {"tokenizer": dict(self.tokenizer), "max_len": self.max_len}

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = part["values"]
        n, length = ids.shape
        present = part.get("mask", torch.ones(n, dtype=torch.bool, device=ids.device))
        pad = part.get("pad_mask", torch.ones(n, length, dtype=torch.bool, device=ids.device)).bool()
        if length > self.max_len:
            raise InvalidInput(f"{length} tokens exceed max_len {self.max_len}; truncate in the tokenizer",
                               field="text")
        real_ids = ids[pad & present[:, None]]
        if real_ids.numel() and (int(real_ids.min()) < 0 or int(real_ids.max()) >= self.vocab_size):
            raise InvalidInput(f"token ids must lie in [0, {self.vocab_size}), got "
                               f"[{int(real_ids.min())}, {int(real_ids.max())}]", field="text")
        pad = ensure_one_real(pad)
        safe = torch.where(pad, ids, torch.full_like(ids, self.pad_id))

        def run(rows: torch.Tensor | None) -> torch.Tensor:
            i, m = (safe, pad) if rows is None else (safe[rows], pad[rows])
            hidden: torch.Tensor = self.backbone(input_ids=i, attention_mask=m.long()).last_hidden_state
            out: torch.Tensor = self.projection(hidden[:, 0])
            return out

        return _present_rows(present, self.output_dim, self.projection.weight.dtype, run)
