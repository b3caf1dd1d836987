"""BLIP-2's Q-Former (Li et al., 2023) as the bridge between a frozen vision encoder and a frozen causal LM, built
on transformers' ``Blip2QFormerModel`` and ``Blip2TextEmbeddings`` (the classes ``Blip2ForConditionalGeneration``
and ``Blip2ForImageTextRetrieval`` use).

``Q`` learned queries cross-attend the vision tokens (B, N, Dv). Stage 2 (``forward``): their outputs, through
``language_projection``, are a soft prompt (B, Q, lm_dim) for the LM. Stage 1 (``stage1_losses``) trains the
queries against text with the three objectives of the paper, each with its own self-attention mask:

- ITC: queries and text in separate passes (they do not see each other); similarity of an image and a text =
  max over queries of cos(query feature, text [CLS] feature); in-batch symmetric InfoNCE.
- ITM: queries + text in one bidirectional pass; for each image a hard negative text and for each text a hard
  negative image drawn from the ITC similarities (``losses.matching.sample_hard_negatives``); a two-way head on
  each query output, averaged over queries.
- ITG: queries + text in one pass with a UniLM mask: queries see queries only, text sees every query and the
  text before it (causal); a BERT-style LM head (tied to the word embeddings) predicts the next text token.

Text rows are ``<bos> tokens ... <eos> <pad>...`` (right padding, ``text_mask`` 1 on real tokens): position 0,
``bos_id``, is the [CLS] of ITC/ITM and the [DEC] of ITG. Masks are built here as additive 4-d masks: in
transformers 5.x ``Blip2QFormerModel`` passes a 4-d mask through unchanged (``get_extended_attention_mask`` is
gone). ``blip2_state_dict`` names the stage-2 weights as ``Blip2ForConditionalGeneration`` does, without the
text-only feed-forward blocks, so it loads into a model whose ``qformer_config`` is ``qformer_config()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InvalidInput, require
from ..losses.matching import IGNORE, itm_loss, sample_hard_negatives
from ..registry import require_ints

MAX_LOG_SCALE = math.log(100.0)


@dataclass(frozen=True)
class QFormerSpec:
    queries: int = 16
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 512
    cross_every: int = 1  # a cross-attention to the vision tokens in every `cross_every`-th layer (BLIP-2: 2)
    embed_dim: int = 64  # stage-1 contrastive space
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require_ints(self, ("queries", "hidden", "layers", "heads", "intermediate", "cross_every", "embed_dim"),
                   "qformer")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden {self.hidden} does not split into {self.heads} heads", field="qformer.heads")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.dropout!r}", field="qformer.dropout")


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool "may attend" mask as the additive float mask attention adds to its scores (0 or dtype's min)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed,
                                                                                     torch.finfo(dtype).min)


class QFormerBridge(nn.Module):
    """Learned queries + ``Blip2QFormerModel`` + the stage-1 heads + ``language_projection`` (stage 2)."""

    def __init__(self, spec: QFormerSpec, vision_dim: int, lm_dim: int, vocab_size: int, max_text: int = 64,
                 pad_id: int = 0, bos_id: int = 1, eos_id: int = 2):
        super().__init__()
        sizes = _Sizes(vision_dim, lm_dim, vocab_size, max_text)
        require_ints(sizes, ("vision_dim", "lm_dim", "vocab_size", "max_text"), "bridge")
        for name, tok in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            if isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok < vocab_size:
                raise ConfigError(f"must be a token id in [0, {vocab_size}), got {tok!r}", field=f"bridge.{name}")
        self.spec, self.vision_dim, self.lm_dim, self.vocab_size, self.max_text = \
            spec, vision_dim, lm_dim, vocab_size, max_text
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        blip2 = require("transformers.models.blip_2.modeling_blip_2", "hf")
        config = self.qformer_config(text_input=True)
        h = spec.hidden
        self.query_tokens = nn.Parameter(torch.randn(1, spec.queries, h) * config.initializer_range)
        self.qformer = blip2.Blip2QFormerModel(config)
        self.embeddings = blip2.Blip2TextEmbeddings(config)
        for emb in (self.embeddings.word_embeddings, self.embeddings.position_embeddings):
            nn.init.normal_(emb.weight, std=config.initializer_range)  # BERT's init (nn.Embedding's is N(0, 1))
        with torch.no_grad():
            self.embeddings.word_embeddings.weight[pad_id].zero_()
        self.vision_projection = nn.Linear(h, spec.embed_dim)
        self.text_projection = nn.Linear(h, spec.embed_dim)
        self.itm_head = nn.Linear(h, 2)
        self.itg_transform = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=config.layer_norm_eps))
        self.itg_bias = nn.Parameter(torch.zeros(vocab_size))  # decoder weight: the word embeddings (tied)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # log of the ITC scale, clamped in use
        self.language_projection = nn.Linear(h, lm_dim)

    def qformer_config(self, *, text_input: bool = False) -> Any:
        """The ``Blip2QFormerConfig`` of this Q-Former; ``text_input=False`` (the export) has no text-only
        feed-forward blocks, as ``Blip2ForConditionalGeneration``'s default."""
        s = self.spec
        return require("transformers", "hf").Blip2QFormerConfig(
            vocab_size=self.vocab_size, hidden_size=s.hidden, num_hidden_layers=s.layers,
            num_attention_heads=s.heads, intermediate_size=s.intermediate, hidden_dropout_prob=s.dropout,
            attention_probs_dropout_prob=s.dropout, max_position_embeddings=self.max_text,
            pad_token_id=self.pad_id, cross_attention_frequency=s.cross_every,
            encoder_hidden_size=self.vision_dim, use_qformer_text_input=text_input)

    # ------------------------------------------------------------------------------------ checks and masks

    def _check_vision(self, vision: torch.Tensor, vision_mask: torch.Tensor | None) -> torch.Tensor | None:
        if vision.dim() != 3 or vision.shape[2] != self.vision_dim:
            raise InvalidInput(f"expected vision tokens (B, N, {self.vision_dim}), got {tuple(vision.shape)}",
                               field="vision")
        if vision_mask is None:
            return None
        if vision_mask.shape != vision.shape[:2]:
            raise InvalidInput(f"expected {tuple(vision.shape[:2])}, got {tuple(vision_mask.shape)}",
                               field="vision_mask")
        keep = vision_mask.bool()
        if not keep.any(dim=1).all():
            raise InvalidInput("every row needs at least one vision token", field="vision_mask")
        return additive(keep, self.query_tokens.dtype)[:, None, None, :]

    def _check_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor, batch: int | None = None) -> None:
        if text_ids.dim() != 2 or text_ids.dtype != torch.long:
            raise InvalidInput(f"expected int64 (B, T), got {text_ids.dtype} {tuple(text_ids.shape)}",
                               field="text_ids")
        if text_mask.shape != text_ids.shape:
            raise InvalidInput(f"expected {tuple(text_ids.shape)}, got {tuple(text_mask.shape)}", field="text_mask")
        if batch is not None and text_ids.shape[0] != batch:
            raise InvalidInput(f"{text_ids.shape[0]} texts for {batch} images", field="text_ids")
        if not 1 <= text_ids.shape[1] <= self.max_text:
            raise InvalidInput(f"length must be in [1, {self.max_text}], got {text_ids.shape[1]}", field="text_ids")
        if not ((text_ids[:, 0] == self.bos_id) & text_mask[:, 0].bool()).all():
            raise InvalidInput(f"every text must start with bos_id {self.bos_id} (its [CLS]/[DEC])",
                               field="text_ids")
        if ((text_ids < 0) | (text_ids >= self.vocab_size)).any():
            raise InvalidInput(f"token ids must lie in [0, {self.vocab_size})", field="text_ids")

    def _joint_mask(self, text_mask: torch.Tensor, causal: bool) -> torch.Tensor:
        """(B, 1, Q+T, Q+T) additive: ITM (bidirectional, text padding masked) or ITG (the UniLM mask)."""
        b, t = text_mask.shape
        q = self.spec.queries
        keys = torch.cat([torch.ones(b, q, dtype=torch.bool, device=text_mask.device), text_mask.bool()], dim=1)
        allowed = keys[:, None, :].expand(b, q + t, q + t).clone()
        if causal:
            allowed[:, :q, q:] = False  # queries never see the text
            allowed[:, q:, q:] &= torch.ones(t, t, dtype=torch.bool, device=text_mask.device).tril()
        return additive(allowed, self.query_tokens.dtype)[:, None]

    # ------------------------------------------------------------------------------------ passes

    def query_states(self, vision: torch.Tensor, vision_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The queries' outputs (B, Q, hidden), cross-attending the vision tokens; no text."""
        enc_mask = self._check_vision(vision, vision_mask)
        queries = self.query_tokens.expand(vision.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=vision, encoder_attention_mask=enc_mask)
        return out.last_hidden_state  # type: ignore[no-any-return]

    def forward(self, vision: torch.Tensor, vision_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Stage 2: the soft prompt (B, Q, lm_dim) for the LM."""
        states = self.query_states(vision, vision_mask)
        return self.language_projection(states.to(self.language_projection.weight.dtype))  # type: ignore[no-any-return]

    def text_states(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The text alone through the Q-Former (B, T, hidden): the ITC text pass (no queries, no vision)."""
        self._check_text(text_ids, text_mask)
        embeds = self.embeddings(input_ids=text_ids)
        mask = additive(text_mask.bool(), embeds.dtype)[:, None, None, :]
        out = self.qformer(query_embeds=embeds, query_length=0, attention_mask=mask)
        return out.last_hidden_state  # type: ignore[no-any-return]

    def joint_states(self, vision: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor, *,
                     causal: bool, vision_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Queries + text in one pass (B, Q+T, hidden): bidirectional (ITM) or the ITG mask (``causal``)."""
        enc_mask = self._check_vision(vision, vision_mask)
        self._check_text(text_ids, text_mask, vision.shape[0])
        queries = self.query_tokens.expand(vision.shape[0], -1, -1)
        embeds = self.embeddings(input_ids=text_ids, query_embeds=queries)
        out = self.qformer(query_embeds=embeds, query_length=self.spec.queries,
                           attention_mask=self._joint_mask(text_mask, causal), encoder_hidden_states=vision,
                           encoder_attention_mask=enc_mask)
        return out.last_hidden_state  # type: ignore[no-any-return]

    # ------------------------------------------------------------------------------------ heads

    def image_features(self, vision: torch.Tensor, vision_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ITC: one L2-normalised feature per query (B, Q, embed_dim)."""
        return F.normalize(self.vision_projection(self.query_states(vision, vision_mask)), dim=-1)

    def text_features(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """ITC: the L2-normalised [CLS] feature (B, embed_dim)."""
        return F.normalize(self.text_projection(self.text_states(text_ids, text_mask)[:, 0]), dim=-1)

    @staticmethod
    def similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(B_img, B_txt): for each image and text the max over queries of the cosine similarity."""
        return torch.einsum("iqe,je->ijq", image_features, text_features).amax(dim=-1)

    def itc_similarity(self, vision: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                       vision_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Every image against every text (B_img, B_txt), cosine (unscaled): for retrieval."""
        return self.similarity(self.image_features(vision, vision_mask), self.text_features(text_ids, text_mask))

    def itm_logits(self, vision: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                   vision_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Row i's image with row i's text: (B, 2) not-matching/matching logits, averaged over the queries."""
        states = self.joint_states(vision, text_ids, text_mask, causal=False, vision_mask=vision_mask)
        return self.itm_head(states[:, :self.spec.queries]).mean(dim=1)  # type: ignore[no-any-return]

    def itm_scores(self, vision: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                   vision_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Row i's probability (B,) that its image and text match (re-ranking ITC candidates)."""
        return self.itm_logits(vision, text_ids, text_mask, vision_mask).softmax(dim=-1)[:, 1]

    def itg_logits(self, vision: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                   vision_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, vocab): position t's scores for token t+1, from the image and the text up to t."""
        states = self.joint_states(vision, text_ids, text_mask, causal=True, vision_mask=vision_mask)
        hidden = self.itg_transform(states[:, self.spec.queries:])
        return F.linear(hidden, self.embeddings.word_embeddings.weight, self.itg_bias)

    def stage1_losses(self, vision: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                      vision_mask: torch.Tensor | None = None, *, same: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """BLIP-2 stage 1 on B paired rows: {"itc", "itm", "itg", "loss" (their sum)}. ``same`` (B, B) bool marks
        other positives (e.g. two captions of one image), never drawn as hard negatives."""
        b = vision.shape[0]
        sim = self.similarity(self.image_features(vision, vision_mask), self.text_features(text_ids, text_mask))
        if sim.shape != (b, b):
            raise InvalidInput(f"{text_ids.shape[0]} texts for {b} images", field="text_ids")
        scale = self.logit_scale.clamp(0.0, MAX_LOG_SCALE).exp()
        labels = torch.arange(b, device=sim.device)
        itc = (F.cross_entropy(scale * sim, labels) + F.cross_entropy(scale * sim.T, labels)) / 2
        neg_text = sample_hard_negatives(sim.detach(), same=same, generator=generator)
        neg_image = sample_hard_negatives(sim.detach().T, same=None if same is None else same.T,
                                          generator=generator)
        img_rows = torch.cat([labels, labels, neg_image.clamp(min=0)])
        txt_rows = torch.cat([labels, neg_text.clamp(min=0), labels])
        itm_labels = torch.cat([torch.ones_like(labels), torch.zeros_like(labels), torch.zeros_like(labels)])
        itm_labels[b:][torch.cat([neg_text, neg_image]) < 0] = IGNORE  # no candidate (e.g. B = 1)
        logits = self.itm_logits(vision[img_rows], text_ids[txt_rows], text_mask[txt_rows],
                                 None if vision_mask is None else vision_mask[img_rows])
        itm = itm_loss(logits, itm_labels)
        itg = self.itg_loss(vision, text_ids, text_mask, vision_mask)
        return {"itc": itc, "itm": itm, "itg": itg, "loss": itc + itm + itg}

    def itg_loss(self, vision: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                 vision_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy over the real tokens after <bos> (0 with gradient if there are none)."""
        logits = self.itg_logits(vision, text_ids, text_mask, vision_mask)[:, :-1]
        targets = text_ids[:, 1:].masked_fill(~text_mask[:, 1:].bool(), IGNORE)
        total = F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1), ignore_index=IGNORE,
                                reduction="sum")
        return total / (targets != IGNORE).sum().clamp(min=1)

    # ------------------------------------------------------------------------------------ export

    def blip2_state_dict(self) -> dict[str, torch.Tensor]:
        """``query_tokens``, ``qformer.*`` and ``language_projection.*`` as ``Blip2ForConditionalGeneration``
        names them (its ``qformer_config`` = ``qformer_config()``): the text-only blocks are left out."""
        out = {"query_tokens": self.query_tokens.detach()}
        for key, value in self.qformer.state_dict().items():
            parts = key.split(".")  # encoder.layer.{i}.intermediate|output.* serve the text only
            if len(parts) > 3 and parts[0] == "encoder" and parts[3] in ("intermediate", "output"):
                continue
            out[f"qformer.{key}"] = value
        out.update({f"language_projection.{k}": v for k, v in self.language_projection.state_dict().items()})
        return out


@dataclass(frozen=True)
class _Sizes:
    vision_dim: int
    lm_dim: int
    vocab_size: int
    max_text: int
