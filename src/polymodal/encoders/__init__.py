"""Encoders: one per modality, built by name from the registry.

Importing this package registers the from-scratch encoders (text_transformer, image_vit, image_cnn,
audio_cnn, audio_transformer, video_frames; align_image and align_text, transformers' ALIGN towers built from a
config) and the names of the pretrained towers (hf_clip_*, hf_siglip_*, hf_clap_*, st_text), whose heavy
dependencies load only when one is built."""

from . import align, audio, image, pretrained, text, video  # noqa: F401  (registration)
from .base import ENCODERS, Encoder, create_encoder, register_encoder

__all__ = ["ENCODERS", "Encoder", "create_encoder", "register_encoder"]
