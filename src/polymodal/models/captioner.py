"""``arch: "captioner"`` (image/video -> caption) and ``arch: "vqa"`` (image/video + question -> answer): one class,
a transformers ``VisionEncoderDecoderModel`` built tiny from configs — a ``ViTModel`` encoder for images, a
``VideoMAEModel`` (tubelets of ``tubelet`` frames) for videos, and a ``GPT2LMHeadModel`` decoder with cross-attention.

Decoder sequences (``input`` names the modality read; targets are those with ``media == input`` and a language in
``langs``; training draws ``targets_per_sample`` (default 1) per sample per step from the torch RNG, each a
decoder row reading that sample's encoder tokens; evaluation takes the first):

- captioner: ``<s> caption </s>``; with several ``langs``, a language tag follows ``<s>``: ``<s> en: caption
  </s>`` (``generate(..., lang="zh")`` picks the tag; default the first of ``langs``). ``prompts`` are optional
  caption beginnings; the returned text is what follows them.
- vqa: ``<s> question <sep> answer </s>``, loss on the answer and ``</s>`` only; ``generate(batch, prompts=
  questions)`` feeds ``<s> question <sep>`` and returns the answer. ``blind: true`` is the question-only
  baseline: the decoder cross-attends one learned vector instead of the picture (the encoder is frozen and
  unused, and the model reads no modality).

``save_hf(folder)``: ``VisionEncoderDecoderModel.from_pretrained(folder)`` + ``AutoTokenizer`` reproduce the
model (pixel values normalised with mean = std = 0.5 at ``image_size``). Not for the blind baseline, whose
learned vector lives only in our checkpoint. Starting from an alignment run's image tower is not supported."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import to_dict
from ..data.sample import Batch, Sample
from ..data.targets import Targets
from ..errors import ConfigError, InvalidInput, require
from ..lm.decoding import DecodingOptions
from ..lm.tokenizer import BOS, EOS, PAD, SEP
from ..registry import require_ints
from .gen_batch import hf_generate, left_padded, pick, teacher_forcing, token_loss
from .generator import MAX_TOKENIZER_TEXTS, TextGenerator, TokenStreamer, check_prompts
from .lm import check_langs
from .registry import ARCHS, MODEL_CONFIGS, load_config

ARCH_TASKS: dict[str, str] = {"captioner": "captioning", "vqa": "vqa"}
INPUTS: tuple[str, ...] = ("image", "video")
MEAN = STD = [0.5, 0.5, 0.5]


@dataclass(frozen=True)
class VisionSpec:
    """The encoder: ViT (image) or VideoMAE (video) of these sizes."""

    image_size: int = 64
    patch_size: int = 8
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 512
    frames: int = 8  # video: frames read (exactly this many)
    tubelet: int = 2  # video: frames per patch in time

    def __post_init__(self) -> None:
        require_ints(self, ("image_size", "patch_size", "hidden", "layers", "heads", "intermediate", "frames",
                         "tubelet"), "encoder")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}",
                              field="encoder.patch_size")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden {self.hidden} does not split into {self.heads} heads", field="encoder.heads")
        if self.frames % self.tubelet:
            raise ConfigError(f"frames {self.frames} is not a multiple of tubelet {self.tubelet}",
                              field="encoder.tubelet")


@dataclass(frozen=True)
class DecoderSpec:
    """The GPT-2 decoder (cross-attending the encoder's tokens)."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    max_len: int = 64  # positions: prompt + generated tokens must fit
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require_ints(self, ("hidden", "layers", "heads", "max_len"), "decoder")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden {self.hidden} does not split into {self.heads} heads", field="decoder.heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.dropout}", field="decoder.dropout")


@dataclass(frozen=True)
class VisionTextConfig:
    arch: str = "captioner"
    input: str = "image"  # "image" | "video": the modality read, and the media of the targets trained on
    langs: list[str] = field(default_factory=lambda: ["en"])  # target languages; several -> language tags
    blind: bool = False  # vqa only: the question-only baseline
    targets_per_sample: int = 1  # training: targets drawn per sample per step (each its own decoder row)
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"vocab_size": 1024})
    encoder: VisionSpec = field(default_factory=VisionSpec)
    decoder: DecoderSpec = field(default_factory=DecoderSpec)

    def __post_init__(self) -> None:
        if self.arch not in ARCH_TASKS:
            raise ConfigError(f"arch must be one of {list(ARCH_TASKS)}, got {self.arch!r}", field="arch")
        if self.input not in INPUTS:
            raise ConfigError(f"must be one of {list(INPUTS)}, got {self.input!r}", field="input")
        check_langs(self.langs, allow_none=False)
        require_ints(self, ("targets_per_sample",), "")
        if self.blind and self.arch != "vqa":
            raise ConfigError("blind is the question-only VQA baseline (arch vqa)", field="blind")


