"""Speech recognition (arch ``asr``): transformers' `WhisperForConditionalGeneration`, configured tiny and trained
from scratch on our byte-level BPE, English and Mandarin in one model.

- **Features** are Whisper's log-mel (`polymodal.data.transforms.audio.WhisperAudioTransform`, ``type:
  "hf_whisper"``, equal to ``WhisperFeatureExtractor``): ``preprocess()`` asks the data pipeline for them, so a
  batch's ``audio`` is ``(B, n_mels, frames)`` with ``frames = chunk_seconds * sample_rate // hop_length`` (the
  fixed length Whisper's encoder requires: ``max_source_positions = frames / 2``). The default hop of 640 with a
  50 ms window (n_fft 800; 40 ms frames, 80 ms encoder positions after Whisper's stride-2 convolution) and a 10 s
  window (the longest eSpeak caption is ~9 s) cut the encoder to 125 positions, a quarter of Whisper's own
  settings (hop 160) over the same window: on CPUs the encoder is most of a step.
- **Target**: ``<s> {lang}:{transcript} </s>`` (e.g. ``en:A red circle.``, ``zh:红色的圆形。``). The language tag
  is ordinary text in the BPE (the tokenizer is trained on the tagged transcripts), so one model learns both
  languages and *predicts* the language first; `transcribe` returns it, `generate` strips it. A prompt (one per
  row) is a language code that forces the tag instead (``"en"``, ``"zh"``; None: the model chooses). The colon
  always ends a BPE pre-token before a letter, so the tag is its own tokens.
- **Loss**: token cross-entropy (optional label smoothing) on the tag, the transcript and ``</s>``, plus, with
  ``ctc_weight`` > 0, a CTC loss on the encoder (a linear head over the same vocabulary, ``<pad>`` as the blank,
  the transcript without its tag as target): ``(1 - w) * CE + w * CTC``, joint CTC/attention training (Watanabe et
  al. 2017), the usual help for attention ASR from scratch, whose decoder first learns the captions' language and
  attends to the audio late (not measured here against cross-entropy alone). The head is a training aid: it is saved in the run
  (model.safetensors), not in the Hugging Face folder, and decoding never uses it. During training
  SpecAugment masks ``freq_masks`` bands of up to ``freq_mask_width`` mel bins and ``time_masks`` spans of up to
  ``time_mask_width`` frames per clip (filled with the clip's mean).
- **Decoding** is transformers' generic `GenerationMixin.generate` (Whisper's own ``generate`` adds long-form
  segmentation, timestamps and language/task tokens of OpenAI's vocabulary, none of which apply): greedy, beam,
  sampling, repetition penalty, ``use_cache``, a streamer (``put`` gets each step's new ids, shape (B,); tag tokens
  are passed as ``<pad>``, which decodes to nothing), stop strings cut afterwards (`cut_at_stop`).
- ``save_hf(folder)``: ``WhisperForConditionalGeneration.from_pretrained`` + ``AutoTokenizer.from_pretrained`` +
  ``WhisperFeatureExtractor.from_pretrained`` load it; its generation config makes Whisper's own short-form
  ``generate(input_features)`` give our greedy tokens (the tag included).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sample import Batch, Sample
from ..data.transforms.audio import WhisperAudioTransform
from ..errors import ConfigError, InvalidInput, require
from ..lm.decoding import DecodingOptions, cut_at_stop
from ..lm.tokenizer import BOS, EOS, PAD, SEP, TextTokenizer
from .generator import TextGenerator, TokenStreamer, check_prompts, pad_sequences
from .registry import ARCHS, load_config, register_model_config

IGNORE = -100
_TAG = re.compile(r"([A-Za-z0-9-]{1,16}):(.*)", re.DOTALL)
_TAG_PREFIX = re.compile(r"[A-Za-z0-9-]{0,16}")


def tagged(text: str, lang: str) -> str:
    """The decoder's target text: ``"{lang}:{text}"``."""
    return f"{lang}:{text}"


def split_tag(text: str) -> tuple[str | None, str]:
    """``"en:A red circle."`` -> ``("en", "A red circle.")``; text without a tag -> ``(None, text)``."""
    m = _TAG.fullmatch(text)
    return (m.group(1), m.group(2)) if m else (None, text)


