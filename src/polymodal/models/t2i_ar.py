"""``arch: "token_ar"``: pictures as VQ codes generated after the prompt's tokens by a GPT-2 (DALL-E), and, with
``image_to_text > 0``, the same GPT-2 also trained on codes then caption (ERNIE-ViLG's bidirectional model).

One vocabulary: the BPE text tokens (trained on the captions, ``[0, text_vocab)``), then the autoencoder's codes,
then two markers, BOI (picture follows) and BOT (text follows). Rows have fixed positions, as DALL-E's padded text:
- text->image: ``BOS prompt EOS PAD...`` (``text_len`` tokens) ``BOI`` codes; loss on the codes;
- image->text: ``BOI`` codes ``BOT`` ``BOS caption EOS PAD...``; loss on the caption up to EOS.
Padding is part of the sequence (never masked), so a prompt is read the same in training and sampling. Dropped
captions (``cond_dropout``) are ``BOS EOS``: the unconditional row of classifier-free guidance, which mixes the
code logits as ``l_uncond + g * (l_cond - l_uncond)`` (guidance 1: no mixing, DALL-E's plain sampling)."""

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
from ..lm.tokenizer import BOS, EOS, PAD, TextTokenizer, tokenizer_from_config, train_bpe
from .registry import ARCHS, load_config
from .t2i_autoencoder import from_pixels, to_pixels
from .t2i_config import TokenARConfig
from .t2i_front import ImageOptions
from .t2i_text import check_prompt, source_autoencoder, training_prompts

IGNORE = -100


