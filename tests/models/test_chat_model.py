"""The chat protocol: `ChatMessage` and `check_conversation` name the field of every bad input; a vqa run loaded with
`load_chat_model` answers each conversation exactly as `GenerativeModel.generate` answers its last question about
its latest picture (batched or alone, earlier turns ignored), an lm chats with ``<sep>`` after the prompt, a
captioner describes the latest picture; the loader registry dispatches on the run's arch; `ConversationRunner`
puts a chat model behind the generation batcher's sample interface.

The runs are real (the archs' transformers classes, a BPE trained on shapes targets) and built rather than trained:
weights drawn at a scale where greedy replies depend on the inputs, so that equal replies mean something."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import polymodal
from polymodal.data.synth import shapes
from polymodal.data.transforms.compose import SampleTransform
from polymodal.data.transforms.resolve import transform_config
from polymodal.errors import ConfigError, InvalidInput
from polymodal.lm.decoding import DecodingOptions
from polymodal.models.chat import (
    CHAT_ADAPTERS,
    CHAT_LOADERS,
    ChatMessage,
    ConversationRunner,
    ConversationSample,
    GenerativeChat,
    as_chat_model,
    check_conversation,
    finish_reason,
    load_chat_model,
    register_chat_adapter,
    register_chat_loader,
)
from polymodal.models.gen_batch import encode_prompt
from polymodal.models.generative import GenerativeModel
from polymodal.models.registry import build_model
from polymodal.rundir import CONFIG, MODEL, RUN_FORMAT, tensors_to_bytes

pytest.importorskip("transformers")

TOKENIZER = {"vocab_size": 320, "min_frequency": 2}
ENCODER = {"image_size": 32, "patch_size": 16, "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64}
DECODER = {"hidden": 32, "layers": 1, "heads": 2, "max_len": 40}
CONFIGS: dict[str, dict[str, Any]] = {
    "vqa": {"input": "image", "langs": ["en"], "encoder": ENCODER, "decoder": DECODER},
    "captioner": {"input": "image", "langs": ["en"], "encoder": ENCODER, "decoder": DECODER},
    "lm": {"hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 64, "max_len": 40},
}
Q1, Q2 = "what color is the star?", "how many shapes are there?"


def built(arch: str, seed: int = 0) -> Any:
    """The arch's model with its tokenizer trained on shapes targets, weights ~ N(0, 3 / fan_in) (2-D ones)."""
    samples = [shapes.make_sample(i, "train", langs=("en",), modalities=("image",)) for i in range(12)]
    model = build_model(arch, {"tokenizer": dict(TOKENIZER), **CONFIGS[arch]})
    model.fit_data(samples)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 3.0 / p.shape[-1] ** 0.5)
    return model.eval()


def build_run(folder: Path, arch: str = "vqa") -> Path:
    """A run folder (config.json + model.safetensors, as the trainer writes them) of `built`."""
    model = built(arch)
    folder.mkdir(parents=True)
    cfg = {"format": RUN_FORMAT, "version": 1, "arch": arch, "model": model.config,
           "transform": transform_config(model.preprocess(), {})}
    (folder / CONFIG).write_text(json.dumps(cfg), encoding="utf-8")
    (folder / MODEL).write_bytes(tensors_to_bytes(model.state_dict()))
    return folder


def in_memory(arch: str) -> GenerativeModel:
    model = built(arch)
    transform = SampleTransform.from_dict(transform_config(model.preprocess(), {}))
    return GenerativeModel(model, transform, {}, torch.device("cpu"), name=arch)


def picture(color: tuple[int, int, int], seed: int) -> np.ndarray:
    img = np.random.default_rng(seed).integers(0, 60, (40, 48, 3), dtype=np.uint8)
    img[8:30, 10:34] = color
    return img


RED, BLUE, GREEN = picture((220, 30, 30), 0), picture((30, 30, 220), 1), picture((30, 200, 40), 2)


def user(text: str, *images: np.ndarray) -> ChatMessage:
    return ChatMessage("user", text, images=images)


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("chat") / "vqa")


# --------------------------------------------------------------------------------------------- messages

@pytest.mark.parametrize(("kwargs", "field"), [
    ({"role": "bot", "content": "x"}, "role"),
    ({"role": "user", "content": 3}, "content"),
    ({"role": "user", "content": "x", "images": (RED.astype(np.float32),)}, "images[0]"),
    ({"role": "user", "content": "x", "images": (RED, RED[..., :2])}, "images[1]"),
    ({"role": "user", "content": "x", "audio": ((np.zeros(80, np.float32), 10),)}, "audio[0]"),
    ({"role": "user", "content": "x", "audio": ((np.zeros(80, np.float64), 16000),)}, "audio[0]"),
    ({"role": "system", "content": "x", "images": (RED,)}, "images"),
    ({"role": "assistant", "content": "x", "audio": ((np.zeros(80, np.float32), 16000),)}, "audio"),
])
def test_a_bad_message_names_its_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        ChatMessage(**kwargs)
    assert err.value.field == field


