"""One contract test over every registered encoder: shape, finite, gradients reach every parameter,
padding and absent samples do not change the outputs, and no sample depends on the rest of its batch.

From-scratch encoders are built tiny (TINY); pretrained towers load tiny random checkpoints of their family
(PRETRAINED, built by tinyckpt.py) and take the inputs their own tokenizer / feature extractor produces. A point a
tower meets differently by design is tested in that form (CLAP audio is fixed-length: extra padding is refused;
a frozen tower gets no gradients and stays deterministic in training mode)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from tinyckpt import WORDS, TinyCheckpoints

from polymodal.encoders import (  # importing the package registers every encoder
    ENCODERS,
    Encoder,
    create_encoder,
)
from polymodal.errors import ConfigError, InvalidInput

B = 4
LENGTHS = [5, 2, 7, 1]  # real positions per row for variable-length modalities


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add sync overhead (10x slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pad_mask(lengths: list[int], L: int) -> torch.Tensor:
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]


def text_input(g: torch.Generator) -> dict[str, torch.Tensor]:
    L = max(LENGTHS)
    pm = _pad_mask(LENGTHS, L)
    ids = torch.randint(3, 50, (B, L), generator=g)
    return {"values": torch.where(pm, ids, 0), "mask": torch.ones(B, dtype=torch.bool), "pad_mask": pm}


def image_input(g: torch.Generator, size: int = 16) -> dict[str, torch.Tensor]:
    return {"values": torch.randn(B, 3, size, size, generator=g), "mask": torch.ones(B, dtype=torch.bool)}


def audio_input(g: torch.Generator, n_mels: int = 8) -> dict[str, torch.Tensor]:
    lengths = [n * 3 for n in LENGTHS]
    pm = _pad_mask(lengths, max(lengths))
    x = torch.randn(B, n_mels, max(lengths), generator=g) * pm[:, None, :]
    return {"values": x, "mask": torch.ones(B, dtype=torch.bool), "pad_mask": pm}


def video_input(g: torch.Generator, size: int = 16) -> dict[str, torch.Tensor]:
    lengths = [min(n, 4) for n in LENGTHS]
    pm = _pad_mask(lengths, max(lengths))
    x = torch.randn(B, max(lengths), 3, size, size, generator=g) * pm[:, :, None, None, None]
    return {"values": x, "mask": torch.ones(B, dtype=torch.bool), "pad_mask": pm}


# name -> (tiny kwargs, input maker). Every from-scratch encoder must be listed here.
TINY: dict[str, tuple[dict[str, Any], Callable[[torch.Generator], dict[str, torch.Tensor]]]] = {
    "text_transformer": ({"vocab_size": 50, "width": 32, "layers": 2, "heads": 2, "max_len": 16}, text_input),
    "image_vit": ({"image_size": 16, "patch_size": 4, "width": 32, "layers": 2, "heads": 2, "pool": "cls"},
                  image_input),
    "image_cnn": ({"image_size": 16, "channels": [8, 16], "output_dim": 24}, image_input),
    "audio_cnn": ({"n_mels": 8, "channels": [16, 16, 16], "layers": 1, "heads": 2, "max_frames": 32},
                  audio_input),
    "audio_transformer": ({"n_mels": 8, "patch": 2, "width": 32, "layers": 1, "heads": 2, "max_frames": 32},
                          audio_input),
    "video_frames": ({"frame": {"image_size": 16, "channels": [8, 16]}, "heads": 2, "max_frames": 8},
                     video_input),
    # transformers' ALIGN towers built from a config (the EfficientNet needs >= 32 px)
    "align_image": ({"image_size": 32, "width_coefficient": 0.2, "depth_coefficient": 0.2},
                    lambda g: image_input(g, size=32)),
    "align_text": ({"vocab_size": 50, "width": 32, "layers": 2, "heads": 2, "max_len": 16, "output_dim": 24},
                   text_input),
}


def tokenized_input(enc: Any, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Texts of LENGTHS words through the tower's own tokenizer (its specials, its padding)."""
    picks = torch.randint(0, len(WORDS), (sum(LENGTHS),), generator=g).tolist()
    texts, at = [], 0
    for n in LENGTHS:
        texts.append(" ".join(WORDS[i] for i in picks[at : at + n]))
        at += n
    enc_ = enc.tokenizer(texts, padding=True, return_tensors="pt")
    return {"values": enc_["input_ids"], "mask": torch.ones(B, dtype=torch.bool),
            "pad_mask": enc_["attention_mask"].bool()}


