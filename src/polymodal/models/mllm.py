"""``arch: "mllm"`` — a multimodal LLM: a (frozen) vision encoder, a bridge, and a causal language model.

Bridges (``model.bridge``):

- ``llava``: transformers' ``LlavaForConditionalGeneration`` holds everything — the ViT tower, the 2-layer
  projector (each patch -> one soft token) and the LM — so RUN/hf is a Llava folder that ``from_pretrained``
  loads (and computes the same logits: a test). Stage 1 (``lm.train: "frozen"``, ``data: ["captions"]``) trains
  the projector only; stage 2 (``init_from`` the stage-1 run, ``lm.train: "lora"`` or ``"full"``,
  ``data: ["conversations"]``) tunes the LM on instructions.
- ``blip2``: a Q-Former (`polymodal.bridges.qformer`, on transformers' Blip2QFormerModel) turns the patches into
  ``queries`` soft tokens.
- ``flamingo``: a perceiver resampler + gated cross-attention layers inside the frozen LM
  (`polymodal.bridges.flamingo`, on transformers' IDEFICS modules); the text carries one marker per picture.

Parts come from earlier runs (``vision.from_run``: a captioner's ViT; ``lm.from_run``: an ``lm`` run or an HF
causal-LM folder) or are fresh. ``input: "state"`` reads the scene as text instead of the picture (the question is
``metadata["prompt_state"]``), ``input: "text"`` reads neither (the text-only baselines). The token layout is
`polymodal.models.mllm_seq`'s."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ..config import from_dict, to_dict
from ..data.sample import Batch, Sample
from ..errors import ConfigError, InvalidInput, require
from ..lm.decoding import DecodingOptions
from ..lm.tokenizer import BOS, EOS, PAD
from .gen_batch import hf_generate, pick, token_loss
from .generator import MAX_TOKENIZER_TEXTS, TextGenerator, TokenStreamer, check_prompts, pad_sequences
from .mllm_audio import AudioBridge, audio_source, scatter
from .mllm_bridges import GenericBridge, build_bridge, load_plain
from .mllm_config import AudioSpec, MLLMConfig
from .mllm_seq import (
    CAPTION_PROMPT,
    Encoded,
    Segment,
    encode_row,
    left_padded_rows,
    prompt_row,
    right_padded,
    sample_sequences,
)
from .mllm_sources import (
    add_lora,
    grown_rows,
    hf_config,
    lm_source,
    load_init_weights,
    merged_state_dict,
    vision_source,
)
from .registry import ARCHS, load_config

MEAN = STD = [0.5, 0.5, 0.5]
EXTRA_ROWS = 2  # LM vocabulary rows past the tokenizer's: picture and audio placeholders


class MultimodalLM(TextGenerator):
    task = "chat"
    modalities: tuple[str, ...] = ("image",)

    def __init__(self, config: dict[str, Any]):
        c = load_config(MLLMConfig, config)
        config = dict(config)
        vsrc = vision_source(c.vision)
        lsrc = lm_source(c.lm, int(c.tokenizer.get("vocab_size", 1024)))
        if lsrc.tokenizer_json is not None:
            config["tokenizer"] = {**config.get("tokenizer", {}), "json": lsrc.tokenizer_json}
        config["tokenizer"] = {**config["tokenizer"], "vocab_size": int(lsrc.hf_config["vocab_size"])}
        # two rows past the LM's vocabulary: the picture placeholder and the audio one (never tokenizer ids)
        text_cfg = {**lsrc.hf_config, "vocab_size": int(lsrc.hf_config["vocab_size"]) + EXTRA_ROWS}
        config["vision"] = {**config.get("vision", {}), "hf_config": vsrc.hf_config}
        aspec: AudioSpec | None = None
        astate = None
        if c.audio is not None:
            if c.bridge != "llava":
                raise ConfigError("speech input is wired for the llava bridge", field="audio")
            aspec = from_dict(AudioSpec, dict(c.audio))
            whisper, feats, astate = audio_source(aspec)
            config["audio"] = {**c.audio, "hf_config": whisper, "features": feats}
        config["lm"] = {**config.get("lm", {}), "hf_config": lsrc.hf_config}
        super().__init__(config)
        self.c = c
        self._pending = {"vision": vsrc.state, "lm": lsrc.state, "audio": astate}
        self.image_token = self.vocab_size  # the first row past the tokenizer's
        self.max_len = c.max_len
        self.langs = list(c.langs)
        self.modalities = (("image",) if c.input == "image" else ()) + (("audio",) if aspec else ())
        self.image_size = int(vsrc.hf_config["image_size"])
        self.bridge = c.bridge
        self.hf: Any = None
        self.generic: GenericBridge | None = None
        if c.bridge == "llava":
            self._build_llava(vsrc.hf_config, text_cfg)
        else:
            self.generic = build_bridge(c, hf_config(vsrc.hf_config), hf_config(text_cfg))
        self.slots = self.generic.slots if self.generic is not None else (self.image_size // int(
            vsrc.hf_config["patch_size"])) ** 2
        self.audio: AudioBridge | None = None
        self.audio_slots = 0
        if aspec is not None:
            self.audio = AudioBridge(aspec, self.config["audio"]["hf_config"], int(lsrc.hf_config["hidden_size"]))
            self.audio_slots = aspec.slots
        self._freeze()

    # ------------------------------------------------------------------ parts
    def _build_llava(self, vision: dict[str, Any], text: dict[str, Any]) -> None:
        transformers = require("transformers", "hf")
        n = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
        cfg = transformers.LlavaConfig(
            vision_config=hf_config(vision), text_config=hf_config(text), image_token_id=self.image_token,
            vision_feature_layer=-1, vision_feature_select_strategy="default",
            projector_hidden_act=self.c.projector.act, image_seq_length=n)
        self.hf = transformers.LlavaForConditionalGeneration(cfg)
        for g in (self.hf.generation_config,):
            g.bos_token_id, g.eos_token_id, g.pad_token_id = BOS, EOS, PAD

    def vision_tower(self) -> torch.nn.Module:
        if self.hf is not None:
            out: torch.nn.Module = self.hf.model.vision_tower
            return out
        assert self.generic is not None
        vision: torch.nn.Module = self.generic.vision
        return vision

    def language_model(self) -> torch.nn.Module:
        """The module LoRA goes into (the decoder stack: Llava keeps the head outside it)."""
        if self.hf is not None:
            out: torch.nn.Module = self.hf.model.language_model
            return out
        assert self.generic is not None
        lm: torch.nn.Module = self.generic.lm
        return lm

    def _freeze(self) -> None:
        lm_mode = "frozen" if self.c.stage == 1 else self.c.lm.train
        if lm_mode == "lora":
            add_lora(self.language_model(), self.c.lm.lora)
        elif lm_mode == "frozen":
            self.language_model().requires_grad_(False)
            if self.hf is not None:
                self.hf.lm_head.requires_grad_(False)
        vision = self.vision_tower()
        vision.requires_grad_(self.c.vision.train)
        pooler = getattr(vision, "pooler", None)
        if pooler is not None:
            pooler.requires_grad_(False)  # kept for from_pretrained; the patches skip it
        if self.generic is not None and self.generic.qformer is not None:  # stage 1 never prompts the LM
            self.generic.qformer.language_projection.requires_grad_(self.c.stage == 2)

    def fit_data(self, samples: Iterable[Sample]) -> None:
        """Before training: copy in the source runs' weights (and ``init_from``'s), then train a tokenizer if
        the LM is fresh."""
        vision, lm = self._pending["vision"], self._pending["lm"]
        if vision is not None:
            self.vision_tower().load_state_dict(vision, strict=False)
        if lm is not None:
            self._load_lm(lm)
        audio = self._pending.get("audio")
        if audio is not None and self.audio is not None:
            self.audio.encoder.load_state_dict(audio, strict=True)
        self._pending = {"vision": None, "lm": None, "audio": None}
        if self.c.init_from is not None:
            load_init_weights(self, self.c.init_from)
        super().fit_data(samples)

    def _load_lm(self, state: dict[str, torch.Tensor]) -> None:
        state = {k: grown_rows(v, self.vocab_size + EXTRA_ROWS) if k.endswith(("embed_tokens.weight", "lm_head.weight",
                                                                          "wte.weight")) else v
                 for k, v in state.items()}
        if self.hf is None:
            assert self.generic is not None
            self.generic.load_lm(state)
            return
        load_plain(self.language_model(), {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")},
                   "lm.from_run")
        head = state.get("lm_head.weight")
        if head is not None and not self.hf.config.text_config.tie_word_embeddings:
            self.hf.lm_head.weight.data.copy_(head)

    # ------------------------------------------------------------------ data
    def preprocess(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if self.c.input == "image":
            out["image"] = {"size": self.image_size, "mean": MEAN, "std": STD}
        if self.audio is not None:
            out["audio"] = {"audio": dict(self.config["audio"]["features"])}
        return out

    def hf_model(self) -> Any:
        return self.hf

    def candidates(self, sample_targets: Any, metadata: Mapping[str, Any]
                   ) -> list[tuple[str, list[tuple[str, str]], bool]]:
        """(lang, turns, spoken) of every target sequence of a sample this model learns from (`sample_sequences`)."""
        return sample_sequences(sample_targets, metadata, kinds=self.c.data, langs=self.langs,
                                qa_types=self.c.qa_types, state=self.c.input == "state", audio=self.audio is not None)

    def corpus(self, samples: Iterable[Sample]) -> list[str]:
        def texts() -> Iterator[str]:
            for s in samples:
                for _, turns, _ in self.candidates(s.targets, s.metadata):
                    for user, answer in turns:
                        yield user
                        yield answer
        return list(itertools.islice(texts(), MAX_TOKENIZER_TEXTS))

    def training_rows(self, batch: Batch) -> list[list[Segment]]:
        """``sequences_per_sample`` drawn targets per sample (all in evaluation: the first ones)."""
        have = batch.mask.get("image") if self.c.input == "image" else None
        heard = batch.mask.get("audio") if self.audio is not None else None
        options = [self.candidates(t, m) for t, m in zip(batch.targets, batch.metadata, strict=True)]
        if heard is not None:  # a spoken conversation of a sample without its audio is not trained on
            options = [[o for o in opts if not o[2] or bool(heard[i])] for i, opts in enumerate(options)]
        drawn = pick([len(o) for o in options], self.c.sequences_per_sample, self.training)
        rows: list[list[Segment]] = []
        for i, (items, chosen) in enumerate(zip(options, drawn, strict=True)):
            image = i if have is not None and bool(have[i]) else None
            for k in chosen:
                rows.append([Segment(image, [(u, a) for u, a in items[k][1]], audio=i if items[k][2] else None)])
        if self.c.shots and self.training and len(rows) > 1:
            rows = self._interleaved(rows)
        return rows

    def _interleaved(self, rows: list[list[Segment]]) -> list[list[Segment]]:
        """Flamingo's interleaved sequences: each row is preceded by 0..``shots`` other rows of the batch (drawn
        from the torch RNG), so the LM learns to read a picture, its text, another picture, ..."""
        out = []
        for r, row in enumerate(rows):
            k = int(torch.randint(0, self.c.shots + 1, ()).item())
            others = [j for j in torch.randperm(len(rows)).tolist() if j != r][:k]
            out.append([seg for j in others for seg in rows[j]] + row)
        return out

    # ------------------------------------------------------------------ model
    def _pixels(self, batch: Batch | None) -> torch.Tensor | None:
        if batch is None or self.c.input != "image" or "image" not in batch.data:
            return None
        out: torch.Tensor = batch.data["image"]
        return out

    def _encode(self, rows: Sequence[Sequence[Segment]], prompt: bool) -> list[Encoded]:
        tok = self._tok()
        fn = prompt_row if prompt else encode_row
        return [fn(tok, r, self.slots, self.image_token, self.max_len, self.audio_slots) for r in rows]

    def _images(self, encoded: Sequence[Encoded], pixels: torch.Tensor | None) -> torch.Tensor | None:
        order = [i for e in encoded for i in e.images]
        if not order:
            return None
        if pixels is None:
            raise InvalidInput("a sequence has a picture but the batch has none", field="image")
        return pixels[torch.tensor(order, device=pixels.device)]

    def _embeds(self, ids: torch.Tensor, encoded: Sequence[Encoded], images: torch.Tensor | None,
                sounds: torch.Tensor | None) -> torch.Tensor:
        """Llava's input embeddings with the pictures' and the clips' soft tokens written in (speech input)."""
        embeds: torch.Tensor = self.hf.get_input_embeddings()(ids)
        if images is not None:
            feats = torch.stack(list(self.hf.model.get_image_features(pixel_values=images).pooler_output))
            embeds = scatter(embeds, ids, self.image_token, feats, "image")
        order = [i for e in encoded for i in e.audio]
        clips = None
        if order:
            if sounds is None or self.audio is None:
                raise InvalidInput("a sequence has a spoken question but the batch has no audio", field="audio")
            clips = self.audio(sounds[torch.tensor(order, device=sounds.device)])
        return scatter(embeds, ids, self.image_token + 1, clips, "audio")

    def sequence_logits(self, rows: Sequence[Sequence[Segment]], pixels: torch.Tensor | None,
                        sounds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, ids, loss mask) of training sequences."""
        encoded = self._encode(rows, prompt=False)
        device = self.image_token_device()
        ids, mask, loss_mask = right_padded(encoded, device)
        images = self._images(encoded, pixels)
        if any(e.audio for e in encoded):
            logits = self.hf(inputs_embeds=self._embeds(ids, encoded, images, sounds), attention_mask=mask).logits
        elif self.hf is not None:
            logits = self.hf(input_ids=ids, attention_mask=mask, pixel_values=images).logits
        else:
            assert self.generic is not None
            logits = self.generic.logits(ids, mask, images, self.image_token)
        return logits, ids, loss_mask

    def image_token_device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.c.stage == 1:
            return self._stage1(batch)
        rows = self.training_rows(batch)
        if not rows:  # nothing to learn in this batch: a zero loss that keeps the graph
            zero = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return torch.as_tensor(zero), {"loss": 0.0}
        sounds = batch.data.get("audio") if self.audio is not None else None
        logits, ids, loss_mask = self.sequence_logits(rows, self._pixels(batch), sounds)
        loss, logs = token_loss(logits, ids, loss_mask)
        return loss, {"loss": float(loss.detach()), **logs}

    def _stage1(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """BLIP-2 stage 1: ITC + ITM + ITG between the Q-Former's queries and a caption per picture."""
        assert self.generic is not None
        pixels = self._pixels(batch)
        have = batch.mask.get("image")
        tok = self._tok()
        index, texts = [], []
        for i, t in enumerate(batch.targets):
            caps = [c.text for c in t.captions if c.media == "image" and c.lang in self.langs]
            if caps and pixels is not None and have is not None and bool(have[i]):
                k = int(torch.randint(len(caps), ()).item()) if self.training else 0
                index.append(i)
                texts.append(([BOS] + tok.encode(caps[k]) + [EOS])[:self.max_len])
        if len(index) < 2 or pixels is None:
            raise InvalidInput("BLIP-2 stage 1 needs at least 2 pictures with captions per batch", field="targets")
        ids, mask = pad_sequences(texts, PAD)
        rows = torch.tensor(index, device=pixels.device)
        same = torch.tensor([[a == b for b in index] for a in index], device=pixels.device)
        losses = self.generic.stage1(pixels[rows], ids.to(pixels.device), mask.to(pixels.device), same)
        return losses["loss"], {k: float(v.detach()) for k, v in losses.items()}

    def decode(self, rows: Sequence[Sequence[Segment]], pixels: torch.Tensor | None,
               options: DecodingOptions | None = None, streamer: TokenStreamer | None = None,
               sounds: torch.Tensor | None = None) -> list[str]:
        """The reply to each row's open question (greedy unless ``options`` say otherwise); ``sounds``: the
        log-mel features of the clips the rows' segments point at."""
        encoded = self._encode(rows, prompt=True)
        device = self.image_token_device()
        ids, mask = left_padded_rows(encoded, device)
        images = self._images(encoded, pixels)
        tok = self._tok()
        was = self.training
        self.eval()
        try:
            if any(e.audio for e in encoded):
                with torch.no_grad():
                    embeds = self._embeds(ids, encoded, images, sounds)
                return hf_generate(self.hf, tok, ids.shape[1], self.max_len, options, streamer, input_ids=ids,
                                   inputs_embeds=embeds, attention_mask=mask,
                                   suppress_tokens=[self.image_token, self.image_token + 1])
            if self.hf is not None:  # no pixel_values at all without pictures (Llava's generate would run the ViT)
                pictures = {} if images is None else {"pixel_values": images}
                return hf_generate(self.hf, tok, ids.shape[1], self.max_len, options, streamer, input_ids=ids,
                                   attention_mask=mask, suppress_tokens=[self.image_token], **pictures)
            assert self.generic is not None
            return self.generic.generate(tok, ids, mask, images, self.image_token, self.max_len, options, streamer)
        finally:
            self.train(was)

    def generate(self, batch: Batch | None, prompts: Sequence[str | None] | None = None,
                 options: DecodingOptions | None = None, streamer: TokenStreamer | None = None,
                 lang: str | None = None) -> list[str]:
        """The answer to each row's question (``prompts``); None asks for a caption (in ``lang``)."""
        n = len(batch) if batch is not None else len(prompts or ())
        questions = check_prompts(prompts, n)
        pixels = self._pixels(batch)
        have = batch.mask.get("image") if batch is not None and pixels is not None else None
        if self.c.input == "image" and (have is None or not bool(have.all())):
            raise InvalidInput("every input needs a picture (this model reads images)", field="image")
        caption = CAPTION_PROMPT.get(lang or self.langs[0], CAPTION_PROMPT["en"])
        rows = [[Segment(i if pixels is not None else None, [(q if q is not None else caption, None)])]
                for i, q in enumerate(questions)]
        return self.decode(rows, pixels, options, streamer)

    def save_hf(self, folder: Any) -> None:
        """Llava: a LlavaForConditionalGeneration folder (LoRA merged) + the tokenizer. Other bridges: the
        LM alone (merged) + the tokenizer; the bridge lives in the run's checkpoint."""
        from pathlib import Path

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        transformers = require("transformers", "hf")
        if self.hf is not None:
            plain = transformers.LlavaForConditionalGeneration(self.hf.config)
            state = merged_state_dict(self.hf)
            plain.load_state_dict(state, strict=False)
            plain.generation_config = self.hf.generation_config
            plain.save_pretrained(out, safe_serialization=True)
        else:
            assert self.generic is not None
            self.generic.save_lm(out)
        self._tok().to_hf().save_pretrained(out)


@ARCHS.register("mllm")
def build_mllm(cfg: Mapping[str, Any]) -> MultimodalLM:
    """`MLLMConfig` dict -> the model; ``model.config`` keeps the checked config with what the first build read
    from its sources written in (HF configs, tokenizer)."""
    checked = to_dict(load_config(MLLMConfig, cfg))
    return MultimodalLM(checked)


__all__ = ["MultimodalLM", "build_mllm"]
