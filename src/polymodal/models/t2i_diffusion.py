"""``arch: "latent_diffusion"``: Stable Diffusion's recipe at toy scale, on diffusers' own classes.

- The pictures go through a frozen `image_autoencoder` run (``autoencoder.from_run``) to latents, scaled to unit
  variance (``latent_scale``, measured on the training pictures when training starts, as SD's 0.18215 was).
- `UNet2DConditionModel` predicts the noise (or v) of DDPM's forward process (`DDPMScheduler.add_noise`), its
  cross-attention reading the per-token states of a frozen text tower (`FrozenTextTower`, an alignment run's).
- Classifier-free guidance: ``cond_dropout`` of the training rows see a learned null context (one token) instead of
  their caption; sampling mixes ``eps_uncond + g * (eps_cond - eps_uncond)`` (guidance 1 = one pass, no mixing).
- Sampling: DDIM (eta 0) or DPM-Solver++ (2nd order multistep), both deterministic given the starting noise, so
  an image is a function of its seed (`polymodal.models.t2i_front`).

``save_hf`` writes diffusers folders: ``unet/`` (`UNet2DConditionModel.from_pretrained`), ``vqvae/`` or ``vae/``
and ``scheduler/``; the text tower stays polymodal's (no diffusers pipeline class takes it)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.sample import Batch, Sample
from ..data.transforms.image import HALF_MEAN, HALF_STD
from ..errors import ConfigError, InvalidInput, require
from .registry import ARCHS, load_config
from .t2i_autoencoder import from_pixels, to_pixels
from .t2i_config import DiffusionConfig
from .t2i_front import ImageOptions
from .t2i_text import source_autoencoder, text_conditioner, text_tower_source, training_prompts

SCALE_SAMPLES = 512  # training pictures whose latents set latent_scale


class LatentDiffusion(nn.Module):
    task = "text_to_image"
    modalities = ("image",)

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.c: DiffusionConfig = load_config(DiffusionConfig, config)
        self.config: dict[str, Any] = dict(config)
        self._pending: dict[str, dict[str, Any]] = {}
        self.autoencoder, ae_state = source_autoencoder(self.c.autoencoder, self.config)
        if ae_state is not None:
            self._pending["autoencoder"] = ae_state
        text_cfg = self.c.text.config
        if text_cfg is None:
            text_cfg, self._pending["text"] = text_tower_source(self.c.text)
            self.config["text"] = {"from_run": self.c.text.from_run, "config": text_cfg}
        self.text = text_conditioner(text_cfg)
        self.langs: tuple[str, ...] = tuple(self.c.langs)
        self.image_size = self.autoencoder.image_size
        self.unet = self._build_unet()
        self.null = nn.Parameter(torch.zeros(1, 1, self.text.width))  # the context of a dropped caption
        nn.init.normal_(self.null, std=0.02)

    def _build_unet(self) -> Any:
        diffusers = require("diffusers", "t2i")
        u, ae = self.c.unet, self.autoencoder.c
        n = len(u.channels)
        return diffusers.UNet2DConditionModel(
            sample_size=ae.latent_size, in_channels=ae.latent_channels, out_channels=ae.latent_channels,
            block_out_channels=tuple(u.channels), layers_per_block=u.layers_per_block,
            down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
            cross_attention_dim=self.text.width, attention_head_dim=tuple(c // u.head_dim for c in u.channels),
            norm_num_groups=u.norm_groups)

    def train(self, mode: bool = True) -> LatentDiffusion:
        super().train(mode)
        self.autoencoder.eval()  # frozen parts keep their eval behaviour
        return self

    def scheduler(self, kind: str = "ddpm") -> Any:
        """A diffusers scheduler with this run's noise schedule: "ddpm" (training), "ddim" or "dpm"."""
        diffusers = require("diffusers", "t2i")
        common = dict(num_train_timesteps=self.c.train_timesteps, beta_schedule=self.c.beta_schedule,
                      prediction_type=self.c.prediction)
        if kind == "ddpm":
            return diffusers.DDPMScheduler(**common, clip_sample=False)
        if kind == "ddim":
            return diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
        if kind == "dpm":  # "leading" as DDIM: the default "linspace" starts at t = 999, where the capped cosine
            # schedule leaves almost no signal and the x0 estimate explodes (attribute accuracy 0.09 vs 0.42)
            return diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                                         timestep_spacing="leading")
        raise InvalidInput(f"unknown sampler {kind!r}; expected ddim or dpm", field="sampler")

    # ------------------------------------------------------------------ training
    def preprocess(self) -> dict[str, dict[str, Any]]:
        return {"image": {"size": self.image_size, "mean": HALF_MEAN, "std": HALF_STD}}

    def fit_data(self, samples: Iterable[Sample]) -> None:
        """Before training: copy in the source runs' weights, then measure the latents' scale."""
        if "autoencoder" in self._pending:
            self.autoencoder.load_state_dict(self._pending["autoencoder"], strict=True)
        if "text" in self._pending:
            self.text.encoder.load_state_dict(self._pending["text"], strict=True)
        self._pending = {}
        if self.c.latent_scale is not None:
            return
        images = [s.image for s, _ in zip(samples, range(SCALE_SAMPLES), strict=False) if s.image is not None]
        if not images:
            raise InvalidInput("the training data has no pictures", field="image")
        with torch.no_grad():
            z = torch.cat([self.autoencoder.latents(from_pixels(images[i:i + 64], self.image_size,
                                                                self.null.device)) for i in range(0, len(images), 64)])
        self.config["latent_scale"] = 1.0 / float(z.std().clamp_min(1e-6))
        self.c = load_config(DiffusionConfig, self.config)

    @property
    def latent_scale(self) -> float:
        if self.c.latent_scale is None:
            raise ConfigError("latent_scale is unset: the run was not trained (fit_data measures it)",
                              field="model.latent_scale")
        return float(self.c.latent_scale)

    def context(self, texts: Sequence[str], drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention states and their mask; rows in ``drop`` get the null context instead."""
        states, mask = self.text(texts)
        if drop is not None and bool(drop.any()):
            null = torch.zeros_like(states)
            null[:, :1] = self.null.to(states.dtype)
            keep = torch.zeros_like(mask)
            keep[:, 0] = True
            states = torch.where(drop[:, None, None], null, states)
            mask = torch.where(drop[:, None], keep, mask)
        return states, mask

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        have = batch.mask["image"]
        rows = [i for i, h in enumerate(have.tolist()) if h]
        if not rows:
            raise InvalidInput("no sample of this batch has a picture", field="image")
        x = batch.data["image"][have]
        prompts = training_prompts([batch.targets[i] for i in rows] if batch.targets else [None] * len(rows),
                                   [batch.texts[i] for i in rows], self.langs)
        with torch.no_grad():
            z = self.autoencoder.latents(x) * self.latent_scale
        drop = torch.rand(len(rows), device=z.device) < self.c.cond_dropout
        states, mask = self.context(prompts, drop)
        sched = self.scheduler("ddpm")
        noise = torch.randn_like(z)
        t = torch.randint(0, self.c.train_timesteps, (len(rows),), device=z.device)
        zt = sched.add_noise(z, noise, t)
        pred = self.unet(zt, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        target = noise if self.c.prediction == "epsilon" else sched.get_velocity(z, noise, t)
        loss = F.mse_loss(pred, target)
        return loss, {"loss": float(loss.detach())}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_images(self, prompts: Sequence[str], seeds: Sequence[int],
                      options: ImageOptions | None = None) -> list[np.ndarray]:
        """One picture per prompt, each from the starting noise of its own seed."""
        opts = options or ImageOptions()
        if len(prompts) != len(seeds):
            raise InvalidInput(f"{len(prompts)} prompts but {len(seeds)} seeds", field="seed")
        steps = opts.steps or self.c.steps
        g = self.c.guidance if opts.guidance is None else float(opts.guidance)
        sched = self.scheduler(opts.sampler or self.c.sampler)
        sched.set_timesteps(steps)
        ae = self.autoencoder.c
        device = self.null.device
        noise = [torch.randn(ae.latent_channels, ae.latent_size, ae.latent_size,
                             generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        z = torch.stack(noise).to(device) * sched.init_noise_sigma
        n = len(prompts)
        guided = g != 1.0
        if guided:
            states, mask = self.context([*prompts, *prompts],
                                        torch.arange(2 * n, device=device) < n)  # first half: null
        else:
            states, mask = self.context(list(prompts))
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([z, z]) if guided else z, t)
            eps = self.unet(inp, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
            if guided:
                uncond, cond = eps.chunk(2)
                eps = uncond + g * (cond - uncond)
            z = sched.step(eps, t, z).prev_sample
        return to_pixels(self.autoencoder.decode(z / self.latent_scale))

    def save_hf(self, folder: str | os.PathLike[str]) -> None:
        """diffusers folders: ``unet/``, ``vqvae/`` (or ``vae/`` for a KL autoencoder) and ``scheduler/`` (DDIM)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(out / "unet", safe_serialization=True)
        self.autoencoder.net.save_pretrained(out / ("vqvae" if self.autoencoder.is_vq else "vae"),
                                             safe_serialization=True)
        self.scheduler(self.c.sampler).save_pretrained(out / "scheduler")


@ARCHS.register("latent_diffusion")
def build_latent_diffusion(cfg: Mapping[str, Any]) -> LatentDiffusion:
    return LatentDiffusion(cfg)