for _arch in ARCH_TASKS:
    MODEL_CONFIGS.register(_arch)(VisionTextConfig)


def _encoder(c: VisionTextConfig, transformers: Any) -> Any:
    e = c.encoder
    sizes = dict(hidden_size=e.hidden, num_hidden_layers=e.layers, num_attention_heads=e.heads,
                 intermediate_size=e.intermediate, image_size=e.image_size, patch_size=e.patch_size)
    if c.input == "video":
        return transformers.VideoMAEModel(transformers.VideoMAEConfig(
            num_frames=e.frames, tubelet_size=e.tubelet, use_mean_pooling=False, **sizes))
    enc = transformers.ViTModel(transformers.ViTConfig(**sizes))
    enc.pooler.requires_grad_(False)  # kept so from_pretrained finds every weight; never used by the decoder
    return enc


def _decoder(c: VisionTextConfig, vocab_size: int, transformers: Any) -> Any:
    d = c.decoder
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab_size, n_embd=d.hidden, n_layer=d.layers, n_head=d.heads, n_positions=d.max_len,
        resid_pdrop=d.dropout, embd_pdrop=d.dropout, attn_pdrop=d.dropout, add_cross_attention=True,
        is_decoder=True, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD))


def _output(memory: torch.Tensor) -> Any:
    """Encoder tokens as the ``encoder_outputs`` transformers' encoder-decoder models take."""
    return require("transformers", "hf").modeling_outputs.BaseModelOutput(last_hidden_state=memory)


