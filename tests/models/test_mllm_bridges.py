"""arch "mllm" with the BLIP-2 (Q-Former) and Flamingo (resampler + gated cross-attention) bridges: the frozen LM
is untouched, stage 1 trains the Q-Former alone, Flamingo starts as the plain LM and reads interleaved pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import genkit as g
import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.lm.decoding import DecodingOptions
from polymodal.models import build_model
from polymodal.models.mllm_seq import Segment

transformers = pytest.importorskip("transformers")

VISION = {"image_size": 64, "patch_size": 16, "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64}
LM = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64}
QFORMER = {"queries": 4, "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64, "embed_dim": 16}
FLAMINGO = {"latents": 4, "perceiver_layers": 1, "perceiver_heads": 2, "perceiver_head_dim": 8}


def config(bridge: str, **kw: Any) -> dict[str, Any]:
    return {"bridge": bridge, "data": ["captions", "qa"], "langs": ["en"], "vision": VISION, "lm": LM,
            "tokenizer": g.TOKENIZER, "max_len": 64, "qformer": QFORMER, "flamingo": FLAMINGO, **kw}


@pytest.fixture(scope="module")
def samples() -> list[Any]:
    return g.shape_samples(8)


def built(samples: list[Any], bridge: str, **kw: Any) -> Any:
    torch.manual_seed(0)
    return g.fitted(build_model("mllm", config(bridge, **kw)), samples)


def test_blip2_stage1_trains_the_qformer_alone(samples: list[Any]) -> None:
    m = built(samples, "blip2", stage=1, data=["captions"])
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("generic.qformer.") and "language_projection" not in n for n in trainable)
    batch = g.batch_for(m, samples)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    losses = g.train_steps(m, batch, 6, lr=5e-3)
    assert losses[-1] < losses[0]
    _, logs = m(batch)
    assert {"itc", "itm", "itg"} <= set(logs)
    lm_keys = [k for k in before if k.startswith("generic.lm.") or k.startswith("generic.vision.")]
    assert all(torch.equal(before[k], m.state_dict()[k]) for k in lm_keys)
    with pytest.raises(ConfigError, match="stage"):
        build_model("mllm", config("llava", stage=1))


def test_blip2_stage2_prompts_the_frozen_lm_with_queries(samples: list[Any], tmp_path: Path) -> None:
    m = built(samples, "blip2")
    assert m.slots == QFORMER["queries"]
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any("language_projection" in n for n in trainable)
    assert not any(n.startswith(("generic.lm.", "generic.vision.")) for n in trainable)
    batch = g.batch_for(m, samples)
    losses = g.train_steps(m, batch, 4, lr=1e-2)
    assert losses[-1] < losses[0]
    opts = DecodingOptions(max_new_tokens=6)
    qs = ["what color is the star?", "how many shapes are there?"]
    together = m.generate(g.batch_for(m, samples[:2]), qs, opts)
    alone = [m.generate(g.batch_for(m, [s]), [q], opts)[0] for s, q in zip(samples[:2], qs, strict=True)]
    assert together == alone
    m.save_hf(tmp_path)
    lm = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor([[1, 5, 6, 7]])
    torch.testing.assert_close(lm(input_ids=ids).logits, m.generic.lm(input_ids=ids).logits)


def test_flamingo_starts_as_the_plain_lm(samples: list[Any], tmp_path: Path) -> None:
    lm = g.fitted(build_model("lm", {"tokenizer": g.TOKENIZER, **LM, "max_len": 64}), samples)
    lm.save_hf(tmp_path / "hf")
    m = built(samples, "flamingo", lm={**LM, "from_run": str(tmp_path / "hf")})
    batch = g.batch_for(m, samples[:2])
    rows = [[Segment(0, [("what color is the star?", "red")])], [Segment(1, [("what shape?", "star")])]]
    m.eval()
    with torch.no_grad():
        logits, ids, _ = m.sequence_logits(rows, batch.data["image"])
        mask = (torch.arange(ids.shape[1]) < torch.tensor([[len(e.ids)] for e in m._encode(rows, False)])).long()
        plain = m.generic.lm(input_ids=ids, attention_mask=mask).logits  # no pictures set: hooks pass through
    # gates start at tanh(0) = 0: with pictures, the LM's own logits
    torch.testing.assert_close(logits[mask.bool()], plain[mask.bool()])
    emb = m.generic.lm.get_input_embeddings().weight
    torch.testing.assert_close(emb[:lm.vocab_size], lm.lm.get_input_embeddings().weight)
    text = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(m.generic.lm(input_ids=text).logits[..., :lm.vocab_size],
                                   lm.lm(input_ids=text).logits)


def test_flamingo_interleaves_shots_and_reads_pictures(samples: list[Any]) -> None:
    m = built(samples, "flamingo", shots=2, lm={**LM, "train": "frozen"})
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("generic.flamingo.") for n in trainable)
    batch = g.batch_for(m, samples)
    m.train()
    rows = m.training_rows(batch)
    assert max(sum(s.image is not None for s in r) for r in rows) > 1
    losses = g.train_steps(m, batch, 5, lr=1e-2)
    assert losses[-1] < losses[0]
    with torch.no_grad():  # open the gates wide: the last picture now decides
        for p in m.generic.flamingo.parameters():
            if p.dim() == 1 and p.numel() == 1:
                p.fill_(1.0)
    px = batch.data["image"]
    one = [[Segment(0, [("what color?", "red")]), Segment(1, [("what color?", None)])]]
    other = [[Segment(2, [("what color?", "red")]), Segment(1, [("what color?", None)])]]
    m.eval()
    with torch.no_grad():
        a, ids, _ = m.sequence_logits([[Segment(0, [("what color?", "red")]), Segment(1, [("what color?", "x")])]], px)
        b, _, _ = m.sequence_logits([[Segment(2, [("what color?", "red")]), Segment(1, [("what color?", "x")])]], px)
    second = int((ids[0] == m.image_token).nonzero()[1])
    torch.testing.assert_close(a[0, 0], b[0, 0])  # <s> comes before any picture
    assert not torch.allclose(a[0, 1:second], b[0, 1:second])  # the text after picture 1 reads it
    # (after picture 2, cross-attention reads picture 2 only; self-attention still carries picture 1's text: the
    # per-layer masking itself is tested in tests/bridges/test_flamingo_bridge.py)
    opts = DecodingOptions(max_new_tokens=5)
    assert len(m.decode(one + other, px, opts)) == 2
