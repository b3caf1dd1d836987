"""Generation endpoints against the server on a real socket: ``POST /v1/audio/transcriptions`` driven by OpenAI's own
client (json, text, verbose_json, streaming, errors), ``POST /v1/generate`` (captions, VQA, server-sent events
whose deltas add up to the text), batching of concurrent requests into few model calls, a client leaving
mid-stream, a full queue, a generation-only service and the ``--generate`` command line. The models are
`genfake.FakeGenerator`s: real `TextGenerator`s with a real BPE tokenizer (Chinese pieces included)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from genfake import SAFETY, TOKENIZER, fake, fake_model, serving
from servekit import FakeModel, png_b64, solid, tone, wav_b64

from polymodal.serve import MediaLimits

openai = pytest.importorskip("openai")

RED, BLUE = png_b64(solid((200, 30, 30))), png_b64(solid((20, 30, 200)))
WAV = base64.b64decode(wav_b64(tone(440, 0.25), 16000))


def gens(step_delay: float = 0.0) -> dict[str, Any]:
    return {"cap": fake_model("captioning"), "vqa": fake_model("vqa", step_delay), "asr": fake_model("asr")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    with serving(tmp_path_factory.mktemp("gen"), FakeModel(), gens(), model_name="emb", max_body_bytes=64 * 1024,
                 limits=MediaLimits(max_seconds=1.0)) as served:
        yield served


@pytest.fixture
def client(server: tuple[str, Any]) -> Iterator[Any]:
    with openai.OpenAI(base_url=server[0] + "/v1", api_key="k", max_retries=0, timeout=SAFETY) as c:
        yield c


def events(resp: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of an event stream, JSON-decoded (``[DONE]`` as is)."""
    assert resp.headers["content-type"].startswith("text/event-stream"), resp.text
    out = []
    for block in resp.text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def expected_asr(wave: np.ndarray, sr: int, **decoding: Any) -> str:
    return fake_model("asr").generate(audio=(wave, sr), **decoding)[0]


# ---------------------------------------------------------------------------------------- transcriptions

def test_models_lists_the_embedding_and_the_generative_models(client: Any):
    assert [(m.id, m.task) for m in client.models.list().data] == [
        ("emb", "embedding"), ("cap", "captioning"), ("vqa", "vqa"), ("asr", "asr")]
    assert client.models.retrieve("asr").task == "asr"
    with pytest.raises(openai.BadRequestError):   # a generative model does not embed
        client.embeddings.create(model="asr", input="x")


def test_transcription_json_text_and_verbose_json(client: Any):
    expected = expected_asr(tone(440, 0.25), 16000)
    assert "听到" in expected
    got = client.audio.transcriptions.create(model="asr", file=("clip.wav", WAV, "audio/wav"))
    assert got.text == expected and got.usage.output_tokens > 0
    assert client.audio.transcriptions.create(model="asr", file=("clip.wav", WAV), response_format="text") == expected
    verbose = client.audio.transcriptions.create(model="asr", file=("clip.wav", WAV), response_format="verbose_json",
                                                 language="zh", prompt="ignored", timestamp_granularities=["segment"])
    assert (verbose.text, verbose.language, verbose.duration) == (expected, "zh", 0.25)
    # another clip, another text (the answer is the model's, for this input)
    flac = base64.b64decode(wav_b64(tone(300, 0.5), 8000))
    assert client.audio.transcriptions.create(model="asr", file=("b.wav", flac)).text == expected_asr(tone(300, 0.5),
                                                                                                      8000)


def test_transcription_temperature_picks_sampling(client: Any):
    sampled = client.audio.transcriptions.create(model="asr", file=("clip.wav", WAV), temperature=0.5).text
    assert sampled == expected_asr(tone(440, 0.25), 16000, do_sample=True, temperature=0.5)
    assert sampled.endswith("(sampled at 0.5)")
    assert "sampled" not in client.audio.transcriptions.create(model="asr", file=("c.wav", WAV), temperature=0).text


def test_transcription_streams_openai_events(client: Any):
    stream = client.audio.transcriptions.create(model="asr", file=("clip.wav", WAV), stream=True)
    got = list(stream)
    deltas = [e.delta for e in got if e.type == "transcript.text.delta"]
    assert got[-1].type == "transcript.text.done" and len(deltas) == len(got) - 1 > 3
    assert "".join(deltas) == got[-1].text == expected_asr(tone(440, 0.25), 16000)
    assert not any("\ufffd" in d for d in deltas)


