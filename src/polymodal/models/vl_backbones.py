"""The families of vision-language encoders, behind one interface (`VLBackbone.forward -> VLOutput`).

- ``visualbert`` (single stream): transformers' ``VisualBertModel``; text tokens and visual tokens in one
  transformer. Word -> region attention: a layer's text-row, visual-column block.
- ``lxmert`` (three encoders): transformers' ``LxmertModel`` (language, object-relationship and cross-modality
  encoders; the box is its ``visual_pos``). Attention: a cross-modality layer's language -> vision map.
- ``vilbert`` (two streams with co-attention): our own module, as transformers has none. Each co-attention block
  lets every stream attend the other (queries from one, keys/values from the other, then a feed-forward), then
  a self-attention layer per stream; the joint vector is ``tanh(W h_cls) * tanh(V h_img)`` (ViLBERT's
  element-wise product of the [CLS] and <IMG> outputs). Attention: a block's text -> visual map.
- ``blip`` (fusion encoder, ALBEF/BLIP): transformers' ``BlipVisionModel`` (a ViT over patches) and
  ``BlipTextModel`` with cross-attention: run without the image it is the unimodal text encoder (image-text
  contrastive), run with the image tokens it is the fusion encoder (matching, masked LM) — BLIP's shared
  encoder. Attention: a layer's cross-attention.
- ``concat`` (the fusion baseline): a text transformer and a visual transformer that never attend each other; the
  joint vector is an MLP of ``[t, v, t * v]`` (the [CLS] text vector, the mean visual vector): early fusion of
  unimodal features, the classical VQA baseline. It has no text -> visual attention.

Every family receives the same `VisualTokens` (`vl_inputs`): the stem embeds each token's pixels (a small CNN
for region crops, a linear map of the flattened patch otherwise) and adds its box; ``blip`` embeds the picture
itself. The cross-modal layers' attention probabilities are returned only when asked (``attend=True``; eager
attention), per layer and head and as computed, so `VLEncoder.attention` can weigh them by their gradient
(Grad-CAM)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import require
from .vl_inputs import VisualTokens

FAMILIES: tuple[str, ...] = ("visualbert", "lxmert", "vilbert", "blip", "concat")


class VLOutput(NamedTuple):
    text: torch.Tensor  # (B, L, H) contextual text tokens (after fusion)
    visual: torch.Tensor | None  # (B, K, H) contextual visual tokens (None where the family has none)
    pooled: torch.Tensor  # (B, H) the joint vector (matching, VQA)
    attn: tuple[torch.Tensor, ...] | None  # per cross-modal layer, the attention probabilities (B, heads, Q, K) as
    # computed (so a gradient can be taken with respect to them), when asked; `text_to_visual` cuts out the
    # text -> visual block


class VisualStem(nn.Module):
    """Pixels of each visual token + its box -> a ``dim`` vector."""

    def __init__(self, dim: int, crop: int, regions: bool):
        super().__init__()
        if regions:  # a small CNN: colour and outline of a crop
            self.net: nn.Module = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(256, dim))
        else:
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * crop * crop, dim))
        self.box = nn.Linear(5, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, v: VisualTokens) -> torch.Tensor:
        b, k = v.pixels.shape[:2]
        x = self.net(v.pixels.flatten(0, 1)).view(b, k, -1)
        out: torch.Tensor = self.norm(x + self.box(v.boxes))
        return out


def _eager(config: Any) -> Any:
    config._attn_implementation = "eager"  # attention maps are returned by eager attention only
    return config


class VisualBert(nn.Module):
    def __init__(self, c: Any, vocab: int, visual_dim: int):
        super().__init__()
        t = require("transformers", "hf")
        self.model = t.VisualBertModel(_eager(t.VisualBertConfig(
            vocab_size=vocab, hidden_size=c.hidden, num_hidden_layers=c.layers, num_attention_heads=c.heads,
            intermediate_size=c.hidden * 4, visual_embedding_dim=visual_dim, max_position_embeddings=c.max_text,
            hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout, pad_token_id=0)))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, vis: torch.Tensor, v: VisualTokens,
                attend: bool) -> VLOutput:
        vmask = v.valid.long()
        out = self.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                         visual_embeds=vis, visual_attention_mask=vmask, visual_token_type_ids=torch.ones_like(vmask),
                         output_attentions=attend)
        n = ids.shape[1]
        seq = out.last_hidden_state
        return VLOutput(seq[:, :n], seq[:, n:], out.pooler_output, tuple(out.attentions) if attend else None)

    @staticmethod
    def text_to_visual(att: torch.Tensor, n_text: int) -> torch.Tensor:
        """One softmax over text + visual keys: the text rows' visual columns."""
        return att[:, :, :n_text, n_text:]


