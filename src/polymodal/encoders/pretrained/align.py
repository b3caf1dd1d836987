"""Hugging Face ALIGN towers (``AlignModel``, extra ``[hf]``): an EfficientNet image tower and a BERT text tower.

- Text: BERT's last hidden state at [CLS], then ``text_projection`` (a Linear with bias), as
  ``AlignModel.get_text_features``. BERT's own pooler is never used by ALIGN, so the tower drops it (it would
  otherwise hold parameters that get no gradient). ``AlignProcessor`` pads text to 64 tokens; with BERT's absolute
  positions and the attention mask, the padding does not change [CLS], so the tower pads dynamically and refuses
  more than 64 tokens (the processor's limit).
- Image: the EfficientNet backbone's pooled output is the embedding (no projection), as
  ``get_image_features``. The tower takes any square size convolutionally; the size it checks is the processor's
  (289 for kakaobrain/align-base), not ``vision_config.image_size``.
- Pixels: ``EfficientNetImageProcessor`` with ``rescale_factor=1/127.5, rescale_offset=True`` and
  ``do_normalize=False`` gives x / 127.5 - 1, which ``preprocess()`` states as mean = std = 0.5 on x / 255
  (see ``pixel_affine``; ``include_top`` and ``do_normalize`` are honoured too). Resize is to a square
  (``size`` height x width) and the center crop, when on, crops ``crop_size``.
- Temperature: logits = cos / ``temperature``, so ``logit_scale = -ln(temperature)``.
"""

from __future__ import annotations

import math
from typing import Any

from ..base import register_encoder
from .hf_clip import Family, HFImageTower, HFTextTower, _scalar, transformers_module

ALIGN_TEXT_TOKENS = 64  # AlignProcessor's text_kwargs: padding="max_length", max_length=64


def inverse_temperature(model: Any) -> tuple[float | None, float | None]:
    """ALIGN divides the cosine by ``temperature``: log multiplier = -ln(temperature)."""
    return -math.log(_scalar(model.temperature)), None


def _image_dim(config: Any) -> int:
    """Channels of the last EfficientNet block (what the pooled output has), via transformers' own rounding."""
    modeling = transformers_module().models.align.modeling_align
    vc = config.vision_config
    return int(modeling.round_filters(vc, vc.out_channels[-1]))


ALIGN = Family(
    "AlignModel",
    {"text": ("text_model", "text_projection"), "image": ("vision_model", None)},
    {"text": "projection_dim", "image": _image_dim},
    text_pool="cls",
    text_max_tokens=ALIGN_TEXT_TOKENS,
    unused=("text_model.pooler",),
    image_size_from_processor=True,
    scales=inverse_temperature,
)


@register_encoder("hf_align_text")
def hf_align_text(path: str | None = None, dtype: str = "float32") -> HFTextTower:
    return HFTextTower(path, ALIGN, dtype)


@register_encoder("hf_align_image")
def hf_align_image(path: str | None = None, dtype: str = "float32") -> HFImageTower:
    return HFImageTower(path, ALIGN, dtype)
