"""Language-model building blocks: the byte-level BPE tokenizer (`tokenizer`) and decoding settings
(`decoding`). The causal LMs themselves are transformers' classes, built tiny by `polymodal.models`."""

from .decoding import MAX_NEW_TOKENS, DecodingOptions, cut_at_stop
from .tokenizer import BOS, EOS, PAD, SEP, SPECIALS, TextTokenizer, tokenizer_from_config, train_bpe

__all__ = ["BOS", "EOS", "MAX_NEW_TOKENS", "PAD", "SEP", "SPECIALS", "DecodingOptions", "TextTokenizer",
           "cut_at_stop", "tokenizer_from_config", "train_bpe"]
