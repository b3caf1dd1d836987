"""WebDataset tar shards: ``000000.tar, 000001.tar, ...`` plus ``sizes.json`` ({shard: count}).

Members of one sample are consecutive and named ``{id}.{ext}`` (see `polymodal.data.codec`).
Writing is deterministic (fixed mtime/owner) and atomic per shard (temp file, fsync, rename).
Reading streams one sample at a time, so memory stays constant whatever the data set size."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..._io import atomic_write_bytes
from ...errors import InvalidInput, NotFound
from ..codec import sample_from_fields, sample_to_fields
from ..sample import Sample
from .common import ErrorPolicy

Item = tuple[str, Callable[[], Sample]]  # (name for reports, decode)


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


def wds_items(shards: list[Path], policy: ErrorPolicy, sizes: dict[str, int] | None = None) -> Iterator[Item]:
    """(``shard:key``, decode) per sample of WebDataset shards. Members are read here (cheap); PNG/FLAC
    decoding waits for ``decode()``, so `Dataset.iter_shard` skips other ranks' samples cheaply.
    An unreadable shard, or one holding fewer samples than ``sizes`` says (tarfile reads a cut at a header
    boundary as a clean end), is reported through ``policy`` (raise, or skip the rest of that shard)."""
    for path in shards:
        n = 0
        try:
            tar = tarfile.open(path, mode="r")
        except (tarfile.TarError, OSError) as exc:
            policy.handle(InvalidInput(f"cannot open shard ({exc})", source=str(path)), str(path))
            continue
        with tar:
            key: str | None = None
            fields: dict[str, bytes] = {}
            try:
                for member in tar:
                    if not member.isfile():
                        continue
                    k, _, ext = os.path.basename(member.name).partition(".")
                    if key is not None and k != key:
                        yield _wds_item(path, key, fields)
                        n, fields = n + 1, {}
                    key = k
                    f = tar.extractfile(member)
                    fields[ext] = f.read() if f is not None else b""
            except (tarfile.TarError, OSError, EOFError) as exc:
                policy.handle(InvalidInput(f"corrupt shard ({exc})", source=str(path)), str(path))
                continue
            if key is not None:
                yield _wds_item(path, key, fields)
                n += 1
        expected = (sizes or {}).get(path.name)
        if expected is not None and n < expected:
            policy.handle(InvalidInput(f"shard holds {n} samples but sizes.json says {expected} (truncated?)",
                                       source=str(path)), str(path))


def shard_sizes(root: Path) -> dict[str, int]:
    """``sizes.json`` of a shard dir ({} if absent)."""
    path = root / "sizes.json"
    if not (root.is_dir() and path.is_file()):
        return {}
    try:
        sizes = json.loads(path.read_text())
        if not isinstance(sizes, dict) or not all(isinstance(v, int) for v in sizes.values()):
            raise ValueError("expected {shard: count}")
    except (json.JSONDecodeError, ValueError) as exc:
        raise InvalidInput(f"invalid sizes.json ({exc})", source=str(path)) from None
    return sizes


def _wds_item(path: Path, key: str, fields: dict[str, bytes]) -> Item:
    name = f"{path}:{key}"
    return name, lambda: sample_from_fields(key, fields, name)


def read_webdataset(root: str | os.PathLike[str], policy: ErrorPolicy | None = None,
                    shards: list[Path] | None = None) -> Iterator[Sample]:
    """Stream the decoded samples of a shard dir (or of the given shards)."""
    policy = policy or ErrorPolicy()
    root = Path(root)
    for name, decode in wds_items(shards if shards is not None else shard_paths(root), policy, shard_sizes(root)):
        yield from policy.guard(decode, name)