def test_transcription_errors_in_openai_shape(server: tuple[str, Any], client: Any):
    file = ("clip.wav", WAV, "audio/wav")
    with pytest.raises(openai.NotFoundError) as nf:
        client.audio.transcriptions.create(model="whisper-1", file=file)
    assert nf.value.code == "model_not_found" and "'asr'" in nf.value.message
    cases = [({"model": "cap", "file": file}, "model", "captioning model"),
             ({"model": "asr", "file": ("x.wav", b"not audio at all")}, "file", "not a readable audio file"),
             ({"model": "asr", "file": ("x.wav", b"")}, "file", "empty"),
             ({"model": "asr", "file": ("long.wav", base64.b64decode(wav_b64(tone(440, 1.5), 8000)))}, "file",
              "exceeds the limit of 1 s"),
             ({"model": "asr", "file": file, "response_format": "srt"}, "response_format", "timestamps"),
             ({"model": "asr", "file": file, "temperature": 3}, "temperature", "[0, 1]")]
    for kwargs, param, words in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.audio.transcriptions.create(**kwargs)
        assert bad.value.param == param and words in bad.value.message, (kwargs, bad.value.message)
    with pytest.raises(openai.APIStatusError) as big:
        client.audio.transcriptions.create(model="asr", file=("big.wav", b"\0" * 100_000))
    assert big.value.status_code == 413 and big.value.code == "payload_too_large"
    base = server[0]
    no_file = httpx.post(base + "/v1/audio/transcriptions", data={"model": "asr"}, files={"x": ("a", b"")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "x"   # an unknown parameter
    only_model = httpx.post(base + "/v1/audio/transcriptions", files={"model": (None, "asr")})
    assert only_model.status_code == 400 and only_model.json()["error"]["param"] == "file"
    as_json = httpx.post(base + "/v1/audio/transcriptions", json={"model": "asr"})
    assert as_json.status_code == 415 and set(as_json.json()["error"]) == {"message", "type", "param", "code"}


# ---------------------------------------------------------------------------------------- /v1/generate

def test_generate_captions_answers_and_streams(server: tuple[str, Any]):
    base = server[0]
    cap = httpx.post(base + "/v1/generate", json={"model": "cap", "image": RED}, timeout=SAFETY).json()
    assert cap == {"model": "cap", "task": "captioning", "text": "a red picture 红色的图片",
                   "usage": {"tokens": cap["usage"]["tokens"]}} and cap["usage"]["tokens"] > 0
    ans = httpx.post(base + "/v1/generate", json={"model": "vqa", "image": BLUE, "question": "what colour?"}).json()
    assert ans["text"] == "answer to what colour?: blue"
    for body in ({"model": "cap", "image": BLUE}, {"model": "vqa", "image": RED, "prompt": "和什么颜色？"},
                 {"model": "cap", "image": RED, "decoding": {"stop": ["picture"]}},   # the stream stops there too
                 {"model": "cap", "image": RED, "decoding": {"max_new_tokens": 3}},
                 {"model": "cap", "video": {"data": png_b64(np.concatenate([solid((20, 200, 30))] * 2)), "frames": 2}}):
        plain = httpx.post(base + "/v1/generate", json=body, timeout=SAFETY).json()
        got = events(httpx.post(base + "/v1/generate", json={**body, "stream": True}, timeout=SAFETY))
        deltas = [e["delta"] for e in got[:-2]]
        assert got[-1] == "[DONE]" and got[-2] == {**plain, "done": True}, body
        assert "".join(deltas) == plain["text"] and not any("\ufffd" in d for d in deltas), (body, deltas)
    assert plain["text"] == "a green picture 绿色的图片"


def test_an_error_after_the_stream_started_is_an_event(server: tuple[str, Any]):
    body = {"model": "vqa", "image": RED, "question": "boom?", "stream": True}
    got = events(httpx.post(server[0] + "/v1/generate", json=body, timeout=SAFETY))
    assert got[-1] == "[DONE]" and got[0]["error"]["type"] == "InvalidInput" and got[0]["error"]["field"] == "prompt"
    assert len(got) == 2


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"model": "cap", "image": RED, "decoding": {"num_beams": 2}, "stream": True}, 422, "stream"),
    ({"model": "cap", "image": RED, "decoding": {"bogus": 1}}, 422, "decoding.bogus"),
    ({"model": "cap", "image": RED, "decoding": {"max_new_tokens": 100_000}}, 422, "decoding.max_new_tokens"),
    ({"model": "nope", "image": RED}, 404, "model"),
    ({"model": "emb", "image": RED}, 404, "model"),
    ({"image": RED}, 422, "model"),                                   # three models: which one?
    ({"model": "vqa", "image": RED}, 422, "prompt"),                  # a question is needed
    ({"model": "vqa", "image": RED, "prompt": "a", "question": "b"}, 422, "question"),
    ({"model": "vqa", "image": RED, "question": " "}, 422, "question"),
    ({"model": "cap", "audio": base64.b64encode(WAV).decode()}, 422, "audio"),   # a captioner does not hear
    ({"model": "cap", "image": "bm90IGFuIGltYWdl"}, 422, "image"),
    ({"model": "cap", "image": RED, "stream": "yes"}, 422, "stream"),
])
def test_generate_errors(server: tuple[str, Any], body: dict[str, Any], status: int, field: str):
    r = httpx.post(server[0] + "/v1/generate", json=body, timeout=SAFETY)
    assert r.status_code == status and r.json()["error"]["field"] == field, r.text


