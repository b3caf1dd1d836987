"""The training data path: open + check the data dir, hold it in memory, build the transform the model
needs, and turn a step's indices into Batches.

Randomness here never touches the global RNGs: augmentation and modality dropout draw from generators
seeded by (seed, epoch, sample index), so a sample is transformed the same way whatever the number of
processes, the accumulation factor, or whether the run was resumed."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data.formats.dataset import Dataset, open_dataset
from ..data.sample import MODALITIES, Batch, Sample, collate
from ..data.transforms.compose import SampleTransform
from ..errors import ConfigError, InvalidInput, NotFound

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


def load_samples(ds: Dataset, limit: int | None = None) -> list[Sample]:
    out = []
    for s in ds:
        out.append(s)
        if limit is not None and len(out) >= limit:
            break
    return out


# ------------------------------------------------------------------------------------------ transform

def transform_config(needs: Mapping[str, Mapping[str, Any]], recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The SampleTransform dict for a model: library defaults, then the recipe's ``data.transform``
    (partial), then what each encoder requires (``encoder.preprocess()``). Modalities the model lacks are
    dropped. A recipe value that contradicts an encoder's requirement is a ConfigError."""
    cfg = SampleTransform.default().to_dict()
    for m in MODALITIES:
        if m not in needs:
            cfg[m] = None
    _merge(cfg, copy.deepcopy(dict(recipe)))
    for m, need in needs.items():
        for path, value in _requirements(m, need, cfg):
            _require(cfg, recipe, path, value)
    return cfg


def _requirements(m: str, need: Mapping[str, Any], cfg: dict[str, Any]) -> list[tuple[tuple[str, ...], Any]]:
    """(path in the transform dict, value) pairs an encoder's ``preprocess()`` asks for. Keys named as
    transform fields map directly; ``max_len`` (text), ``max_frames`` (audio), ``frames`` (video, a maximum),
    ``center_crop`` and the older ``image_size`` are translated; informational keys are ignored."""
    if m == "text":
        out: list[tuple[tuple[str, ...], Any]] = []
        tok = need.get("tokenizer")
        if isinstance(tok, dict):
            tok = dict(tok)
            if "kind" not in tok and "type" in tok:
                tok["kind"] = tok.pop("type")
            out.append((("text",), tok))
        if need.get("max_len") is not None:
            out.append((("max_text_len",), int(need["max_len"])))
        return out
    if m == "image":
        return _image_requirements(("image",), need)
    if m == "video":
        out = _image_requirements(("video", "image"), need.get("image") or need)
        if need.get("frames") is not None and cfg.get("video"):
            # the encoder's frame count is a maximum: keep fewer when the transform samples fewer
            out.append((("video", "frames"), min(int(need["frames"]), int(cfg["video"].get("frames", 8)))))
        return out
    if m == "audio":
        return _audio_requirements(need, cfg)
    return []


def _image_requirements(base: tuple[str, ...], need: Mapping[str, Any]) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    size = need.get("size", need.get("image_size"))
    if size is not None:
        out.append(((*base, "size"), int(size)))
    for key in ("mean", "std"):
        if need.get(key) is not None:
            out.append(((*base, key), [float(x) for x in need[key]]))
    if need.get("interpolation") is not None:
        out.append(((*base, "interpolation"), need["interpolation"]))
    if need.get("center_crop") is False:
        out.append(((*base, "crop"), "squash"))
    return out


_AUDIO_KEYS = ("sample_rate", "n_mels", "n_fft", "hop_length", "win_length", "f_min", "f_max", "mel_scale",
               "max_seconds", "pad_seconds", "mean", "std")


def _audio_requirements(need: Mapping[str, Any], cfg: dict[str, Any]) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = [(("audio", k), need[k]) for k in _AUDIO_KEYS
                                              if need.get(k) is not None]
    if need.get("max_frames") is not None and cfg.get("audio"):
        hop = int(need.get("hop_length", cfg["audio"].get("hop_length", 160)))
        sr = int(need.get("sample_rate", cfg["audio"].get("sample_rate", 16000)))
        limit = (int(need["max_frames"]) - 1) * hop / sr  # T = 1 + n // hop frames (centred STFT)
        current = cfg["audio"].get("max_seconds")
        out.append((("audio", "max_seconds"), limit if current is None else min(float(current), limit)))
    return out


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def _require(cfg: dict[str, Any], recipe: Mapping[str, Any], path: tuple[str, ...], value: Any) -> None:
    given: Any = recipe
    for p in path:
        given = given.get(p) if isinstance(given, Mapping) else None
    if given is not None and given != value and not (path[-1] == "max_seconds" and given <= value):
        raise ConfigError(f"is {given!r} but the model's encoder needs {value!r}",
                          field="data.transform." + ".".join(path))
    node = cfg
    for p in path[:-1]:
        if node.get(p) is None:
            return  # the modality was switched off in the recipe
        node = node[p]
    node[path[-1]] = value


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
    """Transform + modality dropout per sample, seeded by (seed, epoch, key); optional tensor cache."""

    def __init__(self, transform: SampleTransform, seed: int, modalities: Sequence[str],
                 modality_dropout: float = 0.0, cache: bool = True):
        self.seed, self.modality_dropout = seed, modality_dropout
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

    def _dropout(self, tensors: dict[str, torch.Tensor], key: int, epoch: int) -> dict[str, torch.Tensor]:
        if self.modality_dropout <= 0 or len(tensors) < 2:
            return tensors
        rng = np.random.default_rng(self._rng_seed(epoch, key, 1))
        if rng.random() >= self.modality_dropout:
            return tensors
        drop = sorted(tensors)[int(rng.integers(len(tensors)))]
        return {m: v for m, v in tensors.items() if m != drop}

    def collate(self, samples: Sequence[Sample], keys: Sequence[int], epoch: int) -> Batch:
        per = [self._dropout(self._tensors(s, k, epoch), k, epoch) for s, k in zip(samples, keys, strict=True)]
        it = iter(per)
        # collate calls the transform once per sample, in order: hand it the prepared tensors
        return collate(samples, lambda _s: next(it))


class MemoryData(_Prepared):
    """Samples held in memory; ``batch(indices, epoch)`` collates them (the sample index is the key)."""

    def __init__(self, samples: list[Sample], transform: SampleTransform, seed: int,
                 modalities: Sequence[str], modality_dropout: float = 0.0, cache: bool = True):
        super().__init__(transform, seed, modalities, modality_dropout, cache)
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
                 rank: int, world: int, per_rank: int, steps_per_epoch: int, buffer: int = 10_000,
                 modality_dropout: float = 0.0):
        super().__init__(transform, seed, modalities, modality_dropout, cache=False)
        self.ds, self.rank, self.world, self.per_rank = ds, rank, world, per_rank
        self.steps_per_epoch, self.buffer = steps_per_epoch, buffer
        self._next: tuple[int, int] | None = None  # (epoch, step in epoch) the iterator is positioned at
        self._it: Iterator[tuple[int, Sample]] = iter(())
        self.complete = False  # unknown without reading everything: let DDP look for idle towers

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