class Lxmert(nn.Module):
    def __init__(self, c: Any, vocab: int, visual_dim: int):
        super().__init__()
        t = require("transformers", "hf")
        self.model = t.LxmertModel(_eager(t.LxmertConfig(
            vocab_size=vocab, hidden_size=c.hidden, num_attention_heads=c.heads, intermediate_size=c.hidden * 4,
            l_layers=c.layers, x_layers=c.cross_layers, r_layers=c.visual_layers, visual_feat_dim=visual_dim,
            visual_pos_dim=4, max_position_embeddings=c.max_text, hidden_dropout_prob=c.dropout,
            attention_probs_dropout_prob=c.dropout, pad_token_id=0)))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, vis: torch.Tensor, v: VisualTokens,
                attend: bool) -> VLOutput:
        out = self.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), visual_feats=vis,
                         visual_pos=v.boxes[..., :4], visual_attention_mask=v.valid.long(),
                         output_attentions=attend)
        att = tuple(out.cross_encoder_attentions) if attend else None
        return VLOutput(out.language_output, out.vision_output, out.pooled_output, att)

    @staticmethod
    def text_to_visual(att: torch.Tensor, n_text: int) -> torch.Tensor:
        """The cross-modality layer's language -> vision attention."""
        return att


def attention_with_probs(mha: nn.MultiheadAttention, q: torch.Tensor, kv: torch.Tensor, pad: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``mha(q, kv, kv, key_padding_mask=pad)`` computed from the module's own weights (batch first), returning the
    per-head probabilities (B, heads, Q, K) that the output is computed from, so a gradient can reach them
    (nn.MultiheadAttention returns a copy made after its matmul)."""
    b, nq, d = q.shape
    h = mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = (mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None))

    def heads(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, bias).view(b, -1, h, d // h).transpose(1, 2)

    qh, kh, vh = heads(q, w_q, b_q), heads(kv, w_k, b_k), heads(kv, w_v, b_v)
    scores = qh @ kh.transpose(-1, -2) / (d // h) ** 0.5
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    probs = scores.softmax(-1)
    drop = F.dropout(probs, mha.dropout, mha.training)
    out = (drop @ vh).transpose(1, 2).reshape(b, nq, d)
    return mha.out_proj(out), probs


class CoAttentionBlock(nn.Module):
    """ViLBERT's co-TRM (each stream attends the other) followed by a TRM layer per stream."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.t_from_v = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.v_from_t = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_t, self.norm_v = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff_t = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ff_v = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm_t2, self.norm_v2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_t = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True)
        self.self_v = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True)

    def forward(self, t: torch.Tensor, v: torch.Tensor, t_pad: torch.Tensor, v_pad: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a_t, w = attention_with_probs(self.t_from_v, t, v, v_pad)
        a_v, _ = self.v_from_t(v, t, t, key_padding_mask=t_pad, need_weights=False)
        t = self.norm_t(t + a_t)
        v = self.norm_v(v + a_v)
        t = self.norm_t2(t + self.ff_t(t))
        v = self.norm_v2(v + self.ff_v(v))
        return self.self_t(t, src_key_padding_mask=t_pad), self.self_v(v, src_key_padding_mask=v_pad), w


def _layers(c: Any, n: int) -> nn.ModuleList:
    h = c.hidden
    return nn.ModuleList(nn.TransformerEncoderLayer(h, c.heads, 4 * h, c.dropout, activation="gelu", batch_first=True)
                         for _ in range(n))


class TextStream(nn.Module):
    """The text side of our own families (ViLBERT, the concat baseline): BERT-style token + position embeddings
    and ``layers`` transformer layers. A base class (not a submodule) so the parameter names stay ``embed``,
    ``pos``, ``norm``, ``text_layers``."""

    def __init__(self, c: Any, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, c.hidden, padding_idx=0)
        self.pos = nn.Embedding(c.max_text, c.hidden)
        self.norm = nn.LayerNorm(c.hidden)
        self.text_layers = _layers(c, c.layers)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t: torch.Tensor = self.norm(self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device)))
        for layer in self.text_layers:
            t = layer(t, src_key_padding_mask=mask == 0)
        return t


class Vilbert(TextStream):
    def __init__(self, c: Any, vocab: int, visual_dim: int):
        super().__init__(c, vocab)
        h = c.hidden
        self.visual_in = nn.Linear(visual_dim, h)
        self.blocks = nn.ModuleList(CoAttentionBlock(h, c.heads, c.dropout) for _ in range(c.cross_layers))
        self.pool_t, self.pool_v = nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, vis: torch.Tensor, v: VisualTokens,
                attend: bool) -> VLOutput:
        t_pad, v_pad = mask == 0, ~v.valid
        t = self.encode_text(ids, mask)
        x = self.visual_in(vis)
        maps = []
        for block in self.blocks:
            t, x, w = block(t, x, t_pad, v_pad)
            maps.append(w)
        pooled = torch.tanh(self.pool_t(t[:, 0])) * torch.tanh(self.pool_v(x[:, 0]))
        return VLOutput(t, x, pooled, tuple(maps) if attend else None)

    @staticmethod
    def text_to_visual(att: torch.Tensor, n_text: int) -> torch.Tensor:
        """The co-attention block's text -> visual attention."""
        return att


