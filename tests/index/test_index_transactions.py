"""A write is all or nothing. Whatever fails — validation, the index maintenance that follows a write (training,
a move to a bigger index), or the save that acknowledges it (``save=True``) — the in-memory collection is left
exactly as it was (ids, vectors, metadata, search results, parameters), and it keeps accepting writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _index_util import clustered

from polymodal.errors import InvalidInput, NotFound
from polymodal.index import Collection, persist

DIM = 8
KINDS = ["flat", "hnsw", "ivf_flat", "ivf_pq"]


def _make(tmp_path: Path, kind: str, n: int = 1200) -> Collection:
    coll = Collection.create(tmp_path / f"c-{kind}", DIM, index=kind)
    coll.add(np.arange(n) * 3, clustered(n, DIM), [{"i": i, "even": i % 2 == 0} for i in range(n)])
    coll.save()
    return coll


def _state(coll: Collection) -> tuple[Any, ...]:
    """Everything a caller can observe of the content, plus what search returns."""
    q = clustered(20, DIM, seed=5)
    res = coll.search(q, k=10)
    flt = coll.search(q, k=5, filter={"even": True})
    ids = np.sort(coll.ids())
    items = coll.get(ids)
    info = coll.info()
    return (len(coll), ids.tolist(), items.vectors.tobytes(), items.metadata, res.ids.tolist(), res.scores.tobytes(),
            res.metadata, flt.ids.tolist(), info["params"], info["tuned"], info["kind"], info["faiss"],
            info["count"])


class Boom(RuntimeError):
    pass


def _boom(*args: Any, **kwargs: Any) -> None:
    raise Boom("injected failure")


WRITES = {
    "add": lambda c: c.add([100_001, 100_002], clustered(2, DIM, seed=9), [{"new": 1}, {"new": 2}]),
    "upsert": lambda c: c.upsert([0, 3, 100_003], clustered(3, DIM, seed=8), [{"u": 1}, {"u": 2}, {"u": 3}]),
    "upsert_keep": lambda c: c.upsert([6, 100_004], clustered(2, DIM, seed=7)),
    "delete": lambda c: c.delete([9, 12, 15]),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("write", list(WRITES))
def test_failed_maintenance_rolls_the_write_back(tmp_path: Path, kind: str, write: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    coll = _make(tmp_path, kind)
    before = _state(coll)
    monkeypatch.setattr(coll, "_maintain", _boom)
    with pytest.raises(Boom):
        WRITES[write](coll)
    assert _state(coll) == before
    assert not coll.info()["unsaved_changes"]
    monkeypatch.undo()
    WRITES[write](coll)                       # the same write now succeeds
    coll.add([200_000], clustered(1, DIM, seed=11))
    coll.close()
    with Collection.open(coll.root, readonly=True) as again:
        assert 200_000 in again.ids().tolist()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("write", list(WRITES))
def test_failed_save_rolls_the_acknowledging_write_back(tmp_path: Path, kind: str, write: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``save=True``: the write and the save that makes it durable are one step; a save that fails (disk full)
    undoes the write in memory, so nothing the caller was told failed is ever searchable."""
    coll = _make(tmp_path, kind)
    before = _state(coll)
    gen = coll.info()["generation"]
    monkeypatch.setattr(persist, "publish", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError, match="No space"):
        WRITES[write](_Saving(coll))
    assert _state(coll) == before
    assert coll.info()["generation"] == gen and not coll.info()["unsaved_changes"]
    monkeypatch.undo()
    WRITES[write](_Saving(coll))
    after = _state(coll)
    coll.close()
    with Collection.open(coll.root, readonly=True) as again:
        assert _state(again)[:4] == after[:4]


class _Saving:
    """Calls add/upsert/delete with save=True."""

    def __init__(self, coll: Collection):
        self.coll = coll

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.coll, name)
        return lambda *a, **k: method(*a, save=True, **k)


def test_real_training_failure_is_rolled_back(tmp_path: Path) -> None:
    """IVF-PQ with 4096 codes per sub-quantizer cannot train on ~1000 points: the write that would train it
    fails with a clear error and is not applied; smaller writes still work."""
    coll = Collection.create(tmp_path / "c", DIM, index="IVF4,PQ2x12")
    coll.add(np.arange(900), clustered(900, DIM), [{"i": i} for i in range(900)])
    coll.save()
    before = _state(coll)
    with pytest.raises(InvalidInput) as err:
        coll.add(np.arange(900, 1100), clustered(200, DIM, seed=1))
    assert err.value.field == "index" and "IVF4,PQ2x12" in str(err.value)
    assert _state(coll) == before
    coll.add([5000], clustered(1, DIM, seed=2), [{"i": 5000}])
    coll.close()
    with Collection.open(tmp_path / "c", readonly=True) as again:
        assert len(again) == 901 and again.get([5000]).metadata == [{"i": 5000}]


@pytest.mark.parametrize("metadata", [
    [{"caption": "\ud800"}],                       # a lone surrogate (JSON "\\ud800" decodes to one)
    [{"\udc00": 1}],                               # in a key
    [{"a": {"b": ["ok", "x\udfffy"]}}],            # nested
])
@pytest.mark.parametrize("method", ["add", "upsert"])
def test_unencodable_strings_are_rejected_before_anything_changes(tmp_path: Path, metadata: list[dict[str, Any]],
                                                                   method: str) -> None:
    coll = _make(tmp_path, "hnsw", n=50)
    before = _state(coll)
    with pytest.raises(InvalidInput) as err:
        getattr(coll, method)([7777], clustered(1, DIM, seed=3), metadata)
    assert err.value.field == "metadata" and "UTF-8" in str(err.value)
    assert _state(coll) == before
    # the collection is not marked broken: later writes and saves work
    coll.upsert([7777], clustered(1, DIM, seed=3), [{"caption": "fine"}])
    coll.save()
    coll.close()
    with Collection.open(coll.root, readonly=True) as again:
        assert again.get([7777]).metadata == [{"caption": "fine"}]


def test_a_failed_write_never_leaves_the_collection_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failures inside the storage layers themselves (here: the FAISS add) are undone as well."""
    coll = _make(tmp_path, "ivf_flat")
    before = _state(coll)
    monkeypatch.setattr(coll._ann, "add", _boom)
    with pytest.raises(Boom):
        coll.upsert([0, 100_000], clustered(2, DIM, seed=4))
    monkeypatch.undo()
    assert _state(coll) == before
    with pytest.raises(NotFound):
        coll.get([100_000])
    coll.upsert([0, 100_000], clustered(2, DIM, seed=4))
    coll.save()
    coll.close()
