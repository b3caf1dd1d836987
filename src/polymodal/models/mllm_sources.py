"""Where a multimodal LLM's parts come from, and LoRA on its language model.

- `vision_source`: a captioner/vqa run's ViT encoder (config + weights), or a fresh ViT config.
- `lm_source`: an ``lm`` run's Qwen2 (config, weights, tokenizer), a Hugging Face causal-LM folder holding a
  ``tokenizer.json`` with polymodal's specials (``<pad> <s> </s> <sep>`` = 0..3, as every ``lm`` run's RUN/hf
  has), or a fresh Qwen2 config.
- `load_init_weights`: an earlier ``mllm`` run's weights (``model.init_from``: stage 2 from stage 1).
- `add_lora` / `merged_state_dict`: peft's LoRA adapters injected in place into the LM; the merged weights
  (W + B A * alpha / r) under the plain module names, which is what ``save_hf`` writes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, require
from ..lm.tokenizer import BOS, EOS, PAD, TextTokenizer
from ..rundir import CONFIG, RUN_FORMAT, read_run_weights
from .loading import load_model
from .mllm_config import LMSpec, LoraSpec, VisionSpec


@dataclass
class Source:
    hf_config: dict[str, Any]
    state: dict[str, torch.Tensor] | None = None  # weights to copy in when training starts
    tokenizer_json: str | None = None


def _is_run(path: Path) -> bool:
    """A polymodal run (its config.json names the run format; an HF folder's does not)."""
    try:
        return (path / "model.safetensors").is_file() and \
            json.loads((path / CONFIG).read_text(encoding="utf-8")).get("format") == RUN_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_run_model(path: Path, arch: tuple[str, ...], field: str) -> Any:
    """A polymodal run of one of ``arch`` (a ConfigError naming ``field`` otherwise)."""
    if not _is_run(path):
        raise ConfigError(f"{path} is not a polymodal run folder", field=field)
    model, _, cfg = load_model(path)
    if cfg.get("arch") not in arch:
        raise ConfigError(f"{path} is a {cfg.get('arch')!r} run; expected {' or '.join(arch)}", field=field)
    return model


def vision_source(spec: VisionSpec) -> Source:
    if spec.hf_config is not None:
        return Source(dict(spec.hf_config))
    transformers = require("transformers", "hf")
    if spec.from_run is None:
        cfg = transformers.ViTConfig(hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                                     num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
                                     image_size=spec.image_size, patch_size=spec.patch_size)
        return Source(cfg.to_dict())
    path = Path(spec.from_run)
    if not _is_run(path):
        raise ConfigError(f"{path} is not a polymodal run folder (config.json + model.safetensors)", field="vision.from_run")
    model = load_run_model(path, ("captioner", "vqa"), "vision.from_run")
    if getattr(model, "input", "image") != "image" or getattr(model, "blind", False):
        raise ConfigError(f"{path} does not read images", field="vision.from_run")
    encoder = model.model.encoder
    return Source(encoder.config.to_dict(), {k: v.detach().clone() for k, v in encoder.state_dict().items()})


def _fresh_lm(spec: LMSpec, vocab_size: int) -> dict[str, Any]:
    transformers = require("transformers", "hf")
    cfg = transformers.Qwen2Config(
        vocab_size=vocab_size, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        tie_word_embeddings=True, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    out: dict[str, Any] = cfg.to_dict()
    return out


def lm_source(spec: LMSpec, vocab_size: int) -> Source:
    if spec.hf_config is not None:
        return Source(dict(spec.hf_config))
    if spec.from_run is None:
        return Source(_fresh_lm(spec, vocab_size))
    path = Path(spec.from_run)
    if _is_run(path):
        model = load_run_model(path, ("lm",), "lm.from_run")
        lm = model.lm
        return Source(lm.config.to_dict(), {k: v.detach().clone() for k, v in lm.state_dict().items()},
                      model._tok().to_json())
    if not (path / "config.json").is_file() or not (path / "tokenizer.json").is_file():
        raise ConfigError(f"{path} is neither an lm run nor a Hugging Face causal-LM folder with config.json and "
                          "tokenizer.json", field="lm.from_run")
    transformers = require("transformers", "hf")
    tok = TextTokenizer.from_file(path)  # checks polymodal's specials (<pad> <s> </s> <sep> = 0..3)
    lm = transformers.AutoModelForCausalLM.from_pretrained(path)
    return Source(lm.config.to_dict(), {k: v.detach().clone() for k, v in lm.state_dict().items()}, tok.to_json())


def grown_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """An embedding (V, D) grown to ``rows`` rows: the new ones drawn like the LM's init (std 0.02, seed 0)."""
    if weight.shape[0] >= rows:
        return weight
    extra = torch.randn(rows - weight.shape[0], *weight.shape[1:], generator=torch.Generator().manual_seed(0))
    return torch.cat([weight, (extra * 0.02).to(weight.dtype)])


def hf_config(d: dict[str, Any]) -> Any:
    """A transformers config object from its ``to_dict()``."""
    transformers = require("transformers", "hf")
    kw = {k: v for k, v in d.items() if k != "model_type"}
    return transformers.AutoConfig.for_model(d["model_type"], **kw)


def load_init_weights(model: nn.Module, run: str | os.PathLike[str]) -> None:
    """Copy an earlier mllm run's weights into ``model`` (same bridge and sizes). Where this model has LoRA
    adapters and the earlier run had none, its plain weights become the adapters' base weights."""
    path, cfg, state = read_run_weights(run)
    if cfg.get("arch") != "mllm" or cfg.get("model", {}).get("bridge") != getattr(model, "bridge", None):
        raise ConfigError(f"{path} is not an mllm run with bridge {getattr(model, 'bridge', None)!r}", field="init_from",
                          source=str(Path(path) / CONFIG))
    if any("lora_" in k for k in state):
        raise ConfigError(f"{path} has LoRA adapters; start from a run trained without them (or its hf folder as "
                          "lm.from_run)", field="init_from")
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in own:
            mapped[key] = value
            continue
        head, _, last = key.rpartition(".")
        based = f"{head}.base_layer.{last}"
        if based in own:
            mapped[based] = value
    missing = [k for k in own if k not in mapped and "lora_" not in k]
    if missing:
        raise ConfigError(f"{path}'s weights do not fit this model (missing {missing[:3]})", field="init_from")
    bad = [k for k, v in mapped.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ConfigError(f"{path}'s weights differ in shape from this model's ({bad[0]})", field="init_from")
    model.load_state_dict(mapped, strict=False)



# ------------------------------------------------------------------------------------------------ LoRA
def add_lora(module: nn.Module, spec: LoraSpec) -> nn.Module:
    """Inject LoRA adapters (peft) into ``module`` in place; only the adapters train."""
    peft = require("peft", "mllm")
    present = {name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in spec.targets if t not in present]
    if missing:
        raise ConfigError(f"the LM has no linear layers named {missing} (it has {sorted(present)})",
                          field="lm.lora.targets")
    cfg = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                          target_modules=list(spec.targets))
    out: nn.Module = peft.inject_adapter_in_model(cfg, module)
    for name, p in out.named_parameters():
        p.requires_grad_("lora_" in name)
    return out


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s weights with every LoRA adapter merged into its base layer, under the names the module has
    without adapters (``x.base_layer.weight`` -> ``x.weight``; adapter weights dropped)."""
    deltas: dict[str, torch.Tensor] = {}
    for name, m in module.named_modules():
        delta = getattr(m, "get_delta_weight", None)
        if callable(delta) and hasattr(m, "base_layer") and "default" in getattr(m, "lora_A", {}):
            deltas[name] = delta("default").detach()
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        if "lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        owner = key.rsplit(".base_layer.", 1)[0] if ".base_layer." in key else None
        if owner is not None and key.endswith(".base_layer.weight") and owner in deltas:
            value = value + deltas[owner].to(value.dtype)
        out[plain] = value.detach().clone()
    return out


__all__ = ["Source", "add_lora", "grown_rows", "load_init_weights", "load_run_model", "hf_config", "lm_source", "merged_state_dict", "vision_source"]