# ---------------------------------------------------------------------------------------- batching

def test_concurrent_requests_share_model_calls_and_get_their_own_answers(tmp_path: Path):
    models = gens()
    vqa = fake(models["vqa"])
    with serving(tmp_path, None, models, max_wait_ms=50) as (base, svc):
        vqa.gate = threading.Event()
        questions = [f"question {i}?" for i in range(6)]

        def ask(i: int) -> str:
            body = {"model": "vqa", "image": RED if i % 2 else BLUE, "question": questions[i], "stream": i % 3 == 0}
            r = httpx.post(base + "/v1/generate", json=body, timeout=SAFETY)
            return str(events(r)[-2]["text"] if body["stream"] else r.json()["text"])

        with ThreadPoolExecutor(6) as pool:
            first = pool.submit(ask, 0)
            assert vqa.entered.wait(SAFETY)           # the first call holds the model ...
            rest = [pool.submit(ask, i) for i in range(1, 6)]
            deadline = time.monotonic() + SAFETY
            while svc.generation.depth() < 5 and time.monotonic() < deadline:   # ... while five more queue
                time.sleep(0.01)
            vqa.gate.set()
            answers = [first.result(SAFETY)] + [f.result(SAFETY) for f in rest]
    assert answers == [f"answer to {q}: {'red' if i % 2 else 'blue'}" for i, q in enumerate(questions)]
    assert [n for n, _ in vqa.calls] == [1, 5]   # six requests, two model calls


def test_different_options_are_not_merged_and_a_bad_request_fails_alone(tmp_path: Path):
    models = gens()
    vqa = fake(models["vqa"])
    with serving(tmp_path, None, models, max_wait_ms=50) as (base, svc):
        vqa.gate = threading.Event()
        bodies = [{"question": "first"}, {"question": "a"}, {"question": "boom"}, {"question": "b"},
                  {"question": "c", "decoding": {"max_new_tokens": 5}}]

        def ask(body: dict[str, Any]) -> httpx.Response:
            return httpx.post(base + "/v1/generate", json={"model": "vqa", "image": RED, **body}, timeout=SAFETY)

        with ThreadPoolExecutor(5) as pool:
            first = pool.submit(ask, bodies[0])
            assert vqa.entered.wait(SAFETY)
            rest = [pool.submit(ask, b) for b in bodies[1:]]
            deadline = time.monotonic() + SAFETY
            while svc.generation.depth() < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            vqa.gate.set()
            got = [first.result(SAFETY)] + [f.result(SAFETY) for f in rest]
    assert [r.status_code for r in got] == [200, 200, 422, 200, 200]
    assert got[2].json()["error"]["field"] == "prompt" and got[3].json()["text"] == "answer to b: red"
    # the three greedy ones merged (and failed on "boom": retried one by one), the max_new_tokens=5 one apart
    # (which of the two groups goes first depends on which request the server saw first)
    calls = [(n, o.max_new_tokens) for n, o in vqa.calls]
    assert calls[0] == (1, 48) and sorted(calls[1:]) == [(1, 5), (1, 48), (1, 48), (1, 48), (3, 48)]


