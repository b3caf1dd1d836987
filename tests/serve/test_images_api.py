"""``POST /v1/images/generations`` against the server on a real socket (uvicorn in a thread, as `polymodal serve`
runs it), with fake text->image models (`t2ifake`): the PNGs decode to the fake's pictures for the seeds the
protocol gives them (``seed + i``), with OpenAI's own client too; errors in OpenAI's envelope naming the field;
one generation per model at a time, off the event loop, with a bounded queue; ``polymodal serve --generate``
serving a text->image run as an image model."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from genfake import fake_model, serving
from PIL import Image
from servekit import FakeModel
from t2ifake import SAFETY, SIZE, FakeImageModel, fake_picture

from polymodal.errors import InvalidInput
from polymodal.models.t2i_front import MAX_IMAGES, MAX_STEPS, ImageOptions

openai = pytest.importorskip("openai")

PROMPT = "a red star above a blue square"
MAX_CHARS = 300


@pytest.fixture(scope="module")
def t2i() -> FakeImageModel:
    return FakeImageModel()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, t2i: FakeImageModel) -> Iterator[str]:
    with serving(tmp_path_factory.mktemp("images"), FakeModel(), {"cap": fake_model("captioning")},
                 image_models={"t2i": t2i}, model_name="emb", max_text_chars=MAX_CHARS) as (base, _):
        yield base


def post(base: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(base + "/v1/images/generations", json=body, timeout=SAFETY)


def picture(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def pictures(body: dict[str, Any]) -> list[np.ndarray]:
    return [picture(d["b64_json"]) for d in body["data"]]


# ---------------------------------------------------------------------------------------------- pictures

def test_the_pngs_are_the_models_pictures_for_seed_plus_i(server: str, t2i: FakeImageModel):
    before = int(time.time())
    r = post(server, {"model": "t2i", "prompt": PROMPT, "n": 3, "seed": 7, "size": f"{SIZE}x{SIZE}",
                      "quality": "hd", "style": "vivid", "user": "u1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"created", "data"} and before <= body["created"] <= time.time() + 1
    assert [set(d) for d in body["data"]] == [{"b64_json", "revised_prompt", "seed"}] * 3
    assert [d["revised_prompt"] for d in body["data"]] == [PROMPT] * 3
    assert [d["seed"] for d in body["data"]] == [7, 8, 9]
    for i, got in enumerate(pictures(body)):
        np.testing.assert_array_equal(got, fake_picture(PROMPT, 7 + i))


def test_seeds_make_a_request_reproducible(server: str):
    four = post(server, {"prompt": PROMPT, "n": 4, "seed": 0}).json()   # model left out: the only image model
    again = post(server, {"prompt": PROMPT, "n": 4, "seed": 0}).json()
    assert [d["b64_json"] for d in four["data"]] == [d["b64_json"] for d in again["data"]]
    third = post(server, {"prompt": PROMPT, "n": 1, "seed": 2}).json()
    assert third["data"][0]["b64_json"] == four["data"][2]["b64_json"]
    assert not np.array_equal(pictures(four)[0], pictures(four)[1])   # the seed changes the picture
    drawn = post(server, {"prompt": PROMPT}).json()["data"][0]        # no seed: the server draws and returns one
    redo = post(server, {"prompt": PROMPT, "seed": drawn["seed"]}).json()["data"][0]
    assert redo["b64_json"] == drawn["b64_json"]


def test_sampling_options_reach_the_model(server: str, t2i: FakeImageModel):
    r = post(server, {"prompt": PROMPT, "n": 2, "seed": 3, "guidance": 2.5, "steps": 12, "sampler": "ddim",
                      "temperature": 0.7, "top_k": 5, "response_format": "b64_json", "output_format": "png"})
    assert r.status_code == 200, r.text
    prompts, n, options, _ = t2i.calls[-1]
    assert (prompts, n) == ([PROMPT], 2)
    assert options == ImageOptions(steps=12, guidance=2.5, seed=3, sampler="ddim", temperature=0.7, top_k=5)


def test_openai_client_draws(server: str):
    with openai.OpenAI(base_url=server + "/v1", api_key="k", max_retries=0, timeout=SAFETY) as client:
        resp = client.images.generate(model="t2i", prompt=PROMPT, n=2, response_format="b64_json",
                                      extra_body={"seed": 0, "steps": 5})
        assert [d.revised_prompt for d in resp.data] == [PROMPT, PROMPT]
        for i, d in enumerate(resp.data):
            np.testing.assert_array_equal(picture(d.b64_json), fake_picture(PROMPT, i))
        with pytest.raises(openai.NotFoundError) as nf:
            client.images.generate(model="dall-e-3", prompt=PROMPT)
        assert nf.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as bad:
            client.images.generate(model="t2i", prompt=PROMPT, response_format="url")
        assert bad.value.param == "response_format"
        cards = {m.id: m for m in client.models.list().data}
        assert cards["t2i"].task == "text_to_image" and cards["cap"].task == "captioning"   # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize(("body", "status", "param", "words"), [
    ({"size": "256x256"}, 400, "size", f"{SIZE}x{SIZE}"),
    ({"size": "big"}, 400, "size", f'"{SIZE}x{SIZE}"'),
    ({"response_format": "url"}, 400, "response_format", "b64_json only"),
    ({"response_format": "jpg"}, 400, "response_format", "b64_json"),
    ({"output_format": "jpeg"}, 400, "output_format", "png"),
    ({"n": 0}, 400, "n", None),
    ({"n": MAX_IMAGES + 1}, 400, "n", str(MAX_IMAGES)),
    ({"n": "2"}, 400, "n", None),
    ({"prompt": "   "}, 400, "prompt", "empty"),
    ({"prompt": "x" * (MAX_CHARS + 1)}, 400, "prompt", str(MAX_CHARS)),
    ({"steps": MAX_STEPS + 1}, 400, "steps", str(MAX_STEPS)),
    ({"guidance": -1}, 400, "guidance", None),
    ({"seed": -1}, 400, "seed", None),
    ({"sampler": "euler"}, 400, "sampler", "euler"),         # refused by the model, on its worker thread
    ({"prompt": "boom"}, 400, "prompt", "boom"),
    ({"model": "nope"}, 404, "model", "'t2i'"),
    ({"model": "cap"}, 400, "model", "captioning"),
    ({"model": "emb"}, 400, "model", "embedding"),
    ({"background": "transparent"}, 400, "background", None),
])
def test_errors_in_openai_shape(server: str, body: dict[str, Any], status: int, param: str, words: str | None):
    r = post(server, {"model": "t2i", "prompt": PROMPT, **body})
    error = r.json()["error"]
    assert r.status_code == status and set(error) == {"message", "type", "param", "code"}, r.text
    assert error["param"] == param and (words is None or words in error["message"]), error
    if status == 404:
        assert error["code"] == "model_not_found"


def test_a_missing_prompt_and_bad_json(server: str):
    r = post(server, {"model": "t2i"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    r = httpx.post(server + "/v1/images/generations", content=b"{", timeout=SAFETY,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body", r.text


def test_listed_in_models_and_schema(server: str):
    cards = {c["id"]: c["task"] for c in httpx.get(server + "/v1/models").json()["data"]}
    assert cards == {"emb": "embedding", "cap": "captioning", "t2i": "text_to_image"}
    assert httpx.get(server + "/v1/models/t2i").json()["task"] == "text_to_image"
    r = httpx.post(server + "/v1/embeddings", json={"model": "t2i", "input": "x"})
    assert r.status_code == 400 and "text_to_image" in r.json()["error"]["message"]
    op = httpx.get(server + "/openapi.json").json()["paths"]["/v1/images/generations"]["post"]
    assert "openai" in op["tags"]


# ---------------------------------------------------------------------------------------------- serving

def test_one_generation_at_a_time_off_the_event_loop_and_a_bounded_queue(tmp_path: Path):
    """With queue_size=1, a request held by the model leaves no room: the next one is a 503 with Retry-After,
    while the event loop still answers; the held one then completes on the model's worker thread."""
    slow, other = FakeImageModel(), FakeImageModel()
    slow.gate = threading.Event()
    with serving(tmp_path, None, {}, image_models={"slow": slow, "other": other}, queue_size=1) as (base, _):
        first: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: first.update(r=post(base, {"model": "slow", "prompt": PROMPT})))
        thread.start()
        try:
            assert slow.entered.wait(SAFETY)
            busy = post(base, {"model": "slow", "prompt": PROMPT})
            assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1, busy.text
            assert busy.json()["error"]["code"] == "overloaded"
            assert httpx.get(base + "/health", timeout=SAFETY).status_code == 200   # the loop is free
            assert post(base, {"model": "other", "prompt": PROMPT}).status_code == 200   # another model's worker
            r = post(base, {"prompt": PROMPT})
            assert r.status_code == 400 and "slow, other" in r.json()["error"]["message"]   # two: name one
        finally:
            slow.gate.set()
            thread.join(SAFETY)
        assert first["r"].status_code == 200, first["r"].text
        assert post(base, {"model": "slow", "prompt": PROMPT}).status_code == 200   # its room is free again
        assert {t.split("_")[0] for t in slow.threads} == {"images-slow"}
        r = httpx.post(base + "/v1/embeddings", json={"model": "slow", "input": "x"})
        assert r.status_code == 400   # an image-only service: the name is an image model's


