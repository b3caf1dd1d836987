"""``POST /v1/chat/completions`` driven by OpenAI's own client against the server on a real socket: a real tiny VQA
model (transformers' VisionEncoderDecoderModel with a BPE trained on shapes questions, weights drawn at a scale
where its greedy answers depend on the picture and the question) answers exactly as `GenerativeModel.generate`
does on the same inputs, streamed or not, one choice or several seeded ones; audio parts reach a speech model;
a named chat model (not a generative run) receives the whole conversation; bad requests are 4xx in OpenAI's
envelope naming the parameter."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from genfake import SAFETY, TOKENIZER, FakeGenerator, fake_model, serving
from servekit import FakeModel, png_b64, solid, tone, wav_b64

from polymodal.data.synth import shapes
from polymodal.data.transforms.compose import SampleTransform
from polymodal.data.transforms.resolve import transform_config
from polymodal.lm.decoding import DecodingOptions
from polymodal.lm.tokenizer import BOS, EOS, PAD
from polymodal.models.chat import ChatMessage
from polymodal.models.generative import GenerativeModel
from polymodal.models.generator import TokenStreamer
from polymodal.models.registry import build_model

openai = pytest.importorskip("openai")
pytest.importorskip("transformers")

RED, BLUE = solid((200, 30, 30), 40, 48), solid((20, 30, 200), 40, 48)
QUESTIONS = ["what color is the star?", "how many shapes are there?"]


def image_part(img: np.ndarray) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_b64(img)}"}}


def ask(question: str, *images: np.ndarray) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": question}, *map(image_part, images)]}]


def tiny_vqa() -> GenerativeModel:
    """A real vqa model: the arch's classes, a BPE trained on shapes targets, weights ~ N(0, 3 / fan_in)."""
    samples = [shapes.make_sample(i, "train", langs=("en",), modalities=("image",)) for i in range(12)]
    model: Any = build_model("vqa", {
        "input": "image", "langs": ["en"], "tokenizer": {"vocab_size": 320, "min_frequency": 2},
        "encoder": {"image_size": 32, "patch_size": 16, "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "decoder": {"hidden": 32, "layers": 1, "heads": 2, "max_len": 40}})
    model.fit_data(samples)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 3.0 / p.shape[-1] ** 0.5)
    transform = SampleTransform.from_dict(transform_config(model.preprocess(), {}))
    return GenerativeModel(model.eval(), transform, {}, torch.device("cpu"), name="runs/vqa")


class EchoChat:
    """A chat model that is no generative run (as an mllm's is): it answers with what it received, streamed
    token by token like transformers' generate."""

    name = "echo"
    modalities = ("image",)

    def __init__(self) -> None:
        self.model = FakeGenerator("vqa")   # the TextGenerator whose tokenizer the service streams with

    @staticmethod
    def describe(conversation: Sequence[ChatMessage]) -> str:
        turns = " ".join(f"{m.role}/{m.content}/{len(m.images)}" for m in conversation)
        colours = ["red" if img[..., 0].mean() > img[..., 2].mean() else "blue" for m in conversation
                   for img in m.images]
        return f"{turns} {' '.join(colours)}".strip()

    def chat(self, conversations: Sequence[Sequence[ChatMessage]], options: DecodingOptions | None = None,
             streamer: TokenStreamer | None = None) -> list[str]:
        ids = [TOKENIZER.encode(self.describe(c)) for c in conversations]
        if streamer is not None:
            streamer.put(torch.full((len(ids), 1), BOS))
            for step in range(max(map(len, ids)) + 1):
                streamer.put(torch.tensor([x[step] if step < len(x) else EOS if step == len(x) else PAD
                                           for x in ids]))
            streamer.end()
        return [TOKENIZER.decode(x) for x in ids]

    def count_tokens(self, conversation: Sequence[ChatMessage]) -> int:
        return sum(len(TOKENIZER.encode(m.content)) for m in conversation)


@pytest.fixture(scope="module")
def vqa() -> GenerativeModel:
    return tiny_vqa()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, vqa: GenerativeModel) -> Iterator[str]:
    gens = {"vqa": vqa, "asr": fake_model("asr"), "cap": fake_model("captioning")}   # cap reads video: no chat
    with serving(tmp_path_factory.mktemp("chat"), FakeModel(), gens, {"echo": EchoChat()}, model_name="emb",
                 max_chat_messages=4) as (base, _):
        yield base


@pytest.fixture
def client(server: str) -> Iterator[Any]:
    with openai.OpenAI(base_url=server + "/v1", api_key="k", max_retries=0, timeout=SAFETY) as c:
        yield c


def post(base: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", json=body, timeout=SAFETY)


# ---------------------------------------------------------------------------------------------- replies

def test_replies_equal_the_models_generate(client: Any, vqa: GenerativeModel):
    replies = []
    for img in (RED, BLUE):
        for q in QUESTIONS:
            got = client.chat.completions.create(model="vqa", messages=ask(q, img), max_tokens=6)
            want = vqa.generate(image=img, prompt=q, max_new_tokens=6)[0].strip()   # replies are stripped
            (choice,) = got.choices
            assert (choice.message.role, choice.message.content) == ("assistant", want), q
            assert got.object == "chat.completion" and got.model == "vqa" and got.id.startswith("chatcmpl-")
            assert got.usage.prompt_tokens == len(vqa.model.prefix(question=q))
            assert 0 < got.usage.completion_tokens <= 6
            assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens
            assert choice.finish_reason == ("length" if got.usage.completion_tokens == 6 else "stop")
            replies.append(want)
    assert len(set(replies)) > 1   # the answers depend on the inputs, so the comparison means something


def test_a_vqa_model_reads_the_last_question_and_the_latest_picture(client: Any, vqa: GenerativeModel):
    messages = [*ask(QUESTIONS[0], RED), {"role": "assistant", "content": "red"}, *ask("and this one?", BLUE),
                {"role": "user", "content": QUESTIONS[1]}]
    got = client.chat.completions.create(model="vqa", messages=messages, max_tokens=6)
    want = [vqa.generate(image=img, prompt=QUESTIONS[1], max_new_tokens=6)[0].strip() for img in (BLUE, RED)]
    assert got.choices[0].message.content == want[0] != want[1]


def test_streamed_chunks_add_up_to_the_reply(server: str, client: Any):
    plain = client.chat.completions.create(model="vqa", messages=ask(QUESTIONS[0], RED), max_tokens=8)
    chunks = list(client.chat.completions.create(model="vqa", messages=ask(QUESTIONS[0], RED), max_tokens=8,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    raw = post(server, {"model": "vqa", "messages": ask(QUESTIONS[0], RED), "max_tokens": 8, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream") and raw.text.endswith("data: [DONE]\n\n")
    assert '"usage"' not in raw.text   # only when stream_options.include_usage asks for it


def test_several_seeded_choices_each_equal_one_sampling_run(client: Any, vqa: GenerativeModel):
    got = client.chat.completions.create(model="vqa", messages=ask(QUESTIONS[1], BLUE), max_tokens=6, n=3,
                                         temperature=1.5, seed=11)
    assert [c.index for c in got.choices] == [0, 1, 2]
    want = [vqa.generate(image=BLUE, prompt=QUESTIONS[1], max_new_tokens=6, do_sample=True, temperature=1.5,
                         seed=11 + i)[0].strip() for i in range(3)]
    assert [c.message.content for c in got.choices] == want and len(set(want)) > 1
    streamed = list(client.chat.completions.create(model="vqa", messages=ask(QUESTIONS[1], BLUE), max_tokens=6,
                                                   n=3, temperature=1.5, seed=11, stream=True))
    texts = ["".join(c.choices[0].delta.content or "" for c in streamed if c.choices and c.choices[0].index == i)
             for i in range(3)]
    assert texts == want


def test_audio_parts_reach_a_speech_model(client: Any):
    wave = tone(440, 0.25)
    part = {"type": "input_audio", "input_audio": {"data": wav_b64(wave, 16000), "format": "wav"}}
    got = client.chat.completions.create(model="asr", messages=[{"role": "user", "content": [part]}])
    assert got.choices[0].message.content == fake_model("asr").generate(audio=(wave, 16000))[0]


def test_a_named_chat_model_gets_the_whole_conversation(server: str, client: Any):
    messages = [{"role": "developer", "content": "short"},
                {"role": "user", "content": [{"type": "text", "text": "compare"}, image_part(RED),
                                             {"type": "text", "text": "these"}, image_part(BLUE)]},
                {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
                {"role": "user", "content": "which is red?"}]
    want = "system/short/0 user/compare\nthese/2 assistant/ok/0 user/which is red?/0 red blue"
    got = client.chat.completions.create(model="echo", messages=messages)
    assert got.choices[0].message.content == want
    chunks = list(client.chat.completions.create(model="echo", messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want and len(chunks) > 4
    assert {(m.id, m.task) for m in client.models.list().data} >= {("echo", "vqa"), ("vqa", "vqa")}
    # /v1/generate asks a named chat model a one-turn question
    r = httpx.post(server + "/v1/generate", json={"model": "echo", "image": png_b64(BLUE), "prompt": "hi"})
    assert r.json()["text"] == "user/hi/1 blue"


# ---------------------------------------------------------------------------------------------- errors

REMOTE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
BAD_B64 = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not base64@@"}}
CLIP = {"type": "input_audio", "input_audio": {"data": wav_b64(tone(300), 16000), "format": "wav"}}
Q = {"type": "text", "text": "what?"}


@pytest.mark.parametrize(("body", "status", "param", "words"), [
    ({"messages": [{"role": "user", "content": [Q, REMOTE]}]}, 400, "messages[0].content[1].image_url.url",
     "remote URLs are not fetched"),
    ({"messages": [{"role": "user", "content": [Q, BAD_B64]}]}, 400, "messages[0].content[1].image_url.url",
     "not valid base64"),
    ({"model": "gpt-4o"}, 404, "model", "'vqa'"),
    ({"model": "emb"}, 400, "model", "embedding model"),
    ({"model": "cap"}, 400, "model", "cannot chat"),
    ({"messages": [{"role": "user", "content": "hi"}] * 5}, 400, "messages", "limit of 4"),
    ({"messages": []}, 400, "messages", "empty"),
    ({"messages": [*ask("hi", RED), {"role": "assistant", "content": "x"}]}, 400, "messages[1].role", "user"),
    ({"messages": [{"role": "user", "content": "no picture?"}]}, 400, "messages[0].content", "an image"),
    ({"messages": [{"role": "user", "content": [Q, CLIP]}]}, 400, "messages[0].content[1]", "not audio"),
    ({"messages": [{"role": "user", "content": [Q, image_part(RED), image_part(BLUE)]}]}, 400,
     "messages[0].content[2]", "limit of 1"),
    ({"messages": [{"role": "system", "content": [image_part(RED)]}, *ask("hi", RED)]}, 400,
     "messages[0].content[0]", "text only"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", "role"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}, 400, "messages[0].content[0].type",
     "unsupported"),
    ({"n": 2}, 400, "n", "sampling"),
    ({"max_tokens": 10_000}, 400, "max_tokens", "512"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, 400, "max_tokens", "differ"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools", "tools"),
    ({"temperature": 3}, 400, "temperature", "2"),
    ({"bogus": 1}, 400, "bogus", None),
])
def test_errors_in_openai_shape(server: str, body: dict[str, Any], status: int, param: str, words: str | None):
    r = post(server, {"model": "vqa", "messages": ask("hi", RED), **body})
    error = r.json()["error"]
    assert r.status_code == status and set(error) == {"message", "type", "param", "code"}, r.text
    assert error["param"] == param and (words is None or words in error["message"]), error


def test_the_client_raises_its_own_exceptions(client: Any):
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-4o", messages=ask("hi", RED))
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="vqa", messages=[{"role": "user", "content": [Q, REMOTE]}])
    assert bad.value.param == "messages[0].content[1].image_url.url"


def test_the_schema_lists_the_route(server: str):
    schema = httpx.get(server + "/openapi.json").json()
    op = schema["paths"]["/v1/chat/completions"]["post"]
    assert "text/event-stream" in op["responses"]["200"]["content"] and "openai" in op["tags"]
    assert schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]["messages"]["maxItems"] == 4


def test_a_chat_only_service(tmp_path: Path):
    """A service of chat models only (no embedding model, no generative run) serves them."""
    with serving(tmp_path, None, {}, {"echo": EchoChat()}) as (base, svc):
        assert list(svc.chat_models) == ["echo"]
        r = post(base, {"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
        assert r.json()["choices"][0]["message"]["content"] == "user/hi/0"
        assert json.loads(httpx.get(base + "/v1/models").text)["data"][0]["id"] == "echo"
