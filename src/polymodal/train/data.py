"""The training data path: open + check the data dir, hold it in memory (or stream it), apply the model's
transform (built by `polymodal.data.transforms.resolve`), and turn a step's indices into Batches.

Randomness here never touches the global RNGs: augmentation draws from generators seeded by (seed, epoch,
sample index), so a sample is transformed the same way whatever the number of processes, the accumulation
factor, or whether the run was resumed. Modality dropout is not done here: it is a model setting
(``model.modality_dropout`` of a fusion model, see docs/fusion.md)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..data.collate import collate
from ..data.formats.common import skipped_line
from ..data.formats.dataset import Dataset, open_dataset
from ..data.sample import MODALITIES, Batch, Sample
from ..data.transforms.compose import SampleTransform
from ..errors import InvalidInput, NotFound

PEEK = 32  # samples read to find a data dir's modalities when it has no manifest


def open_checked(path: str | os.PathLike[str], split: str | None, need: Sequence[str],
                 on_error: str = "raise") -> Dataset:
    """Open ``path`` (``split`` of a generated data set, if it has splits) and check it holds every
    modality in ``need`` (from the manifest, else the first samples)."""
    ds = open_dataset(path, split=split if _has_splits(path) else None, on_error=on_error)
    have = _modalities(ds)
    missing = [m for m in need if m not in have]
    if missing:
        raise InvalidInput(f"the data has {', '.join(have) or 'no modality'} but the recipe needs "
                           f"{', '.join(missing)} too", field="data.modalities", source=str(path))
    return ds


def _has_splits(path: str | os.PathLike[str]) -> bool:
    try:
        return bool(open_dataset(path).splits)
    except NotFound:
        raise
    except InvalidInput:
        return False


def _modalities(ds: Dataset) -> list[str]:
    listed = (ds.manifest or {}).get("modalities")
    if isinstance(listed, list) and listed:
        return [m for m in MODALITIES if m in listed]
    seen: set[str] = set()
    for i, s in enumerate(ds):
        seen.update(s.modalities)
        if i + 1 >= PEEK:
            break
    return [m for m in MODALITIES if m in seen]


class SkippedItems:
    """Bad data items a run skipped (``data.on_error="skip"``), in the order met, each once: reported on the
    console as they are found and in the run's result."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}  # name -> error (naming the file)
        self._warned = 0

    def note(self, items: Iterable[tuple[str, str]]) -> None:
        for name, err in items:
            self.items.setdefault(name, err)

    def warning(self, first: int = 3) -> str | None:
        """The console line for the items noted since the last call (None: no new ones)."""
        new = list(self.items.values())[self._warned:]
        self._warned = len(self.items)
        return skipped_line(len(new), new[:first]) if new else None

    def report(self, first: int = 5) -> dict[str, Any]:
        """JSON: ``{"count": n, "first": [names], "errors": [messages]}`` (the first few)."""
        names = list(self.items)
        return {"count": len(names), "first": names[:first], "errors": [self.items[n] for n in names[:first]]}


def load_samples(ds: Dataset, limit: int | None = None) -> list[Sample]:
    out = []
    for s in ds:
        out.append(s)
        if limit is not None and len(out) >= limit:
            break
    return out


def is_random(tf: SampleTransform) -> bool:
    """Whether the training variant of ``tf`` draws anything at random (else its outputs can be cached)."""
    img = [t for t in (tf.image, tf.video.image if tf.video is not None else None) if t is not None]
    if any(t.random_crop or t.hflip for t in img):
        return True
    if tf.audio is not None and tf.audio.crop == "random" and tf.audio.max_seconds is not None:
        return True
    return tf.video is not None and tf.video.mode != "uniform"


# ------------------------------------------------------------------------------------------- batches

