"""Losses: pure functions plus thin ``nn.Module`` wrappers."""

from .contrastive import (
    ClipLoss,
    SigLipLoss,
    clip_loss,
    clip_loss_gathered,
    siglip_loss,
    siglip_loss_gathered,
)
from .distributed import gather_with_grad
from .misa import MISALoss, cmd, difference_loss, misa_losses, reconstruction_loss

__all__ = [
    "ClipLoss", "SigLipLoss", "clip_loss", "clip_loss_gathered", "gather_with_grad", "siglip_loss",
    "siglip_loss_gathered", "MISALoss", "cmd", "difference_loss", "misa_losses", "reconstruction_loss"]
