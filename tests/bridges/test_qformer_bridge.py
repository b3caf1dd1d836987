"""The BLIP-2 Q-Former bridge: shapes, the three stage-1 masks, gradients per stage, overfitting, and the export
into transformers' Blip2ForConditionalGeneration (strict keys, same soft prompt)."""

from __future__ import annotations

import pytest
import torch

from polymodal.bridges import QFormerBridge, QFormerSpec
from polymodal.errors import ConfigError, InvalidInput

transformers = pytest.importorskip("transformers")

VISION, LM, VOCAB, Q = 24, 40, 50, 4
SPEC = QFormerSpec(queries=Q, hidden=32, layers=2, heads=4, intermediate=64, embed_dim=16)


def _bridge(seed: int = 0, spec: QFormerSpec = SPEC) -> QFormerBridge:
    torch.manual_seed(seed)
    return QFormerBridge(spec, VISION, LM, VOCAB, max_text=12).eval()


def _batch(b: int = 3, n: int = 7, t: int = 6, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    vision = torch.randn(b, n, VISION, generator=g)
    ids = torch.randint(3, VOCAB, (b, t), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[0, t - 2:] = 0
    ids[0, t - 2:] = 0
    return vision, ids, mask


def test_shapes_and_checks() -> None:
    bridge = _bridge()
    vision, ids, mask = _batch()
    assert bridge(vision).shape == (3, Q, LM)
    assert bridge.itc_similarity(vision, ids, mask).shape == (3, 3)
    assert bridge.itg_logits(vision, ids, mask).shape == (3, 6, VOCAB)
    scores = bridge.itm_scores(vision, ids, mask)
    assert scores.shape == (3,) and ((scores > 0) & (scores < 1)).all()
    losses = bridge.stage1_losses(vision, ids, mask)
    assert set(losses) == {"itc", "itm", "itg", "loss"}
    assert torch.allclose(losses["loss"], losses["itc"] + losses["itm"] + losses["itg"])
    with pytest.raises(ConfigError) as err:
        QFormerSpec(hidden=30, heads=4)
    assert err.value.field == "qformer.heads"
    with pytest.raises(ConfigError) as err:
        QFormerSpec(queries=0)
    assert err.value.field == "qformer.queries"
    with pytest.raises(ConfigError) as err:
        QFormerBridge(SPEC, VISION, LM, VOCAB, bos_id=VOCAB)
    assert err.value.field == "bridge.bos_id"
    with pytest.raises(InvalidInput) as err:
        bridge(torch.randn(2, 5, VISION + 1))
    assert err.value.field == "vision"
    with pytest.raises(InvalidInput) as err:
        bridge.itg_logits(vision, ids[:, 1:], mask[:, 1:])  # no <bos> first
    assert err.value.field == "text_ids"


def test_itg_mask_is_causal_over_text_and_hides_text_from_queries() -> None:
    bridge = _bridge()
    vision, ids, mask = _batch()
    logits = bridge.itg_logits(vision, ids, mask)
    later = ids.clone()
    later[:, 4] = (later[:, 4] + 7) % VOCAB
    changed = bridge.itg_logits(vision, later, mask)
    torch.testing.assert_close(changed[1:, :4], logits[1:, :4], rtol=0, atol=1e-6)
    assert not torch.allclose(changed[1:, 4:], logits[1:, 4:], atol=1e-3)  # the test can see a change
    # queries in the ITG pass = queries alone (they never see text); in the ITM pass they do see it
    alone = bridge.query_states(vision)
    torch.testing.assert_close(bridge.joint_states(vision, later, mask, causal=True)[:, :Q], alone,
                               rtol=0, atol=1e-5)
    assert not torch.allclose(bridge.joint_states(vision, ids, mask, causal=False)[:, :Q], alone, atol=1e-3)


def test_itc_passes_are_unimodal_and_padding_is_masked() -> None:
    bridge = _bridge()
    vision, ids, mask = _batch()
    text = bridge.text_features(ids, mask)
    padded = ids.clone()
    padded[0, 4:] = 9  # row 0's padding (mask 0) changes: its [CLS] feature does not
    torch.testing.assert_close(bridge.text_features(padded, mask), text, rtol=0, atol=1e-6)
    image = bridge.image_features(vision)
    # the similarity is the max over queries of the query-text cosine, image features independent of the text
    sim = bridge.itc_similarity(vision, ids, mask)
    expected = torch.stack([torch.stack([(image[i] @ text[j]).max() for j in range(3)]) for i in range(3)])
    torch.testing.assert_close(sim, expected)
    vmask = torch.ones(3, 7, dtype=torch.long)
    vmask[:, 5:] = 0
    noisy = vision.clone()
    noisy[:, 5:] += 5.0
    torch.testing.assert_close(bridge(noisy, vmask), bridge(vision, vmask), rtol=0, atol=1e-5)


def _grads(bridge: QFormerBridge) -> tuple[set[str], set[str]]:
    got = {n for n, p in bridge.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    return got, {n for n, _ in bridge.named_parameters()} - got


def test_gradients_reach_each_stage_parts() -> None:
    bridge = _bridge()
    vision, ids, mask = _batch(b=4)
    bridge.stage1_losses(vision, ids, mask, generator=torch.Generator().manual_seed(0))["loss"].backward()
    _, missing = _grads(bridge)
    assert missing == {"language_projection.weight", "language_projection.bias"}
    bridge.zero_grad(set_to_none=True)
    bridge(vision).pow(2).mean().backward()
    got, _ = _grads(bridge)
    text_only = {"embeddings", "vision_projection", "text_projection", "itm_head", "itg_transform", "itg_bias",
                 "logit_scale"}
    for name, _ in bridge.named_parameters():
        parts = name.split(".")
        is_text = parts[0] in text_only or (parts[:2] == ["qformer", "encoder"]
                                            and parts[4] in ("intermediate", "output"))
        assert (name in got) != is_text, name


def test_stage1_losses_fall_when_overfitting() -> None:
    # ITM sits at the prior's entropy (1/3 positives: 0.64) until ITC has separated the pairs, then falls: ~60
    # steps here (seeds 0-3 reach <= 0.57x by step 90; ITC and ITG fall much earlier)
    bridge = _bridge()
    vision, ids, mask = _batch(b=8, n=5, t=8, seed=3)
    opt = torch.optim.AdamW(bridge.parameters(), lr=1e-2)

    def evaluate() -> dict[str, float]:
        bridge.eval()
        with torch.no_grad():
            out = bridge.stage1_losses(vision, ids, mask, generator=torch.Generator().manual_seed(0))
        return {k: float(v) for k, v in out.items()}

    first = evaluate()
    for step in range(90):
        bridge.train()
        out = bridge.stage1_losses(vision, ids, mask, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    last = evaluate()
    for key in ("itc", "itm", "itg"):
        assert last[key] < 0.7 * first[key], (key, first, last)


def test_blip2_state_dict_loads_into_blip2_for_conditional_generation() -> None:
    bridge = _bridge(seed=5)
    config = transformers.Blip2Config(
        vision_config=transformers.Blip2VisionConfig(hidden_size=VISION, intermediate_size=48, num_hidden_layers=1,
                                                     num_attention_heads=2, image_size=16, patch_size=8),
        qformer_config=bridge.qformer_config(),
        text_config=transformers.Qwen2Config(vocab_size=64, hidden_size=LM, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2),
        num_query_tokens=Q)
    blip = transformers.Blip2ForConditionalGeneration(config).eval()
    state = bridge.blip2_state_dict()
    ours = {k for k in blip.state_dict() if k.split(".")[0] in ("query_tokens", "qformer", "language_projection")}
    assert set(state) == ours
    result = blip.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert all(k.split(".")[0] in ("vision_model", "language_model") for k in result.missing_keys)
    vision = torch.randn(2, 9, VISION)
    vmask = torch.ones(2, 9, dtype=torch.long)
    vmask[1, 6:] = 0
    with torch.no_grad():
        for m in (None, vmask):
            hf = blip.qformer(query_embeds=blip.query_tokens.expand(2, -1, -1), encoder_hidden_states=vision,
                              encoder_attention_mask=m).last_hidden_state
            torch.testing.assert_close(bridge(vision, m), blip.language_projection(hf), rtol=1e-5, atol=1e-5)
