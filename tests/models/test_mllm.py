"""arch "mllm" with the LLaVA bridge: built on transformers' LlavaForConditionalGeneration, parts from earlier runs,
LoRA via peft, stage 2 from stage 1, and the saved HF folder computing the same logits as the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import genkit as g
import numpy as np
import pytest
import torch

from polymodal.errors import ConfigError, InvalidInput
from polymodal.lm.decoding import DecodingOptions
from polymodal.models import build_model
from polymodal.models.mllm_front import MLLMChat
from polymodal.models.mllm_seq import Segment, right_padded
from polymodal.models.mllm_sources import load_init_weights

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

VISION = {"image_size": 64, "patch_size": 16, "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64}
LM = {"hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 64}


def config(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"bridge": "llava", "data": ["captions", "qa"], "langs": ["en", "zh"], "vision": VISION,
                            "lm": LM, "tokenizer": g.TOKENIZER, "max_len": 64}
    return {**base, **kw}


@pytest.fixture(scope="module")
def samples() -> list[Any]:
    return g.shape_samples(8, langs=("en", "zh"))


def built(samples: list[Any], **kw: Any) -> Any:
    torch.manual_seed(0)
    return g.fitted(build_model("mllm", config(**kw)), samples)


def test_lora_trains_adapters_and_projector_only(samples: list[Any]) -> None:
    m = built(samples, lm={**LM, "train": "lora", "lora": {"r": 4}})
    batch = g.batch_for(m, samples)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    losses = g.train_steps(m, batch, 4, lr=1e-2)
    assert losses[-1] < losses[0]
    changed = {k for k, v in m.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k or "multi_modal_projector" in k for k in changed)
    assert any("lora_" in k for k in changed) and any("projector" in k for k in changed)


def test_frozen_lm_trains_the_projector_only(samples: list[Any]) -> None:
    m = built(samples)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("multi_modal_projector" in n for n in trainable)


def test_saved_hf_folder_is_a_llava_with_the_same_logits(samples: list[Any], tmp_path: Path) -> None:
    m = built(samples, lm={**LM, "train": "lora", "lora": {"r": 4}})
    batch = g.batch_for(m, samples)
    g.train_steps(m, batch, 2, lr=1e-2)  # adapters non-zero, so merging matters
    m.save_hf(tmp_path)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    m.eval()
    rows = m.training_rows(batch)[:3]
    with torch.no_grad():
        ours, _, _ = m.sequence_logits(rows, batch.data["image"])
        enc = m._encode(rows, prompt=False)
        ids, mask, _ = right_padded(enc, torch.device("cpu"))
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=m._images(enc, batch.data["image"])).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-4)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tok.decode(m._tok().encode("a red star")) == "a red star"


def test_batched_generation_equals_one_by_one(samples: list[Any]) -> None:
    m = built(samples, lm={**LM, "train": "full"})
    batch = g.batch_for(m, samples)
    g.train_steps(m, batch, 3, lr=1e-2)
    questions = ["what color is the star?", "图中有几个图形？", "where is it?"]
    opts = DecodingOptions(max_new_tokens=8)  # within every row's room (the cap is the padded prompt's)
    together = m.generate(g.batch_for(m, samples[:3]), questions, opts)
    alone = [m.generate(g.batch_for(m, [s]), [q], opts)[0] for s, q in zip(samples[:3], questions, strict=True)]
    assert len(set(together)) > 1 or len(together[0]) > 0
    assert together == alone


def test_lm_from_an_lm_run_keeps_its_logits(samples: list[Any], tmp_path: Path) -> None:
    lm = g.fitted(build_model("lm", {"tokenizer": g.TOKENIZER, **LM, "max_len": 64}), samples)
    lm.save_hf(tmp_path / "hf")
    m = built(samples, lm={**LM, "from_run": str(tmp_path / "hf")}, input="text")
    tok = m._tok()
    ids = torch.tensor([[1, *tok.encode("what color is the star?"), 3]])
    with torch.no_grad():
        want = lm.lm(input_ids=ids).logits
        got = m.hf(input_ids=ids).logits[..., :want.shape[-1]]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert m.config["lm"]["hf_config"]["model_type"] == "qwen2" and m.config["tokenizer"]["json"]
    opts = DecodingOptions(max_new_tokens=4)  # a text-only model decodes without any picture (a regression:
    replies = m.generate(None, ["what color is the star?", "how many?"], opts)  # Llava's generate ran the ViT)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)


def test_trained_stages_chain_through_runs(samples: list[Any], tmp_path: Path) -> None:
    """captioner run -> its ViT as the tower; stage-1 run (trainer, frozen LM) -> stage 2 with LoRA starts from
    it and computes what stage 1 did (LoRA's B starts at zero); RUN/hf is a Llava folder."""
    from polymodal.models.loading import load_model
    from polymodal.train.trainer import Trainer

    data = g.write_data(tmp_path / "data", {"train": samples, "val": samples[:4]}, ["image"])
    cap_cfg = {"arch": "captioner", "encoder": VISION, "decoder": g.DECODER}
    Trainer(g.recipe("captioner", cap_cfg, steps=1), data, tmp_path / "cap", progress=False).fit()
    cap = load_model(tmp_path / "cap")[0]
    s1_cfg = config(vision={**VISION, "from_run": str(tmp_path / "cap")})
    Trainer(g.recipe("mllm", s1_cfg, steps=2, lr=1e-2), data, tmp_path / "s1", progress=False).fit()
    s1 = load_model(tmp_path / "s1")[0]
    for k, v in cap.model.encoder.state_dict().items():
        torch.testing.assert_close(s1.vision_tower().state_dict()[k], v)
    assert (tmp_path / "s1" / "hf" / "config.json").is_file()
    s2 = build_model("mllm", {**s1.config, "init_from": str(tmp_path / "s1"),
                              "lm": {**s1.config["lm"], "train": "lora"}})
    s2.fit_data(samples)
    batch = g.batch_for(s1, samples)
    rows = s1.training_rows(batch)
    s2.eval()
    with torch.no_grad():
        torch.testing.assert_close(s2.sequence_logits(rows, batch.data["image"])[0],
                                   s1.sequence_logits(rows, batch.data["image"])[0])
    with pytest.raises(ConfigError, match="not an mllm run"):
        load_init_weights(s2, tmp_path / "cap")


def test_chat_front_matches_generate(samples: list[Any]) -> None:
    from polymodal.data.transforms.compose import SampleTransform
    from polymodal.models.chat import ChatMessage

    m = built(samples, lm={**LM, "train": "full"})
    g.train_steps(m, g.batch_for(m, samples), 2, lr=1e-2)
    tf = SampleTransform.from_dict(g.transform_config(m.preprocess(), {})).eval()
    chat = MLLMChat(m, tf, torch.device("cpu"))
    pic = samples[0].image
    conv = [ChatMessage("user", "what color is the star?", images=(pic,))]
    assert chat.chat([conv]) == m.generate(g.batch_for(m, samples[:1]), ["what color is the star?"])
    two = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "what shape?", images=(pic,)),
           ChatMessage("assistant", "star"), ChatMessage("user", "what color?")]
    segs, pics = chat.rows(two, 0)
    assert [s.image for s in segs] == [0] and segs[0].turns == [("Answer briefly.\nwhat shape?", "star"),
                                                                ("what color?", None)]
    assert len(chat.chat([two, conv])) == 2
    with pytest.raises(InvalidInput, match="last message"):
        chat.chat([[ChatMessage("user", "hi"), ChatMessage("assistant", "hello")]])