def test_messages_take_lists_and_keep_tuples() -> None:
    m = ChatMessage("user", "", images=[RED], audio=[(np.zeros(80, np.float32), 16000)])  # type: ignore[arg-type]
    assert isinstance(m.images, tuple) and isinstance(m.audio, tuple) and m.images[0] is RED


CLIP = (np.zeros(160, np.float32), 16000)


@pytest.mark.parametrize(("messages", "field", "words"), [
    ([], "messages", "empty"),
    ([user("hi")] * 5, "messages", "limit of 4"),
    ([user("x" * 60)], "messages", "limit of 50"),
    ([user(" ")], "messages[0].content", "empty"),
    ([ChatMessage("system", "be brief")], "messages", "no user message"),
    ([user("hi"), ChatMessage("assistant", "hello")], "messages[1].role", "user message"),
    ([ChatMessage("user", "hear this", audio=(CLIP,))], "messages[0].audio[0]", "reads image, not audio"),
    ([user("two", RED, RED, RED)], "messages[0].images[2]", "limit of 2"),
])
def test_check_conversation(messages: list[ChatMessage], field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_conversation(messages, ("image",), max_messages=4, max_chars=50, max_media=2)
    assert err.value.field == field and words in err.value.message
    ok = [ChatMessage("system", "be brief"), user("a", RED), ChatMessage("assistant", ""), user("b")]
    assert check_conversation(ok, ("image",)) == ok


# --------------------------------------------------------------------------------------------- GenerativeChat

def test_a_vqa_run_chats_as_it_generates(vqa_run: Path) -> None:
    chat = load_chat_model(vqa_run)
    gm = polymodal.load_generator(vqa_run)
    assert isinstance(chat, GenerativeChat) and chat.modalities == ("image",) and chat.task == "vqa"
    cases = [(RED, Q1), (BLUE, Q1), (GREEN, Q2)]
    want = [gm.generate(image=img, prompt=q, max_new_tokens=6)[0].strip() for img, q in cases]
    assert len(set(want)) == len(want)   # the replies depend on the picture and the question
    opts = DecodingOptions(max_new_tokens=6)
    assert chat.chat([[user(q, img)] for img, q in cases], opts) == want
    assert [chat.chat([[user(q, img)]], opts)[0] for img, q in cases] == want
    # single-turn: the last question, about the latest picture; earlier turns do not matter
    convs = [[ChatMessage("system", "be brief"), user(Q2, GREEN), ChatMessage("assistant", "3"), user(Q1, RED)],
             [user("anything else", BLUE), ChatMessage("assistant", "ok"), user(Q2, GREEN), user(Q1)],
             [user(Q1, GREEN), ChatMessage("assistant", "green"), user(f"  {Q1} ", RED)]]
    assert chat.chat(convs, opts) == [want[0], gm.generate(image=GREEN, prompt=Q1, max_new_tokens=6)[0].strip(),
                                      want[0]]
    assert chat.count_tokens([user(Q1, RED)]) == len(gm.model.prefix(question=Q1))
    assert chat.count_tokens(convs[0]) == len(gm.model.prefix(question=Q1))


@pytest.mark.parametrize(("messages", "field", "words"), [
    ([user("", RED)], "messages[0].content", "needs a question"),
    ([user(Q1)], "messages[0].images", "reads an image"),
    ([user(Q1, RED, BLUE)], "messages[0].images[1]", "limit of 1"),
    ([user(Q1, RED), ChatMessage("assistant", "red")], "messages[1].role", "user message"),
    ([ChatMessage("user", Q1, audio=(CLIP,))], "messages[0].audio[0]", "not audio"),
])
def test_what_a_vqa_model_cannot_answer(vqa_run: Path, messages: list[ChatMessage], field: str, words: str) -> None:
    chat = load_chat_model(vqa_run)
    for call in (lambda: chat.chat([messages]), lambda: chat.count_tokens(messages)):
        with pytest.raises(InvalidInput) as err:
            call()
        assert err.value.field == field and words in err.value.message


def test_an_lm_answers_after_sep_and_a_captioner_describes_the_latest_picture() -> None:
    lm = in_memory("lm")
    chat = GenerativeChat.of(lm)
    opts = DecodingOptions(max_new_tokens=6)
    got = chat.chat([[user(Q1)], [user(Q2)], [user("a red star<sep>")]], opts)
    want = [lm.generate(prompt=p, max_new_tokens=6)[0].strip() for p in (Q1 + "<sep>", Q2 + "<sep>",
                                                                          "a red star<sep>")]
    assert got == want and len(set(want)) > 1
    assert chat.count_tokens([user(Q1)]) == 1 + len(encode_prompt(chat.tokenizer, Q1 + "<sep>"))
    with pytest.raises(InvalidInput) as err:
        chat.chat([[user(Q1, RED)]])
    assert err.value.field == "messages[0].images[0]" and "only text" in err.value.message
    cap = in_memory("captioner")
    captions = GenerativeChat.of(cap).chat([[user("describe it", RED)], [user("", BLUE), user("and now?")]], opts)
    assert captions == [cap.generate(image=img, max_new_tokens=6)[0].strip() for img in (RED, BLUE)]
    assert captions[0] != captions[1]


def test_a_model_reading_video_cannot_chat() -> None:
    video = build_model("captioner", {"tokenizer": dict(TOKENIZER), **CONFIGS["captioner"], "input": "video",
                                      "encoder": {**ENCODER, "frames": 2, "tubelet": 2}})
    gm = GenerativeModel(video, SampleTransform(), {}, torch.device("cpu"))
    assert not GenerativeChat.chat_capable(gm) and as_chat_model(gm) is None
    with pytest.raises(InvalidInput, match="cannot chat"):
        GenerativeChat.of(gm)


# --------------------------------------------------------------------------------------------- loaders, runner

class Parrot:
    """A chat model of another arch: says the last message back."""

    modalities: tuple[str, ...] = ()

    def __init__(self, name: str, model: Any = None):
        self.name, self.model = name, model

    def chat(self, conversations: Any, options: Any = None, streamer: Any = None) -> list[str]:
        return [f" {c[-1].content} ({len(c)}) " for c in conversations]

    def count_tokens(self, conversation: Any) -> int:
        return len(conversation)


def test_loaders_dispatch_on_the_arch(tmp_path: Path, vqa_run: Path) -> None:
    assert {"vqa", "lm", "captioner", "asr"} <= set(CHAT_LOADERS)
    run = tmp_path / "parrot"
    run.mkdir()
    (run / CONFIG).write_text(json.dumps({"format": RUN_FORMAT, "arch": "parrot_test", "model": {},
                                          "transform": {}}))
    (run / MODEL).write_bytes(tensors_to_bytes({"w": torch.zeros(1)}))
    with pytest.raises(InvalidInput) as err:
        load_chat_model(run)
    assert err.value.field == "arch" and "vqa" in err.value.message

    def load(path: Path, device: Any) -> Parrot:
        return Parrot(str(path))

    try:
        assert register_chat_loader("parrot_test")(load) is load
        register_chat_loader("parrot_test")(load)   # the same function again: fine
        with pytest.raises(ConfigError):
            register_chat_loader("parrot_test")(lambda p, d: Parrot(str(p)))
        model = load_chat_model(run)
        assert isinstance(model, Parrot) and model.name == str(run)
    finally:
        CHAT_LOADERS.pop("parrot_test", None)
    with pytest.raises(InvalidInput):
        load_chat_model(tmp_path / "nothing-here")


def test_adapters_make_loaded_generative_models_chat() -> None:
    lm = in_memory("lm")
    assert isinstance(as_chat_model(lm), GenerativeChat)
    lm.model.task = "toy_task"   # a task of its own (as an mllm's "chat")
    assert as_chat_model(lm) is None
    try:
        register_chat_adapter("toy_task")(lambda gm: Parrot("toy", gm.model))
        got = as_chat_model(lm)
        assert isinstance(got, Parrot) and got.model is lm.model
    finally:
        CHAT_ADAPTERS.pop("toy_task", None)


def test_the_runner_answers_conversation_samples(vqa_run: Path) -> None:
    chat = load_chat_model(vqa_run)
    assert isinstance(chat, GenerativeChat)
    runner = ConversationRunner.of(chat)
    assert runner.model is chat.model and runner.task == "vqa"
    convs = [[user(Q1, RED)], [user(Q2, BLUE), user(Q1)]]
    opts = DecodingOptions(max_new_tokens=6)
    assert runner.generate_samples([ConversationSample.of(c) for c in convs], None, opts) == chat.chat(convs, opts)
    # a plain sample (what /v1/generate queues) is a one-turn conversation
    plain = chat.samples(image=RED, prompt=Q1)[0]
    assert runner.generate_samples([plain], [Q1], opts) == chat.chat([[user(Q1, RED)]], opts)
    parrot = ConversationRunner.of(Parrot("p", chat.model))
    assert parrot.generate_samples([ConversationSample.of([user("hi")])]) == ["hi (1)"]   # stripped
    with pytest.raises(ConfigError):
        ConversationRunner.of(Parrot("no generator"))


def test_finish_reason() -> None:
    opts = DecodingOptions(max_new_tokens=8)
    assert finish_reason(object(), 3, 8, opts) == "length"
    assert finish_reason(object(), 3, 7, opts) == "stop"

    class Bounded:
        max_positions = 10

    assert finish_reason(Bounded(), 3, 7, opts) == "length"   # 3 + 7 fill the 10 positions
    assert finish_reason(Bounded(), 3, 6, opts) == "stop"
