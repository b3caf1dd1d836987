"""The parts a text->image run takes from other runs, and the frozen text encoder that conditions diffusion.

`FrozenTextTower` is an alignment run's text encoder (its per-token states after the final norm, not the pooled
vector: cross-attention reads every word) with the run's own tokenizer, frozen: Imagen's finding that a frozen,
separately trained text encoder conditions well. `FrozenLMStates` reads an ``lm`` run (a causal Qwen2 trained on
the captions) the same way, for comparing a contrastive tower with LM states. A source run is read once, on the first build (`part_source`):
its spec is written into the new run's config and its weights copied in when training starts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.transforms.text import tokenizer_from_dict
from ..encoders import create_encoder
from ..encoders.text import TextTransformer
from ..errors import ConfigError, InvalidInput
from ..lm.tokenizer import BOS, EOS, PAD
from ..rundir import read_run_weights
from .lm import CausalLM
from .t2i_autoencoder import ImageAutoencoder
from .t2i_config import PartSpec

MAX_PROMPT_CHARS = 1000  # a longer prompt is an error, not a silent cut (the tokenizer then truncates to max_len)


def part_source(spec: PartSpec, field: str, archs: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run config, weights) of ``spec.from_run``: a polymodal run of one of ``archs``."""
    if spec.from_run is None:
        raise ConfigError(f"give {field}.from_run (a {' or '.join(archs)} run) on the first build", field=field)
    try:
        _, cfg, state = read_run_weights(Path(spec.from_run))
    except Exception as exc:  # a missing or damaged run: say which part wanted it
        raise ConfigError(f"cannot read {spec.from_run}: {exc}", field=f"{field}.from_run") from None
    if cfg.get("arch") not in archs:
        raise ConfigError(f"{spec.from_run} is a {cfg.get('arch')!r} run; expected {' or '.join(archs)}",
                          field=f"{field}.from_run")
    return cfg, state


def source_autoencoder(spec: PartSpec, config: dict[str, Any]) -> tuple[ImageAutoencoder, dict[str, Any] | None]:
    """A generator's frozen first stage: built from ``spec.config`` (a finished run), or on the first build from
    ``spec.from_run``, whose model section is then written into ``config["autoencoder"]``; returns the module
    and the source's weights to copy in when training starts (None when there is nothing to copy)."""
    ae_cfg, state = spec.config, None
    if ae_cfg is None:
        run_cfg, state = part_source(spec, "model.autoencoder", ("image_autoencoder",))
        ae_cfg = dict(run_cfg["model"])
        config["autoencoder"] = {"from_run": spec.from_run, "config": ae_cfg}
    ae = ImageAutoencoder(ae_cfg)
    ae.requires_grad_(False)
    return ae, state


def text_tower_source(spec: PartSpec) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An alignment run's text tower, or an ``lm`` run, as (spec for `text_conditioner`, its weights)."""
    cfg, state = part_source(spec, "model.text", ("alignment", "lm"))
    if cfg["arch"] == "lm":
        return {"kind": "lm", "model": dict(cfg["model"])}, dict(state)
    encoder = (cfg["model"].get("encoders") or {}).get("text")
    if not isinstance(encoder, dict) or encoder.get("name") != "text_transformer":
        raise ConfigError(f"{spec.from_run} has no from-scratch text tower (text_transformer)",
                          field="model.text.from_run")
    transform = cfg.get("transform") or {}
    tower = {"encoder": encoder, "tokenizer": transform.get("text") or {"kind": "byte"},
             "max_len": int(transform.get("max_text_len", 64))}
    prefix = "encoders.text."
    return tower, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def text_conditioner(spec: dict[str, Any]) -> FrozenTextTower | FrozenLMStates:
    """The frozen text encoder a spec names: an alignment run's tower (default) or an ``lm`` run's states."""
    return FrozenLMStates(spec) if spec.get("kind") == "lm" else FrozenTextTower(spec)


class FrozenLMStates(nn.Module):
    """An ``lm`` run (Qwen2, causal) read as a text encoder: the last layer's states of ``<s> text </s>`` (each
    token sees only the words before it, unlike the bidirectional tower). Frozen."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.lm = CausalLM(dict(spec["model"]))
        self.tokenizer = self.lm._tok()
        self.width = int(self.lm.lm.config.hidden_size)
        self.max_len = int(self.lm.max_len)
        self.requires_grad_(False)

    @property
    def encoder(self) -> nn.Module:
        """What a source run's weights load into (the run's whole `CausalLM`)."""
        return self.lm

    def train(self, mode: bool = True) -> FrozenLMStates:
        super().train(False)
        return self

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.lm.parameters()).device
        rows = [[BOS, *self.tokenizer.encode(check_prompt(t, i))[:self.max_len - 2], EOS] for i, t in enumerate(texts)]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), PAD, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), length, dtype=torch.bool, device=device)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = True
        with torch.no_grad():
            out = self.lm.lm(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        states: torch.Tensor = out.hidden_states[-1]
        return states, mask


class FrozenTextTower(nn.Module):
    """Texts -> (per-token states (B, L, width), mask of real tokens (B, L)); never trained."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        enc = dict(spec["encoder"])
        encoder = create_encoder(str(enc.pop("name")), **enc)
        if not isinstance(encoder, TextTransformer):
            raise ConfigError("the text tower must be a text_transformer (per-token states)", field="model.text.config")
        self.encoder: TextTransformer = encoder
        self.tokenizer = tokenizer_from_dict(dict(spec["tokenizer"]))
        self.max_len = min(int(spec["max_len"]), int(getattr(self.encoder, "max_len", spec["max_len"])))
        self.width = int(self.encoder.token_emb.embedding_dim)
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenTextTower:
        super().train(False)  # frozen: dropout stays off while the rest trains
        return self

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.encoder.token_emb.weight.device
        rows = [self.tokenizer.encode(check_prompt(t, i), self.max_len) for i, t in enumerate(texts)]
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        pad = torch.zeros(len(rows), length, dtype=torch.bool, device=device)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            pad[i, :len(r)] = True
        with torch.no_grad():
            states, mask = self.encoder.token_states({"values": ids, "pad_mask": pad})
        return states, mask


def check_prompt(text: Any, index: int) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"prompt {index} must be a non-empty string, got {text!r}", field="prompt")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"prompt {index} has {len(text)} characters, more than {MAX_PROMPT_CHARS}", field="prompt")
    return text


def training_prompts(batch_targets: Sequence[Any], texts: Sequence[str | None], langs: Sequence[str],
                     generator: torch.Generator | None = None) -> list[str]:
    """One caption per row, drawn among the row's image captions in ``langs`` (its text when it has none)."""
    out: list[str] = []
    for i, targets in enumerate(batch_targets):
        caps = [c.text for c in getattr(targets, "captions", ()) if c.media == "image" and c.lang in langs]
        if not caps:
            if texts[i] is None:
                raise InvalidInput(f"row {i} has no caption and no text to condition on", field="targets.captions")
            caps = [str(texts[i])]
        out.append(caps[int(torch.randint(len(caps), (), generator=generator))])
    return out
