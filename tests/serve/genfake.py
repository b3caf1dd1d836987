"""Fake generative models for the service tests: `FakeGenerator` is a real `TextGenerator` (with a real byte-level
BPE tokenizer) whose ``generate`` derives its text from each row's input and streams it token by token as
transformers' ``generate`` does: the prompt first (B, L), then one token per row each step (B,) -- end of
sequence once a row is done, padding after -- then ``end()``.

    captioning: the image's dominant colour, in English and Chinese ("a red picture 红色的图片")
    vqa:        "answer to {question}" plus the colour
    asr:        the clip's length in mel frames, in Chinese and English ("听到 26 帧 heard 26 frames")
    sampling (do_sample) appends " (sampled at T)", so a test sees the options that reached the model;
    a question with "boom" in it fails (InvalidInput), the whole call with it.

It records every call (rows, options), can sleep per step, and can hold a call until a gate opens."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from polymodal.data.sample import Batch
from polymodal.data.transforms.compose import SampleTransform
from polymodal.errors import InvalidInput
from polymodal.lm.decoding import DecodingOptions, cut_at_stop
from polymodal.lm.tokenizer import BOS, EOS, PAD, train_bpe
from polymodal.models.generative import GenerativeModel
from polymodal.models.generator import TextGenerator, TokenStreamer

if TYPE_CHECKING:
    from polymodal.serve.service import Service

SAFETY = 20.0
CORPUS = ["a red picture 红色的图片", "a green picture 绿色的图片", "a blue picture 蓝色的图片",
          "answer to what colour is it", "听到 帧 heard frames", "the quick brown fox jumps over the lazy dog"]
TOKENIZER = train_bpe(CORPUS * 4, 300)
COLOURS = (("red", "红色"), ("green", "绿色"), ("blue", "蓝色"))
TRANSFORM = {"image": {"size": 16}, "audio": {}, "video": {"frames": 2, "image": {"size": 16}}}
MODALITIES = {"captioning": ("image", "video"), "vqa": ("image",), "asr": ("audio",), "lm": ()}


class FakeGenerator(TextGenerator):
    def __init__(self, task: str, step_delay: float = 0.0):
        super().__init__({"tokenizer": {"json": TOKENIZER.to_json()}})
        self.task, self.modalities = task, MODALITIES[task]
        self.step_delay = step_delay
        self.calls: list[tuple[int, DecodingOptions]] = []
        self.steps = 0                       # decoding steps streamed, over all calls
        self.gate: threading.Event | None = None   # set: calls wait for it
        self.entered = threading.Event()     # a call has started
        self._lock = threading.Lock()

    def answer(self, batch: Batch, i: int, prompt: str | None, options: DecodingOptions) -> str:
        if self.task == "asr":
            frames = int(batch.pad_mask["audio"][i].sum())
            text = f"听到 {frames} 帧 heard {frames} frames"
        else:
            m = "image" if "image" in batch.data and bool(batch.mask["image"][i]) else "video"
            x = batch.data[m][i]
            means = x.reshape(-1, 3, *x.shape[-2:]).mean(dim=(0, 2, 3)) if m == "video" else x.mean(dim=(1, 2))
            en, zh = COLOURS[int(means.argmax())]
            text = f"a {en} picture {zh}的图片"
            if self.task == "vqa":
                if prompt is not None and "boom" in prompt:
                    raise InvalidInput("the fake refuses questions with 'boom'", field="prompt")
                text = f"answer to {prompt}: {en}"
        if options.do_sample:
            text += f" (sampled at {options.temperature:g})"
        return text

    def generate(self, batch: Batch, prompts: Sequence[str | None] | None = None,
                 options: DecodingOptions | None = None, streamer: TokenStreamer | None = None) -> list[str]:
        options = options or DecodingOptions()
        with self._lock:
            self.calls.append((len(batch), options))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(SAFETY), "the test never opened the gate"
        ps = list(prompts) if prompts is not None else [None] * len(batch)
        assert self.tokenizer is not None
        ids = [self.tokenizer.encode(self.answer(batch, i, ps[i], options))[:options.max_new_tokens]
               for i in range(len(batch))]
        if streamer is not None:
            streamer.put(torch.full((len(batch), 1), BOS))
            for step in range(max(len(x) for x in ids) + 1):
                row = [x[step] if step < len(x) else EOS if step == len(x) else PAD for x in ids]
                streamer.put(torch.tensor(row))
                self.steps += 1
                if self.step_delay:
                    time.sleep(self.step_delay)
            streamer.end()
        return [cut_at_stop(self.tokenizer.decode(x), options.stop).strip() for x in ids]


def fake_model(task: str, step_delay: float = 0.0) -> GenerativeModel:
    return GenerativeModel(FakeGenerator(task, step_delay), SampleTransform.from_dict(TRANSFORM), {},
                           torch.device("cpu"), name=f"runs/{task}")


def fake(gm: GenerativeModel) -> FakeGenerator:
    assert isinstance(gm.model, FakeGenerator)
    return gm.model


@contextmanager
def serving(tmp_path: Path, model: Any, generators: dict[str, GenerativeModel],
            chat_models: dict[str, Any] | None = None, image_models: dict[str, Any] | None = None,
            **settings: Any) -> Iterator[tuple[str, Service]]:
    """A server on 127.0.0.1 (any free port) in a thread, as `polymodal serve` runs it, with generative models
    (and chat models, image models); ``model`` None: generation only. Yields its base URL and its `Service` once
    it listens."""
    from polymodal.serve import ServeSettings, create_app
    from polymodal.serve.server import bind, make_server, url_of

    cfg = ServeSettings(**settings)
    where: dict[str, Any] = {} if model is None else {"root": tmp_path / "root",
                                                      "collection": tmp_path / "root" / "main"}
    app = create_app(model, settings=cfg, generators=generators, chat_models=chat_models, image_models=image_models,
                     **where)
    sock = bind("127.0.0.1", 0)
    listening = threading.Event()
    server = make_server(app, cfg, log_level="warning", on_listening=listening.set)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert listening.wait(SAFETY), "the server did not start"
        yield url_of(sock, "127.0.0.1").rstrip("/"), app.state.service
    finally:
        server.should_exit = True
        thread.join(SAFETY)
        sock.close()
