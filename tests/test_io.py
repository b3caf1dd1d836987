"""`polymodal._io`: atomic writes (a failed write leaves the old file and no temp file) and JSON helpers."""

import os
import stat
from pathlib import Path

import pytest

from polymodal._io import atomic_write_bytes, atomic_writer, deep_merge, read_json_object
from polymodal.errors import ConfigError, InvalidInput, NotFound


@pytest.mark.parametrize("fsync", [True, False])
def test_atomic_writer_replaces_whole_or_not_at_all(tmp_path: Path, fsync: bool) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old", fsync=fsync)
    with pytest.raises(RuntimeError), atomic_writer(target, fsync=fsync) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]  # no temp file left
    with atomic_writer(target, fsync=fsync) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # the usual mode, not mkstemp's 0600


def test_read_json_object_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        read_json_object(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(InvalidInput, match="expected a JSON object") as err:
        read_json_object(tmp_path / "list.json")
    assert err.value.source == str(tmp_path / "list.json") and type(err.value) is InvalidInput
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="invalid JSON"):
        read_json_object(tmp_path / "bad.json", ConfigError)
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_json_object(tmp_path / "ok.json") == {"a": 1}


def test_deep_merge_does_not_touch_its_inputs() -> None:
    base, over = {"a": {"b": [1]}}, {"a": {"c": 2}}
    out = deep_merge(base, over)
    out["a"]["b"].append(9)
    assert base == {"a": {"b": [1]}} and over == {"a": {"c": 2}} and out == {"a": {"b": [1, 9], "c": 2}}
