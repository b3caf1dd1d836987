"""Flamingo (Alayrac et al., 2022) as a bridge: a perceiver resampler turns each image's vision tokens into K
latents, and gated cross-attention layers, inserted before the decoder layers of a frozen Hugging Face causal
LM, let the text attend to them. Built on transformers' ``IdeficsPerceiverResampler`` and
``IdeficsGatedCrossAttentionLayer`` (the classes of ``IdeficsForVisionText2Text``, the open Flamingo).

Installation: a forward pre-hook on every ``every``-th decoder layer (0, every, 2*every, ...) replaces the
layer's input hidden states by the gated layer's output. The LM's modules, weights and ``state_dict`` keys stay
as they were; ``uninstall()`` removes the hooks. Outside a ``with bridge.media(latents, text_to_media):`` block
the hooks do nothing and the LM is the plain LM.

Per-image masking (Flamingo): ``text_to_media`` (B, L) gives, for each text position, the index 0..M-1 of the
latest image at or before it, or -1 before the first image. A token attends only to the K latents of its image;
a token with -1 skips the gated layer entirely (its hidden state passes through unchanged, the feed-forward half
included — Idefics applies the gated feed-forward to every token; we keep text before the first image exactly
the LM's, as it would be without the bridge). The gates start at 0 (``tanh(0) = 0``), so at initialisation
the LM's outputs with media equal its plain outputs exactly.

Decoding with a KV cache: when the LM is called with L tokens and ``text_to_media`` has T >= L columns, the L
tokens are taken to be the last L positions: its last L columns apply. In ``generate`` (a prompt of T tokens,
then one new token per call), every generated token therefore uses the LAST column: it belongs to the latest
image of the prompt. For hand-written incremental decoding, enter ``media`` with the map up to the current
token (``text_to_media[:, :t + 1]``). Beams / several returned sequences: latents and the map given for B rows
are repeated (``repeat_interleave``) when the LM runs B * n rows, as ``generate`` expands its inputs.

Supported LMs: those whose decoder layers are at ``.model.layers`` (Qwen2, Llama, Mistral, ...),
``.transformer.h`` (GPT-2), ``.model.decoder.layers`` (OPT) or ``.gpt_neox.layers``, including a ``peft``
model around one of them, each taking the hidden states as its first argument.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import ConfigError, InvalidInput, require
from ..registry import require_ints
from .qformer import additive

LAYER_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers")
_INSTALLED = "_polymodal_flamingo"  # marks an LM that has a bridge installed


@dataclass(frozen=True)
class FlamingoSpec:
    latents: int = 16  # K latents per image
    perceiver_layers: int = 2
    perceiver_heads: int = 4
    perceiver_head_dim: int = 32
    every: int = 1  # a gated cross-attention layer before every `every`-th LM decoder layer
    cross_heads: int = 0  # heads of the gated cross-attention; 0: the LM's
    ff_mult: int = 4  # the gated layer's feed-forward width, in multiples of the LM's hidden size

    def __post_init__(self) -> None:
        require_ints(self, ("latents", "perceiver_layers", "perceiver_heads", "perceiver_head_dim", "every",
                          "ff_mult"), "flamingo")
        require_ints(self, ("cross_heads",), "flamingo", low=0)


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The LM's decoder layers (see ``LAYER_PATHS``); a ``peft`` model is looked through."""
    get_base = getattr(lm, "get_base_model", None)
    base: Any = get_base() if callable(get_base) else lm
    for path in LAYER_PATHS:
        obj: Any = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise ConfigError(f"cannot find the decoder layers of {type(lm).__name__} (looked at {list(LAYER_PATHS)})",
                      field="lm")


def _lm_sizes(lm: nn.Module) -> tuple[int, int]:
    config = getattr(lm, "config", None)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if not isinstance(hidden, int) or not isinstance(heads, int):
        raise ConfigError(f"{type(lm).__name__} has no config.hidden_size / num_attention_heads", field="lm")
    return hidden, heads


