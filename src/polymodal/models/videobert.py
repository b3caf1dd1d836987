"""``arch: "videobert"``: VideoBERT (Sun et al. 2019) at small scale — a transformers ``BertForMaskedLM`` (tiny,
built from a config) reading ``[CLS] text [SEP] visual words [SEP]``.

- Visual words: `polymodal.models.visual_words` (hand-made segment features of consecutive frame pairs,
  quantised by hierarchical k-means; the codebook is fitted in ``fit_data`` on the training clips, after the
  text BPE, before step 1, and saved with the model as a buffer of fixed shape).
- Vocabulary: our byte-level BPE (``tokenizer.vocab_size`` ids, ``<s>`` serving as [CLS] and ``<sep>`` as
  [SEP]), then ``k**depth`` visual words, then one [MASK] id. Token type 0 is the text, 1 the video.
- Training (``forward``): each row takes one of its video captions (drawn; the first in evaluation). With
  probability ``mismatch_prob`` a row gets the caption of the next row instead (the linguistic-visual
  alignment objective, a 2-way head on [CLS]: does the text match the video?). On the matched rows,
  ``text_mask_prob`` of the text tokens and ``video_mask_prob`` of the visual words are replaced by [MASK]
  and predicted (text over the text vocabulary, visual words over the visual vocabulary). Loss =
  ``text_weight * text MLM + video_weight * video MLM + align_weight * alignment``.
- Zero-shot (``predict_motion``): "The <object> moves [MASK]." with the object named by the caller or left
  as three [MASK]s, the direction read from the [MASK] logits restricted to the captions' own direction words.
  Nothing is trained on this prompt beyond the ordinary masked captions.
- Video -> text (``describe``): fills the caption template "The [MASK] [MASK] [MASK] moves [MASK]." slot by
  slot (size, color, shape, direction), each slot restricted to its words (template filling, not ranking
  candidate captions with the alignment head).
- ``save_hf(folder)``: the ``BertForMaskedLM`` + the BPE tokenizer (``from_pretrained`` gives the same logits),
  plus ``visual_words.safetensors`` (the codebook) and ``videobert.json`` (the vocabulary layout).

A slot's word of n BPE tokens is scored with n [MASK]s in the slot by the sum of its tokens' log-probabilities
(over the text vocabulary); an answer scores the logsumexp of its words. Only English prompts (``"en"`` in
``langs``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_write_bytes, json_bytes
from ..config import to_dict
from ..data.sample import Batch, Sample
from ..data.synth import captions as caption_words
from ..data.synth import shapes
from ..data.transforms.resolve import transform_config
from ..data.transforms.video import VideoTransform
from ..errors import ConfigError, InvalidInput, require
from ..lm.tokenizer import BOS, PAD, SEP
from .generator import MAX_TOKENIZER_TEXTS, TextGenerator
from .lm import check_langs
from .registry import ARCHS, MODEL_CONFIGS, load_config
from .visual_words import VisualWords, VisualWordsSpec

MEAN = STD = [0.5, 0.5, 0.5]
IGNORE = -100
# slot words of the captions (polymodal.data.synth.captions): answer -> the words that say it
DIRECTIONS: dict[str, tuple[str, ...]] = {"left": ("left",), "right": ("right",), "up": ("up", "upward"),
                                          "down": ("down", "downward")}
SIZES: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in caption_words.SIZE_EN.items()}
COLORS: dict[str, tuple[str, ...]] = {c: (c,) for c in shapes.COLORS}
SHAPES: dict[str, tuple[str, ...]] = {s: (s,) for s in shapes.SHAPES}
Slot = dict[str, tuple[str, ...]]
Piece = str | Slot | None  # literal text, a slot to fill, or a [MASK] read by nobody


def _check(cond: bool, message: str, name: str) -> None:
    if not cond:
        raise ConfigError(message, field=name)


def _int_at_least(v: Any, low: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v >= low


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and v == v and abs(v) != float("inf")


@dataclass(frozen=True)
class BertSpec:
    """The BERT's sizes."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 512
    max_len: int = 64  # positions: [CLS] text [SEP] words [SEP] must fit (the text is cut)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "heads", "intermediate", "max_len"):
            v = getattr(self, name)
            _check(_int_at_least(v, 1), f"must be an integer >= 1, got {v!r}", f"bert.{name}")
        _check(self.hidden % self.heads == 0, f"hidden {self.hidden} does not split into {self.heads} heads",
               "bert.heads")
        _check(_number(self.dropout) and 0.0 <= self.dropout < 1.0, f"must be in [0, 1), got {self.dropout!r}",
               "bert.dropout")