@register_model_config("asr")
@dataclass(frozen=True)
class AsrConfig:
    """The ``model`` section of an ``arch: "asr"`` recipe."""

    tokenizer: dict[str, Any] = field(default_factory=lambda: {"vocab_size": 512})
    arch: str = "asr"
    d_model: int = 128
    encoder_layers: int = 3
    decoder_layers: int = 2
    heads: int = 4
    ffn_dim: int = 512
    dropout: float = 0.1
    max_target_positions: int = 128
    label_smoothing: float = 0.0
    ctc_weight: float = 0.3  # weight of the encoder's CTC loss (0: none, no CTC head)
    # features (Whisper's log-mel; see WhisperAudioTransform)
    n_mels: int = 80
    sample_rate: int = 16000
    n_fft: int = 800
    hop_length: int = 640
    chunk_seconds: int = 10
    # SpecAugment (training only)
    freq_masks: int = 2
    freq_mask_width: int = 8
    time_masks: int = 2
    time_mask_width: int = 5

    def __post_init__(self) -> None:
        if self.arch != "asr":
            raise ConfigError(f"arch must be 'asr', got {self.arch!r}", field="arch")
        for name in ("d_model", "encoder_layers", "decoder_layers", "heads", "ffn_dim", "n_mels", "sample_rate",
                     "n_fft", "hop_length", "chunk_seconds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", field=name)
        if self.d_model % self.heads:
            raise ConfigError(f"d_model {self.d_model} is not a multiple of heads {self.heads}", field="heads")
        if self.max_target_positions < 8:
            raise ConfigError(f"must be >= 8, got {self.max_target_positions}", field="max_target_positions")
        for name in ("dropout", "label_smoothing", "ctc_weight"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"must be in [0, 1), got {getattr(self, name)}", field=name)
        if self.frames % 2:
            raise ConfigError(f"chunk_seconds * sample_rate // hop_length = {self.frames} frames must be even "
                              "(Whisper's encoder halves them)", field="hop_length")

    @property
    def frames(self) -> int:
        return self.chunk_seconds * self.sample_rate // self.hop_length

    def features(self) -> WhisperAudioTransform:
        return WhisperAudioTransform(sample_rate=self.sample_rate, n_mels=self.n_mels, n_fft=self.n_fft,
                                     hop_length=self.hop_length, chunk_seconds=self.chunk_seconds)


def whisper_config(cfg: AsrConfig, vocab_size: int) -> Any:
    transformers = require("transformers", "hf")
    return transformers.WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=cfg.n_mels, d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim, dropout=cfg.dropout,
        max_source_positions=cfg.frames // 2, max_target_positions=cfg.max_target_positions,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=BOS,
        suppress_tokens=None, begin_suppress_tokens=None, tie_word_embeddings=True)


