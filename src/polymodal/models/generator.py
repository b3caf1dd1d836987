"""The base of every model that produces words (`lm`, `captioner`, `vqa`, `asr` archs).

A generative arch wraps a `transformers` model (configured tiny, built from a config dict so nothing is
downloaded) and adds what polymodal needs around it:

- ``fit_data(samples)``: called by the trainer on the training samples before the first step; trains the
  byte-level BPE (`polymodal.lm.tokenizer`) on the texts the model will produce/read (``corpus``) unless the
  config already names one, and writes it into ``self.config["tokenizer"]["json"]`` so the run's config.json
  rebuilds the model exactly. The embedding size is the configured ``vocab_size`` (the trained vocabulary may
  be smaller; the extra rows are never produced), so parameter shapes never depend on the data.
- ``forward(batch) -> (loss, logs)``: teacher-forced cross-entropy on the batch's targets (the generic path of
  `polymodal.train.step`).
- ``generate(batch, prompts, options, streamer)``: strings, one per batch row.
- ``save_hf(folder)``: the Hugging Face model + tokenizer (``from_pretrained`` loads the folder).

``task`` names what it generates ("lm", "captioning", "vqa", "asr"); ``modalities`` what it reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..data.sample import Batch, Sample
from ..errors import ConfigError, InvalidInput
from ..lm.decoding import DecodingOptions
from ..lm.tokenizer import TextTokenizer, tokenizer_from_config, train_bpe

TASKS: tuple[str, ...] = ("lm", "captioning", "vqa", "asr")
MAX_TOKENIZER_TEXTS = 200_000  # texts read to train a tokenizer (streamed data is not read to its end)


class TokenStreamer(Protocol):
    """Receives the new tokens of every row after each decoding step (transformers' streamer interface,
    batched): ``put(ids)`` with ``ids`` of shape (B,) or (B, L) for the prompt, ``end()`` once."""

    def put(self, value: torch.Tensor) -> None: ...

    def end(self) -> None: ...


class TextGenerator(nn.Module):
    task: str = "lm"
    modalities: tuple[str, ...] = ()

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config: dict[str, Any] = dict(config)
        tok_cfg = self.config.get("tokenizer")
        if tok_cfg is None:
            raise ConfigError("a generative model needs a tokenizer section, e.g. {\"vocab_size\": 1024}",
                              field="model.tokenizer")
        self.config["tokenizer"] = dict(tok_cfg)
        self.tokenizer: TextTokenizer | None = tokenizer_from_config(self.config["tokenizer"])
        size = self.config["tokenizer"].get("vocab_size")
        self.vocab_size = int(size) if size is not None else self._tok().vocab_size
        if self.tokenizer is not None and self.tokenizer.vocab_size > self.vocab_size:
            raise ConfigError(f"the tokenizer has {self.tokenizer.vocab_size} tokens, more than vocab_size "
                              f"{self.vocab_size}", field="model.tokenizer.vocab_size")

    # ------------------------------------------------------------------ tokenizer
    def _tok(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise InvalidInput("this model's tokenizer is not trained yet (fit_data before use)", field="tokenizer")
        return self.tokenizer

    def corpus(self, samples: Iterable[Sample]) -> list[str]:
        """The texts the tokenizer is trained on (what the model reads and writes)."""
        raise NotImplementedError

    def fit_data(self, samples: Iterable[Sample]) -> None:
        if self.tokenizer is not None:
            return
        texts: list[str] = []
        for text in self.corpus(samples):
            texts.append(text)
            if len(texts) >= MAX_TOKENIZER_TEXTS:
                break
        if not texts:
            raise InvalidInput(f"the training data has nothing for a {self.task} model to learn from "
                               "(no targets of that kind: see docs/generation.md)", field="targets")
        tok_cfg = self.config["tokenizer"]
        self.tokenizer = train_bpe(texts, self.vocab_size, int(tok_cfg.get("min_frequency", 2)))
        self.config["tokenizer"] = {**tok_cfg, "json": self.tokenizer.to_json()}

    # ------------------------------------------------------------------ contract
    def preprocess(self) -> dict[str, dict[str, Any]]:
        """What the data pipeline needs per input modality (image size, audio features, video frames)."""
        return {}

    def generate(self, batch: Batch, prompts: Sequence[str | None] | None = None,
                 options: DecodingOptions | None = None, streamer: TokenStreamer | None = None) -> list[str]:
        raise NotImplementedError

    def hf_model(self) -> Any:
        """The wrapped transformers model."""
        raise NotImplementedError

    def save_hf(self, folder: str | os.PathLike[str]) -> None:
        """Write the transformers model and its tokenizer so ``from_pretrained(folder)`` loads them."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.hf_model().save_pretrained(out, safe_serialization=True)
        self._tok().to_hf().save_pretrained(out)


def check_prompts(prompts: Sequence[str | None] | None, n: int) -> list[str | None]:
    if prompts is None:
        return [None] * n
    if len(prompts) != n:
        raise InvalidInput(f"expected {n} prompts (one per input), got {len(prompts)}", field="prompt")
    return list(prompts)


def pad_sequences(seqs: Sequence[Sequence[int]], pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, L), attention mask (B, L)); ``left`` pads on the left (decoder prompts for generate)."""
    n = max(1, max((len(s) for s in seqs), default=1))
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        t = torch.tensor(list(s), dtype=torch.long)
        if left:
            ids[i, n - len(s):], mask[i, n - len(s):] = t, 1
        else:
            ids[i, :len(s)], mask[i, :len(s)] = t, 1
    return ids, mask


__all__ = ["TASKS", "TextGenerator", "TokenStreamer", "check_prompts", "pad_sequences"]
