"""The writer lock guards every destructive step: deleting a collection takes it (or refuses with a Conflict
that names the process holding it), and a service that fell back to read-only because another process held it
picks up that process's saves and becomes the writer once the lock is free."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _index_util import clustered

from polymodal.errors import Conflict, InvalidInput, NotFound
from polymodal.index import Collection, is_collection

DIM = 8
SRC = Path(__file__).resolve().parents[2] / "src" / "polymodal"

# A separate process that holds the writer lock until told to go. It registers bare packages, skipping the
# package __init__ files (polymodal's and polymodal.data's import torch, seconds per start).
HOLDER = f"""
import sys, types
for name in ("polymodal", "polymodal.index", "polymodal.data"):
    pkg = types.ModuleType(name); pkg.__path__ = [{str(SRC)!r} + name[9:].replace(".", "/")]; sys.modules[name] = pkg
from polymodal.index.collection import Collection
coll = Collection.open(sys.argv[1])
print("locked", flush=True)
for line in sys.stdin:
    if line.strip() == "add":
        coll.add([1000 + len(coll)], [[1.0] * {DIM}], save=True)
        print("added", flush=True)
    else:
        break
coll.close()
print("closed", flush=True)
"""


class Holder:
    """A writer in another process; ``add()`` makes it add one item and save; ``close()`` releases the lock."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._expect("locked")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _expect(self, word: str) -> None:
        line = self.proc.stdout.readline().strip()   # type: ignore[union-attr]
        assert line == word, (line, self.proc.stderr.read() if line == "" else "")   # type: ignore[union-attr]

    def add(self) -> None:
        self.proc.stdin.write("add\n")   # type: ignore[union-attr]
        self.proc.stdin.flush()          # type: ignore[union-attr]
        self._expect("added")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("close\n")   # type: ignore[union-attr]
            self.proc.stdin.flush()            # type: ignore[union-attr]
            self._expect("closed")
            self.proc.wait(timeout=60)


@pytest.fixture
def coll_path(tmp_path: Path) -> Path:
    path = tmp_path / "root" / "c"
    with Collection.create(path, DIM, index="flat") as coll:
        coll.add([1, 2], clustered(2, DIM))
    return path


@pytest.fixture
def holder(coll_path: Path) -> Iterator[Holder]:
    h = Holder(coll_path)
    yield h
    h.close()


# ------------------------------------------------------------------------------------------ deleting

def test_destroy_refuses_while_another_process_writes(coll_path: Path, holder: Holder) -> None:
    with pytest.raises(Conflict) as err:
        Collection.destroy(coll_path)
    assert str(holder.pid) in str(err.value)
    assert is_collection(coll_path)
    holder.add()                      # the holder's next save still works: nothing was deleted under it
    holder.close()
    with Collection.open(coll_path, readonly=True) as again:
        assert len(again) == 3
    Collection.destroy(coll_path)     # free now: removed
    assert not coll_path.exists()
    with pytest.raises(NotFound):
        Collection.destroy(coll_path)


def test_a_second_writer_in_this_process_is_refused_too(coll_path: Path) -> None:
    writer = Collection.open(coll_path)
    with pytest.raises(Conflict, match=str(os.getpid())):
        Collection.destroy(coll_path)
    with pytest.raises(InvalidInput, match="already open for writing"):   # still an InvalidInput for old callers
        Collection.open(coll_path)
    writer.drop()                     # the writer itself may delete what it holds
    assert not coll_path.exists()
    with pytest.raises(InvalidInput, match="closed"):
        writer.add([5], clustered(1, DIM))


def test_a_reader_cannot_drop(coll_path: Path) -> None:
    reader = Collection.open(coll_path, readonly=True)
    with pytest.raises(InvalidInput, match="read-only"):
        reader.drop()
    reader.close()
    assert is_collection(coll_path)


# ------------------------------------------------------------------------------------------ the service's store

@pytest.fixture
def store_mod() -> Any:
    """The service's collection store (needs the [serve] extra: these tests are skipped without it)."""
    return pytest.importorskip("polymodal.serve.store", exc_type=ImportError)


