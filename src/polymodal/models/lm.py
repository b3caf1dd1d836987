"""``arch: "lm"`` — a small causal language model (transformers' ``Qwen2ForCausalLM``) trained on the text of the
data's targets: every caption, question and answer (``model.langs`` picks the languages; null = all; each
step trains on ``texts_per_sample`` of a sample's texts drawn at random, null = all of them).

Sequences: ``<s> caption </s>`` and ``<s> question <sep> answer </s>``; every token after ``<s>`` is predicted.
``generate(batch, prompts)`` continues each prompt (``<s>`` + its tokens; None = ``<s>`` alone) and returns the
continuation only. A literal ``<sep>`` in a prompt is the separator token, so ``"What color is the star?<sep>"``
asks the LM for the answer. The LM reads no modality (``modalities = ()``): a batch only gives its rows' targets
(training) and its length (generation; ``batch`` may also be None when prompts are given).

``save_hf(folder)`` writes a folder that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load; it computes the same logits and generates the same tokens (the later
multimodal-LLM floor freezes this LM and bridges vision to it)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import to_dict
from ..data.sample import Batch, Sample
from ..data.targets import Targets
from ..errors import ConfigError, InvalidInput, require
from ..lm.decoding import DecodingOptions
from ..lm.tokenizer import BOS, EOS, PAD, SEP
from .gen_batch import encode_prompt, hf_generate, left_padded, teacher_forcing, token_loss
from .generator import MAX_TOKENIZER_TEXTS, TextGenerator, TokenStreamer, check_prompts
from .registry import ARCHS, load_config, register_model_config


def _positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"must be an integer >= 1, got {value!r}", field=name)


def check_langs(langs: list[str] | None, name: str = "langs", allow_none: bool = True) -> None:
    if langs is None and allow_none:
        return
    if not langs or len(set(langs)) < len(langs) or not all(isinstance(x, str) and x for x in langs):
        raise ConfigError(f"must be a non-empty list of distinct language codes, got {langs!r}", field=name)


@register_model_config("lm")
@dataclass(frozen=True)
class LMConfig:
    arch: str = "lm"
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"vocab_size": 1024})
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    max_len: int = 128  # positions: training sequences are cut there, prompt + new tokens must fit
    langs: list[str] | None = None  # languages of the targets trained on; None = every language
    texts_per_sample: int | None = 4  # texts of a sample drawn per step (torch RNG); None = all of them
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.arch != "lm":
            raise ConfigError(f"arch must be 'lm', got {self.arch!r}", field="arch")
        for name in ("hidden", "layers", "heads", "kv_heads", "intermediate", "max_len"):
            _positive(getattr(self, name), name)
        if self.texts_per_sample is not None:
            _positive(self.texts_per_sample, "texts_per_sample")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ConfigError(f"hidden {self.hidden} must split into {self.heads} heads of an even size",
                              field="heads")
        if self.heads % self.kv_heads:
            raise ConfigError(f"heads {self.heads} must be a multiple of kv_heads {self.kv_heads}",
                              field="kv_heads")
        if not self.rope_theta > 0:
            raise ConfigError(f"must be > 0, got {self.rope_theta}", field="rope_theta")
        check_langs(self.langs)


def lm_texts(targets: Targets, langs: Sequence[str] | None) -> Iterator[tuple[str, str | None]]:
    """(text, answer or None) of every caption and question of ``targets`` in ``langs``."""
    for c in targets.captions:
        if langs is None or c.lang in langs:
            yield c.text, None
    for q in targets.qa:
        if langs is None or q.lang in langs:
            yield q.question, q.answer


class CausalLM(TextGenerator):
    task = "lm"
    modalities: tuple[str, ...] = ()

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        c = load_config(LMConfig, self.config)
        self.max_len = c.max_len
        self.langs = c.langs
        self.per_sample = c.texts_per_sample
        transformers = require("transformers", "hf")
        hf_cfg = transformers.Qwen2Config(
            vocab_size=self.vocab_size, hidden_size=c.hidden, intermediate_size=c.intermediate,
            num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.kv_heads,
            max_position_embeddings=c.max_len, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
            bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
        self.lm = transformers.Qwen2ForCausalLM(hf_cfg)
        gen = self.lm.generation_config
        gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = BOS, EOS, PAD

    def hf_model(self) -> Any:
        return self.lm

    def corpus(self, samples: Iterable[Sample]) -> list[str]:
        def texts() -> Iterator[str]:
            for s in samples:
                for text, answer in lm_texts(s.targets, self.langs):
                    yield text
                    if answer is not None:
                        yield answer
        return list(itertools.islice(texts(), MAX_TOKENIZER_TEXTS))

    def chosen(self, targets: Targets) -> list[tuple[str, str | None]]:
        """The texts of a row trained on this step: all, or ``texts_per_sample`` drawn without replacement
        from the torch RNG while training (the first ones in evaluation)."""
        texts = list(lm_texts(targets, self.langs))
        k = self.per_sample
        if k is None or len(texts) <= k:
            return texts
        if not self.training:
            return texts[:k]
        return [texts[int(i)] for i in torch.randperm(len(texts))[:k]]

    def sequences(self, targets: Sequence[Targets]) -> tuple[list[list[int]], list[list[int]]]:
        """(prefixes, targets) of the rows' chosen texts: ``[<s>]`` and ``text </s>`` or
        ``question <sep> answer </s>`` (every token after ``<s>`` is predicted)."""
        tok = self._tok()
        prefixes: list[list[int]] = []
        outs: list[list[int]] = []
        for t in targets:
            for text, answer in self.chosen(t):
                body = tok.encode(text) + ([SEP] + tok.encode(answer) if answer is not None else [])
                prefixes.append([BOS])
                outs.append(body + [EOS])
        if not outs:  # nothing to learn in this batch: one empty row keeps the graph (loss 0)
            prefixes, outs = [[BOS]], [[]]
        return prefixes, outs

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        device = self.lm.device
        prefixes, outs = self.sequences(batch.targets)
        ids, mask, loss_mask = teacher_forcing(prefixes, outs, self.max_len, device)
        logits = self.lm(input_ids=ids, attention_mask=mask).logits
        loss, logs = token_loss(logits, ids, loss_mask)
        return loss, {"loss": float(loss.detach()), **logs}

    def generate(self, batch: Batch | None, prompts: Sequence[str | None] | None = None,
                 options: DecodingOptions | None = None, streamer: TokenStreamer | None = None) -> list[str]:
        """The continuation of each prompt (``<s>`` + prompt; None = from ``<s>`` alone), one per row."""
        if batch is None and prompts is None:
            raise InvalidInput("give prompts (or a batch, for as many unprompted texts)", field="prompt")
        n = len(batch) if batch is not None else len(prompts or ())
        rows = check_prompts(prompts, n)
        tok = self._tok()
        starts = [[BOS] + (encode_prompt(tok, p) if p else []) for p in rows]
        ids, mask, _ = left_padded(starts, self.lm.device)
        was = self.training
        self.eval()
        try:  # position ids come from the attention mask inside transformers' generate (decoder-only models)
            return hf_generate(self.lm, tok, ids.shape[1], self.max_len, options, streamer,
                               input_ids=ids, attention_mask=mask)
        finally:
            self.train(was)


@ARCHS.register("lm")
def build_lm(cfg: Mapping[str, Any]) -> CausalLM:
    """``{"arch": "lm", "tokenizer": {"vocab_size": 1024}, "hidden": 128, "layers": 2, ...}`` (`LMConfig`);
    ``model.config`` keeps the checked config with defaults written out (and, once trained, the tokenizer)."""
    return CausalLM(to_dict(load_config(LMConfig, cfg)))


__all__ = ["CausalLM", "LMConfig", "build_lm", "check_langs", "lm_texts"]