def test_config_errors(samples: list[Any]) -> None:
    with pytest.raises(ConfigError, match="bridge"):
        build_model("mllm", config(bridge="mystery"))
    with pytest.raises(ConfigError, match="lm.train"):
        build_model("mllm", config(lm={**LM, "train": "some"}))
    with pytest.raises(ConfigError, match="targets"):
        built(samples, lm={**LM, "train": "lora", "lora": {"targets": ["nope_proj"]}})
    with pytest.raises(ConfigError, match="not a polymodal run folder"):
        build_model("mllm", config(vision={**VISION, "from_run": "/nonexistent"}))


def test_prompt_too_long_is_a_clear_error(samples: list[Any]) -> None:
    m = built(samples)
    with pytest.raises(InvalidInput, match="reads at most"):
        m.decode([[Segment(0, [("word " * 200, None)])]], g.batch_for(m, samples[:1]).data["image"])
    assert np.isfinite(0.0)


def test_any_hf_causal_lm_folder_with_our_tokenizer(samples: list[Any], tmp_path: Path) -> None:
    """A tiny random Llama (not an lm run) saved with a polymodal tokenizer becomes the LM, logits kept."""
    lm = g.fitted(build_model("lm", {"tokenizer": g.TOKENIZER, **LM, "max_len": 64}), samples)
    tok = lm._tok()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=g.TOKENIZER["vocab_size"], hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)).eval()
    llama.save_pretrained(tmp_path / "llama")
    tok.to_hf().save_pretrained(tmp_path / "llama")
    m = built(samples, lm={**LM, "from_run": str(tmp_path / "llama")}, input="text")
    assert m.config["lm"]["hf_config"]["model_type"] == "llama"
    ids = torch.tensor([[1, *tok.encode("how many shapes are there?"), 3]])
    with torch.no_grad():
        torch.testing.assert_close(m.hf(input_ids=ids).logits[..., :llama.config.vocab_size],
                                   llama(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    (tmp_path / "bare").mkdir()
    llama.save_pretrained(tmp_path / "bare")  # no tokenizer.json: a clear error
    with pytest.raises(ConfigError, match="tokenizer.json"):
        built(samples, lm={**LM, "from_run": str(tmp_path / "bare")})
