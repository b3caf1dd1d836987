"""Tiny random pretrained checkpoints (CLIP, SigLIP, Chinese-CLIP, ALIGN, CLAP, sentence-transformers) built offline, for the
pretrained-tower tests and the encoder contract test.

Each builder writes a directory that ``from_pretrained`` reads like a real checkpoint: random weights at a tiny
size, a real tokenizer (word- or letter-level) and the image processor / feature extractor config.
transformers is imported inside the builders, so importing this module never needs the ``[hf]`` extra.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

WORDS = ["a", "red", "blue", "green", "circle", "square", "ring", "crimson", "big", "small", "the", "on", "of",
         "photo"]


def _transformers() -> Any:
    import transformers

    return transformers


def word_tokenizer(template: str, specials: dict[str, str]) -> tuple[Any, dict[str, int]]:
    """A word-level fast tokenizer (vocab ~20) with the given special tokens at fixed ids and a post-processor
    that adds them like the real checkpoint's tokenizer does."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    names = list(dict.fromkeys(specials.values()))
    vocab = {tok: i for i, tok in enumerate(names + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in names if t in template])
    kw = {f"{k}_token": v for k, v in specials.items()}
    return _transformers().PreTrainedTokenizerFast(tokenizer_object=tok, **kw), vocab


def tiny_text(vocab_size: int, **kw: Any) -> dict[str, Any]:
    return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, **kw)


def tiny_vision(**kw: Any) -> dict[str, Any]:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=32, patch_size=8, **kw)


def build_tiny_clip(out: Path, legacy_eos: bool = False, resize_to: int = 32) -> Path:
    """A random CLIPModel with a real CLIPTokenizer (letters + word-final letters; bos/eos inside the vocab).
    ``legacy_eos``: like openai/clip-* configs, eos_token_id=2 in the config, so transformers pools at the
    largest id, and the specials are the last ids of the vocab (as in the real 49408-token vocab).
    ``resize_to``: the processor's shortest edge before its 32 x 32 center crop."""
    transformers = _transformers()
    letters = [c for c in string.ascii_lowercase] + [c + "</w>" for c in string.ascii_lowercase]
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(letters + specials if legacy_eos else specials + letters)}
    tok = transformers.CLIPTokenizer(vocab=vocab, merges=[])
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    cfg = transformers.CLIPConfig(
        text_config=tiny_text(len(vocab), max_position_embeddings=48, bos_token_id=bos,
                              eos_token_id=2 if legacy_eos else eos, pad_token_id=1),
        vision_config=tiny_vision(), projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    transformers.CLIPImageProcessorPil(size={"shortest_edge": resize_to}, crop_size={"height": 32, "width": 32}
                                       ).save_pretrained(out)
    return out


def build_tiny_siglip(out: Path) -> Path:
    """A random SiglipModel; like the real ones, text ends with </s> and pads with it to a fixed length."""
    transformers = _transformers()
    tok, vocab = word_tokenizer("$A </s>", {"pad": "</s>", "eos": "</s>", "unk": "<unk>"})
    cfg = transformers.SiglipConfig(
        text_config=tiny_text(len(vocab), max_position_embeddings=16, pad_token_id=0, eos_token_id=0),
        vision_config=tiny_vision())
    torch.manual_seed(1)
    transformers.SiglipModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def build_tiny_clap(out: Path, fused: bool = False) -> Path:
    """A random ClapModel (RoBERTa-style text with <s> ... </s>, pad id 1; HTSAT on a 16-mel, 16 kHz, 1 s
    feature extractor). ``fused``: like laion/clap-htsat-fused (4-view input, "fusion" truncation)."""
    transformers = _transformers()
    tok, vocab = word_tokenizer("<s> $A </s>", {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>"})
    cfg = transformers.ClapConfig(
        text_config=tiny_text(len(vocab), max_position_embeddings=40, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, type_vocab_size=1),
        audio_config=dict(spec_size=64, num_mel_bins=16, window_size=4, depths=[1, 1], num_attention_heads=[2, 2],
                          patch_embeds_hidden_size=16, hidden_size=32, enable_fusion=fused,
                          fusion_type="aff_2d" if fused else None),
        projection_dim=16)
    torch.manual_seed(2)
    model = transformers.ClapModel(cfg)
    with torch.no_grad():  # audio-side and text-side temperatures differ, so which one a tower reports shows
        model.logit_scale_a.fill_(math.log(20.0))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    transformers.ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1,
                                      fft_window_size=400, frequency_min=50, frequency_max=8000,
                                      truncation="fusion" if fused else "rand_trunc").save_pretrained(out)
    return out


def build_tiny_sentence(out: Path) -> Path:
    """A sentence-transformers directory laid out like all-MiniLM-L6-v2 (modules.json: Transformer at the
    root -> mean Pooling -> Normalize) around a random 2-layer BERT with a word-level tokenizer."""
    transformers = _transformers()
    tok, vocab = word_tokenizer("[CLS] $A [SEP]", {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]"})
    cfg = transformers.BertConfig(**tiny_text(len(vocab), max_position_embeddings=32, pad_token_id=0,
                                              type_vocab_size=2))
    torch.manual_seed(3)
    transformers.BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (out / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 24, "do_lower_case": False}),
                                                   encoding="utf-8")
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                               "pooling_mode_mean_tokens": True}), encoding="utf-8")
    (out / "2_Normalize").mkdir()
    return out


BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ed", "一", "个", "红", "色", "的",
              "圆", "蓝", "方", "形", "猫", "照", "片", "😀", "🐱", "##😀"]


def bert_tokenizer(out: Path) -> Any:
    """A real BERT WordPiece tokenizer (lower-cased, Chinese characters split one per token) over a tiny vocab
    file with some Chinese characters and emoji; written into ``out`` as vocab.txt."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n", encoding="utf-8")
    return _transformers().BertTokenizer.from_pretrained(str(out), local_files_only=True, do_lower_case=True)


def tiny_bert_text(positions: int = 40) -> dict[str, Any]:
    return tiny_text(len(BERT_VOCAB), max_position_embeddings=positions, pad_token_id=0, type_vocab_size=2)


def build_tiny_chinese_clip(out: Path) -> Path:
    """A random ChineseCLIPModel (BERT text, CLIP ViT) saved with its ChineseCLIPProcessor: a BERT tokenizer and
    an image processor that resizes straight to 32 x 32 without a crop, like OFA-Sys/chinese-clip-*."""
    transformers = _transformers()
    tok = bert_tokenizer(out)
    cfg = transformers.ChineseCLIPConfig(text_config=tiny_bert_text(), vision_config=tiny_vision(),
                                         projection_dim=16, logit_scale_init_value=2.3)
    torch.manual_seed(4)
    transformers.ChineseCLIPModel(cfg).save_pretrained(out)
    image = transformers.ChineseCLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False)
    transformers.ChineseCLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(out)
    return out


def build_tiny_align(out: Path) -> Path:
    """A random AlignModel (BERT text + a 3-stage EfficientNet) saved with its AlignProcessor, whose image
    processor is configured like kakaobrain/align-base: square resize (here 40) and crop, x / 127.5 - 1 (rescale
    offset), no mean/std normalisation, no include_top."""
    transformers = _transformers()
    tok = bert_tokenizer(out)
    vision = dict(image_size=40, width_coefficient=1.0, depth_coefficient=1.0, kernel_sizes=[3, 3, 5],
                  in_channels=[32, 8, 16], out_channels=[8, 16, 16], strides=[1, 2, 2], num_block_repeats=[1, 2, 1],
                  expand_ratios=[1, 2, 2], hidden_dim=64)
    # 72 positions: AlignProcessor pads text to 64 tokens (the real checkpoint has 512)
    cfg = transformers.AlignConfig(text_config=tiny_bert_text(72), vision_config=vision, projection_dim=16,
                                   temperature_init_value=0.05)
    torch.manual_seed(5)
    model = transformers.AlignModel(cfg)
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval-mode BN is really exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    model.save_pretrained(out)
    image = transformers.EfficientNetImageProcessorPil(
        size={"height": 40, "width": 40}, crop_size={"height": 40, "width": 40}, do_center_crop=True,
        rescale_factor=1 / 127.5, rescale_offset=True, do_normalize=False, include_top=False)
    transformers.AlignProcessor(image_processor=image, tokenizer=tok).save_pretrained(out)
    return out


# family -> (builder, transformers class of the reference model)
BUILDERS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "clip": (build_tiny_clip, "CLIPModel"),
    "clip_legacy": (lambda d: build_tiny_clip(d, legacy_eos=True), "CLIPModel"),
    "clip_crop": (lambda d: build_tiny_clip(d, resize_to=40), "CLIPModel"),
    "siglip": (build_tiny_siglip, "SiglipModel"),
    "clap": (build_tiny_clap, "ClapModel"),
    "sentence": (build_tiny_sentence, "BertModel"),
    "chinese_clip": (build_tiny_chinese_clip, "ChineseCLIPModel"),
    "align": (build_tiny_align, "AlignModel"),
}


class TinyCheckpoints:
    """Builds each family's checkpoint on first request and keeps it for the session."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self._factory = factory
        self._dirs: dict[str, Path] = {}

    def dir(self, family: str) -> Path:
        if family not in self._dirs:
            self._dirs[family] = BUILDERS[family][0](self._factory.mktemp(family))
        return self._dirs[family]

    def reference(self, family: str) -> Any:
        """The family's transformers model loaded from the same directory, in eval mode."""
        cls = getattr(_transformers(), BUILDERS[family][1])
        return cls.from_pretrained(self.dir(family), local_files_only=True).eval()
