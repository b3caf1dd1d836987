"""Byte-level BPE tokenizers trained with the `tokenizers` library on our own text (English and Chinese).

A `TextTokenizer` is a `tokenizers.Tokenizer` plus the special tokens every generative model here uses::

    <pad> = 0   padding (never predicted)
    <s>   = 1   start of a sequence (the decoder's first input)
    </s>  = 2   end of a sequence (generation stops there)
    <sep> = 3   between a prompt (a question) and its answer

Byte-level means no text is out of vocabulary: any UTF-8 string encodes, and decode(encode(t)) == t. Training
is deterministic for the same texts in the same order. The whole tokenizer is its ``tokenizer.json`` string
(`to_json`), which a run's config carries so the run rebuilds exactly; `to_hf` gives the
`PreTrainedTokenizerFast` that ``save_pretrained`` writes beside a Hugging Face model."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InvalidInput, require

SPECIALS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<sep>")
PAD, BOS, EOS, SEP = 0, 1, 2, 3
MIN_VOCAB = len(SPECIALS) + 256  # the specials plus the 256 byte symbols


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> TextTokenizer:
    """A byte-level BPE of at most ``vocab_size`` tokens (specials and the 256 bytes included) learned on
    ``texts``; fewer when the texts hold fewer merges of ``min_frequency``."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise ConfigError(f"must be an integer >= {MIN_VOCAB} (4 special tokens + 256 bytes), got {vocab_size!r}",
                          field="tokenizer.vocab_size")
    tk = require("tokenizers", "hf")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                     special_tokens=list(SPECIALS), show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    texts = [t for t in texts if t]
    if not texts:
        raise InvalidInput("no text to train the tokenizer on (the data has no text or targets)",
                           field="tokenizer")
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return TextTokenizer(tok)


class TextTokenizer:
    """Encode/decode with the fixed special-token ids above."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        # "</s>" typed in a prompt is text, not the end of the sequence: specials never come from user text
        self.tok.encode_special_tokens = True
        for i, name in enumerate(SPECIALS):
            if tokenizer.token_to_id(name) != i:
                raise ConfigError(f"special token {name!r} must have id {i}, has {tokenizer.token_to_id(name)}",
                                  field="tokenizer")

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        tk = require("tokenizers", "hf")
        try:
            return cls(tk.Tokenizer.from_str(text))
        except Exception as exc:  # the library raises its own error types for a malformed file
            raise ConfigError(f"not a tokenizer.json ({exc})", field="tokenizer") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TextTokenizer:
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        try:
            return cls.from_json(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read the tokenizer ({exc.strerror or exc})", source=str(p)) from None

    def to_json(self) -> str:
        return str(self.tok.to_str())

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first ``</s>``, special tokens left out."""
        out: list[int] = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(i)
        return str(self.tok.decode(out, skip_special_tokens=True))

    def to_hf(self) -> Any:
        """The same tokenizer as a transformers `PreTrainedTokenizerFast` (for ``save_pretrained``)."""
        transformers = require("transformers", "hf")
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=self.tok, pad_token=SPECIALS[PAD], bos_token=SPECIALS[BOS], eos_token=SPECIALS[EOS],
            sep_token=SPECIALS[SEP], split_special_tokens=True)


def tokenizer_from_config(cfg: Any) -> TextTokenizer | None:
    """A model config's ``tokenizer`` section -> the tokenizer, or None while it is still to be trained.

    ``{"vocab_size": 1024}``: train on the run's data (the trainer calls the model's ``fit_data``);
    ``{"json": "..."}``: a trained one, inline (what a run's config.json holds after training);
    ``{"path": "dir/or/tokenizer.json"}``: an existing one (e.g. the LM's, for a model bridged to it)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"expected a JSON object, got {type(cfg).__name__}", field="model.tokenizer")
    unknown = sorted(set(cfg) - {"vocab_size", "json", "path", "min_frequency"})
    if unknown:
        raise ConfigError("unknown key (known: vocab_size, min_frequency, json, path)",
                          field=f"model.tokenizer.{unknown[0]}")
    if cfg.get("json") is not None:
        return TextTokenizer.from_json(str(cfg["json"]))
    if cfg.get("path") is not None:
        return TextTokenizer.from_file(str(cfg["path"]))
    if cfg.get("vocab_size") is None:
        raise ConfigError("give vocab_size (train on the data), json or path", field="model.tokenizer")
    return None


def corpus_size(texts: Sequence[str]) -> dict[str, Any]:
    """Characters and distinct characters of a corpus (for logs)."""
    return {"texts": len(texts), "chars": sum(map(len, texts)), "distinct": len(set("".join(texts)))}


__all__ = ["BOS", "EOS", "MIN_VOCAB", "PAD", "SEP", "SPECIALS", "TextTokenizer", "corpus_size",
           "tokenizer_from_config", "train_bpe"]