class VisionTextGenerator(TextGenerator):
    task = "captioning"
    modalities: tuple[str, ...] = ("image",)

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        c = load_config(VisionTextConfig, self.config)
        self.task = ARCH_TASKS[c.arch]
        self.input, self.langs, self.blind = c.input, list(c.langs), c.blind
        self.vqa = c.arch == "vqa"
        self.spec = c.encoder
        self.max_len = c.decoder.max_len
        self.per_sample = c.targets_per_sample
        self.modalities = () if c.blind else (c.input,)
        transformers = require("transformers", "hf")
        self.model = transformers.VisionEncoderDecoderModel(encoder=_encoder(c, transformers),
                                                            decoder=_decoder(c, self.vocab_size, transformers))
        for cfg in (self.model.config, self.model.generation_config):
            cfg.decoder_start_token_id, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = BOS, BOS, EOS, PAD
        self.blind_memory: nn.Parameter | None = None
        if c.blind:
            self.model.encoder.requires_grad_(False)
            self.blind_memory = nn.Parameter(torch.randn(1, 1, c.encoder.hidden) * 0.02)

    # ------------------------------------------------------------------ data
    def preprocess(self) -> dict[str, dict[str, Any]]:
        if self.blind:
            return {}
        image = {"size": self.spec.image_size, "mean": MEAN, "std": STD}
        if self.input == "video":
            return {"video": {"frames": self.spec.frames, "image": image}}
        return {"image": image}

    def hf_model(self) -> Any:
        return self.model

    def candidates(self, targets: Targets) -> list[tuple[str, str, str | None]]:
        """(lang, text to produce, question or None) of the targets this model learns from."""
        if self.vqa:
            return [(q.lang, q.answer, q.question) for q in targets.qa
                    if q.media == self.input and q.lang in self.langs]
        return [(x.lang, x.text, None) for x in targets.captions if x.media == self.input and x.lang in self.langs]

    def corpus(self, samples: Iterable[Sample]) -> list[str]:
        def texts() -> Iterator[str]:
            for s in samples:
                for _, text, question in self.candidates(s.targets):
                    yield text
                    if question is not None:
                        yield question
        return list(itertools.islice(texts(), MAX_TOKENIZER_TEXTS))

    def prefix(self, lang: str | None = None, question: str | None = None) -> list[int]:
        """The decoder's read-only start: ``<s>`` (+ ``lang:`` tag with several langs) or ``<s> question <sep>``."""
        tok = self._tok()
        if self.vqa:
            if not question:
                raise InvalidInput("a VQA model needs a question per input", field="prompt")
            return [BOS] + tok.encode(question) + [SEP]
        if len(self.langs) == 1:
            return [BOS]
        return [BOS] + tok.encode(f"{lang or self.langs[0]}:")

    def sequences(self, batch: Batch) -> tuple[list[int], list[list[int]], list[list[int]]]:
        """(batch row, prefix, target) of the decoder sequences: ``targets_per_sample`` drawn targets per row
        with the input (each reads that row's encoder tokens); a row with none gives ``[<s>]`` and nothing to
        learn, so every row takes part."""
        tok = self._tok()
        have = batch.mask.get(self.input) if not self.blind else None
        options = [self.candidates(t) if have is None or bool(have[i]) else []
                   for i, t in enumerate(batch.targets)]
        rows: list[int] = []
        prefixes: list[list[int]] = []
        outs: list[list[int]] = []
        drawn = pick([len(o) for o in options], self.per_sample, self.training)
        for row, (items, chosen) in enumerate(zip(options, drawn, strict=True)):
            for k in chosen or [-1]:
                rows.append(row)
                if k < 0:
                    prefixes.append([BOS])
                    outs.append([])
                    continue
                lang, text, question = items[k]
                prefixes.append(self.prefix(lang, question))
                outs.append(tok.encode(text) + [EOS])
        return rows, prefixes, outs

    # ------------------------------------------------------------------ model
    def encode(self, batch: Batch) -> torch.Tensor:
        """The encoder's tokens (B, N, D) the decoder cross-attends (one learned vector for the blind model)."""
        if self.blind_memory is not None:
            return self.blind_memory.expand(len(batch), -1, -1)
        if self.input not in batch.data:
            raise InvalidInput(f"the batch has no {self.input} (this model reads {self.input})", field=self.input)
        x = batch.data[self.input]
        if self.input == "video" and x.shape[1] != self.spec.frames:
            raise InvalidInput(f"expected {self.spec.frames} video frames, got {x.shape[1]}", field="video")
        out: torch.Tensor = self.model.encoder(pixel_values=x).last_hidden_state
        return out

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        rows, prefixes, outs = self.sequences(batch)
        ids, mask, loss_mask = teacher_forcing(prefixes, outs, self.max_len, self.model.device)
        memory = self.encode(batch)
        if rows != list(range(len(batch))):  # several targets of a sample read its tokens
            memory = memory[torch.tensor(rows, device=memory.device)]
        logits = self.model(encoder_outputs=_output(memory), decoder_input_ids=ids,
                            decoder_attention_mask=mask).logits
        loss, logs = token_loss(logits, ids, loss_mask)
        return loss, {"loss": float(loss.detach()), **logs}

    def generate(self, batch: Batch, prompts: Sequence[str | None] | None = None,
                 options: DecodingOptions | None = None, streamer: TokenStreamer | None = None,
                 lang: str | None = None) -> list[str]:
        """Captioner: a caption per row (in ``lang``), continuing ``prompts`` when given. VQA: the answer to
        each row's question (``prompts``, required)."""
        rows = check_prompts(prompts, len(batch))
        if lang is not None and lang not in self.langs:
            raise InvalidInput(f"this model writes {self.langs}, not {lang!r}", field="lang")
        if not self.blind:
            have = batch.mask.get(self.input)
            missing = [] if have is None else [i for i, h in enumerate(have.tolist()) if not h]
            if missing:
                raise InvalidInput(f"input {missing[0]} has no {self.input}", field=self.input)
        tok = self._tok()
        if self.vqa:
            starts = [self.prefix(question=p) for p in rows]
        else:
            starts = [self.prefix(lang) + (tok.encode(p) if p else []) for p in rows]
        ids, mask, pos = left_padded(starts, self.model.device)
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                memory = self.encode(batch)
            return hf_generate(self.model, tok, ids.shape[1], self.max_len, options, streamer,
                               encoder_outputs=_output(memory), decoder_input_ids=ids,
                               decoder_attention_mask=mask, decoder_position_ids=pos)
        finally:
            self.train(was)


def build_vision_text(cfg: Mapping[str, Any]) -> VisionTextGenerator:
    """A `VisionTextConfig` dict -> the model; ``model.config`` keeps the checked config with defaults written
    out (and, once trained, the tokenizer)."""
    return VisionTextGenerator(to_dict(load_config(VisionTextConfig, cfg)))


for _arch in ARCH_TASKS:
    ARCHS.register(_arch)(build_vision_text)

__all__ = ["ARCH_TASKS", "DecoderSpec", "VisionSpec", "VisionTextConfig", "VisionTextGenerator",
           "build_vision_text"]
