"""Crash safety and multi-process readers.

A child process applies a replayable sequence of writes to an HNSW collection and saves after each step; the
test SIGKILLs it at random moments, 20 times, and after every kill opens the collection and checks that its
content is exactly the state after the last completed save or after the save in flight — never anything
else — and that the index agrees with the vectors. Readers in this process open the collection while a
child writer saves in a loop and must always see one complete state."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _index_util import CRASH_BASE, CRASH_DIM, crash_replay, crash_vec

from polymodal.index import Collection

SRC = Path(__file__).resolve().parents[2] / "src" / "polymodal"
HERE = Path(__file__).resolve().parent

# The child skips the package __init__ files of polymodal, polymodal.index and polymodal.data (which import
# torch, seconds per start) by registering bare packages: each child then starts in well under a second, so 20
# kills fit in a few seconds.
CHILD = f"""
import sys, types
for name in ("polymodal", "polymodal.index", "polymodal.data"):
    pkg = types.ModuleType(name); pkg.__path__ = [{str(SRC)!r} + name[9:].replace(".", "/")]; sys.modules[name] = pkg
sys.path.insert(0, {str(HERE)!r})
import faiss
faiss.omp_set_num_threads(1)
from polymodal.index.collection import Collection
from _index_util import crash_apply
path, steps = sys.argv[1], int(sys.argv[2])
sys.stdin.readline()   # "go": lets the parent start (import) the next child while this one still waits
coll = Collection.open(path)
step = coll.get([0]).metadata[0]["step"]
print("ready", step, flush=True)
for _ in range(steps):
    step += 1
    crash_apply(coll, step)
    coll.save()
    print("saved", step, flush=True)
"""


def _create(path: Path) -> None:
    with Collection.create(path, CRASH_DIM, metric="ip", index="hnsw") as coll:
        ids = list(range(CRASH_BASE))
        coll.add(ids, np.stack([crash_vec(i, 0) for i in ids]), [{"step": 0}] + [{"v": 0}] * (CRASH_BASE - 1))


def _check(coll: Collection) -> int:
    """The collection holds exactly one replayable state; return its step."""
    step = coll.get([0]).metadata[0]["step"]
    expected = crash_replay(step)
    ids = np.sort(coll.ids())
    assert ids.tolist() == sorted(expected), f"ids differ from step {step}"
    items = coll.get(ids)
    for i, vec, meta in zip(items.ids.tolist(), items.vectors, items.metadata, strict=True):
        np.testing.assert_array_equal(vec, expected[i][0])
        assert meta == expected[i][1]
    # the ANN index agrees with the vectors: every item finds itself (ip: exact self-match is the max only
    # after normalization, so compare with exact search instead of assuming rank 1)
    q = items.vectors[:20]
    ann = coll.search(q, k=5, with_metadata=False).ids
    exact = coll.search(q, k=5, params={"exact": True}, with_metadata=False).ids
    assert np.mean([len(set(a) & set(e)) / 5 for a, e in zip(ann, exact, strict=True)]) >= 0.9
    assert len(coll) == len(expected) and coll.info()["count"] == len(expected)
    return int(step)


def _spawn(path: Path, steps: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(steps)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _go(child: subprocess.Popen[str]) -> list[str]:
    """Start a spawned child's writes; returns its 'ready <step>' line."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    line = child.stdout.readline().split()
    assert line[:1] == ["ready"], child.stderr.read() if child.stderr else line
    return line


def test_kill_during_save_leaves_old_or_new_never_broken(tmp_path: Path) -> None:
    path = tmp_path / "c"
    _create(path)
    rng = np.random.default_rng(0)
    last_done = 0
    upcoming = _spawn(path, steps=10_000)
    try:
        for kill in range(20):
            child, line = upcoming, _go(upcoming)
            if kill < 19:
                upcoming = _spawn(path, steps=10_000)   # imports while this child works
            time.sleep(float(rng.uniform(0.02, 0.2)))
            os.kill(child.pid, signal.SIGKILL)
            out, _ = child.communicate()
            # only whole lines: the kill can cut the child's last line short ("saved" without its number)
            complete = out.split("\n")[:-1]
            saved = [int(m.group(1)) for w in complete if (m := re.fullmatch(r"saved (\d+)", w))]
            last_done = saved[-1] if saved else int(line[1])
            with Collection.open(path, readonly=True) as coll:
                step = _check(coll)
            # the save in flight may or may not have landed; nothing older, nothing half-way
            assert step in (last_done, last_done + 1), (step, last_done)
    finally:
        upcoming.kill()
        upcoming.communicate()
    # a writer opening after the crashes removes their leftovers (temp folders, unswitched generations)
    with Collection.open(path) as coll:
        _check(coll)
    names = [p.name for p in path.iterdir()]
    assert not [n for n in names if n.startswith(".tmp")], names
    assert len([n for n in names if n.startswith("gen-")]) <= 2
    assert last_done >= 3   # the children really did make progress between kills


def test_readers_in_other_processes_never_see_half_written_state(tmp_path: Path) -> None:
    path = tmp_path / "c"
    _create(path)
    child = _spawn(path, steps=15)
    _go(child)
    seen = set()
    try:
        deadline = time.monotonic() + 20
        while child.poll() is None and time.monotonic() < deadline:
            with Collection.open(path, readonly=True) as coll:
                seen.add(_check(coll))
    finally:
        child.kill()
        child.communicate()
    assert len(seen) >= 2   # readers did overlap with several saves


def test_reopen_after_restart_in_a_fresh_process_gives_identical_results(tmp_path: Path) -> None:
    path = tmp_path / "c"
    _create(path)
    child = _spawn(path, steps=3)
    child.communicate("go\n", timeout=60)
    assert child.returncode == 0
    q = np.stack([crash_vec(10_000 + i, 0) for i in range(10)])
    with Collection.open(path, readonly=True) as coll:
        assert _check(coll) == 3
        first = coll.search(q, k=7, filter={"v": {"gte": 1}})
    with Collection.open(path, readonly=True) as coll:
        second = coll.search(q, k=7, filter={"v": {"gte": 1}})
    np.testing.assert_array_equal(first.ids, second.ids)
    np.testing.assert_array_equal(first.scores, second.scores)
    assert first.metadata == second.metadata


def test_corrupt_generation_is_reported_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "c"
    _create(path)
    live = (path / "CURRENT").read_text().strip()
    with open(path / live / "vectors.npy", "ab") as fh:   # damage outside our control (not a crash)
        fh.write(b"xx")
    from polymodal.errors import InvalidInput

    with pytest.raises(InvalidInput, match="vectors.npy"):
        Collection.open(path, readonly=True)