class SpeechRecognizer(TextGenerator):
    task = "asr"
    modalities = ("audio",)

    def __init__(self, cfg: AsrConfig):
        super().__init__(asdict(cfg))
        self.cfg = cfg
        self.features = cfg.features()
        transformers = require("transformers", "hf")
        self.model = transformers.WhisperForConditionalGeneration(whisper_config(cfg, self.vocab_size))
        self.ctc = nn.Linear(cfg.d_model, self.vocab_size) if cfg.ctc_weight > 0 else None

    # ------------------------------------------------------------------ data
    def corpus(self, samples: Iterable[Sample]) -> Iterator[str]:  # type: ignore[override]
        for s in samples:
            t = s.targets.transcript
            if t is not None:
                yield tagged(t.text, t.lang)

    def preprocess(self) -> dict[str, dict[str, Any]]:
        return {"audio": {"audio": self.features.to_dict()}}

    def hf_model(self) -> Any:
        return self.model

    def _inputs(self, batch: Batch) -> torch.Tensor:
        """The batch's Whisper features (B, n_mels, frames); every row must have audio."""
        x = batch.data.get("audio")
        if x is None or not bool(batch.mask["audio"].all()):
            raise InvalidInput("every row needs audio for speech recognition", field="audio")
        want = (self.cfg.n_mels, self.cfg.frames)
        if x.dim() != 3 or tuple(x.shape[1:]) != want:
            raise InvalidInput(f"expected Whisper log-mel features (B, {want[0]}, {want[1]}), got {tuple(x.shape)}: "
                               "build the audio transform from this model's preprocess()", field="audio")
        return x.float()

    # ------------------------------------------------------------------ training
    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        rows = [i for i, t in enumerate(batch.targets) if t.transcript is not None]
        if len(batch.targets) != len(batch) or not rows:
            raise InvalidInput("the batch has no transcripts (targets.transcript) to learn from",
                               field="targets.transcript")
        feats = self._inputs(batch)[rows]
        tok, limit = self._tok(), self.cfg.max_target_positions - 1
        texts = [t for t in (batch.targets[i].transcript for i in rows) if t is not None]
        seqs = [tok.encode(tagged(t.text, t.lang))[:limit] + [EOS] for t in texts]
        labels, mask = pad_sequences(seqs, PAD)
        labels, mask = labels.to(feats.device), mask.to(feats.device)
        dec_in = torch.cat([torch.full_like(labels[:, :1], BOS), labels[:, :-1]], dim=1)
        labels = labels.masked_fill(mask == 0, IGNORE)
        if self.training:
            feats = self._spec_augment(feats)
        out = self.model(input_features=feats, decoder_input_ids=dec_in, use_cache=False)
        logits = out.logits
        ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE,
                             label_smoothing=self.cfg.label_smoothing)
        with torch.no_grad():
            real = labels != IGNORE
            acc = (logits.argmax(-1) == labels)[real].float().mean()
        logs = {"ce": float(ce.detach()), "token_acc": float(acc)}
        if self.ctc is None:
            return ce, logs
        ctc = self._ctc_loss(out.encoder_last_hidden_state, [tok.encode(t.text) for t in texts])
        w = self.cfg.ctc_weight
        logs["ctc"] = float(ctc.detach())
        return (1.0 - w) * ce + w * ctc, logs

    def _ctc_loss(self, encoded: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
        """CTC of the encoder's head against the transcripts' tokens (blank = <pad>), per target token."""
        assert self.ctc is not None
        n_t = encoded.shape[1]
        log_probs = self.ctc(encoded).float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
        targets = [t[: n_t // 2] for t in targets]  # room for the blanks between repeated tokens
        flat = torch.tensor([i for t in targets for i in t], dtype=torch.long, device=encoded.device)
        lengths = torch.tensor([len(t) for t in targets], dtype=torch.long, device=encoded.device)
        frames = torch.full_like(lengths, n_t)
        return F.ctc_loss(log_probs, flat, frames, lengths, blank=PAD, zero_infinity=True)

    def _spec_augment(self, x: torch.Tensor) -> torch.Tensor:
        """Frequency and time masking (SpecAugment), drawn per clip from torch's RNG."""
        b, n_f, n_t = x.shape
        fill = x.mean(dim=(1, 2), keepdim=True)
        masked = torch.zeros_like(x, dtype=torch.bool)
        for n, width, axis in ((self.cfg.freq_masks, self.cfg.freq_mask_width, 1),
                               (self.cfg.time_masks, self.cfg.time_mask_width, 2)):
            size = n_f if axis == 1 else n_t
            pos = torch.arange(size, device=x.device)
            for _ in range(n):
                w = torch.randint(0, width + 1, (b, 1), device=x.device)
                start = (torch.rand(b, 1, device=x.device) * (size - w + 1)).long()
                band = (pos >= start) & (pos < start + w)  # (b, size)
                masked |= band[:, :, None] if axis == 1 else band[:, None, :]
        return torch.where(masked, fill, x)

    # ------------------------------------------------------------------ generation
    def suppressed(self) -> list[int]:
        """Token ids never generated: <pad>, <s>, <sep> and the embedding rows beyond the trained vocabulary."""
        return [PAD, BOS, SEP, *range(self._tok().vocab_size, self.vocab_size)]

    def generate(self, batch: Batch, prompts: Sequence[str | None] | None = None,
                 options: DecodingOptions | None = None, streamer: TokenStreamer | None = None) -> list[str]:
        return [text for _, text in self.transcribe(batch, prompts, options, streamer)]

    def transcribe(self, batch: Batch, languages: Sequence[str | None] | None = None,
                   options: DecodingOptions | None = None, streamer: TokenStreamer | None = None
                   ) -> list[tuple[str | None, str]]:
        """(language, text) per row. ``languages``: a code per row forcing that language tag (None: the model
        predicts it; the returned language is then the predicted one, or None without a tag)."""
        ids = self.generate_ids(batch, languages, options, streamer)
        tok, stop = self._tok(), (options or DecodingOptions()).stop
        out = []
        for row in ids:
            lang, text = split_tag(tok.decode(row[1:]))
            out.append((lang, cut_at_stop(text, stop)))
        return out

    def generate_ids(self, batch: Batch, languages: Sequence[str | None] | None = None,
                     options: DecodingOptions | None = None, streamer: TokenStreamer | None = None) -> torch.Tensor:
        """The decoder's token ids (B, L), ``<s>`` first, right-padded with ``<pad>`` after ``</s>``."""
        transformers = require("transformers", "hf")
        opts = options or DecodingOptions()
        feats, tok = self._inputs(batch), self._tok()
        langs = check_prompts(languages, len(batch))
        for lang in langs:
            if lang is not None and not _TAG.fullmatch(lang + ":"):
                raise InvalidInput(f"expected a language code such as 'en' or 'zh', got {lang!r}", field="prompt")
        if streamer is not None and not opts.streamable:
            raise InvalidInput("streaming needs num_beams = 1 (a beam's text is only known at the end)",
                               field="num_beams")
        kw = opts.generate_kwargs(PAD, EOS)
        kw["max_new_tokens"] = min(opts.max_new_tokens, self.cfg.max_target_positions - 1)
        forced = [tok.encode(lang + ":") if lang else [] for lang in langs]
        processors = transformers.LogitsProcessorList(
            [_ForceTag(forced, opts.num_beams)] if any(forced) else [])
        start = torch.full((len(batch), 1), BOS, dtype=torch.long, device=feats.device)
        was_training = self.training
        self.eval()
        try:
            with _seeded(opts.seed):
                out: torch.Tensor = transformers.GenerationMixin.generate(
                    self.model, input_features=feats, decoder_input_ids=start, logits_processor=processors,
                    suppress_tokens=self.suppressed(), begin_suppress_tokens=None,
                    streamer=None if streamer is None else _HideTag(streamer, tok, len(batch)), **kw)
        finally:
            self.train(was_training)
        return out

    # ------------------------------------------------------------------ Hugging Face folder
    def save_hf(self, folder: str | os.PathLike[str]) -> None:
        transformers = require("transformers", "hf")
        gc = self.model.generation_config
        saved = (gc.suppress_tokens, gc.begin_suppress_tokens, gc.max_length)
        gc.suppress_tokens, gc.begin_suppress_tokens = self.suppressed(), None
        gc.max_length = self.cfg.max_target_positions
        try:
            super().save_hf(folder)
        finally:
            gc.suppress_tokens, gc.begin_suppress_tokens, gc.max_length = saved
        f = self.features
        transformers.WhisperFeatureExtractor(
            feature_size=f.n_mels, sampling_rate=f.sample_rate, hop_length=f.hop_length,
            chunk_length=f.chunk_seconds, n_fft=f.n_fft).save_pretrained(str(Path(folder)))


class _ForceTag:
    """Logits processor: row ``i`` must produce ``forced[i]`` as its first tokens (after ``<s>``)."""

    def __init__(self, forced: Sequence[Sequence[int]], num_beams: int):
        self.forced, self.num_beams = [list(f) for f in forced], num_beams

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - 1  # tokens generated so far (the prompt is <s>)
        for n in range(scores.shape[0]):
            f = self.forced[n // self.num_beams]
            if step < len(f):
                scores[n] = -float("inf")
                scores[n, f[step]] = 0.0
        return scores


class _HideTag:
    """Streamer wrapper: passes each step's ids on, with a row's language-tag tokens (up to the one holding the
    colon) replaced by ``<pad>``, so the streamed text is the transcript alone. A row whose first tokens cannot
    be a tag is passed through from there (its earlier, held-back tokens are not streamed)."""

    def __init__(self, inner: TokenStreamer, tok: TextTokenizer, n: int):
        self.inner, self.tok = inner, tok
        self.pending: list[list[int]] = [[] for _ in range(n)]
        self.open = [True] * n
        self.started = False

    def put(self, value: torch.Tensor) -> None:
        if not self.started:  # the decoder prompt (<s>), shape (B, 1)
            self.started = True
            self.inner.put(value)
            return
        out = value.clone()
        for i, t in enumerate(value.reshape(-1).tolist()):
            if not self.open[i]:
                continue
            self.pending[i].append(int(t))
            text = self.tok.decode(self.pending[i])
            if ":" in text:
                self.open[i] = False
                out.view(-1)[i] = PAD
            elif int(t) != EOS and _TAG_PREFIX.fullmatch(text):
                out.view(-1)[i] = PAD
            else:
                self.open[i] = False
        self.inner.put(out)

    def end(self) -> None:
        self.inner.end()


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Sampling reproducible with ``seed``, without disturbing the caller's RNG streams."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@ARCHS.register("asr")
def build_asr(cfg: Mapping[str, Any]) -> SpeechRecognizer:
    """Build from a recipe's ``model`` section (checked as `AsrConfig`; its defaults are filled into
    ``model.config``, so the run's config.json names every setting)."""
    return SpeechRecognizer(load_config(AsrConfig, cfg))


__all__ = ["AsrConfig", "SpeechRecognizer", "build_asr", "split_tag", "tagged", "whisper_config"]
