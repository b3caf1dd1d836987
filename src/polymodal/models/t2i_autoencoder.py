"""``arch: "image_autoencoder"``: the first stage of text->image models, on diffusers' own classes.

``kind: "vq"`` is diffusers' `VQModel` (VQ-GAN's autoencoder without the adversarial term: pixel loss +
codebook/commitment loss; the codes are what `token_ar` generates, and latent diffusion runs on the latents before
quantization, quantized in the decoder as LDM's VQ-regularized variant does). ``kind: "kl"`` is `AutoencoderKL`
(Stable Diffusion's; pixel loss + a small KL term). Pictures are in [-1, 1] (mean = std = 0.5), as diffusers'
pipelines expect. ``save_hf`` writes the diffusers folder (``from_pretrained`` loads it)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.sample import Batch
from ..data.transforms.image import HALF_MEAN, HALF_STD
from ..errors import InvalidInput, require
from .registry import ARCHS, load_config
from .t2i_config import AutoencoderConfig

USAGE_DECAY = 0.95  # per training step, of each code's running count of picks
DEAD_USAGE = 0.05  # a restarted code (count 1) that nothing picks is dead again after ~60 steps


def build_autoencoder(c: AutoencoderConfig) -> Any:
    """The diffusers module of config ``c`` (fresh weights)."""
    diffusers = require("diffusers", "t2i")
    n = len(c.channels)
    common = dict(in_channels=3, out_channels=3, block_out_channels=tuple(c.channels),
                  down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                  layers_per_block=c.layers_per_block, latent_channels=c.latent_channels,
                  norm_num_groups=c.norm_groups, sample_size=c.image_size, mid_block_add_attention=c.attention)
    if c.kind == "vq":
        return diffusers.VQModel(**common, num_vq_embeddings=c.codebook_size, vq_embed_dim=c.latent_channels)
    return diffusers.AutoencoderKL(**common)


def to_pixels(x: torch.Tensor) -> list[np.ndarray]:
    """[-1, 1] (B, 3, H, W) -> uint8 (H, W, 3) arrays."""
    out = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(a) for a in out]


def from_pixels(images: Sequence[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) arrays of side ``size`` -> [-1, 1] (B, 3, H, W)."""
    for i, im in enumerate(images):
        if not (isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.shape == (size, size, 3)):
            got = getattr(im, "shape", type(im).__name__)
            raise InvalidInput(f"image {i}: expected uint8 ({size}, {size}, 3), got {got}", field="image")
    x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


class ImageAutoencoder(nn.Module):
    task = "autoencode"
    modalities = ("image",)
    codebook_ready: torch.Tensor
    code_usage: torch.Tensor

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.c: AutoencoderConfig = load_config(AutoencoderConfig, config)
        self.config: dict[str, Any] = dict(config)
        self.net = build_autoencoder(self.c)
        self.image_size, self.latent_size = self.c.image_size, self.c.latent_size
        # codebook care (VQ): codes start as encoder outputs of the first batch, and a code no batch has picked
        # for a while restarts at a poorly quantized encoder output (Jukebox / SoundStream's dead-code restarts)
        self.register_buffer("codebook_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("code_usage", torch.ones(self.c.codebook_size), persistent=False)

    def preprocess(self) -> dict[str, dict[str, Any]]:
        return {"image": {"size": self.c.image_size, "mean": HALF_MEAN, "std": HALF_STD}}

    @property
    def is_vq(self) -> bool:
        return self.c.kind == "vq"

    # ------------------------------------------------------------------ training
    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch.data["image"][batch.mask["image"]]
        if not len(x):
            raise InvalidInput("no sample of this batch has an image", field="image")
        if self.is_vq:
            h = self.net.encode(x).latents
            if self.training:
                self._care_for_codebook(h.detach())
            quant, reg, (_, _, codes) = self.net.quantize(h)
            rec = self.net.decoder(self.net.post_quant_conv(quant))
            usage = float(torch.unique(codes).numel()) / self.c.codebook_size
            logs = {"codes_used": usage}
        else:
            posterior = self.net.encode(x).latent_dist
            rec = self.net.decode(posterior.sample()).sample
            reg = self.c.kl_weight * posterior.kl().mean()
            logs = {}
        pixel = F.l1_loss(rec, x) if self.c.recon == "l1" else F.mse_loss(rec, x)
        loss = pixel + reg.mean()
        return loss, {"loss": float(loss.detach()), "pixel": float(pixel.detach()), "reg": float(reg.mean().detach()), **logs}

    @torch.no_grad()
    def _care_for_codebook(self, h: torch.Tensor) -> None:
        """Before quantizing a training batch: seed the codebook from it (first batch), then restart dead codes
        at encoder outputs drawn in proportion to their quantization error (the pictures' rare parts, such as
        the shapes on a plain background, are what a collapsed codebook misses)."""
        book = self.net.quantize.embedding.weight
        flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        if not bool(self.codebook_ready):
            pick = torch.randint(len(flat), (len(book),), device=flat.device)
            book.data.copy_(flat[pick] + 1e-3 * torch.randn_like(book))
            self.codebook_ready.fill_(True)
            return
        dist = torch.cdist(flat, book)
        err, idx = dist.min(dim=1)
        counts = torch.bincount(idx, minlength=len(book)).to(self.code_usage.dtype)
        self.code_usage.mul_(USAGE_DECAY).add_(counts, alpha=1 - USAGE_DECAY)
        dead = (self.code_usage < DEAD_USAGE).nonzero().flatten()
        if len(dead):
            pick = torch.multinomial(err.square() + 1e-12, len(dead), replacement=len(dead) > len(flat))
            book.data[dead] = flat[pick] + 1e-3 * torch.randn_like(book[dead])
            self.code_usage[dead] = 1.0

    # ------------------------------------------------------------------ use
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pictures -> continuous latents (VQ: before quantization; KL: the posterior's mean)."""
        if self.is_vq:
            out: torch.Tensor = self.net.encode(x).latents
            return out
        mean: torch.Tensor = self.net.encode(x).latent_dist.mean
        return mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> [-1, 1] pictures (VQ: quantized first)."""
        out: torch.Tensor = self.net.decode(z).sample
        return out

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pictures -> (B, h * w) code indices, row-major (VQ only)."""
        self._need_vq()
        h = self.net.encode(x).latents
        _, _, (_, _, idx) = self.net.quantize(h)
        out: torch.Tensor = idx.reshape(x.shape[0], -1)
        return out

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h * w) code indices -> [-1, 1] pictures (VQ only)."""
        self._need_vq()
        n, side = codes.shape[0], self.latent_size
        quant = self.net.quantize.get_codebook_entry(codes.reshape(-1), (n, side, side, self.c.latent_channels))
        out: torch.Tensor = self.net.decoder(self.net.post_quant_conv(quant))
        return out

    def _need_vq(self) -> None:
        if not self.is_vq:
            raise InvalidInput("this autoencoder is continuous (kind 'kl'); codes need kind 'vq'", field="kind")

    @torch.no_grad()
    def reconstruct(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 pictures through the autoencoder and back."""
        x = from_pixels(images, self.image_size, next(self.parameters()).device)
        return to_pixels(self.decode(self.latents(x)))

    def save_hf(self, folder: str | os.PathLike[str]) -> None:
        """The diffusers folder (``VQModel.from_pretrained(folder)`` / ``AutoencoderKL.from_pretrained``)."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.net.save_pretrained(folder, safe_serialization=True)


@ARCHS.register("image_autoencoder")
def build_image_autoencoder(cfg: Mapping[str, Any]) -> ImageAutoencoder:
    return ImageAutoencoder(cfg)
