"""The Flamingo bridge installed into tiny Qwen2 and GPT-2 causal LMs: the zero-gate init equals the plain LM,
per-image masking, gradients (bridge trained, LM frozen), cached generation = the full forward, uninstall."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from polymodal.bridges import FlamingoBridge, FlamingoSpec
from polymodal.errors import ConfigError, InvalidInput

transformers = pytest.importorskip("transformers")

VISION, VOCAB, K = 24, 64, 3
SPEC = FlamingoSpec(latents=K, perceiver_layers=1, perceiver_heads=2, perceiver_head_dim=8, every=1)


def _qwen2() -> Any:
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0))


def _gpt2() -> Any:
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0))


LMS: list[Callable[[], Any]] = [_qwen2, _gpt2]


def _setup(make_lm: Callable[[], Any], spec: FlamingoSpec = SPEC) -> tuple[Any, FlamingoBridge]:
    torch.manual_seed(0)
    lm = make_lm().eval()
    return lm, FlamingoBridge(spec, VISION, lm).eval()


def _open_gates(bridge: FlamingoBridge) -> None:
    with torch.no_grad():
        for layer in bridge.gated:
            layer.alpha_cross_attn.fill_(0.7)
            layer.alpha_dense.fill_(-0.5)


# 2 rows, 2 images each; tokens 0-1 before any image, 2-4 after image 0, 5-7 after image 1 (row 1: image 0 only)
T2M = torch.tensor([[-1, -1, 0, 0, 0, 1, 1, 1], [-1, -1, 0, 0, 0, 0, 0, 0]])


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (2, 8), generator=g), torch.randn(2, 2, 5, VISION, generator=g)


@pytest.mark.parametrize("make_lm", LMS)
def test_zero_gates_leave_the_lm_unchanged(make_lm: Callable[[], Any]) -> None:
    lm, bridge = _setup(make_lm)
    ids, vision = _inputs()
    plain = lm(input_ids=ids).logits
    latents = bridge.resample(vision)
    assert latents.shape == (2, 2, K, VISION)
    with bridge.media(latents, T2M):
        torch.testing.assert_close(lm(input_ids=ids).logits, plain, rtol=0, atol=0)
        _open_gates(bridge)
        assert not torch.allclose(lm(input_ids=ids).logits, plain, atol=1e-4)  # the gates now let images in
    torch.testing.assert_close(lm(input_ids=ids).logits, plain, rtol=0, atol=0)  # outside the block: plain LM


@pytest.mark.parametrize("make_lm", LMS)
def test_each_token_sees_only_its_latest_image(make_lm: Callable[[], Any]) -> None:
    lm, bridge = _setup(make_lm)
    _open_gates(bridge)
    ids, vision = _inputs()
    plain = lm(input_ids=ids).logits
    other = vision.clone()
    other[:, 1] = torch.randn(2, 5, VISION)  # a different second image
    with torch.no_grad():
        with bridge.media(bridge.resample(vision), T2M):
            base = lm(input_ids=ids).logits
        with bridge.media(bridge.resample(other), T2M):
            swapped = lm(input_ids=ids).logits
    torch.testing.assert_close(base[:, :2], plain[:, :2], rtol=0, atol=0)  # before any image: the plain LM
    torch.testing.assert_close(swapped[:, :5], base[:, :5], rtol=0, atol=0)  # before image 1: image 1 unseen
    torch.testing.assert_close(swapped[1], base[1], rtol=0, atol=0)  # row 1 never points at image 1
    assert not torch.allclose(swapped[0, 5:], base[0, 5:], atol=1e-4)  # after image 1: it matters
    assert not torch.allclose(base[:, 2:5], plain[:, 2:5], atol=1e-4)  # after image 0: it matters
    # within one gated layer a token attends to its latest image only, not to the earlier ones (in the logits
    # image 0 still reaches tokens 5-7 through the LM's self-attention over tokens 2-4, as in Flamingo)
    first = vision.clone()
    first[:, 0] = torch.randn(2, 5, VISION)
    hidden = torch.randn(2, 8, 32)
    with torch.no_grad():
        with bridge.media(bridge.resample(vision), T2M):
            layer = bridge._cross(0, hidden)
        with bridge.media(bridge.resample(first), T2M):
            layer_first = bridge._cross(0, hidden)
    torch.testing.assert_close(layer_first[0, 5:], layer[0, 5:], rtol=0, atol=0)
    torch.testing.assert_close(layer_first[:, :2], hidden[:, :2], rtol=0, atol=0)
    assert not torch.allclose(layer_first[:, 2:5], layer[:, 2:5], atol=1e-4)


@pytest.mark.parametrize("make_lm", LMS)
def test_gradients_reach_the_bridge_not_the_lm(make_lm: Callable[[], Any]) -> None:
    lm, bridge = _setup(make_lm, FlamingoSpec(latents=K, perceiver_layers=1, perceiver_heads=2,
                                              perceiver_head_dim=8, every=2))
    assert bridge.cross_layers == (0, 2)
    ids, vision = _inputs()
    with torch.no_grad():
        for layer in bridge.gated:  # gates open a little: every bridge weight is on the path to the loss
            layer.alpha_cross_attn.fill_(0.1)
            layer.alpha_dense.fill_(0.1)
    with bridge.media(bridge.resample(vision), T2M):
        out = lm(input_ids=ids, labels=ids)
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in lm.parameters())
    names = {n for n, _ in bridge.named_parameters()}
    assert any(n.startswith("resampler.") for n in names) and any(".alpha_cross_attn" in n for n in names)
    for name, p in bridge.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not any(k.startswith(("resampler", "gated")) for k in lm.state_dict())  # the LM's keys are its own


@pytest.mark.parametrize("make_lm", LMS)
def test_cached_generation_equals_the_full_forward(make_lm: Callable[[], Any]) -> None:
    lm, bridge = _setup(make_lm)
    _open_gates(bridge)
    ids, vision = _inputs()
    with torch.no_grad():
        latents = bridge.resample(vision)
        with bridge.media(latents, T2M):
            gen = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                              use_cache=True, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        new = gen.sequences.shape[1] - ids.shape[1]
        full_map = torch.cat([T2M, T2M[:, -1:].expand(-1, new)], dim=1)  # generated tokens: the last image
        with bridge.media(latents, full_map):
            full = lm(input_ids=gen.sequences, use_cache=False).logits
    cached = torch.stack(gen.logits, dim=1)
    torch.testing.assert_close(cached, full[:, ids.shape[1] - 1:-1], rtol=1e-4, atol=1e-4)
    # hand-written incremental decoding: enter media with the map up to the current token
    with torch.no_grad():
        with bridge.media(latents, T2M[:, :5]):
            past = lm(input_ids=ids[:, :5], use_cache=True).past_key_values
        with bridge.media(latents, T2M[:, :6]):
            step = lm(input_ids=ids[:, 5:6], cache=past, use_cache=True).logits
    torch.testing.assert_close(step[:, 0], full[:, 5], rtol=1e-4, atol=1e-4)


def test_uninstall_checks_and_beams() -> None:
    lm, bridge = _setup(_qwen2)
    _open_gates(bridge)
    ids, vision = _inputs()
    plain_lm = _qwen2().eval()
    plain_lm.load_state_dict(lm.state_dict())
    with pytest.raises(ConfigError):
        FlamingoBridge(SPEC, VISION, lm)  # one bridge per LM
    latents = bridge.resample(vision)
    with torch.no_grad(), bridge.media(latents, T2M):
        beams = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, num_beams=2,
                            num_return_sequences=2, do_sample=False, pad_token_id=0)
        assert beams.shape == (4, 10)
        with pytest.raises(InvalidInput):
            lm(input_ids=torch.randint(3, VOCAB, (2, 9)))  # longer than the map
    with pytest.raises(InvalidInput):
        bridge.media(latents, T2M + 1).__enter__()  # image index 2 of 2
    with pytest.raises(ConfigError) as err:
        FlamingoSpec(every=0)
    assert err.value.field == "flamingo.every"
    bridge.uninstall()
    assert not bridge.installed
    with torch.no_grad(), bridge.media(latents, T2M):
        torch.testing.assert_close(lm(input_ids=ids).logits, plain_lm(input_ids=ids).logits, rtol=0, atol=0)
    FlamingoBridge(SPEC, VISION, lm)  # installable again


def test_fp32_bridge_on_a_bf16_lm() -> None:
    lm, bridge = _setup(_qwen2)
    lm.to(torch.bfloat16)
    _open_gates(bridge)
    ids, vision = _inputs()
    with torch.no_grad():
        plain = lm(input_ids=ids).logits
        with bridge.media(bridge.resample(vision), T2M):
            mixed = lm(input_ids=ids).logits
    assert mixed.dtype == torch.bfloat16 and torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed[:, :2], plain[:, :2], rtol=0, atol=0)
    assert not torch.allclose(mixed[:, 2:].float(), plain[:, 2:].float(), atol=1e-2)