def test_a_client_leaving_mid_stream_stops_its_batch(tmp_path: Path):
    models = gens(step_delay=0.05)
    vqa = fake(models["vqa"])
    long_question = " ".join(["the quick brown fox jumps over the lazy dog"] * 10)   # ~100+ steps: 5+ s
    with serving(tmp_path, None, models) as (base, _):
        body = {"model": "vqa", "image": RED, "question": long_question, "stream": True,
                "decoding": {"max_new_tokens": 512}}
        with httpx.stream("POST", base + "/v1/generate", json=body, timeout=SAFETY) as r:
            first = next(r.iter_lines())
            assert first.startswith("data: {\"delta\"")
        start = time.monotonic()
        r2 = httpx.post(base + "/v1/generate", json={"model": "vqa", "image": BLUE, "question": "next?"},
                        timeout=SAFETY)
        assert r2.json()["text"] == "answer to next?: blue"
        assert time.monotonic() - start < 3.0, "the worker kept generating for the client that left"
    total = len(TOKENIZER.encode(f"answer to {long_question}: red"))
    assert vqa.steps < total / 2


def test_a_full_queue_is_a_503_with_retry_after(tmp_path: Path):
    models = gens()
    cap = fake(models["cap"])
    with serving(tmp_path, None, models, queue_size=1, max_wait_ms=0) as (base, svc):
        cap.gate = threading.Event()
        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(httpx.post, base + "/v1/generate", json={"model": "cap", "image": RED}, timeout=SAFETY)
            assert cap.entered.wait(SAFETY)
            queued = pool.submit(httpx.post, base + "/v1/generate", json={"model": "cap", "image": BLUE},
                                 timeout=SAFETY)
            deadline = time.monotonic() + SAFETY
            while svc.generation.depth() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            full = httpx.post(base + "/v1/generate", json={"model": "cap", "image": RED, "stream": True})
            cap.gate.set()
            assert held.result(SAFETY).status_code == queued.result(SAFETY).status_code == 200
    assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
    assert full.json()["error"]["type"] == "Overloaded" and "generation queue" in full.json()["error"]["message"]


# ---------------------------------------------------------------------------------------- service, CLI

def test_a_generation_only_service(tmp_path: Path):
    with serving(tmp_path, None, {"asr": fake_model("asr")}) as (base, _), \
            openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0, timeout=SAFETY) as c:
        assert [m.id for m in c.models.list().data] == ["asr"]
        assert httpx.get(base + "/health").status_code == 200
        paths = httpx.get(base + "/openapi.json").json()["paths"]
        assert "multipart/form-data" in paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
        assert "text/event-stream" in paths["/v1/generate"]["post"]["responses"]["200"]["content"]
        assert httpx.get(base + "/v1/collections").json() == {"default": None, "collections": []}
        embed = httpx.post(base + "/v1/embed", json={"text": ["a"]})
        assert embed.status_code == 404 and "no embedding model" in embed.json()["error"]["message"]
        with pytest.raises(openai.NotFoundError):
            c.embeddings.create(model="asr2", input="x")
        # one model: /v1/generate needs no name, and the transcription takes the clip
        audio = base64.b64encode(WAV).decode()
        assert httpx.post(base + "/v1/generate", json={"audio": audio}).json()["text"] == \
            c.audio.transcriptions.create(model="asr", file=("a.wav", WAV)).text


def test_cli_generate_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from polymodal.commands import main
    from polymodal.commands.serve import generate_specs
    from polymodal.errors import InvalidInput

    assert generate_specs(["runs/asr", "whisper-1=runs/asr", "runs/cap/"]) == {
        "asr": Path("runs/asr"), "whisper-1": Path("runs/asr"), "cap": Path("runs/cap")}
    assert generate_specs(["x=a/b=c"]) == {"x": Path("a/b=c")}
    with pytest.raises(InvalidInput, match="give NAME=RUN"):   # no NAME= prefix, and b=c is no name
        generate_specs(["a/b=c"])
    with pytest.raises(InvalidInput, match="two generative models named 'asr'"):
        generate_specs(["runs/asr", "other/asr"])
    for argv, words in ((["serve"], "--generate RUN"), (["serve", "--model", "m"], "--model needs --collection"),
                        (["serve", "--collection", "c", "--generate", "g"], "--collection needs --model"),
                        (["serve", "--generate", str(tmp_path / "nope"), "--port", "0"], "not a generative run")):
        assert main(argv) == 1, argv
        assert words in capsys.readouterr().err, argv
