"""Hugging Face CLAP towers (text + audio, extra ``[hf]``).

The text tower is the generic CLIP-like one. The audio tower keeps our layout, ``values`` (B, n_mels, T), but the
log-mel must be CLAP's own (its sample rate, filter bank, dB scale, fixed length with repeat-padding), so
``preprocess()`` says ``{"audio": {"type": "hf_clap", "path": ...}}`` and the pipeline calls :meth:`featurize`
(or the convenience :meth:`encode_audio`) on raw waveforms.

Differences from the transformers processor, both for determinism: a clip longer than the checkpoint's window is cut
to its *first* window (transformers takes a random crop, or for "fusion" checkpoints fuses random crops), and fused
checkpoints get ``is_longer=False`` for every clip (transformers flags one random clip of a batch of short clips).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data.transforms.audio import resample
from ...errors import InvalidInput
from ..base import register_encoder
from .hf_clip import Family, HFTextTower, PretrainedTower, _scalar, from_pretrained, transformers_module


def audio_side_scale(model: Any) -> tuple[float | None, float | None]:
    """CLAP keeps two temperatures: ``logit_scale_a`` multiplies ``logits_per_audio`` (audio rows against text
    columns) and ``logit_scale_t`` multiplies ``logits_per_text``. Zero-shot audio classification ranks class
    texts for each clip, i.e. softmax over ``logits_per_audio`` (transformers' zero-shot-audio-classification
    pipeline does exactly that), so both CLAP towers report ``logit_scale_a``."""
    return _scalar(model.logit_scale_a), None


CLAP = Family(
    "ClapModel",
    {"text": ("text_model", "text_projection"), "audio": ("audio_model", "audio_projection")},
    {"text": "projection_dim", "audio": "projection_dim"},
    text_positions_reserved=2,  # RoBERTa text: positions 0 and 1 (pad) are never used by tokens
    scales=audio_side_scale,
)


class HFClapAudio(PretrainedTower):
    """Audio half of a CLAP checkpoint: HTSAT over CLAP's log-mel, then the projection."""

    modality = "audio"

    def __init__(self, path: str | Path | None, dtype: str | torch.dtype = "float32") -> None:
        super().__init__(path)
        backbone, projection, cfg, _, _ = self.take(CLAP, "audio", dtype)
        assert projection is not None
        self.backbone = backbone
        self.projection: nn.Module = projection
        self.output_dim = CLAP.dim(cfg, "audio")
        self.fused = bool(cfg.audio_config.enable_fusion)
        self.n_mels = int(cfg.audio_config.num_mel_bins)
        self._extractor: Any = None

    @property
    def extractor(self) -> Any:
        if self._extractor is None:
            self._extractor = from_pretrained(transformers_module().ClapFeatureExtractor, self.path)
        return self._extractor

    def preprocess(self) -> dict[str, Any]:
        fe = self.extractor
        # Deliberately no n_mels/sample_rate keys: the library's own log-mel is a different feature.
        return {"audio": {"type": "hf_clap", "path": self.path, "sample_rate": int(fe.sampling_rate),
                          "n_mels": int(fe.feature_size), "frames": self.frames}}

    @property
    def frames(self) -> int:
        """CLAP features have a fixed length: the window (repeat-padded) in hops, plus the centred frame."""
        return int(self.extractor.nb_max_samples // self.extractor.hop_length + 1)

    def featurize(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> dict[str, torch.Tensor]:
        """Raw mono waveforms -> {"values": (B, n_mels, T) CLAP log-mel, "pad_mask": (B, T)} (all frames real:
        CLAP repeat-pads every clip to its fixed window)."""
        fe = self.extractor
        clips = []
        for i, w in enumerate(waveforms):
            w = np.asarray(w, dtype=np.float32)
            if w.ndim != 1 or w.size == 0:
                raise InvalidInput(f"waveform {i} must be a non-empty mono (N,) array, got {w.shape}", field="audio")
            clips.append(resample(w, int(sample_rate), int(fe.sampling_rate))[: fe.nb_max_samples])
        mel = fe(clips, sampling_rate=fe.sampling_rate, truncation=fe.truncation, padding=fe.padding,
                 return_tensors="np")["input_features"]  # (B, C, T, F); C=4 identical copies for fused models
        values = torch.from_numpy(np.ascontiguousarray(mel[:, 0].transpose(0, 2, 1), dtype=np.float32))
        return {"values": values, "pad_mask": torch.ones(values.shape[0], values.shape[2], dtype=torch.bool)}

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.run_present(part, self._features)

    def _features(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        x = part["values"].to(self._dtype())
        if x.ndim != 3 or x.shape[1] != self.n_mels or x.shape[2] != self.frames:
            raise InvalidInput(f"expected CLAP's own log-mel (B, {self.n_mels}, {self.frames}) from featurize(), "
                               f"got {tuple(x.shape)}", field="audio")
        feats = x.transpose(1, 2).unsqueeze(1)  # -> (B, 1, T, F), transformers' input_features layout
        is_longer = None
        if self.fused:
            feats = feats.expand(-1, 4, -1, -1)  # global + 3 local views; identical for clips within the window
            is_longer = torch.zeros(x.shape[0], 1, dtype=torch.bool, device=x.device)
        pooled = self.backbone(input_features=feats, is_longer=is_longer).pooler_output
        out: torch.Tensor = self.projection(pooled)
        return out

    @torch.no_grad()
    def encode_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int, batch_size: int = 32) -> torch.Tensor:
        """Raw features (N, D) for mono waveforms at ``sample_rate`` (resampled to the checkpoint's rate)."""
        chunks = []
        for i in range(0, len(waveforms), batch_size):
            part = self.featurize(waveforms[i : i + batch_size], sample_rate)
            chunks.append(self.forward({"values": part["values"].to(self._device())}))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.output_dim)


@register_encoder("hf_clap_text")
def hf_clap_text(path: str | None = None, dtype: str = "float32") -> HFTextTower:
    return HFTextTower(path, CLAP, dtype)


@register_encoder("hf_clap_audio")
def hf_clap_audio(path: str | None = None, dtype: str = "float32") -> HFClapAudio:
    return HFClapAudio(path, dtype)