@dataclass(frozen=True)
class VideoBertConfig:
    arch: str = "videobert"
    langs: list[str] = field(default_factory=lambda: ["en"])  # caption languages read
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"vocab_size": 512})
    video: VisualWordsSpec = field(default_factory=VisualWordsSpec)
    bert: BertSpec = field(default_factory=BertSpec)
    text_mask_prob: float = 0.15
    video_mask_prob: float = 0.15
    mismatch_prob: float = 0.5  # rows given another row's caption (alignment negatives)
    text_weight: float = 1.0
    video_weight: float = 1.0
    align_weight: float = 1.0

    def __post_init__(self) -> None:
        _check(self.arch == "videobert", f"must be 'videobert', got {self.arch!r}", "arch")
        check_langs(self.langs, allow_none=False)
        for name in ("text_mask_prob", "video_mask_prob", "mismatch_prob"):
            v = getattr(self, name)
            _check(_number(v) and 0.0 <= v < 1.0, f"must be a number in [0, 1), got {v!r}", name)
        for name in ("text_weight", "video_weight", "align_weight"):
            v = getattr(self, name)
            _check(_number(v) and v >= 0, f"must be a finite number >= 0, got {v!r}", name)
        _check(self.text_weight + self.video_weight + self.align_weight > 0, "all loss weights are 0",
               "text_weight")
        _check(self.bert.max_len >= self.video.segments + 4,
               f"max_len {self.bert.max_len} leaves no room for text beside {self.video.segments} visual words",
               "bert.max_len")


MODEL_CONFIGS.register("videobert")(VideoBertConfig)


