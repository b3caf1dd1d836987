"""A collection remembers which model filled it (a fingerprint of the model's config and weights, its name and
the modalities its items were embedded from); searching it with another model is refused unless explicitly
allowed (then a warning), plain vector searches stay allowed, and collections without a record skip the check."""

from __future__ import annotations

import json
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from polymodal.errors import Conflict, InvalidInput
from polymodal.index import Collection, search_with_model

DIM = 8


class _Tower(nn.Module):
    modalities = ("image", "text")
    dim = DIM

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = nn.Linear(4, DIM)
        self.register_buffer("scale", torch.ones(DIM, dtype=torch.bfloat16))


class _Transform:
    def eval(self) -> _Transform:
        return self


def _embedding_model(seed: int, config: dict[str, Any] | None = None) -> Any:
    from polymodal.models.embedding import EmbeddingModel

    cfg = config or {"arch": "alignment", "model": {"dim": DIM}, "transform": {"image_size": 4}, "train": {"lr": 1}}
    return EmbeddingModel(_Tower(seed), _Transform(), cfg, name=f"runs/m{seed}")  # type: ignore[arg-type]


def test_fingerprint_hashes_config_and_weights() -> None:
    a, b = _embedding_model(0), _embedding_model(0)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert _embedding_model(1).fingerprint != a.fingerprint                      # other weights
    other_cfg = {"arch": "alignment", "model": {"dim": DIM}, "transform": {"image_size": 8}, "train": {"lr": 1}}
    assert _embedding_model(0, other_cfg).fingerprint != a.fingerprint            # other preprocessing
    same_model = {"arch": "alignment", "model": {"dim": DIM}, "transform": {"image_size": 4}, "train": {"lr": 2}}
    assert _embedding_model(0, same_model).fingerprint == a.fingerprint          # training settings do not count
    with torch.no_grad():
        b.model.proj.weight[0, 0] += 1e-3
    assert b.fingerprint == a.fingerprint              # computed once per model object, at first use
    from polymodal.models.embedding import EmbeddingModel

    assert EmbeddingModel(b.model, _Transform(), b.config).fingerprint != a.fingerprint   # type: ignore[arg-type]
    assert a.name == "runs/m0"


class Fake:
    """Embeds anything to a fixed direction per text; carries a fingerprint like an EmbeddingModel."""

    modalities = ("image", "text")
    dim = DIM

    def __init__(self, fingerprint: str | None, name: str = "runs/fake"):
        if fingerprint is not None:
            self.fingerprint = fingerprint
        self.name = name

    def embed(self, text: Any = None, image: Any = None, **_: Any) -> np.ndarray:
        values = text if text is not None else [int(im[0, 0, 0]) for im in image]
        rows = [np.random.default_rng(zlib.crc32(str(v).encode())).standard_normal(DIM) for v in values]
        out = np.stack(rows).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _filled(tmp_path: Path, model: Any) -> Collection:
    coll = Collection.create(tmp_path / "c", DIM, index="flat")
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(5)]
    coll.add(np.arange(5), model.embed(image=images), model=model, modalities=["image"])
    return coll


