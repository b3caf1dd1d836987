"""The BLIP-2 and Flamingo bridges of ``arch: "mllm"``: a ViT, a causal LM (any transformers class
``AutoModelForCausalLM`` builds) and a bridge from `polymodal.bridges`, composed.

- ``blip2``: each picture's patch tokens -> the Q-Former's ``queries`` soft tokens, written over the picture's
  placeholder slots of the LM's input embeddings. ``stage: 1`` trains the Q-Former alone with BLIP-2's
  representation objectives (ITC + ITM + ITG on the captions, `QFormerBridge.stage1_losses`); ``stage: 2`` trains
  it (and ``language_projection``) to prompt the frozen LM.
- ``flamingo``: one marker token per picture; the perceiver resampler's latents of the latest picture at or
  before each token are what the gated cross-attention layers (hooked into the LM) attend to. Before the first
  picture a token sees no picture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..bridges import FlamingoBridge, FlamingoSpec, QFormerBridge, QFormerSpec
from ..config import from_dict
from ..errors import ConfigError, InvalidInput, require
from ..lm.decoding import DecodingOptions
from ..lm.tokenizer import BOS, EOS, PAD, TextTokenizer
from .gen_batch import hf_generate
from .generator import TokenStreamer
from .mllm_config import MLLMConfig
from .mllm_sources import merged_state_dict


def load_plain(module: nn.Module, state: dict[str, torch.Tensor], field: str) -> None:
    """Load plain weights into ``module``, which may carry LoRA adapters (``x.weight`` -> ``x.base_layer.weight``)."""
    own = module.state_dict()
    mapped = {}
    for key, value in state.items():
        if key not in own:
            head, _, last = key.rpartition(".")
            key = f"{head}.base_layer.{last}" if f"{head}.base_layer.{last}" in own else key
        mapped[key] = value
    result = module.load_state_dict(mapped, strict=False)
    missing = [k for k in result.missing_keys if "lora_" not in k]
    if missing or result.unexpected_keys:
        raise ConfigError(f"the LM's weights do not fit (missing {missing[:3]}, unexpected "
                          f"{result.unexpected_keys[:3]})", field=field)


class GenericBridge(nn.Module):
    def __init__(self, c: MLLMConfig, vision_cfg: Any, lm_cfg: Any):
        super().__init__()
        transformers = require("transformers", "hf")
        self.kind = c.bridge
        self.stage = c.stage
        self.vision = transformers.AutoModel.from_config(vision_cfg)
        self.lm = transformers.AutoModelForCausalLM.from_config(lm_cfg)
        for g in (self.lm.generation_config,):
            g.bos_token_id, g.eos_token_id, g.pad_token_id = BOS, EOS, PAD
        vision_dim, lm_dim = int(vision_cfg.hidden_size), int(lm_cfg.hidden_size)
        self.qformer: QFormerBridge | None = None
        self.flamingo: FlamingoBridge | None = None
        if c.bridge == "blip2":
            spec = from_dict(QFormerSpec, dict(c.qformer))
            self.qformer = QFormerBridge(spec, vision_dim, lm_dim, int(lm_cfg.vocab_size), max_text=c.max_len,
                                         pad_id=PAD, bos_id=BOS, eos_id=EOS)
            self.slots = spec.queries
        elif c.bridge == "flamingo":
            spec_f = from_dict(FlamingoSpec, dict(c.flamingo))
            self.flamingo = FlamingoBridge(spec_f, vision_dim, self.lm, freeze_lm=False)
            self.slots = 1
        else:
            raise ConfigError(f"unknown bridge {c.bridge!r}", field="bridge")

    def vision_tokens(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.vision(pixel_values=images).last_hidden_state
        return out

    # ------------------------------------------------------------------ LM inputs
    def _embeds(self, ids: torch.Tensor, images: torch.Tensor | None, image_token: int) -> torch.Tensor:
        embeds: torch.Tensor = self.lm.get_input_embeddings()(ids)
        where = ids == image_token
        if self.qformer is None or not bool(where.any()):
            return embeds
        if images is None:
            raise InvalidInput("picture slots without pictures", field="image")
        soft = self.qformer(self.vision_tokens(images)).to(embeds.dtype)
        if soft.shape[0] * soft.shape[1] != int(where.sum()):
            raise InvalidInput(f"{int(where.sum())} picture slots for {soft.shape[0]} pictures", field="image")
        return embeds.masked_scatter(where.unsqueeze(-1), soft.reshape(-1, soft.shape[-1]))

    def _media(self, ids: torch.Tensor, images: torch.Tensor | None, image_token: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents (B, M, K, D), text_to_media (B, L)) for Flamingo: the pictures of each row in order."""
        assert self.flamingo is not None
        marks = (ids == image_token).long()
        per_row = marks.sum(1).tolist()
        m = max(max(per_row, default=0), 1)
        b = ids.shape[0]
        spec = self.flamingo.spec
        dim = self.flamingo.vision_dim
        latents = torch.zeros(b, m, spec.latents, dim, device=ids.device)
        if images is not None and sum(per_row):
            lat = self.flamingo.resample(self.vision_tokens(images).unsqueeze(1)).squeeze(1)
            if lat.shape[0] != sum(per_row):
                raise InvalidInput(f"{sum(per_row)} picture markers for {lat.shape[0]} pictures", field="image")
            rows = torch.repeat_interleave(torch.arange(b, device=ids.device), torch.tensor(per_row, device=ids.device))
            slot = torch.cat([torch.arange(n, device=ids.device) for n in per_row if n])
            latents = latents.to(lat.dtype)
            latents[rows, slot] = lat
        elif sum(per_row):
            raise InvalidInput("picture markers without pictures", field="image")
        return latents, marks.cumsum(1) - 1

    def logits(self, ids: torch.Tensor, mask: torch.Tensor, images: torch.Tensor | None,
               image_token: int) -> torch.Tensor:
        if self.flamingo is not None:
            latents, t2m = self._media(ids, images, image_token)
            with self.flamingo.media(latents, t2m):
                out: torch.Tensor = self.lm(input_ids=ids, attention_mask=mask).logits
            return out
        embeds = self._embeds(ids, images, image_token)
        logits: torch.Tensor = self.lm(inputs_embeds=embeds, attention_mask=mask).logits
        return logits

    def generate(self, tok: TextTokenizer, ids: torch.Tensor, mask: torch.Tensor, images: torch.Tensor | None,
                 image_token: int, max_len: int, options: DecodingOptions | None,
                 streamer: TokenStreamer | None) -> list[str]:
        extra = {"suppress_tokens": [image_token, image_token + 1]}
        with torch.no_grad():
            if self.flamingo is not None:
                latents, t2m = self._media(ids, images, image_token)
                with self.flamingo.media(latents, t2m):
                    return hf_generate(self.lm, tok, ids.shape[1], max_len, options, streamer, input_ids=ids,
                                       attention_mask=mask, **extra)
            embeds = self._embeds(ids, images, image_token)
        return hf_generate(self.lm, tok, ids.shape[1], max_len, options, streamer, input_ids=ids,
                           inputs_embeds=embeds, attention_mask=mask, **extra)

    # ------------------------------------------------------------------ BLIP-2 stage 1
    def stage1(self, images: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
               same: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert self.qformer is not None
        return self.qformer.stage1_losses(self.vision_tokens(images), text_ids, text_mask, same=same)

    # ------------------------------------------------------------------ weights
    def load_lm(self, state: dict[str, torch.Tensor]) -> None:
        load_plain(self.lm, state, "lm.from_run")

    def save_lm(self, out: Path) -> None:
        transformers = require("transformers", "hf")
        plain = transformers.AutoModelForCausalLM.from_config(self.lm.config)
        plain.load_state_dict(merged_state_dict(self.lm), strict=True)
        plain.generation_config = self.lm.generation_config
        plain.save_pretrained(out, safe_serialization=True)


def build_bridge(c: MLLMConfig, vision_cfg: Any, lm_cfg: Any) -> GenericBridge:
    return GenericBridge(c, vision_cfg, lm_cfg)


__all__ = ["GenericBridge", "build_bridge", "load_plain"]
