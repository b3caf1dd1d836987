"""The input of a batch job: a data set seen as a numbered list of items, read by ranges.

A job splits the items ``0 .. n-1`` of a data set (every split of a generated data set one after another, in
manifest order, or the one asked for) into ranges, one per output shard, and each range is read on its own
(by the local loop or by a Ray actor). For WebDataset shards whose ``sizes.json`` gives every tar's count
(what ``polymodal data make`` and `ShardWriter` write) a range opens only the tars it overlaps; otherwise
(JSONL, folders, tars without counts) the items before the range are enumerated without being decoded.
`SequentialReader` keeps that enumeration open between ranges, so the local engine (ranges in increasing
order) reads such data once in all, and each Ray actor about once, instead of once per shard.

The digest that stops a job from resuming on other data (`DataSource.digest`) covers the layout, the item
counts and the index files (manifest.json, sizes.json), plus: for JSONL the manifest's content (sha256; the
files its lines point to are not checked), for folders and tars every file's relative name, size and
modification time (``mtime_ns``). Data edited in place is therefore noticed; data copied elsewhere without
keeping modification times (``cp`` without ``-p``; ``rsync -a`` keeps them) cannot resume a job either."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.formats import ErrorPolicy, open_dataset
from ..data.formats.folder import folder_items
from ..data.formats.jsonl import jsonl_items
from ..data.formats.webdataset import shard_paths, shard_sizes, wds_items
from ..data.sample import Sample
from ..errors import InvalidInput

Item = tuple[str, Callable[[], Sample]]


@dataclass(frozen=True)
class _Segment:
    """A run of consecutive items from one place: one split's tars (with their counts when known), or a
    JSONL manifest / folder."""

    split: str | None
    kind: str                      # "wds" | "jsonl" | "folder"
    path: str                      # tar dir / single tar / manifest / folder
    tars: tuple[str, ...] = ()
    counts: tuple[int, ...] | None = None   # per tar, when sizes.json lists every tar
    count: int = 0


@dataclass(frozen=True)
class DataSource:
    """A data set as a list of items read by ranges; picklable (plain paths and counts), so a Ray actor can
    receive it. Build with `DataSource.open`."""

    path: str
    split: str | None
    segments: tuple[_Segment, ...]
    digest: str

    @classmethod
    def open(cls, path: str | os.PathLike[str], split: str | None = None) -> DataSource:
        ds = open_dataset(path, split)
        root = Path(path).resolve()
        segments: list[_Segment] = []
        if ds.format == "dataset":
            assert ds.manifest is not None
            for name in ([split] if split is not None else ds.splits):
                sub = root / str(ds.manifest["splits"][name]["path"])
                segments.append(_wds_segment(sub, name))
        elif ds.format == "webdataset":
            segments.append(_wds_segment(root, None))
        else:
            segments.append(_Segment(None, ds.format, str(root), count=len(ds)))
        return cls(str(root), split, tuple(segments), _digest(root, segments))

    def __len__(self) -> int:
        return sum(s.count for s in self.segments)

    def read(self, start: int, stop: int, policy: ErrorPolicy | None = None) -> Iterator[tuple[Sample, str | None]]:
        """(sample, split name) for items ``start <= i < stop``, in order. Bad items raise (or are skipped and
        recorded, with ``policy=ErrorPolicy('skip')``)."""
        policy = policy or ErrorPolicy()
        offset = 0
        for seg in self.segments:
            a, b = max(start - offset, 0), min(stop - offset, seg.count)
            offset += seg.count
            if a >= b:
                continue
            for name, make in _items(seg, a, b, policy):
                for sample in policy.guard(make, name):
                    yield sample, seg.split


def _wds_segment(root: Path, split: str | None) -> _Segment:
    tars = shard_paths(root) if root.is_dir() else [root]
    sizes = shard_sizes(root) if root.is_dir() else {}
    counts = tuple(sizes[t.name] for t in tars) if all(t.name in sizes for t in tars) else None
    if counts is not None:
        count = sum(counts)
    else:
        count = len(open_dataset(root))
    return _Segment(split, "wds", str(root), tuple(str(t) for t in tars), counts, count)


def _items(seg: _Segment, a: int, b: int, policy: ErrorPolicy) -> Iterator[Item]:
    """Items ``a <= i < b`` of one segment, not yet decoded."""
    if seg.kind == "wds" and seg.counts is not None:
        first = 0
        for tar, n in zip(seg.tars, seg.counts, strict=True):
            lo, hi = max(a - first, 0), min(b - first, n)
            first += n
            if lo < hi:
                sizes = {Path(tar).name: n}
                yield from itertools.islice(wds_items([Path(tar)], policy, sizes), lo, hi)
        return
    yield from itertools.islice(_all_items(seg, policy), a, b)


def _all_items(seg: _Segment, policy: ErrorPolicy) -> Iterator[Item]:
    """Every item of a segment from its first, not yet decoded."""
    if seg.kind == "wds":
        return wds_items([Path(t) for t in seg.tars], policy)
    if seg.kind == "jsonl":
        return jsonl_items(seg.path)
    if seg.kind == "folder":
        return folder_items(seg.path)
    raise InvalidInput(f"unknown segment kind {seg.kind!r}")  # pragma: no cover - built by DataSource.open


class SequentialReader:
    """`DataSource.read` for ranges asked mostly in increasing order: a segment without per-tar counts (JSONL,
    folder, tars without sizes.json) is enumerated from its start only once, then continued from where the
    previous range stopped (skipping forward over the items of ranges not asked for); a range before that
    point starts again from the first item. Not picklable once used: make one per process."""

    def __init__(self, source: DataSource):
        self.source = source
        self._open: dict[int, tuple[Iterator[Item], int]] = {}   # segment -> (enumeration, next item's index)

    def __len__(self) -> int:
        return len(self.source)

    def read(self, start: int, stop: int, policy: ErrorPolicy | None = None) -> Iterator[tuple[Sample, str | None]]:
        policy = policy or ErrorPolicy()
        offset = 0
        for k, seg in enumerate(self.source.segments):
            a, b = max(start - offset, 0), min(stop - offset, seg.count)
            offset += seg.count
            if a >= b:
                continue
            items = _items(seg, a, b, policy) if seg.kind == "wds" and seg.counts is not None else \
                self._continue(k, seg, a, b, policy)
            for name, make in items:
                for sample in policy.guard(make, name):
                    yield sample, seg.split

    def _continue(self, k: int, seg: _Segment, a: int, b: int, policy: ErrorPolicy) -> Iterator[Item]:
        it, pos = self._open.pop(k, (None, 0))
        if it is None or a < pos:
            it, pos = _all_items(seg, policy), 0
        if a > pos:
            next(itertools.islice(it, a - pos, a - pos), None)   # skip a - pos items
            pos = a
        while pos < b:
            item = next(it, None)
            if item is None:
                return
            pos += 1
            self._open[k] = (it, pos)   # kept only after a clean step: an abandoned range starts over
            yield item
            self._open.pop(k, None)
        self._open[k] = (it, pos)


def _digest(root: Path, segments: list[_Segment]) -> str:
    """What identifies the data cheaply (see the module doc): layout, counts, index files, the JSONL manifest's
    content, every other file's relative name, size and mtime_ns; so that a resumed job notices data that
    is not the data it started on."""
    h = hashlib.sha256(b"polymodal-data-v2\n")
    for seg in segments:
        h.update(f"{seg.split}|{seg.kind}|{seg.count}|{len(seg.tars)}\n".encode())
        for index_file in (Path(seg.path) / "sizes.json",):
            if index_file.is_file():
                h.update(index_file.read_bytes())
        if seg.kind == "jsonl":
            with Path(seg.path).open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        elif seg.kind == "folder":
            base = Path(seg.path)
            for path in sorted(p for p in base.rglob("*") if p.is_file()):
                _stat(h, path, base)
        else:
            for tar in seg.tars:
                _stat(h, Path(tar), Path(tar).parent)
    if (root / "manifest.json").is_file():
        h.update((root / "manifest.json").read_bytes())
    return h.hexdigest()


def _stat(h: Any, path: Path, base: Path) -> None:
    st = path.stat()
    name = path.relative_to(base).as_posix()
    h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())


def describe(source: DataSource) -> dict[str, Any]:
    return {"data": source.path, "split": source.split, "items": len(source), "data_digest": source.digest}


__all__ = ["DataSource", "SequentialReader", "describe"]