def tower_image_input(enc: Any, g: torch.Generator) -> dict[str, torch.Tensor]:
    return image_input(g, size=enc.image_size)


def clap_audio_input(enc: Any, g: torch.Generator) -> dict[str, torch.Tensor]:
    """CLAP's own log-mel of waveforms of different lengths (repeat-padded to its fixed window: no padding)."""
    waves = [(0.1 * torch.randn(4000 * n, generator=g)).numpy() for n in LENGTHS]
    return {**enc.featurize(waves, 16000), "mask": torch.ones(B, dtype=torch.bool)}


# name -> (tiny checkpoint family in tinyckpt.BUILDERS, input maker). Every pretrained tower must be listed here.
PRETRAINED: dict[str, tuple[str, Callable[[Any, torch.Generator], dict[str, torch.Tensor]]]] = {
    "hf_clip_text": ("clip", tokenized_input),
    "hf_clip_image": ("clip", tower_image_input),
    "hf_siglip_text": ("siglip", tokenized_input),
    "hf_siglip_image": ("siglip", tower_image_input),
    "hf_chinese_clip_text": ("chinese_clip", tokenized_input),
    "hf_chinese_clip_image": ("chinese_clip", tower_image_input),
    "hf_align_text": ("align", tokenized_input),
    "hf_align_image": ("align", tower_image_input),
    "hf_clap_text": ("clap", tokenized_input),
    "hf_clap_audio": ("clap", clap_audio_input),
    "st_text": ("sentence", tokenized_input),
}
FIXED_LENGTH = {"hf_clap_audio"}  # inputs come from a fixed-window feature extractor; other lengths are refused


# Towers whose contract is tested in their own module (they need an extra that may be absent and a test-only setup).
ELSEWHERE = {"open_clip_text": "test_open_clip.py", "open_clip_image": "test_open_clip.py"}


def _build(name: str, ckpts: TinyCheckpoints | None = None) -> tuple[Encoder, dict[str, torch.Tensor]]:
    if name in ELSEWHERE:
        pytest.skip(f"{name} is tested against open_clip in {ELSEWHERE[name]}")
    assert name in TINY or name in PRETRAINED, f"{name} needs an entry in TINY or PRETRAINED"
    torch.manual_seed(0)
    if name in TINY:
        kwargs, make = TINY[name]
        return create_encoder(name, **kwargs).eval(), make(torch.Generator().manual_seed(1))
    pytest.importorskip("transformers", reason="pretrained towers need the [hf] extra")
    assert ckpts is not None
    family, make_for = PRETRAINED[name]
    enc = create_encoder(name, path=str(ckpts.dir(family))).eval()
    return enc, make_for(enc, torch.Generator().manual_seed(1))