class FlamingoBridge(nn.Module):
    """The resampler and the gated layers (this module's parameters), installed into ``lm`` (not a submodule:
    its parameters are not ours). ``freeze_lm`` sets ``requires_grad=False`` on the LM's parameters (pass False
    when the LM is tuned, e.g. with LoRA, and freeze it yourself)."""

    def __init__(self, spec: FlamingoSpec, vision_dim: int, lm: nn.Module, *, freeze_lm: bool = True):
        super().__init__()
        require_ints(_Dim(vision_dim), ("vision_dim",), "bridge")
        if getattr(lm, _INSTALLED, False):
            raise ConfigError("this LM already has a Flamingo bridge installed; uninstall it first", field="lm")
        layers = decoder_layers(lm)
        hidden, lm_heads = _lm_sizes(lm)
        heads = spec.cross_heads or lm_heads
        if hidden % heads:
            raise ConfigError(f"the LM's hidden size {hidden} does not split into {heads} heads",
                              field="flamingo.cross_heads")
        self.spec, self.vision_dim, self.hidden = spec, vision_dim, hidden
        config = self._idefics_config(hidden, heads)
        perceiver = require("transformers.models.idefics.perceiver", "hf")
        idefics = require("transformers.models.idefics.modeling_idefics", "hf")
        self.resampler = perceiver.IdeficsPerceiverResampler(config, vision_dim, spec.perceiver_layers,
                                                             spec.perceiver_heads, spec.perceiver_head_dim,
                                                             spec.latents)
        self.cross_layers = tuple(range(0, len(layers), spec.every))
        self.gated = nn.ModuleList(idefics.IdeficsGatedCrossAttentionLayer(config, layer_idx=i)
                                   for i in self.cross_layers)
        if freeze_lm:
            lm.requires_grad_(False)
        self._lm = [lm]  # a list: not registered as a submodule
        self._media: tuple[torch.Tensor, torch.Tensor] | None = None
        self._hooks: list[RemovableHandle] = [
            layers[i].register_forward_pre_hook(partial(self._before_layer, k), with_kwargs=True)
            for k, i in enumerate(self.cross_layers)]
        setattr(lm, _INSTALLED, True)

    def _idefics_config(self, hidden: int, heads: int) -> Any:
        s = self.spec
        config = require("transformers", "hf").IdeficsConfig(
            hidden_size=hidden, num_attention_heads=heads, intermediate_size=s.ff_mult * hidden,
            alpha_initializer="zeros", alpha_type="float", qk_layer_norms=False,
            vision_config={"embed_dim": self.vision_dim, "num_attention_heads": 1},
            perceiver_config={"use_resampler": True, "resampler_n_latents": s.latents,
                              "resampler_depth": s.perceiver_layers, "resampler_n_heads": s.perceiver_heads,
                              "resampler_head_dim": s.perceiver_head_dim, "qk_layer_norms_perceiver": False})
        config._attn_implementation = "sdpa"
        return config

    @property
    def lm(self) -> nn.Module:
        return self._lm[0]

    @property
    def installed(self) -> bool:
        return bool(self._hooks)

    def uninstall(self) -> None:
        """Remove the hooks: the LM is its original self again (the bridge keeps its weights)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if getattr(self.lm, _INSTALLED, False):
            delattr(self.lm, _INSTALLED)

    def resample(self, vision: torch.Tensor) -> torch.Tensor:
        """Vision tokens of M images per row (B, M, N, Dv) -> their latents (B, M, K, Dv), each image alone."""
        if vision.dim() != 4 or vision.shape[3] != self.vision_dim:
            raise InvalidInput(f"expected (B, M, N, {self.vision_dim}), got {tuple(vision.shape)}", field="vision")
        b, m, n, d = vision.shape
        latents = self.resampler(vision.reshape(b * m, n, d))
        return latents.reshape(b, m, self.spec.latents, d)  # type: ignore[no-any-return]

    @contextmanager
    def media(self, latents: torch.Tensor, text_to_media: torch.Tensor) -> Iterator[None]:
        """Within this block the LM's text attends to ``latents`` (B, M, K, Dv) as ``text_to_media`` (B, L)
        says (module docstring). Blocks nest; leaving one restores the media before it."""
        if latents.dim() != 4 or latents.shape[2:] != (self.spec.latents, self.vision_dim):
            raise InvalidInput(f"expected (B, M, {self.spec.latents}, {self.vision_dim}), got "
                               f"{tuple(latents.shape)}", field="latents")
        if text_to_media.dim() != 2 or text_to_media.dtype != torch.long \
                or text_to_media.shape[0] != latents.shape[0]:
            raise InvalidInput(f"expected int64 ({latents.shape[0]}, L), got {text_to_media.dtype} "
                               f"{tuple(text_to_media.shape)}", field="text_to_media")
        if ((text_to_media < -1) | (text_to_media >= latents.shape[1])).any():
            raise InvalidInput(f"entries must be -1 or an image index in [0, {latents.shape[1]})",
                               field="text_to_media")
        before, self._media = self._media, (latents, text_to_media)
        try:
            yield
        finally:
            self._media = before

    def _before_layer(self, k: int, module: nn.Module, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self._media is None:
            return None
        if args:
            return (self._cross(k, args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self._cross(k, kwargs["hidden_states"])}

    def _rows(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The media for ``batch`` rows: as given, or each row repeated (beams / several sequences per row)."""
        assert self._media is not None
        latents, t2m = self._media
        if batch != latents.shape[0]:
            if batch % latents.shape[0]:
                raise InvalidInput(f"the LM runs {batch} rows but the media has {latents.shape[0]}",
                                   field="latents")
            n = batch // latents.shape[0]
            latents, t2m = latents.repeat_interleave(n, dim=0), t2m.repeat_interleave(n, dim=0)
        return latents, t2m

    def _cross(self, k: int, hidden: torch.Tensor) -> torch.Tensor:
        """The k-th gated layer on ``hidden`` (B, L, D); tokens without an image pass through."""
        b, length, _ = hidden.shape
        latents, t2m = self._rows(b)
        if length > t2m.shape[1]:
            raise InvalidInput(f"the LM runs {length} tokens but text_to_media covers {t2m.shape[1]}",
                               field="text_to_media")
        t2m = t2m[:, t2m.shape[1] - length:].to(hidden.device)
        m, n_lat = latents.shape[1], latents.shape[2]
        gated: Any = self.gated[k]
        flat = latents.reshape(b, m * n_lat, -1).to(device=hidden.device, dtype=gated.alpha_cross_attn.dtype)
        image_of = torch.arange(m, device=hidden.device).repeat_interleave(n_lat)  # (M*K,)
        has = t2m >= 0
        # rows without an image may look at everything: no fully masked row (NaN in low precision); discarded below
        allowed = (t2m[:, :, None] == image_of) | ~has[:, :, None]
        mask = additive(allowed, flat.dtype)[:, None]  # (B, 1, L, M*K)
        # in the bridge's dtype (e.g. an fp32 bridge on a bf16 frozen LM), back in the LM's
        out = gated(hidden.to(flat.dtype), image_hidden_states=flat, image_attention_mask=mask,
                    cross_attention_gate=has.to(flat.dtype))
        return torch.where(has[:, :, None], out.to(hidden.dtype), hidden)


@dataclass(frozen=True)
class _Dim:
    vision_dim: int
