"""The ``model`` sections of the text->image archs, as frozen dataclasses.

- ``image_autoencoder``: diffusers' `VQModel` (``kind: "vq"``, discrete codes: what the token models generate
  and what latent diffusion runs on, quantized in the decoder as LDM's VQ variant) or `AutoencoderKL`
  (``kind: "kl"``, Stable Diffusion's).
- ``latent_diffusion``: diffusers' `UNet2DConditionModel` with cross-attention to a frozen text tower, trained
  with DDPM's noise-prediction loss and conditioning dropout; DDIM / DPM-Solver++ sampling with classifier-free
  guidance (Stable Diffusion; Imagen's frozen text encoder).
- ``token_ar``: a GPT-2 over text tokens then image codes (DALL-E); ``image_to_text > 0`` also trains the other
  direction, image codes then text (ERNIE-ViLG's bidirectional model), so the same weights caption.

Parts taken from other runs (``autoencoder.from_run``, ``text.from_run``) are inlined on the first build
(``config``: the source's model section), so a finished run rebuilds without them; their weights are copied in
when training starts and saved in the run's own checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..registry import require_ints
from .registry import register_model_config

AUTOENCODER_KINDS: tuple[str, ...] = ("vq", "kl")
SAMPLERS: tuple[str, ...] = ("ddim", "dpm")
PREDICTIONS: tuple[str, ...] = ("epsilon", "v_prediction")
BETA_SCHEDULES: tuple[str, ...] = ("squaredcos_cap_v2", "scaled_linear", "linear")
LANGS: tuple[str, ...] = ("en", "zh")


def _check_langs(langs: list[str]) -> None:
    if not langs or any(lang not in LANGS for lang in langs) or len(set(langs)) != len(langs):
        raise ConfigError(f"must be a non-empty list of distinct languages from {list(LANGS)}, got {langs!r}",
                          field="langs")


def _check_prob(value: float, name: str) -> None:
    if isinstance(value, bool) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"must be a number in [0, 1), got {value!r}", field=name)


@register_model_config("image_autoencoder")
@dataclass(frozen=True)
class AutoencoderConfig:
    """``channels``: the encoder's block widths; each block after the first halves the side, so the latent side is
    ``image_size / 2 ** (len(channels) - 1)``. ``codebook_size``: the VQ codes (``kind: "vq"``)."""

    arch: str = "image_autoencoder"
    kind: str = "vq"
    image_size: int = 64
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    latent_channels: int = 4
    codebook_size: int = 256
    norm_groups: int = 16
    attention: bool = False  # self-attention in the mid block (diffusers' default: on)
    recon: str = "l1"  # "l1" | "mse": the pixel loss
    kl_weight: float = 1e-6  # kind "kl": weight of the KL term

    def __post_init__(self) -> None:
        require_ints(self, ("image_size", "layers_per_block", "latent_channels", "codebook_size", "norm_groups"),
                     "model")
        if self.kind not in AUTOENCODER_KINDS:
            raise ConfigError(f"must be one of {list(AUTOENCODER_KINDS)}, got {self.kind!r}", field="model.kind")
        if not self.channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 or c % self.norm_groups
                                    for c in self.channels):
            raise ConfigError(f"must be positive integers divisible by norm_groups {self.norm_groups}, got "
                              f"{self.channels!r}", field="model.channels")
        if self.image_size % 2 ** (len(self.channels) - 1):
            raise ConfigError(f"image_size {self.image_size} does not halve {len(self.channels) - 1} times",
                              field="model.image_size")
        if self.recon not in ("l1", "mse"):
            raise ConfigError(f"must be 'l1' or 'mse', got {self.recon!r}", field="model.recon")

    @property
    def latent_size(self) -> int:
        return int(self.image_size) >> (len(self.channels) - 1)


@dataclass(frozen=True)
class PartSpec:
    """A part taken from another run: ``from_run`` (read on the first build) and ``config`` (what the first build
    read: the source's model section or tower spec; a finished run rebuilds from it alone)."""

    from_run: str | None = None
    config: dict[str, Any] | None = None


@dataclass(frozen=True)
class UNetSpec:
    channels: list[int] = field(default_factory=lambda: [64, 128])
    layers_per_block: int = 1
    head_dim: int = 32
    norm_groups: int = 32

    def __post_init__(self) -> None:
        require_ints(self, ("layers_per_block", "head_dim", "norm_groups"), "model.unet")
        if not self.channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 or c % self.norm_groups
                                    or c % self.head_dim for c in self.channels):
            raise ConfigError(f"must be positive integers divisible by norm_groups and head_dim, got "
                              f"{self.channels!r}", field="model.unet.channels")


@register_model_config("latent_diffusion")
@dataclass(frozen=True)
class DiffusionConfig:
    arch: str = "latent_diffusion"
    autoencoder: PartSpec = field(default_factory=PartSpec)  # an image_autoencoder run
    text: PartSpec = field(default_factory=PartSpec)  # an alignment run's text tower or an lm run (frozen)
    unet: UNetSpec = field(default_factory=UNetSpec)
    langs: list[str] = field(default_factory=lambda: ["en", "zh"])
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction: str = "epsilon"
    cond_dropout: float = 0.1  # share of training rows whose text is dropped (classifier-free guidance)
    sampler: str = "ddim"
    steps: int = 25
    guidance: float = 3.0
    latent_scale: float | None = None  # 1 / std of the training latents, measured when training starts

    def __post_init__(self) -> None:
        require_ints(self, ("train_timesteps", "steps"), "model")
        _check_langs(self.langs)
        _check_prob(self.cond_dropout, "model.cond_dropout")
        for name, value, allowed in (("sampler", self.sampler, SAMPLERS), ("prediction", self.prediction, PREDICTIONS),
                                     ("beta_schedule", self.beta_schedule, BETA_SCHEDULES)):
            if value not in allowed:
                raise ConfigError(f"must be one of {list(allowed)}, got {value!r}", field=f"model.{name}")
        if not 0.0 <= self.guidance <= 30.0:
            raise ConfigError(f"must be in [0, 30], got {self.guidance}", field="model.guidance")
        if self.latent_scale is not None and not self.latent_scale > 0:
            raise ConfigError(f"must be > 0, got {self.latent_scale}", field="model.latent_scale")


@register_model_config("token_ar")
@dataclass(frozen=True)
class TokenARConfig:
    """``text_len``: text tokens before the picture (longer prompts are cut, shorter padded, so every code has a
    fixed position). ``image_to_text``: share of training rows in the other direction (0: DALL-E; > 0:
    ERNIE-ViLG's bidirectional model)."""

    arch: str = "token_ar"
    autoencoder: PartSpec = field(default_factory=PartSpec)  # an image_autoencoder run of kind "vq"
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"vocab_size": 512})
    langs: list[str] = field(default_factory=lambda: ["en", "zh"])
    text_len: int = 32
    layers: int = 4
    width: int = 256
    heads: int = 4
    dropout: float = 0.0
    cond_dropout: float = 0.1
    image_to_text: float = 0.0
    guidance: float = 1.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        require_ints(self, ("text_len", "layers", "width", "heads"), "model")
        _check_langs(self.langs)
        for name in ("dropout", "cond_dropout", "image_to_text"):
            _check_prob(getattr(self, name), f"model.{name}")
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not a multiple of heads {self.heads}", field="model.heads")
        if not 0.0 <= self.guidance <= 30.0:
            raise ConfigError(f"must be in [0, 30], got {self.guidance}", field="model.guidance")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise ConfigError(f"must be null or an integer >= 1, got {self.top_k!r}", field="model.top_k")
