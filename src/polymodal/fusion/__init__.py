"""Fusion modules: combine per-modality features into one vector (or logits), robust to missing modalities.

Every fusion follows one contract (see :mod:`polymodal.fusion.base`)::

    fusion = create_fusion("attention", {"audio": 64, "image": 128}, hidden=64)
    out = fusion(features, mask)          # dict[str, (B, D_m)], dict[str, BoolTensor(B)] -> (B, out_dim)

Registered names: ``early``, ``late``, ``attention``, ``tensor``, ``low_rank_tensor``, ``crossmodal``,
``shared_private``.
"""

# Importing the modules registers them.
from .attention import AttentionFusion
from .base import FUSIONS, Fusion, create_fusion, register_fusion
from .crossmodal import CrossModalFusion
from .early import EarlyFusion
from .late import LateFusion
from .shared_private import SharedPrivateFusion
from .tensor import LowRankTensorFusion, TensorFusion

__all__ = [
    "FUSIONS", "AttentionFusion", "CrossModalFusion", "EarlyFusion", "Fusion", "LateFusion",
    "LowRankTensorFusion", "SharedPrivateFusion", "TensorFusion", "create_fusion", "register_fusion",
]