def _assert_gradients_reach_every_trainable_parameter(enc: Encoder, out: torch.Tensor) -> None:
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    trainable = [(n, p) for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable, "no trainable parameters"
    for pname, p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_contract(name: str, tiny_ckpts: TinyCheckpoints) -> None:
    enc, part = _build(name, tiny_ckpts)
    assert enc.modality in ("audio", "image", "text", "video")
    json.dumps(enc.preprocess())  # the pipeline config must be JSON-able
    out = enc(part)
    assert out.shape == (B, enc.output_dim)
    assert torch.isfinite(out).all()
    _assert_gradients_reach_every_trainable_parameter(enc, out)


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_frozen_pretrained_tower(name: str, tiny_ckpts: TinyCheckpoints) -> None:
    """LiT-style locking, the true form of the gradient point for a frozen tower: nothing trainable, no graph,
    and training mode leaves its dropout off (two passes agree); unfrozen again, gradients reach everything."""
    enc, part = _build(name, tiny_ckpts)
    enc.freeze().train()
    assert not any(p.requires_grad for p in enc.parameters())
    first, second = enc(part), enc(part)
    assert not first.requires_grad and first.grad_fn is None
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    enc.freeze(False).eval()
    _assert_gradients_reach_every_trainable_parameter(enc, enc(part))


@pytest.mark.parametrize("name", sorted([*TINY, *PRETRAINED]))
def test_padding_absent_rows_and_batch_independence(name: str, tiny_ckpts: TinyCheckpoints) -> None:
    enc, part = _build(name, tiny_ckpts)
    with torch.no_grad():
        ref = enc(part)
        time_dim = 1 if enc.modality in ("text", "video") else 2
        if name in FIXED_LENGTH:
            assert bool(part["pad_mask"].all())  # the extractor's windows are all real frames
            longer = torch.cat([part["values"], part["values"][..., :3]], dim=time_dim)
            with pytest.raises(InvalidInput, match=enc.modality):
                enc(dict(part, values=longer, pad_mask=torch.ones(longer.shape[0], longer.shape[time_dim],
                                                                   dtype=torch.bool)))
        elif "pad_mask" in part:
            # Garbage in every padded position, and extra padding at the end: outputs unchanged.
            pm = part["pad_mask"]
            shape = [1] * part["values"].dim()
            shape[0], shape[time_dim] = B, pm.shape[1]
            pad = ~pm.view(shape)
            garbage = torch.randint(3, 50, part["values"].shape) if enc.modality == "text" else \
                torch.randn(part["values"].shape) * 100
            noisy = dict(part, values=torch.where(pad, garbage.to(part["values"].dtype), part["values"]))
            torch.testing.assert_close(enc(noisy), ref, atol=1e-5, rtol=1e-5)
            extra = 3
            more = torch.cat([noisy["values"]] * 2, dim=time_dim).narrow(time_dim, 0, pm.shape[1] + extra)
            longer = dict(part, values=more, pad_mask=torch.cat([pm, torch.zeros(B, extra, dtype=torch.bool)], 1))
            torch.testing.assert_close(enc(longer), ref, atol=1e-5, rtol=1e-5)
        # An absent sample (mask False) comes out as zeros and does not disturb the others.
        absent = dict(part, mask=torch.tensor([False, True, True, True]),
                      values=part["values"].clone())
        absent["values"][0] = absent["values"][0].flip(0)
        out = enc(absent)
        assert (out[0] == 0).all()
        torch.testing.assert_close(out[1:], ref[1:], atol=1e-5, rtol=1e-5)
        # Each row alone, without any padding, gives the same vector as in the padded batch (no attention
        # to padding, no BatchNorm-style mixing across the batch).
        for i in range(B):
            one = {k: v[i:i + 1] for k, v in part.items()}
            if "pad_mask" in one:
                n = int(one["pad_mask"].sum())
                one = dict(one, values=one["values"].narrow(time_dim, 0, n), pad_mask=one["pad_mask"][:, :n])
            torch.testing.assert_close(enc(one), ref[i:i + 1], atol=1e-5, rtol=1e-5)


def test_bad_config_and_input_are_typed_errors() -> None:
    with pytest.raises(ConfigError):
        create_encoder("text_transformer", width=30, heads=4)
    with pytest.raises(ConfigError):
        create_encoder("image_vit", image_size=30, patch_size=8)
    with pytest.raises(ConfigError):
        create_encoder("video_frames", frame_encoder="text_transformer")
    enc, part = _build("text_transformer")
    with pytest.raises(InvalidInput, match="max_len"):
        enc({"values": torch.ones(1, 40, dtype=torch.long)})
    with pytest.raises(InvalidInput, match="token ids"):
        enc({"values": torch.full((1, 3), 99)})
    img, _ = _build("image_cnn")
    with pytest.raises(InvalidInput, match="16"):
        img({"values": torch.zeros(1, 3, 8, 8)})


def test_text_eos_pooling_reads_last_real_token() -> None:
    torch.manual_seed(0)
    enc = create_encoder("text_transformer", vocab_size=50, width=32, layers=1, heads=2, max_len=16,
                         pool="eos").eval()
    part = text_input(torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = enc(part)
        pm = part["pad_mask"]
        h = enc.token_emb(part["values"]) + enc.pos_emb[: pm.shape[1]]
        h = enc.ln_final(enc.transformer(h, pm))
        last = pm.sum(1) - 1
    torch.testing.assert_close(out, h[torch.arange(B), last])
