"""Hugging Face Chinese-CLIP towers (``ChineseCLIPModel``, extra ``[hf]``).

A CLIP ViT image tower with a Chinese BERT/RoBERTa-wwm text tower. Unlike CLIP, the text is pooled at the first
position ([CLS]) of the last hidden state -- the text backbone is built without a pooling layer -- and then
``text_projection`` is applied, exactly as ``ChineseCLIPModel.get_text_features``. Absolute BERT positions and the
attention mask make the result independent of how much padding follows, so batches are padded dynamically (the
pipeline's padding), which equals the processor's own padding. Temperature: ``logit_scale`` (log), as CLIP.
"""

from __future__ import annotations

from ..base import register_encoder
from .hf_clip import Family, HFImageTower, HFTextTower

CHINESE_CLIP = Family(
    "ChineseCLIPModel",
    {"text": ("text_model", "text_projection"), "image": ("vision_model", "visual_projection")},
    {"text": "projection_dim", "image": "projection_dim"},
    text_pool="cls",
)


@register_encoder("hf_chinese_clip_text")
def hf_chinese_clip_text(path: str | None = None, dtype: str = "float32") -> HFTextTower:
    return HFTextTower(path, CHINESE_CLIP, dtype)


@register_encoder("hf_chinese_clip_image")
def hf_chinese_clip_image(path: str | None = None, dtype: str = "float32") -> HFImageTower:
    return HFImageTower(path, CHINESE_CLIP, dtype)
