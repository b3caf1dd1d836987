"""A real mllm (LLaVA bridge: transformers' Llava classes, a BPE trained on shapes conversations) served with
``--generate`` chats through ``/v1/chat/completions``: OpenAI's client gets what `MLLMChat.chat` answers for the
same multi-turn conversation with a picture, streamed or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from genfake import serving
from test_chat_completions import image_part

from polymodal.data.synth import shapes
from polymodal.data.transforms.compose import SampleTransform
from polymodal.data.transforms.resolve import transform_config
from polymodal.lm.decoding import DecodingOptions
from polymodal.models.chat import ChatMessage
from polymodal.models.generative import GenerativeModel
from polymodal.models.mllm_front import MLLMChat
from polymodal.models.registry import build_model

openai = pytest.importorskip("openai")
pytest.importorskip("transformers")


def tiny_llava() -> GenerativeModel:
    samples = [shapes.make_sample(i, "train", langs=("en",), modalities=("image",)) for i in range(12)]
    model: Any = build_model("mllm", {
        "bridge": "llava", "data": ["captions", "qa"], "langs": ["en"], "tokenizer": {"vocab_size": 320},
        "vision": {"image_size": 32, "patch_size": 16, "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "lm": {"hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 64, "train": "full"},
        "max_len": 96})
    model.fit_data(samples)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights at a scale where greedy replies depend on the picture and the words
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 3.0 / p.shape[-1] ** 0.5)
    transform = SampleTransform.from_dict(transform_config(model.preprocess(), {}))
    return GenerativeModel(model.eval(), transform, {}, torch.device("cpu"), name="runs/llava")


def test_an_mllm_chats_through_the_openai_client(tmp_path: Path) -> None:
    gm = tiny_llava()
    chat = MLLMChat(gm.model, gm.transform, gm.device)  # type: ignore[arg-type]
    pics = [shapes.make_sample(i, "test", modalities=("image",)).image for i in range(2)]
    assert all(isinstance(p, np.ndarray) for p in pics)
    opts = DecodingOptions(max_new_tokens=8)
    want = [chat.chat([[ChatMessage("system", "be brief"), ChatMessage("user", "what shape?", images=(p,)),
                        ChatMessage("assistant", "a star"), ChatMessage("user", "what color?")]], opts)[0].strip()
            for p in pics]
    assert want[0] != want[1] or want[0]  # replies depend on the picture (or at least say something)
    with serving(tmp_path, None, {"runs/llava": gm}, {}) as (base, _):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        for pic, reply in zip(pics, want, strict=True):
            messages: list[Any] = [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what shape?"}, image_part(pic)]},
                {"role": "assistant", "content": "a star"}, {"role": "user", "content": "what color?"}]
            got = client.chat.completions.create(model="runs/llava", messages=messages, max_tokens=8)
            assert got.choices[0].message.content == reply
            stream = client.chat.completions.create(model="runs/llava", messages=messages, max_tokens=8, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply
        models = [m.id for m in client.models.list().data]
        assert "runs/llava" in models
