"""WebDataset tar shards: ``000000.tar, 000001.tar, ...`` plus ``sizes.json`` ({shard: count}).

Members of one sample are consecutive and named ``{id}.{ext}`` (see `polymodal.data.codec`).
Writing is deterministic (fixed mtime/owner) and atomic per shard (temp file, fsync, rename).
Reading streams one sample at a time, so memory stays constant whatever the data set size."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from ...errors import InvalidInput, NotFound
from ..codec import sample_from_fields, sample_to_fields
from ..sample import Sample
from .common import ErrorPolicy, atomic_write_bytes


class ShardWriter:
    """Write samples into numbered tar shards of at most ``shard_size`` samples."""

    def __init__(self, out_dir: str | os.PathLike[str], shard_size: int = 1000):
        if shard_size < 1:
            raise InvalidInput(f"shard_size must be >= 1, got {shard_size}", field="shard_size")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.sizes: dict[str, int] = {}
        self._buf: io.BytesIO | None = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._seen: set[str] = set()

    def write(self, sample: Sample) -> None:
        if sample.id in self._seen:
            raise InvalidInput(f"duplicate sample id '{sample.id}'", field="id", source=str(self.out_dir))
        self._seen.add(sample.id)
        if self._tar is None:
            self._buf = io.BytesIO()
            self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.USTAR_FORMAT)
        for ext, data in sample_to_fields(sample).items():
            info = tarfile.TarInfo(f"{sample.id}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        if self._count >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if self._tar is None or self._buf is None:
            return
        self._tar.close()
        name = f"{len(self.sizes):06d}.tar"
        atomic_write_bytes(self.out_dir / name, self._buf.getvalue())
        self.sizes[name] = self._count
        self._tar, self._buf, self._count = None, None, 0

    def close(self) -> dict[str, int]:
        self._flush()
        atomic_write_bytes(self.out_dir / "sizes.json", (json.dumps(self.sizes, indent=1) + "\n").encode())
        return self.sizes

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def shard_paths(root: str | os.PathLike[str]) -> list[Path]:
    root = Path(root)
    sizes = root / "sizes.json"
    if sizes.exists():
        try:
            names = list(json.loads(sizes.read_text()))
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"invalid JSON ({exc})", source=str(sizes)) from None
        paths = [root / n for n in names]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise NotFound(f"shard listed in sizes.json is missing: {missing[0]}", source=str(sizes))
        return paths
    paths = sorted(root.glob("*.tar"))
    if not paths:
        raise NotFound("no .tar shards found", source=str(root))
    return paths


def read_shard(path: Path, policy: ErrorPolicy) -> Iterator[Sample]:
    """Yield the samples of one shard, grouping consecutive members by key."""
    try:
        tar = tarfile.open(path, mode="r")
    except (tarfile.TarError, OSError) as exc:
        policy.handle(InvalidInput(f"cannot open shard ({exc})", source=str(path)), str(path))
        return
    with tar:
        key: str | None = None
        fields: dict[str, bytes] = {}
        try:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                k, _, ext = base.partition(".")
                if k != key and key is not None:
                    yield from _decode(key, fields, path, policy)
                    fields = {}
                key = k
                f = tar.extractfile(member)
                fields[ext] = f.read() if f is not None else b""
        except (tarfile.TarError, OSError, EOFError) as exc:
            policy.handle(InvalidInput(f"corrupt shard ({exc})", source=str(path)), str(path))
            return
        if key is not None:
            yield from _decode(key, fields, path, policy)


def _decode(key: str, fields: dict[str, bytes], path: Path, policy: ErrorPolicy) -> Iterator[Sample]:
    name = f"{path}:{key}"
    yield from policy.guard(lambda: sample_from_fields(key, fields, name), name)


def read_webdataset(root: str | os.PathLike[str], policy: ErrorPolicy | None = None,
                    shards: list[Path] | None = None) -> Iterator[Sample]:
    policy = policy or ErrorPolicy()
    for path in shards if shards is not None else shard_paths(root):
        yield from read_shard(path, policy)
