"""Bridges between a (frozen) vision encoder and a (frozen) causal LM, on transformers' classes: BLIP-2's Q-Former
(``QFormerBridge``) and Flamingo's perceiver resampler + gated cross-attention (``FlamingoBridge``). The LLaVA
projector lives with the composer (``polymodal.models.mllm``)."""

from .flamingo import FlamingoBridge, FlamingoSpec
from .qformer import QFormerBridge, QFormerSpec

__all__ = ["FlamingoBridge", "FlamingoSpec", "QFormerBridge", "QFormerSpec"]