def test_collection_records_the_model_and_refuses_another(tmp_path: Path) -> None:
    model = Fake("aaaa1111")
    coll = _filled(tmp_path, model)
    assert coll.info()["model"] == {"fingerprint": "aaaa1111", "name": "runs/fake", "modalities": ["image"]}
    coll.add([10], model.embed(text=["x"]), model=model, modalities=["text"])
    assert coll.model == {"fingerprint": "aaaa1111", "name": "runs/fake", "modalities": ["image", "text"]}
    coll.close()
    coll = Collection.open(tmp_path / "c", readonly=True)
    assert coll.info()["model"]["modalities"] == ["image", "text"]              # saved with the collection
    assert search_with_model(coll, model, text="x", k=1).ids[0, 0] == 10
    other = Fake("bbbb2222", name="runs/other")
    with pytest.raises(Conflict) as err:
        search_with_model(coll, other, text="x", k=1)
    msg = str(err.value)
    assert err.value.field == "model" and "runs/fake" in msg and "runs/other" in msg and "allow_model_mismatch" in msg
    with pytest.warns(UserWarning, match="runs/fake"):
        res = search_with_model(coll, other, text="x", k=1, allow_model_mismatch=True)
    assert res.ids.shape == (1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        search_with_model(coll, other, vector=np.ones(DIM), k=1)               # a plain vector: no model involved
        search_with_model(coll, Fake(None), text="x", k=1)                       # a model without a fingerprint
    coll.close()


def test_writes_from_another_model_are_refused(tmp_path: Path) -> None:
    coll = _filled(tmp_path, Fake("aaaa1111"))
    before = sorted(coll.ids().tolist())
    with pytest.raises(Conflict, match="aaaa1111"):
        coll.add([20], np.ones((1, DIM)), model=Fake("bbbb2222"), modalities=["text"])
    assert sorted(coll.ids().tolist()) == before and coll.model["fingerprint"] == "aaaa1111"
    coll.add([21], np.ones((1, DIM)))                                           # raw vectors: allowed
    coll.upsert([22], np.ones((1, DIM)), model={"fingerprint": "aaaa1111"}, modalities=["text"])
    with pytest.raises(InvalidInput) as err:
        coll.add([23], np.ones((1, DIM)), model={"fingerprint": ""})
    assert err.value.field == "model"
    with pytest.raises(InvalidInput) as err:
        coll.add([23], np.ones((1, DIM)), model=Fake("aaaa1111"), modalities=["smell"])
    assert err.value.field == "modalities"
    coll.close()


def test_collections_without_a_record_skip_the_check(tmp_path: Path) -> None:
    """Collections written before fingerprints existed (no "model" in state.json) open and search as before."""
    with Collection.create(tmp_path / "c", DIM, index="flat") as coll:
        coll.add(np.arange(3), np.eye(3, DIM))
    state_path = next((tmp_path / "c").glob("gen-*/state.json"))
    state = json.loads(state_path.read_text())
    for key in ("model", "media_txn"):
        state.pop(key, None)
    state_path.write_text(json.dumps(state))
    with Collection.open(tmp_path / "c", readonly=True) as coll:
        assert coll.info()["model"] is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert search_with_model(coll, Fake("zzz"), text="q", k=2).ids.shape == (1, 2)
    with Collection.open(tmp_path / "c") as coll:                               # the first model fill records it
        coll.add([7], np.ones((1, DIM)), model=Fake("cccc"), modalities=["text"])
    with Collection.open(tmp_path / "c", readonly=True) as coll:
        assert coll.model is not None and coll.model["fingerprint"] == "cccc"


def test_the_service_refuses_another_models_queries_and_items(tmp_path: Path) -> None:
    """Over HTTP: a collection filled by model A, served with model B: embedded queries and upserts of items the
    server embeds are a 409 naming the model; raw vectors are served as before. The server's own model is
    recorded by its first upsert of an embedded item."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    with Collection.create(tmp_path / "root" / "a", DIM, index="flat") as coll:
        coll.add([1, 2], np.eye(2, DIM), model=Fake("aaaa1111", name="runs/A"), modalities=["image"])
    app = create_app(Fake("bbbb2222", name="runs/B"), root=tmp_path / "root")
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/search", json={"collection": "a", "text": "red", "k": 1})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["field"] == "model" and "runs/A" in r.json()["error"]["message"]
        assert c.post("/v1/search", json={"collection": "a", "vector": [1.0] + [0.0] * (DIM - 1), "k": 1}
                      ).json()["hits"][0]["id"] == 1
        r = c.post("/v1/collections/a/items", json={"items": [{"id": 3, "text": "blue"}]})
        assert r.status_code == 409 and r.json()["error"]["field"] == "model"
        r = c.post("/v1/collections/a/items", json={"items": [{"id": 3, "vector": [0.0, 0.0, 1.0] + [0.0] * (DIM - 3)}]})
        assert r.status_code == 200 and r.json()["count"] == 3
        assert c.post("/v1/collections/b", json={"index": "flat"}).status_code == 201
        r = c.post("/v1/collections/b/items", json={"items": [{"id": 1, "text": "green"}]})
        assert r.status_code == 200
        assert c.post("/v1/search", json={"collection": "b", "text": "green", "k": 1}).json()["hits"][0]["id"] == 1
    with Collection.open(tmp_path / "root" / "b", readonly=True) as coll:
        assert coll.model == {"fingerprint": "bbbb2222", "name": "runs/B", "modalities": ["text"]}
    with Collection.open(tmp_path / "root" / "a", readonly=True) as coll:
        assert coll.model is not None and coll.model["fingerprint"] == "aaaa1111" and len(coll) == 3