def test_names_are_unique_and_a_service_needs_a_model():
    from polymodal.serve import create_app

    with pytest.raises(InvalidInput, match="both an image model's and a generative model's"):
        create_app(None, generators={"m": fake_model("captioning")}, image_models={"m": FakeImageModel()})
    with pytest.raises(InvalidInput, match="image models"):
        create_app(None)


def test_serve_command_serves_a_text_to_image_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]):
    """``polymodal serve --generate NAME=RUN``: a run that `is_image_run` is loaded with `load_image_generator`
    and served as an image model (the server's run() is replaced by a look at the app)."""
    import polymodal.models.t2i_front as front
    import polymodal.serve.server as server_mod
    from polymodal.commands import main

    runs = {str(tmp_path / "ldm"): FakeImageModel(str(tmp_path / "ldm"))}
    monkeypatch.setattr(front, "is_image_run", lambda run: str(run) in runs)
    monkeypatch.setattr(front, "load_image_generator", lambda run, device="cpu": runs[str(run)])
    seen: dict[str, Any] = {}

    class Server:
        def __init__(self, app: Any, *args: Any, **kw: Any):
            seen["app"] = app

        def run(self, sockets: Any) -> None:
            seen["images"] = dict(seen["app"].state.service.image_models)

    monkeypatch.setattr(server_mod, "make_server", Server)
    assert main(["serve", "--generate", f"draw={tmp_path / 'ldm'}", "--port", "0"]) == 0
    assert seen["images"] == {"draw": runs[str(tmp_path / "ldm")]}
    assert main(["serve", "--model", str(tmp_path / "ldm"), "--collection", str(tmp_path / "c"), "--port", "0"]) == 1
    assert "text->image run: serve it with --generate" in capsys.readouterr().err