class TokenAR(nn.Module):
    task = "text_to_image"
    modalities = ("image",)

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.c: TokenARConfig = load_config(TokenARConfig, config)
        self.config: dict[str, Any] = dict(config)
        self.autoencoder, self._pending = source_autoencoder(self.c.autoencoder, self.config)
        if not self.autoencoder.is_vq:
            raise ConfigError("token_ar needs a VQ autoencoder (kind 'vq')", field="model.autoencoder")
        self.tokenizer: TextTokenizer | None = tokenizer_from_config(dict(self.c.tokenizer))
        self.text_vocab = int(self.c.tokenizer.get("vocab_size") or self._tok().vocab_size)
        self.codebook = self.autoencoder.c.codebook_size
        self.n_codes = self.autoencoder.latent_size ** 2
        self.boi, self.bot = self.text_vocab + self.codebook, self.text_vocab + self.codebook + 1
        self.langs: tuple[str, ...] = tuple(self.c.langs)
        self.image_size = self.autoencoder.image_size
        transformers = require("transformers", "hf")
        cfg = transformers.GPT2Config(
            vocab_size=self.bot + 1, n_positions=self.c.text_len + self.n_codes + 2, n_embd=self.c.width,
            n_layer=self.c.layers, n_head=self.c.heads, resid_pdrop=self.c.dropout, embd_pdrop=self.c.dropout,
            attn_pdrop=self.c.dropout, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
        self.lm = transformers.GPT2LMHeadModel(cfg)

    def train(self, mode: bool = True) -> TokenAR:
        super().train(mode)
        self.autoencoder.eval()
        return self

    def _tok(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise InvalidInput("this model's tokenizer is not trained yet (fit_data before use)", field="tokenizer")
        return self.tokenizer

    # ------------------------------------------------------------------ data
    def preprocess(self) -> dict[str, dict[str, Any]]:
        return {"image": {"size": self.image_size, "mean": HALF_MEAN, "std": HALF_STD}}

    def fit_data(self, samples: Iterable[Sample]) -> None:
        """Before training: copy in the autoencoder's weights; train the BPE on the captions unless given."""
        if self._pending is not None:
            self.autoencoder.load_state_dict(self._pending, strict=True)
            self._pending = None
        if self.tokenizer is not None:
            return
        texts = [c.text for s in samples for c in (s.targets.captions if s.targets else ())
                 if c.media == "image" and c.lang in self.langs]
        if not texts:
            raise InvalidInput("the training data has no picture captions to learn from", field="targets.captions")
        tok_cfg = dict(self.c.tokenizer)
        self.tokenizer = train_bpe(texts, self.text_vocab, int(tok_cfg.get("min_frequency", 2)))
        self.config["tokenizer"] = {**tok_cfg, "json": self.tokenizer.to_json()}

    def text_ids(self, text: str | None) -> list[int]:
        """``BOS text EOS`` padded (or cut) to ``text_len``; None -> the unconditional ``BOS EOS``."""
        body = [] if text is None else self._tok().encode(text)[:self.c.text_len - 2]
        ids = [BOS, *body, EOS]
        return ids + [PAD] * (self.c.text_len - len(ids))

    # ------------------------------------------------------------------ training
    def rows(self, codes: torch.Tensor, prompts: Sequence[str | None], to_text: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(input ids, labels) of equal length ``text_len + n_codes + 2``; labels IGNORE where not learned."""
        length = self.c.text_len + self.n_codes + 2
        ids = torch.full((len(prompts), length), PAD, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE)
        codes = codes.cpu() + self.text_vocab
        n, tl = self.n_codes, self.c.text_len
        for i, p in enumerate(prompts):
            text = torch.tensor(self.text_ids(p))
            if bool(to_text[i]):
                ids[i, 0], ids[i, 1:n + 1], ids[i, n + 1], ids[i, n + 2:] = self.boi, codes[i], self.bot, text
                real = int((text != PAD).sum())
                labels[i, n + 2:n + 2 + real] = text[:real]
            else:
                ids[i, :tl], ids[i, tl], ids[i, tl + 1:tl + 1 + n] = text, self.boi, codes[i]
                labels[i, tl + 1:tl + 1 + n] = codes[i]
        return ids, labels

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        have = batch.mask["image"]
        rows = [i for i, h in enumerate(have.tolist()) if h]
        if not rows:
            raise InvalidInput("no sample of this batch has a picture", field="image")
        prompts: list[str | None] = list(training_prompts(
            [batch.targets[i] for i in rows] if batch.targets else [None] * len(rows),
            [batch.texts[i] for i in rows], self.langs))
        with torch.no_grad():
            codes = self.autoencoder.codes(batch.data["image"][have])
        to_text = torch.rand(len(rows)) < self.c.image_to_text
        drop = (torch.rand(len(rows)) < self.c.cond_dropout) & ~to_text
        prompts = [None if bool(d) else p for p, d in zip(prompts, drop, strict=True)]
        ids, labels = self.rows(codes, prompts, to_text)
        device = codes.device
        ids = ids.to(device)  # padding is content here (fixed positions), so every position is attended
        logits = self.lm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]
        target = labels[:, 1:].to(device)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)
        logs = {"loss": float(loss.detach())}
        with torch.no_grad():
            for name, rows_of in (("image_loss", ~to_text), ("text_loss", to_text)):
                pick = rows_of.to(device)
                if bool(pick.any()):
                    part = F.cross_entropy(logits[pick].reshape(-1, logits.shape[-1]), target[pick].reshape(-1),
                                           ignore_index=IGNORE)
                    logs[name] = float(part)
        return loss, logs

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_images(self, prompts: Sequence[str], seeds: Sequence[int],
                      options: ImageOptions | None = None) -> list[np.ndarray]:
        """One picture per prompt: ``n_codes`` codes sampled one by one (temperature, top-k, guidance), each row
        from its own seeded generator."""
        opts = options or ImageOptions()
        if len(prompts) != len(seeds):
            raise InvalidInput(f"{len(prompts)} prompts but {len(seeds)} seeds", field="seed")
        g = self.c.guidance if opts.guidance is None else float(opts.guidance)
        top_k = opts.top_k if opts.top_k is not None else self.c.top_k
        device = next(self.lm.parameters()).device
        n = len(prompts)
        texts: list[str | None] = [check_prompt(p, i) for i, p in enumerate(prompts)]
        guided = g != 1.0
        if guided:
            texts = texts + [None] * n
        prefix = torch.tensor([[*self.text_ids(t), self.boi] for t in texts], device=device)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        out = self.lm(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
        codes = torch.zeros(n, self.n_codes, dtype=torch.long)
        lo, hi = self.text_vocab, self.text_vocab + self.codebook
        for k in range(self.n_codes):
            step = logits[:, lo:hi].float().log_softmax(-1)
            if guided:
                cond, uncond = step[:n], step[n:]
                step = uncond + g * (cond - uncond)
            codes[:, k] = _draw(step / float(opts.temperature), top_k, gens)
            nxt = (codes[:, k] + lo).to(device)[:, None]
            out = self.lm(input_ids=torch.cat([nxt, nxt]) if guided else nxt, past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1]
        return to_pixels(self.autoencoder.decode_codes(codes.to(device)))

    @torch.no_grad()
    def caption_images(self, images: Sequence[np.ndarray], max_tokens: int | None = None) -> list[str]:
        """Greedy captions (the image->text direction; meaningful when trained with ``image_to_text > 0``)."""
        device = next(self.lm.parameters()).device
        codes = self.autoencoder.codes(from_pixels(images, self.image_size, device)) + self.text_vocab
        n = codes.shape[0]
        marks = torch.full((n, 1), self.boi, device=device), torch.full((n, 2), BOS, device=device)
        marks[1][:, 0] = self.bot
        ids = torch.cat([marks[0], codes, marks[1]], dim=1)
        out = self.lm(input_ids=ids, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
        words: list[list[int]] = [[] for _ in range(n)]
        done = torch.zeros(n, dtype=torch.bool)
        for _ in range(max_tokens or self.c.text_len - 2):
            nxt = logits[:, :self.text_vocab].argmax(-1)
            for i in range(n):
                if not done[i]:
                    done[i] = int(nxt[i]) == EOS
                    if not done[i]:
                        words[i].append(int(nxt[i]))
            if bool(done.all()):
                break
            out = self.lm(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1]
        return [self._tok().decode(w) for w in words]

    def save_hf(self, folder: str | os.PathLike[str]) -> None:
        """``lm/`` (a GPT-2 folder ``GPT2LMHeadModel.from_pretrained`` loads) and ``vqvae/`` (diffusers)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(out / "lm", safe_serialization=True)
        self.autoencoder.net.save_pretrained(out / "vqvae", safe_serialization=True)


def _draw(logp: torch.Tensor, top_k: int | None, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """One code per row from log-probabilities, each row with its own generator."""
    if top_k is not None and top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    probs = logp.softmax(-1).cpu()
    return torch.stack([torch.multinomial(probs[i], 1, generator=gens[i])[0] for i in range(len(gens))])


@ARCHS.register("token_ar")
def build_token_ar(cfg: Mapping[str, Any]) -> TokenAR:
    return TokenAR(cfg)
