"""Media stored beside a collection (thumbnails, audio) are part of the write that adds them: they become visible
with the save that publishes their items, vanish with a rolled-back or unsaved write, and a crash at any point
leaves no orphan (a writer that opens finishes a published change and removes everything unreferenced)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _index_util import clustered

from polymodal.index import Collection, MediaStore, persist
from polymodal.index.media import thumbnail_png

DIM = 8


def _png(value: int) -> bytes:
    return thumbnail_png(np.full((6, 6, 3), value, np.uint8), 256)


def _media_files(root: Path) -> list[str]:
    """Every file under media/, hidden staging folders included."""
    folder = root / MediaStore.FOLDER
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _coll(tmp_path: Path) -> Collection:
    coll = Collection.create(tmp_path / "c", DIM, index="flat")
    coll.add([1, 2], clustered(2, DIM), media=[{"image": _png(1)}, {"image": _png(2), "audio": b"fLaC-two"}])
    coll.save()
    return coll


def test_media_are_published_by_the_save(tmp_path: Path) -> None:
    coll = Collection.create(tmp_path / "c", DIM, index="flat")
    store = MediaStore(coll.root)
    coll.add([1, 2], clustered(2, DIM), media=[{"image": _png(1)}, None])
    assert store.find(1) is None                 # staged only: the item is not saved yet
    coll.save()
    found = store.find(1, "image")
    assert found is not None and found[0].read_bytes() == _png(1)
    assert store.kinds(2) == []
    assert _media_files(coll.root) == ["1.image.png"]     # no staging left behind
    # an upsert with media replaces the item's media (kinds it no longer has are removed); a delete removes them
    coll.upsert([1], clustered(1, DIM, seed=1), media=[{"audio": b"fLaC-one"}])
    assert store.kinds(1) == ["image"]
    coll.save()
    assert store.kinds(1) == ["audio"]
    coll.delete([1])
    coll.save()
    assert store.kinds(1) == [] and _media_files(coll.root) == []
    coll.close()


def test_upsert_without_media_keeps_the_items_media(tmp_path: Path) -> None:
    coll = _coll(tmp_path)
    coll.upsert([2], clustered(1, DIM, seed=3), [{"m": 1}])
    coll.save()
    assert MediaStore(coll.root).kinds(2) == ["image", "audio"]
    coll.close()


def test_crash_between_media_write_and_save_leaves_no_orphans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    coll = _coll(tmp_path)
    before = _media_files(coll.root)
    coll.add([3], clustered(1, DIM, seed=4), media=[{"image": _png(3)}])
    coll.delete([1])
    monkeypatch.setattr(persist, "publish", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        coll.save()
    monkeypatch.undo()
    _crash(coll)
    again = Collection.open(tmp_path / "c")
    assert sorted(again.ids().tolist()) == [1, 2]
    assert _media_files(again.root) == before            # the staged file is gone, item 1 keeps its image
    again.close()


def test_a_rolled_back_write_takes_its_media_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    coll = _coll(tmp_path)
    before = _media_files(coll.root)
    monkeypatch.setattr(persist, "publish", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        coll.upsert([2, 4], clustered(2, DIM, seed=5), media=[{"image": _png(9)}, {"image": _png(4)}], save=True)
    monkeypatch.undo()
    assert _media_files(coll.root) == before
    coll.upsert([4], clustered(1, DIM, seed=5), media=[{"image": _png(4)}], save=True)
    assert MediaStore(coll.root).find(4, "image")[0].read_bytes() == _png(4)
    assert MediaStore(coll.root).find(2, "image")[0].read_bytes() == _png(2)
    coll.close()


def test_crash_after_the_save_rolls_the_media_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the generation was published but before its media were moved into place: the next writer
    that opens completes the change."""
    coll = _coll(tmp_path)
    coll.upsert([2], clustered(1, DIM, seed=6), media=[{"image": _png(22)}])
    coll.add([5], clustered(1, DIM, seed=7), media=[{"image": _png(5)}])
    coll.delete([1])
    from polymodal.index import media as media_mod

    monkeypatch.setattr(media_mod.PendingMedia, "apply", _crash_now)
    with pytest.raises(_Crash):
        coll.save()
    monkeypatch.undo()
    _crash(coll)
    again = Collection.open(tmp_path / "c")
    assert sorted(again.ids().tolist()) == [2, 5]
    store = MediaStore(again.root)
    assert store.find(2, "image")[0].read_bytes() == _png(22) and store.kinds(2) == ["image"]
    assert store.find(5, "image")[0].read_bytes() == _png(5)
    assert _media_files(again.root) == ["2.image.png", "5.image.png"]
    again.close()


def test_orphans_of_older_writers_are_collected_on_open_and_compact(tmp_path: Path) -> None:
    """Media written straight into the folder (older builders did, before their save) for ids the collection
    does not hold are removed by the next writer's open, and by compact()."""
    coll = _coll(tmp_path)
    MediaStore(coll.root).put(77, "image", _png(7))
    coll.close()
    Collection.open(tmp_path / "c", readonly=True).close()       # readers never touch the folder
    assert "77.image.png" in _media_files(tmp_path / "c")
    coll = Collection.open(tmp_path / "c")
    assert _media_files(coll.root) == ["1.image.png", "2.audio.flac", "2.image.png"]
    MediaStore(coll.root).put(78, "audio", b"x")
    coll.compact()
    assert _media_files(coll.root) == ["1.image.png", "2.audio.flac", "2.image.png"]
    coll.close()


def test_bad_media_arguments_name_the_field(tmp_path: Path) -> None:
    from polymodal.errors import InvalidInput

    coll = _coll(tmp_path)
    for bad in ({"image": _png(1)}, [{"image": _png(1)}], [{"video": b"x"}, None], [{"image": "str"}, None]):
        with pytest.raises(InvalidInput) as err:
            coll.add([10, 11], clustered(2, DIM), media=bad)
        assert err.value.field == "media"
    assert sorted(coll.ids().tolist()) == [1, 2]
    coll.close()


class _Crash(BaseException):
    pass


def _crash_now(*args: Any) -> None:
    raise _Crash


def _crash(coll: Collection) -> None:
    """What a killed process leaves: nothing cleaned up, only the OS releasing its lock."""
    assert coll._lock is not None
    coll._lock.release()
    coll._closed = True
