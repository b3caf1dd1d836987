"""From-scratch text encoder: token + learned position embeddings -> transformer -> pooled vector.

Attention is bidirectional with the padding mask applied to the keys, so padded tokens never influence
real ones. Pooling (``pool``):
  - ``"mean"`` (default): masked mean over the real tokens; robust for tiny models trained briefly.
  - ``"eos"``: the hidden state of the last real token (the EOS id of our tokenizers), as CLIP does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InvalidInput
from .base import Encoder, register_encoder
from .layers import Transformer, check_heads, ensure_one_real, init_weights, last_real, masked_mean

_POOLS = ("mean", "eos")


@register_encoder("text_transformer")
class TextTransformer(Encoder):
    """Input part: ``values`` LongTensor (B, L) token ids, ``pad_mask`` (B, L), ``mask`` (B,)."""

    modality = "text"

    def __init__(self, vocab_size: int = 259, width: int = 128, layers: int = 2, heads: int = 4,
                 max_len: int = 64, mlp_ratio: float = 4.0, dropout: float = 0.0, pool: str = "mean",
                 output_dim: int | None = None, tokenizer: dict[str, Any] | None = None):
        super().__init__()
        check_heads(width, heads, "text.width")
        if pool not in _POOLS:
            raise ConfigError(f"pool must be one of {_POOLS}, got {pool!r}", field="text.pool")
        if vocab_size <= 0 or max_len <= 0:
            raise ConfigError("vocab_size and max_len must be positive", field="text.vocab_size")
        self.vocab_size, self.max_len, self.pool = vocab_size, max_len, pool
        # Byte-level by default: matches vocab_size 259 of polymodal.data.transforms.text.ByteTokenizer.
        self.tokenizer = dict(tokenizer) if tokenizer is not None else {"kind": "byte"}
        self.token_emb = nn.Embedding(vocab_size, width)
        self.pos_emb = nn.Parameter(torch.zeros(max_len, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio, dropout)
        self.ln_final = nn.LayerNorm(width)
        self.head: nn.Module = nn.Linear(width, output_dim) if output_dim else nn.Identity()
        self.output_dim = output_dim or width
        init_weights(self)
        nn.init.normal_(self.pos_emb, std=0.01)

    def preprocess(self) -> dict[str, Any]:
        return {"tokenizer": dict(self.tokenizer), "max_len": self.max_len}

    def token_states(self, part: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token states after the final layer norm (B, L, width) and the mask of real tokens (B, L): what a
        text-conditioned generator cross-attends to (`polymodal.models.t2i_text`)."""
        ids = part["values"]
        n, length = ids.shape
        present = part.get("mask", torch.ones(n, dtype=torch.bool, device=ids.device))
        pad = part.get("pad_mask", torch.ones(n, length, dtype=torch.bool, device=ids.device))
        if length > self.max_len:
            raise InvalidInput(f"{length} tokens exceed max_len {self.max_len}; truncate in the tokenizer",
                               field="text")
        pad = ensure_one_real(pad & present[:, None])
        # Out-of-vocabulary ids are a tokenizer/encoder mismatch; padded positions may hold anything.
        real_ids = ids[pad]
        if real_ids.numel() and (int(real_ids.min()) < 0 or int(real_ids.max()) >= self.vocab_size):
            raise InvalidInput(f"token ids must lie in [0, {self.vocab_size}), got "
                               f"[{int(real_ids.min())}, {int(real_ids.max())}]", field="text")
        safe = torch.where(pad, ids, torch.zeros_like(ids))
        x = self.token_emb(safe) + self.pos_emb[:length]
        return self.ln_final(self.transformer(x, pad)), pad

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        x, pad = self.token_states(part)
        present = part.get("mask", torch.ones(x.shape[0], dtype=torch.bool, device=x.device))
        pooled = masked_mean(x, pad) if self.pool == "mean" else last_real(x, pad)
        out: torch.Tensor = self.head(pooled) * present[:, None].to(pooled.dtype)
        return out
