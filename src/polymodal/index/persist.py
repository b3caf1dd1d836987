"""Crash-safe storage of a collection as immutable generations.

    collection/
      CURRENT              one line: the name of the live generation, e.g. "gen-000007"
      LOCK                 flock'ed by the (single) writer process, which writes its pid into it
      .work.sqlite         the writer's private working copy of the metadata (disposable)
      gen-000007/          state.json, ids.npy, vectors.npy, meta.sqlite, [index.faiss, labels.npy, dead.npy]

A save writes a whole new generation into ``.tmp-gen-N-PID/`` (unchanged files are hard-linked from the
previous generation), fsyncs every file and the folder, renames it to ``gen-N`` and fsyncs the parent, then
replaces CURRENT atomically (temp file, fsync, rename, fsync the folder). A process killed at any point
leaves CURRENT naming a complete generation: the old one until the rename of CURRENT, the new one after.
Readers read CURRENT once and open that generation; the previous generation is kept so a reader that read
CURRENT just before a switch still finds its files, and readers retry when a generation vanished anyway.
Leftovers of a crash (temp folders, generations newer than CURRENT) are removed when a writer opens. Deleting
a whole collection (`remove_collection`) is done under the writer lock, CURRENT first."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import CollectionLocked, InvalidInput, NotFound

FORMAT_VERSION = 1
CURRENT = "CURRENT"
LOCK = "LOCK"
WORK_DB = ".work.sqlite"
T = TypeVar("T")
_GEN = re.compile(r"^gen-(\d{6,})$")


def gen_name(number: int) -> str:
    return f"gen-{number:06d}"


def gen_number(name: str) -> int:
    m = _GEN.match(name)
    if not m:
        raise InvalidInput(f"CURRENT names {name!r}, not a generation", field="CURRENT")
    return int(m.group(1))


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on folders; the data files are synced anyway
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def is_collection(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a collection (its CURRENT pointer exists)."""
    return (Path(path) / CURRENT).is_file()


def read_current(root: Path) -> str:
    try:
        name = (root / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise NotFound("not a polymodal collection (no CURRENT file)", source=str(root)) from None
    gen_number(name)
    return name


def write_current(root: Path, name: str) -> None:
    tmp = root / f".{CURRENT}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / CURRENT)
    fsync_path(root)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


def read_state(folder: Path) -> dict[str, Any]:
    """state.json of a generation, checked against the files it lists (name -> size)."""
    path = folder / "state.json"
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"corrupt state file ({exc})", source=str(path)) from None
    if state.get("format") != FORMAT_VERSION:
        raise InvalidInput(f"unsupported collection format {state.get('format')!r}", source=str(path))
    for name, size in state["files"].items():
        actual = (folder / name).stat().st_size   # FileNotFoundError: the generation vanished (caller retries)
        if actual != size:
            raise InvalidInput(f"{name} is {actual} bytes, state.json says {size}", source=str(folder))
    return state


def new_tmp_folder(root: Path, number: int) -> Path:
    tmp = root / f".tmp-{gen_name(number)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def link_or_copy(src: Path, dst: Path) -> None:
    """Generations are immutable, so an unchanged file is shared by a hard link."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        fsync_path(dst)


def publish(root: Path, tmp: Path, number: int, state: dict[str, Any]) -> str:
    """Write state.json (listing each file's size), make the folder durable, switch CURRENT to it."""
    files = sorted(p.name for p in tmp.iterdir())
    for name in files:
        fsync_path(tmp / name)
    state = dict(state, format=FORMAT_VERSION, files={n: (tmp / n).stat().st_size for n in files})
    write_json(tmp / "state.json", state)
    fsync_path(tmp)
    name = gen_name(number)
    final = root / name
    if final.exists():   # left by a crash between this rename and the CURRENT switch; never live
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_path(root)
    write_current(root, name)
    return name


def cleanup(root: Path, live: str, keep_previous: bool = True) -> None:
    """Remove temp folders and every generation except the live one (and the one before it)."""
    live_n = gen_number(live)
    for p in root.iterdir():
        m = _GEN.match(p.name)
        stale_tmp = p.name.startswith(".tmp-gen-") or (p.name.startswith(f".{CURRENT}.") and p.name.endswith(".tmp"))
        old = m is not None and (int(m.group(1)) > live_n or int(m.group(1)) < live_n - (1 if keep_previous else 0))
        if stale_tmp or old:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


class WriterLock:
    """An exclusive flock on ``root/LOCK``: one writer per collection, across processes (and objects). The
    holder writes its pid into the file, so a refused contender can say who holds it."""

    def __init__(self, root: Path):
        self._fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(self._fd)
            os.close(self._fd)
            self._fd = -1
            who = f"process {pid}" if pid is not None else "another process"
            who += " (this process: another Collection object)" if pid == os.getpid() else ""
            raise CollectionLocked(f"the collection is already open for writing by {who}; close it there first "
                                   "or open with readonly=True", pid=pid, source=str(root)) from None
        with contextlib.suppress(OSError):   # the pid is a courtesy for error messages, never needed for safety
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def __del__(self) -> None:
        self.release()

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def remove_collection(root: Path) -> None:
    """Delete a collection folder; the caller holds its writer lock. CURRENT goes first (durably), so from then
    on nothing opens it as a collection, whatever happens to the rest of the removal."""
    (root / CURRENT).unlink(missing_ok=True)
    fsync_path(root)
    shutil.rmtree(root)
    with contextlib.suppress(OSError):
        fsync_path(root.parent)


def open_generation(root: Path, load: Callable[[str, Path, dict[str, Any]], T], attempts: int = 20) -> T:
    """``load(name, folder, state)`` for the live generation; retried when its files vanish under a concurrent
    save's cleanup (the reader then picks up the newer generation)."""
    last: Exception | None = None
    for i in range(attempts):
        name = read_current(root)
        folder = root / name
        try:
            return load(name, folder, read_state(folder))
        except FileNotFoundError as exc:
            last = exc
            time.sleep(0.005 * (i + 1))
    raise NotFound(f"the live generation kept vanishing while opening ({last})", source=str(root))
