"""The front door: ``open_dataset(path)`` detects the format and returns a re-iterable, streaming `Dataset`.

Detected, in this order:
  - a generated data set dir: ``manifest.json`` with ``"splits": {name: {"path": subdir, "count": n}}``,
    each split a WebDataset shard dir (written by `polymodal.data.synth`);
  - a WebDataset shard dir (``sizes.json`` or ``*.tar``) or a single ``.tar`` shard;
  - a ``.jsonl`` manifest;
  - any other folder: the folder format (media + sidecar captions by stem).
Iteration decodes one sample at a time (constant memory) and re-reads the files on every pass."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ..._io import read_json_object
from ...errors import InvalidInput, NotFound
from ..sample import Sample
from .common import ErrorPolicy
from .folder import folder_items
from .jsonl import count_lines, jsonl_items
from .webdataset import Item, shard_paths, shard_sizes, wds_items

FORMATS = ("dataset", "webdataset", "jsonl", "folder")


def detect_format(path: Path) -> str:
    if not path.exists():
        raise NotFound("no such file or folder", source=str(path))
    if path.is_file():
        if path.suffix.lower() == ".jsonl":
            return "jsonl"
        if path.suffix.lower() == ".tar":
            return "webdataset"
        raise InvalidInput("a data set file must be a .jsonl manifest or a .tar shard", source=str(path))
    if (path / "manifest.json").is_file() and "splits" in _read_manifest(path):
        return "dataset"
    if (path / "sizes.json").is_file() or any(path.glob("*.tar")):
        return "webdataset"
    return "folder"


def _read_manifest(path: Path) -> dict[str, Any]:
    return read_json_object(path / "manifest.json")


def _split_table(path: Path, manifest: dict[str, Any]) -> dict[str, tuple[Path, int | None]]:
    """{split: (shard dir, count)} in manifest order, checked."""
    src = str(path / "manifest.json")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise InvalidInput("expected a non-empty object {name: {path, count}}", field="splits", source=src)
    table = {}
    for name, spec in splits.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str):
            raise InvalidInput(f"split '{name}' needs a \"path\" string", field="splits", source=src)
        count = spec.get("count")
        if count is not None and (not isinstance(count, int) or count < 0):
            raise InvalidInput(f"split '{name}' has a bad count {count!r}", field="splits", source=src)
        table[name] = (path / spec["path"], count)
    return table


def _count_tar(path: Path) -> int:
    keys: set[str] = set()
    with tarfile.open(path, mode="r") as tar:
        for member in tar:
            if member.isfile():
                keys.add(os.path.basename(member.name).partition(".")[0])
    return len(keys)


def _wds_len(root: Path) -> int:
    sizes = shard_sizes(root)
    if sizes:
        return sum(sizes.values())
    try:
        return sum(_count_tar(p) for p in (shard_paths(root) if root.is_dir() else [root]))
    except (tarfile.TarError, OSError) as exc:
        raise InvalidInput(f"cannot count samples ({exc})", source=str(root)) from None


class Dataset:
    """A data set on disk: iterate it (any number of times), take ``len()``, or read one rank's share.

    ``len()`` counts stored items (from ``sizes.json`` / manifest counts, else by counting), before any
    are skipped. ``policy`` collects what the most recent pass skipped (``on_error='skip'``)."""

    def __init__(self, path: str | os.PathLike[str], split: str | None = None, on_error: str = "raise",
                 expect_sample_rate: int | None = None):
        self.path = Path(path)
        self.policy = ErrorPolicy(on_error)
        self.format = detect_format(self.path)
        self.split = split
        self.expect_sample_rate = expect_sample_rate
        self.manifest: dict[str, Any] | None = None
        self._splits: dict[str, tuple[Path, int | None]] = {}
        self._len: int | None = None
        if expect_sample_rate is not None and (not isinstance(expect_sample_rate, int) or expect_sample_rate <= 0):
            raise InvalidInput(f"expected a positive integer, got {expect_sample_rate!r}", field="sample_rate")
        if self.format == "dataset":
            self.manifest = _read_manifest(self.path)
            self._splits = _split_table(self.path, self.manifest)
            if split is not None and split not in self._splits:
                raise NotFound(f"no split '{split}'; available: {', '.join(self._splits)}", field="split",
                               source=str(self.path / "manifest.json"))
        elif split is not None:
            raise InvalidInput(f"a split was asked for, but this is a {self.format} source, not a generated "
                               "data set dir with manifest.json", field="split", source=str(self.path))

    @property
    def splits(self) -> list[str]:
        """Split names of a generated data set dir in manifest order ([] for other formats)."""
        return list(self._splits)

    def _selected(self) -> list[str]:
        return [self.split] if self.split is not None else self.splits

    def _items(self) -> Iterator[Item]:
        if self.format == "dataset":
            for name in self._selected():
                root = self._splits[name][0]
                yield from wds_items(shard_paths(root), self.policy, shard_sizes(root))
        elif self.format == "webdataset":
            shards = shard_paths(self.path) if self.path.is_dir() else [self.path]
            yield from wds_items(shards, self.policy, shard_sizes(self.path))
        elif self.format == "jsonl":
            yield from jsonl_items(self.path)
        else:
            yield from folder_items(self.path)

    def _decode(self, make: Callable[[], Sample]) -> Sample:
        s = make()
        want = self.expect_sample_rate
        if want is not None and s.audio is not None and s.sample_rate != want:
            raise InvalidInput(f"sample '{s.id}': audio is {s.sample_rate} Hz, expected {want} Hz", field="sample_rate", source=s.source)
        return s

    def __iter__(self) -> Iterator[Sample]:
        return self.iter_shard(0, 1)

    def iter_shard(self, rank: int, world: int) -> Iterator[Sample]:
        """Every ``world``-th item starting at ``rank`` (item i goes to rank i % world): over all ranks,
        each item exactly once. Other ranks' items are not decoded."""
        if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
            raise InvalidInput(f"need 0 <= rank < world, got rank={rank!r} world={world!r}", field="rank")
        return self._pass(rank, world)

    def _pass(self, rank: int, world: int) -> Iterator[Sample]:
        self.policy.skipped.clear()
        for i, (name, make) in enumerate(self._items()):
            if i % world == rank:
                yield from self.policy.guard(partial(self._decode, make), name)

    def __len__(self) -> int:
        if self._len is None:
            self._len = self._count()
        return self._len

    def _count(self) -> int:
        if self.format == "dataset":
            total = 0
            for name in self._selected():
                root, count = self._splits[name]
                total += count if count is not None else _wds_len(root)
            return total
        if self.format == "webdataset":
            return _wds_len(self.path)
        if self.format == "jsonl":
            return count_lines(self.path)
        return sum(1 for _ in folder_items(self.path))

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        return f"Dataset({str(self.path)!r}, format={self.format!r}{split})"


def open_dataset(path: str | os.PathLike[str], split: str | None = None, on_error: str = "raise",
                 expect_sample_rate: int | None = None) -> Dataset:
    """Open a data set in any supported format (see the module doc).

    ``split``: one split of a generated data set dir (default: all, in manifest order).
    ``on_error``: ``'raise'`` (stop at the first bad item, naming its file) or ``'skip'`` (skip it and record
    it in ``ds.policy``; ``ds.policy.summary()`` gives the count and first names).
    ``expect_sample_rate``: audio at any other rate is an error naming the file."""
    return Dataset(path, split=split, on_error=on_error, expect_sample_rate=expect_sample_rate)