class _Prepared:
    """The transform per sample, seeded by (seed, epoch, key); optional tensor cache."""

    def __init__(self, transform: SampleTransform, seed: int, modalities: Sequence[str], cache: bool = True):
        self.seed = seed
        self.modalities = tuple(modalities)
        self.random = is_random(transform)
        self._gen = torch.Generator()
        self.transform = transform.augment(self._gen)
        self._eval = transform.eval()
        self._cache: dict[int, dict[str, torch.Tensor]] | None = {} if cache and not self.random else None

    def _rng_seed(self, epoch: int, key: int, salt: int) -> int:
        return int(np.random.SeedSequence([self.seed, epoch, key, salt]).generate_state(1)[0])

    def _tensors(self, s: Sample, key: int, epoch: int) -> dict[str, torch.Tensor]:
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        if self.random:
            self._gen.manual_seed(self._rng_seed(epoch, key, 0))
            out = self.transform(s)
        else:
            out = self._eval(s)
        out = {m: v for m, v in out.items() if m in self.modalities}
        if self._cache is not None:
            self._cache[key] = out
        return out

    def collate(self, samples: Sequence[Sample], keys: Sequence[int], epoch: int) -> Batch:
        per = [self._tensors(s, k, epoch) for s, k in zip(samples, keys, strict=True)]
        it = iter(per)
        # collate calls the transform once per sample, in order: hand it the prepared tensors
        return collate(samples, lambda _s: next(it))


class MemoryData(_Prepared):
    """Samples held in memory; ``batch(indices, epoch)`` collates them (the sample index is the key)."""

    def __init__(self, samples: list[Sample], transform: SampleTransform, seed: int,
                 modalities: Sequence[str], cache: bool = True):
        super().__init__(transform, seed, modalities, cache)
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def complete(self) -> bool:
        """Every sample has every modality trained on."""
        return all(getattr(s, m) is not None for s in self.samples for m in self.modalities)

    def batch(self, indices: Sequence[int], epoch: int) -> Batch:
        return self.collate([self.samples[i] for i in indices], indices, epoch)


class StreamData(_Prepared):
    """For data too large for memory: each rank reads its share (item i -> rank i % world) through a
    shuffle buffer seeded by (seed, epoch, rank), one pass per epoch, ``per_rank`` samples per step.
    Deterministic, so a resumed run re-reads the epoch up to its step and continues exactly; unlike the
    in-memory path, the batches depend on the number of processes."""

    def __init__(self, ds: Dataset, transform: SampleTransform, seed: int, modalities: Sequence[str],
                 rank: int, world: int, per_rank: int, steps_per_epoch: int, buffer: int = 10_000):
        super().__init__(transform, seed, modalities, cache=False)
        self.ds, self.rank, self.world, self.per_rank = ds, rank, world, per_rank
        self.steps_per_epoch, self.buffer = steps_per_epoch, buffer
        self._next: tuple[int, int] | None = None  # (epoch, step in epoch) the iterator is positioned at
        self._it: Iterator[tuple[int, Sample]] = iter(())
        self.complete = False  # unknown without reading everything: let DDP look for idle towers
        self.skipped: dict[str, str] = {}  # bad items this rank skipped so far (on_error="skip"): name -> error

    def _open(self, epoch: int) -> Iterator[tuple[int, Sample]]:
        rng = np.random.default_rng([self.seed, epoch, self.rank, 0x57])
        buf: list[Sample] = []
        pos = 0
        for s in self.ds.iter_shard(self.rank, self.world):
            if len(buf) < self.buffer:
                buf.append(s)
                continue
            j = int(rng.integers(len(buf)))
            yield pos, buf[j]
            buf[j], pos = s, pos + 1
        for j in rng.permutation(len(buf)):
            yield pos, buf[int(j)]
            pos += 1

    def step_samples(self, step: int) -> tuple[list[Sample], list[int], int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        if k == 0 or self._next != (epoch, k):  # a new epoch, or a jump (resume)
            self._it = self._open(epoch)
            for _ in range(k * self.per_rank):  # resume mid-epoch: replay up to this step
                next(self._it, None)
        got = [item for _, item in zip(range(self.per_rank), self._it, strict=False)]
        for name, err in self.ds.policy.skipped:  # the current pass's; kept across passes
            self.skipped.setdefault(name, err)
        if len(got) < self.per_rank:
            raise InvalidInput(f"rank {self.rank} ran out of samples in epoch {epoch} (skipped bad items?)",
                               source=str(self.ds.path))
        self._next = (epoch, k + 1)
        keys = [pos * self.world + self.rank for pos, _ in got]
        return [s for _, s in got], keys, epoch

    def step_batches(self, step: int, accum_freq: int) -> list[Batch]:
        samples, keys, epoch = self.step_samples(step)
        micro = len(samples) // accum_freq
        return [self.collate(samples[j * micro:(j + 1) * micro], keys[j * micro:(j + 1) * micro], epoch)
                for j in range(accum_freq)]
