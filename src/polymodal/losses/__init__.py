"""Losses: pure functions plus thin ``nn.Module`` wrappers."""

from .contrastive import (
    ClipLoss,
    SigLipLoss,
    clip_loss,
    clip_loss_gathered,
    siglip_loss,
    siglip_loss_gathered,
)
from .distill import FeatureQueue, ema_update, itc_momentum_loss, make_teacher
from .distributed import gather_with_grad
from .masked import mask_regions, mask_tokens, mlm_accuracy, mlm_loss, mrm_loss
from .matching import itm_accuracy, itm_loss, sample_hard_negatives
from .misa import MISALoss, cmd, difference_loss, misa_losses, reconstruction_loss

__all__ = [
    "ClipLoss", "SigLipLoss", "clip_loss", "clip_loss_gathered", "gather_with_grad", "siglip_loss",
    "siglip_loss_gathered", "MISALoss", "cmd", "difference_loss", "misa_losses", "reconstruction_loss",
    "FeatureQueue", "ema_update", "itc_momentum_loss", "make_teacher", "mask_regions", "mask_tokens",
    "mlm_accuracy", "mlm_loss", "mrm_loss", "itm_accuracy", "itm_loss", "sample_hard_negatives"]
