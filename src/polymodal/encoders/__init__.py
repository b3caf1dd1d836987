"""Encoders: one per modality, built by name from the registry."""

from .base import ENCODERS, Encoder, create_encoder, register_encoder

__all__ = ["ENCODERS", "Encoder", "create_encoder", "register_encoder"]