class Blip(nn.Module):
    """BLIP's ViT + shared text/fusion encoder. ``unimodal`` gives the [CLS] vectors for the contrastive loss."""

    def __init__(self, c: Any, vocab: int, image_size: int, patch: int):
        super().__init__()
        t = require("transformers", "hf")
        self.vision = t.BlipVisionModel(_eager(t.BlipVisionConfig(
            hidden_size=c.hidden, intermediate_size=4 * c.hidden, num_hidden_layers=c.visual_layers or c.layers,
            num_attention_heads=c.heads, image_size=image_size, patch_size=patch, attention_dropout=c.dropout)))
        self.text = t.BlipTextModel(_eager(t.BlipTextConfig(
            vocab_size=vocab, hidden_size=c.hidden, encoder_hidden_size=c.hidden, intermediate_size=4 * c.hidden,
            num_hidden_layers=c.layers, num_attention_heads=c.heads, max_position_embeddings=c.max_text,
            hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout, is_decoder=True,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, sep_token_id=2)), add_pooling_layer=False)

    def image_tokens(self, v: VisualTokens) -> torch.Tensor:
        out: torch.Tensor = self.vision(pixel_values=v.image).last_hidden_state  # (B, 1 + patches, H)
        return out

    def text_only(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.text(input_ids=ids, attention_mask=mask, is_decoder=False).last_hidden_state
        return out

    def fuse(self, ids: torch.Tensor, mask: torch.Tensor, img: torch.Tensor, attend: bool) -> VLOutput:
        out = self.text(input_ids=ids, attention_mask=mask, encoder_hidden_states=img,
                        encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long, device=img.device),
                        is_decoder=False, output_attentions=attend)
        seq = out.last_hidden_state
        att = tuple(out.cross_attentions) if attend else None
        return VLOutput(seq, img[:, 1:], seq[:, 0], att)

    @staticmethod
    def text_to_visual(att: torch.Tensor, n_text: int) -> torch.Tensor:
        """The layer's cross-attention, without the image [CLS] (not a location)."""
        return att[..., 1:]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, vis: torch.Tensor, v: VisualTokens,
                attend: bool) -> VLOutput:
        return self.fuse(ids, mask, self.image_tokens(v), attend)


class ConcatFusion(TextStream):
    def __init__(self, c: Any, vocab: int, visual_dim: int):
        super().__init__(c, vocab)
        h = c.hidden
        self.visual_in = nn.Linear(visual_dim, h)
        self.visual_layers = _layers(c, max(c.visual_layers, 1))
        self.joint = nn.Sequential(nn.Linear(3 * h, h), nn.GELU(), nn.Linear(h, h), nn.Tanh())

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, vis: torch.Tensor, v: VisualTokens,
                attend: bool) -> VLOutput:
        v_pad = ~v.valid
        t = self.encode_text(ids, mask)
        x = self.visual_in(vis)
        for layer in self.visual_layers:
            x = layer(x, src_key_padding_mask=v_pad)
        keep = v.valid.unsqueeze(-1).to(x.dtype)
        pooled_v = (x * keep).sum(1) / keep.sum(1).clamp(min=1)
        pooled = self.joint(torch.cat([t[:, 0], pooled_v, t[:, 0] * pooled_v], dim=-1))
        return VLOutput(t, x, pooled, None)

    @staticmethod
    def text_to_visual(att: torch.Tensor, n_text: int) -> torch.Tensor:
        raise NotImplementedError("the fusion baseline has no text -> visual attention")


def build_backbone(family: str, c: Any, vocab: int, visual_dim: int, image_size: int, patch: int) -> nn.Module:
    if family == "visualbert":
        return VisualBert(c, vocab, visual_dim)
    if family == "lxmert":
        return Lxmert(c, vocab, visual_dim)
    if family == "vilbert":
        return Vilbert(c, vocab, visual_dim)
    if family == "concat":
        return ConcatFusion(c, vocab, visual_dim)
    return Blip(c, vocab, image_size, patch)


__all__ = ["FAMILIES", "Blip", "CoAttentionBlock", "ConcatFusion", "Lxmert", "VLOutput", "VisualBert", "VisualStem", "Vilbert",
           "build_backbone"]
