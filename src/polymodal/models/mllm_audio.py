"""Speech into an mllm (Qwen-Audio style): a Whisper encoder -> frames average-pooled to ``slots`` -> a 2-layer
projector -> soft tokens written over the audio placeholder slots of the LM's input embeddings.

The encoder is an ``asr`` run's (`model.audio.from_run`; its log-mel settings come with it) or a fresh one; it is
frozen unless ``audio.train``. A spoken question replaces the text of a conversation's first question."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms.audio import WhisperAudioTransform
from ..errors import ConfigError, InvalidInput, require
from .mllm_config import AudioSpec
from .mllm_sources import hf_config, load_run_model


def audio_source(spec: AudioSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor] | None]:
    """(Whisper config, log-mel transform config, encoder weights to copy in or None)."""
    if spec.hf_config is not None and spec.features is not None:
        return dict(spec.hf_config), dict(spec.features), None
    transformers = require("transformers", "hf")
    if spec.from_run is not None:
        model = load_run_model(Path(spec.from_run), ("asr",), "audio.from_run")
        enc = model.model.model.encoder
        return (model.model.config.to_dict(), model.features.to_dict(),
                {k: v.detach().clone() for k, v in enc.state_dict().items()})
    frames = spec.chunk_seconds * spec.sample_rate // spec.hop_length
    if frames % 2:
        raise ConfigError(f"{frames} feature frames must be even (Whisper halves them)", field="audio.hop_length")
    cfg = transformers.WhisperConfig(num_mel_bins=spec.n_mels, d_model=spec.d_model, encoder_layers=spec.layers,
                                     decoder_layers=1, encoder_attention_heads=spec.heads,
                                     decoder_attention_heads=spec.heads, encoder_ffn_dim=spec.ffn_dim,
                                     decoder_ffn_dim=spec.ffn_dim, max_source_positions=frames // 2)
    feats = WhisperAudioTransform(sample_rate=spec.sample_rate, n_mels=spec.n_mels, n_fft=spec.n_fft,
                                  hop_length=spec.hop_length, chunk_seconds=spec.chunk_seconds)
    return cfg.to_dict(), feats.to_dict(), None


class AudioBridge(nn.Module):
    def __init__(self, spec: AudioSpec, whisper: dict[str, Any], lm_dim: int):
        super().__init__()
        whisper_mod = require("transformers.models.whisper.modeling_whisper", "hf")
        self.encoder = whisper_mod.WhisperEncoder(hf_config(whisper))
        self.encoder.requires_grad_(spec.train)
        d = int(whisper["d_model"])
        self.proj = nn.Sequential(nn.Linear(d, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))
        self.slots = spec.slots
        self.n_mels = int(whisper["num_mel_bins"])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, n_mels, frames) log-mel -> (N, slots, lm_dim)."""
        if features.dim() != 3 or features.shape[1] != self.n_mels:
            raise InvalidInput(f"expected (N, {self.n_mels}, frames) log-mel features, got {tuple(features.shape)}",
                               field="audio")
        hidden = self.encoder(input_features=features).last_hidden_state  # (N, T, d)
        pooled = F.adaptive_avg_pool1d(hidden.transpose(1, 2), self.slots).transpose(1, 2)
        out: torch.Tensor = self.proj(pooled)
        return out


def scatter(embeds: torch.Tensor, ids: torch.Tensor, token: int, values: torch.Tensor | None,
            what: str) -> torch.Tensor:
    """``embeds`` with the rows at ``ids == token`` replaced by ``values`` (N, K, D), in order."""
    where = ids == token
    n = int(where.sum())
    if not n:
        return embeds
    if values is None or values.shape[0] * values.shape[1] != n:
        got = 0 if values is None else values.shape[0] * values.shape[1]
        raise InvalidInput(f"{n} {what} slots for {got} {what} tokens", field=what)
    return embeds.masked_scatter(where.unsqueeze(-1), values.reshape(-1, values.shape[-1]).to(embeds.dtype))


__all__ = ["AudioBridge", "audio_source", "scatter"]