def test_service_delete_refuses_while_another_process_writes(coll_path: Path, holder: Holder, store_mod: Any) -> None:
    store = store_mod.CollectionStore(coll_path.parent)
    handle = store.get("c")
    assert handle.coll.readonly            # served read-only meanwhile
    with pytest.raises(Conflict) as err:
        store.delete("c")
    assert str(holder.pid) in str(err.value)
    holder.add()
    holder.close()
    with Collection.open(coll_path, readonly=True) as again:
        assert len(again) == 3
    store.delete("c")                      # the lock is free: deleted
    assert not coll_path.exists() and store.names() == []
    store.close()


def test_service_read_only_fallback_refreshes_and_becomes_the_writer(coll_path: Path, holder: Holder,
                                                                    store_mod: Any) -> None:
    store = store_mod.CollectionStore(coll_path.parent)
    handle = store.get("c")
    assert handle.coll.readonly and len(handle.readable()) == 2
    with pytest.raises(Conflict) as err:
        handle.writable()
    assert str(holder.pid) in str(err.value)
    holder.add()
    assert len(handle.readable()) == 3    # reads see what the other writer saved
    holder.close()
    coll = handle.writable()              # the lock is free now: the service takes it
    assert not coll.readonly and handle.coll is coll and len(coll) == 3
    coll.add([50], clustered(1, DIM, seed=2), save=True)
    store.close()
    with Collection.open(coll_path, readonly=True) as again:
        assert len(again) == 4


class _Model:
    modalities = ("text",)
    dim = DIM
    fingerprint = "fake-model-1"

    def embed(self, text: Any = None, **_: Any) -> np.ndarray:
        rows = [np.random.default_rng(len(t)).standard_normal(DIM) for t in text]
        out = np.stack(rows).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_http_writes_wait_for_the_other_writer_then_succeed(coll_path: Path, holder: Holder, store_mod: Any) -> None:
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    app = create_app(_Model(), root=coll_path.parent)
    with TestClient(app, raise_server_exceptions=False) as c:
        item = {"items": [{"id": 9, "vector": [1.0] * DIM}]}
        r = c.post("/v1/collections/c/items", json=item)
        assert r.status_code == 409 and str(holder.pid) in r.json()["error"]["message"]
        assert c.delete("/v1/collections/c").status_code == 409
        holder.add()
        hits = c.post("/v1/search", json={"collection": "c", "vector": [1.0] * DIM, "k": 10}).json()["hits"]
        assert len(hits) == 3             # the fallback reader picked up the other writer's save
        holder.close()
        r = c.post("/v1/collections/c/items", json=item)
        assert r.status_code == 200 and r.json()["count"] == 4
    with Collection.open(coll_path, readonly=True) as again:
        assert len(again) == 4


def test_http_failed_save_is_not_searchable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upsert behind POST .../items and its save are one step: a failed save leaves nothing searchable."""
    pytest.importorskip("polymodal.serve", exc_type=ImportError)
    from fastapi.testclient import TestClient

    from polymodal.index import persist
    from polymodal.serve import create_app

    app = create_app(_Model(), root=tmp_path / "root", collection=tmp_path / "root" / "main")
    with TestClient(app, raise_server_exceptions=False) as c:
        ok = {"items": [{"id": 1, "text": "kept", "metadata": {"v": 1}}]}
        assert c.post("/v1/collections/main/items", json=ok).status_code == 200
        monkeypatch.setattr(persist, "publish", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
        bad = {"items": [{"id": 1, "text": "replaced", "metadata": {"v": 2}}, {"id": 2, "vector": [1.0] * DIM}]}
        assert c.post("/v1/collections/main/items", json=bad).status_code == 500
        assert c.post("/v1/collections/main/items/delete", json={"ids": [1]}).status_code == 500
        monkeypatch.undo()
        hits = c.post("/v1/search", json={"vector": [1.0] * DIM, "k": 10}).json()["hits"]
        assert [(h["id"], h["metadata"]) for h in hits] == [(1, {"v": 1, "caption": "kept"})]
        assert c.post("/v1/collections/main/items", json=bad).status_code == 200
        assert c.get("/v1/collections/main").json()["count"] == 2