class VideoBert(TextGenerator):
    task = "videobert"
    modalities: tuple[str, ...] = ("video",)

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        c = load_config(VideoBertConfig, self.config)
        self.cfg, self.spec, self.langs = c, c.video, list(c.langs)
        self.word_offset = self.vocab_size  # text ids come first
        self.mask_id = self.vocab_size + self.spec.words
        self.words = VisualWords(self.spec)
        transformers = require("transformers", "hf")
        b = c.bert
        self.bert = transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=self.mask_id + 1, hidden_size=b.hidden, num_hidden_layers=b.layers,
            num_attention_heads=b.heads, intermediate_size=b.intermediate, max_position_embeddings=b.max_len,
            type_vocab_size=2, hidden_dropout_prob=b.dropout, attention_probs_dropout_prob=b.dropout,
            pad_token_id=PAD))
        self.align_head = nn.Linear(b.hidden, 2)

    # ------------------------------------------------------------------ data
    def preprocess(self) -> dict[str, dict[str, Any]]:
        return {"video": {"frames": self.spec.frames, "image": {"size": self.spec.image_size, "mean": MEAN,
                                                                 "std": STD}}}

    def hf_model(self) -> Any:
        return self.bert

    def captions(self, sample_targets: Any) -> list[str]:
        return [x.text for x in sample_targets.captions if x.media == "video" and x.lang in self.langs]

    def corpus(self, samples: Iterable[Sample]) -> list[str]:
        texts = (t for s in samples for t in self.captions(s.targets))
        return list(itertools.islice(texts, MAX_TOKENIZER_TEXTS))

    def fit_data(self, samples: Iterable[Sample]) -> None:
        """The BPE (unless the config has one), then the visual-word codebook on up to ``max_fit_clips``
        training clips (read in the same pass over ``samples``)."""
        clips: list[Any] = []

        def tap() -> Iterator[Sample]:
            for s in samples:
                if s.video is not None and len(clips) < self.spec.max_fit_clips:
                    clips.append(s.video)
                yield s

        stream = tap()
        super().fit_data(stream)
        for _ in stream:
            if len(clips) >= self.spec.max_fit_clips:
                break
        if not clips:
            raise InvalidInput("the training data has no video to fit the visual words on", field="video")
        transform = VideoTransform.from_dict(transform_config(self.preprocess(), {})["video"])
        feats = []
        for start in range(0, len(clips), 256):
            frames = [transform(v) for v in clips[start:start + 256]]
            frames = [f for f in frames if f.shape[0] == self.spec.frames]
            if frames:
                feats.append(self.words.features(_unnormalise(torch.stack(frames))))
        if not feats:
            raise InvalidInput(f"no training clip has {self.spec.frames} frames", field="video")
        self.words.fit(torch.cat(feats))

    def clip_words(self, batch: Batch) -> torch.Tensor:
        """Visual word ids (B, frames - 1) of the batch's clips (rows without a clip get word 0)."""
        if "video" not in batch.data:
            raise InvalidInput("the batch has no video (this model reads video)", field="video")
        x = batch.data["video"]
        if x.ndim != 5 or x.shape[1] != self.spec.frames:
            raise InvalidInput(f"expected {self.spec.frames} video frames, got shape {tuple(x.shape)}",
                               field="video")
        words: torch.Tensor = self.words(_unnormalise(x))
        return words

    def _sequences(self, texts: Sequence[Sequence[int]], words: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, token types, attention mask, is-visual-word) (B, L) of ``[CLS] text [SEP] words [SEP]``."""
        room = self.cfg.bert.max_len - words.shape[1] - 3
        rows = [[BOS, *list(t)[:room], SEP] for t in texts]
        n = max(len(r) for r in rows) + words.shape[1] + 1
        ids = torch.full((len(rows), n), PAD, dtype=torch.long)
        types = torch.zeros_like(ids)
        visual = torch.zeros_like(ids, dtype=torch.bool)
        attn = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            seq = r + [self.word_offset + int(w) for w in words[i].tolist()] + [SEP]
            ids[i, :len(seq)] = torch.tensor(seq)
            attn[i, :len(seq)] = 1
            types[i, len(r):len(seq)] = 1
            visual[i, len(r):len(seq) - 1] = True
        dev = words.device
        return ids.to(dev), types.to(dev), attn.to(dev), visual.to(dev)

    def _run(self, ids: torch.Tensor, types: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MLM logits (B, L, V), alignment logits (B, 2))."""
        out = self.bert(input_ids=ids, token_type_ids=types, attention_mask=attn, output_hidden_states=True)
        return out.logits, self.align_head(out.hidden_states[-1][:, 0])

    # ------------------------------------------------------------------ training
    def _pairs(self, batch: Batch, g: torch.Generator | None) -> tuple[list[int], list[str], torch.Tensor]:
        """(rows used, their texts, aligned labels): rows with a clip and a caption (a drawn one in training,
        the first in evaluation); with probability ``mismatch_prob`` (2+ rows) a row reads the next used
        row's caption (label 0 unless the texts are equal)."""
        have = batch.mask.get("video")
        rows, own = [], []
        for i, t in enumerate(batch.targets):
            caps = self.captions(t)
            if caps and (have is None or bool(have[i])):
                rows.append(i)
                k = int(torch.randint(len(caps), ())) if self.training else 0
                own.append(caps[k])
        texts = list(own)
        labels = torch.ones(len(rows), dtype=torch.long)
        if len(rows) > 1 and self.cfg.mismatch_prob > 0:
            swap = torch.rand(len(rows), generator=g) < self.cfg.mismatch_prob
            for j in swap.nonzero().squeeze(1).tolist():
                texts[j] = own[(j + 1) % len(rows)]
                labels[j] = int(texts[j] == own[j])
        return rows, texts, labels

    def _masked(self, ids: torch.Tensor, attn: torch.Tensor, visual: torch.Tensor, g: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input ids with [MASK]s, masked text positions, masked visual positions). Every row is masked
        alike (a row without [MASK]s would give its mismatch away); the caller scores matched rows only."""
        content = (attn > 0) & (ids != BOS) & (ids != SEP)
        u = torch.rand(ids.shape, generator=g).to(ids.device)
        text_m = content & ~visual & (u < self.cfg.text_mask_prob)
        vis_m = content & visual & (u < self.cfg.video_mask_prob)
        return ids.masked_fill(text_m | vis_m, self.mask_id), text_m, vis_m

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted loss and its parts. Training draws captions, mismatches and masks from the global torch
        RNG (seeded and checkpointed by the trainer); evaluation from a private generator seeded 0, so a
        validation loss is the same every time and consumes no randomness."""
        g = None if self.training else torch.Generator().manual_seed(0)
        rows, texts, labels = self._pairs(batch, g)
        if not rows:
            zero = torch.stack([p.sum() for p in self.parameters()]).sum() * 0.0
            return zero, {"loss": 0.0}
        words = self.clip_words(batch)[torch.tensor(rows, device=batch.data["video"].device)]
        ids, types, attn, visual = self._sequences(self._tok().encode_batch(texts), words)
        labels = labels.to(ids.device)
        inputs, text_m, vis_m = self._masked(ids, attn, visual, g)
        logits, align = self._run(inputs, types, attn)
        matched = (labels == 1).unsqueeze(1)
        text_m, vis_m = text_m & matched, vis_m & matched
        v0, v1 = self.word_offset, self.mask_id
        text_loss, text_acc = _masked_ce(logits[..., :v0], ids, text_m)
        vis_loss, vis_acc = _masked_ce(logits[..., v0:v1], ids - v0, vis_m)
        align_loss = F.cross_entropy(align.float(), labels)
        c = self.cfg
        loss = c.text_weight * text_loss + c.video_weight * vis_loss + c.align_weight * align_loss
        logs = {"loss": float(loss.detach()), "text_mlm": float(text_loss.detach()),
                "video_mlm": float(vis_loss.detach()), "align": float(align_loss.detach()),
                "text_acc": text_acc, "video_acc": vis_acc,
                "align_acc": float((align.argmax(1) == labels).float().mean())}
        return loss, logs

    # ------------------------------------------------------------------ zero-shot and video -> text
    def _template_ids(self, template: Sequence[Piece], expand: tuple[int, int] | None
                      ) -> tuple[list[int], list[list[int]]]:
        """(text ids, per slot the sequence positions of its [MASK]s): slot ``expand[0]`` gets ``expand[1]``
        [MASK]s, every other slot (and each ``None``) one."""
        tok = self._tok()
        seq: list[int] = []
        where: list[list[int]] = []
        for piece in template:
            if isinstance(piece, str):
                seq.extend(tok.encode(piece))
                continue
            n = 1
            if piece is not None:
                n = expand[1] if expand is not None and expand[0] == len(where) else 1
                where.append([len(seq) + 1 + t for t in range(n)])  # + 1: [CLS] comes first
            seq.extend([self.mask_id] * n)
        return seq, where

    def _words(self, slot: Slot) -> dict[str, list[list[int]]]:
        """answer -> the token ids of each of its words (with the space that precedes a word in a caption)."""
        tok = self._tok()
        return {a: [tok.encode(" " + w) for w in words] for a, words in slot.items()}

    def _text_log_probs(self, batch: Batch, texts: list[list[int]], rows: list[int]) -> torch.Tensor:
        """log-softmax over the text vocabulary (Q, L, V_text) of text ``texts[q]`` beside clip ``rows[q]``."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                words = self.clip_words(batch)[torch.tensor(rows, device=batch.data["video"].device)]
                ids, types, attn, _ = self._sequences(texts, words)
                logits, _ = self._run(ids, types, attn)
        finally:
            self.train(was)
        return logits[..., :self.word_offset].float().log_softmax(-1)

    def fill(self, batch: Batch, templates: Sequence[Sequence[Piece]]) -> list[list[str]]:
        """For each row, its template's slots filled with their best answer. Literal pieces are text; ``None``
        is a [MASK] whose prediction is not read. A word of n tokens is scored with n [MASK]s in its slot (the
        other slots one each) by the sum of its tokens' log-probabilities over the text vocabulary; an answer
        scores the logsumexp of its words."""
        if "en" not in self.langs:
            raise InvalidInput("prompts are English; this model reads no English captions", field="langs")
        if len(templates) != len(batch):
            raise InvalidInput(f"expected {len(batch)} templates, got {len(templates)}", field="prompt")
        texts: list[list[int]] = []
        rows: list[int] = []
        at: dict[tuple[int, int, int], tuple[int, list[int]]] = {}  # (row, slot, n) -> (query, positions)
        for i, template in enumerate(templates):
            slots = [p for p in template if isinstance(p, dict)]
            base, where = self._template_ids(template, None)
            at.update({(i, j, 1): (len(texts), w) for j, w in enumerate(where)})
            texts.append(base)
            rows.append(i)
            for j, slot in enumerate(slots):
                for n in sorted({len(t) for ts in self._words(slot).values() for t in ts} - {1}):
                    seq, where = self._template_ids(template, (j, n))
                    at[(i, j, n)] = (len(texts), where[j])
                    texts.append(seq)
                    rows.append(i)
        logp = self._text_log_probs(batch, texts, rows)
        out: list[list[str]] = []
        for i, template in enumerate(templates):
            answers = []
            for j, slot in enumerate(p for p in template if isinstance(p, dict)):
                scores = {}
                for answer, token_lists in self._words(slot).items():
                    per_word = []
                    for toks in token_lists:
                        q, pos = at[(i, j, len(toks))]
                        per_word.append(logp[q, pos, toks].sum())
                    scores[answer] = float(torch.stack(per_word).logsumexp(0))
                answers.append(max(scores, key=lambda a: scores[a]))
            out.append(answers)
        return out

    def predict_motion(self, batch: Batch, phrases: Sequence[str | None] | None = None) -> list[str]:
        """Zero-shot direction ("left", "right", "up", "down") per row from "The <object> moves [MASK]."; the
        object is ``phrases[i]`` (e.g. "large red star") or, when None, three [MASK]s. No label is read."""
        names = list(phrases) if phrases is not None else [None] * len(batch)
        if len(names) != len(batch):
            raise InvalidInput(f"expected {len(batch)} phrases, got {len(names)}", field="phrases")
        templates: list[list[Piece]] = []
        for name in names:
            obj: list[Piece] = [" " + name.strip()] if name else [None, None, None]
            templates.append(["The", *obj, " moves", DIRECTIONS, "."])
        return [row[0] for row in self.fill(batch, templates)]

    def describe(self, batch: Batch) -> list[str]:
        """A caption per row by template filling: "the <size> <color> <shape> moves <direction>"."""
        template: list[Piece] = ["The", SIZES, COLORS, SHAPES, " moves", DIRECTIONS, "."]
        return ["the {} {} {} moves {}".format(*row) for row in self.fill(batch, [template] * len(batch))]

    # ------------------------------------------------------------------ export
    def save_hf(self, folder: Any) -> None:
        """The BertForMaskedLM + tokenizer (``from_pretrained``), the codebook and the vocabulary layout."""
        super().save_hf(folder)
        out = Path(folder)
        save_file = require("safetensors.torch", "hf").save_file
        save_file({"codebook": self.words.codebook.detach().cpu().contiguous()}, str(out / "visual_words.safetensors"))
        layout = {"text_vocab": self.vocab_size, "word_offset": self.word_offset, "words": self.spec.words,
                  "mask_id": self.mask_id, "cls_id": BOS, "sep_id": SEP, "pad_id": PAD,
                  "token_types": {"text": 0, "video": 1}, "video": to_dict(self.spec),
                  "mean": MEAN, "std": STD}
        atomic_write_bytes(out / "videobert.json", json_bytes(layout))


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    """Frames normalised with MEAN/STD back to [0, 1]."""
    mean = torch.tensor(MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(3, 1, 1)
    return x.float() * std + mean


def _masked_ce(logits: torch.Tensor, gold: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean cross-entropy and accuracy over the positions ``where`` (0 with a gradient when there are none)."""
    if not bool(where.any()):
        return logits.sum() * 0.0, 0.0
    sel, target = logits[where].float(), gold[where]
    acc = float((sel.argmax(-1) == target).float().mean())
    return F.cross_entropy(sel, target), acc


def build_videobert(cfg: Mapping[str, Any]) -> VideoBert:
    """A `VideoBertConfig` dict -> the model (``model.config`` keeps the checked config with defaults written out
    and, once trained, the tokenizer)."""
    return VideoBert(to_dict(load_config(VideoBertConfig, cfg)))


ARCHS.register("videobert")(build_videobert)

__all__ = ["BertSpec", "DIRECTIONS", "VideoBert", "VideoBertConfig", "build_videobert"]
