"""`make_dataset`: generate a built-in data set into WebDataset shards plus ``manifest.json``.

Layout::

    out/manifest.json            what was generated (name, seed, n, args, splits, modalities, langs, labels,
                                 targets: which generation targets the samples carry)
    out/{train,val,test}/000000.tar ... + sizes.json

Each sample is a pure function of ``(seed, index)`` and the arguments, and samples are written in index
order whatever the number of worker processes, so the same arguments give byte-identical files.

``caption_noise=P`` (shapes only) gives ``round(P * n_train)`` train samples noisy alt-text (`shapes.NOISE_KINDS`,
alternately "wrong" and "unrelated"), chosen by a seeded permutation of the train positions: the noisy set at a
larger P contains the one at a smaller P, and every other sample is byte-identical to P = 0.

``conversations=True`` (shapes only) adds instruction-tuning conversations and POPE probes to every sample
(`instruct.add_conversations`, their own RNG stream: every other field stays byte-identical);
``spoken_questions=P`` then makes ``round(P * count)`` samples of each split (a seeded permutation of its
positions) carry their first question as audio. The manifest records both (``args``, ``conversations``: the
skills, the held-out template ids, the POPE settings, the spoken count); without them it is as before."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._io import atomic_write_bytes
from ...errors import InvalidInput, NotFound
from ..formats.webdataset import ShardWriter
from ..sample import MODALITIES, Sample
from . import digits, instruct, shapes

DATASETS: list[str] = ["shapes", "digits"]
SUPPORTED: dict[str, tuple[str, ...]] = {"shapes": ("audio", "image", "text", "video"), "digits": ("audio", "image", "text")}
LANGS: tuple[str, ...] = ("en", "zh")
SPLITS: tuple[str, ...] = ("train", "val", "test")
FRACTIONS: tuple[float, float] = (0.8, 0.1)  # train, val; test gets the rest
MANIFEST_VERSION = 2  # 2: samples carry targets; "targets" says which
_NOISE_TAG = 0xA17  # the permutation that picks the noisy train samples
_SPOKEN_TAG = 0x5F0  # the permutations that pick the samples with a spoken question

# (name, index, split, image_index, seed, langs, modalities, caption noise kind, (conversations, spoken question)):
# small and picklable, one per sample
Task = tuple[str, int, str, int, int, tuple[str, ...], tuple[str, ...], str | None, tuple[bool, bool]]


def split_counts(n: int) -> dict[str, int]:
    n_train, n_val = int(round(FRACTIONS[0] * n)), int(round(FRACTIONS[1] * n))
    n_val = min(n_val, n - n_train)
    return {"train": n_train, "val": n_val, "test": n - n_train - n_val}


def assign_splits(n: int, seed: int) -> list[tuple[str, int]]:
    """For every index: (split, position within the split), from a seeded permutation of the indices."""
    counts = split_counts(n)
    rank = np.empty(n, dtype=np.int64)
    rank[np.random.default_rng(np.random.SeedSequence([0x5B, seed, n])).permutation(n)] = np.arange(n)
    starts = {"train": 0, "val": counts["train"], "test": counts["train"] + counts["val"]}
    out = []
    for r in rank.tolist():
        split = "train" if r < starts["val"] else "val" if r < starts["test"] else "test"
        out.append((split, r - starts[split]))
    return out


def noisy_positions(n: int, seed: int, caption_noise: float) -> dict[int, str]:
    """Position within the train split -> caption noise kind, for ``round(caption_noise * n_train)`` of them."""
    n_train = split_counts(n)["train"]
    k = int(round(caption_noise * n_train))
    order = np.random.default_rng(np.random.SeedSequence([_NOISE_TAG, seed, n])).permutation(n_train)
    kinds = shapes.NOISE_KINDS
    return {int(pos): kinds[r % len(kinds)] for r, pos in enumerate(order[:k].tolist())}


def spoken_positions(n: int, seed: int, spoken_questions: float) -> set[tuple[str, int]]:
    """(split, position within the split) of the ``round(spoken_questions * count)`` samples of each split whose
    first question is spoken (nested: the set at a larger fraction contains the one at a smaller)."""
    out: set[tuple[str, int]] = set()
    for i, (split, count) in enumerate(split_counts(n).items()):
        order = np.random.default_rng(np.random.SeedSequence([_SPOKEN_TAG, seed, n, i])).permutation(count)
        out.update((split, int(pos)) for pos in order[:int(round(spoken_questions * count))].tolist())
    return out


def _tasks(name: str, n: int, seed: int, langs: tuple[str, ...], modalities: tuple[str, ...],
           caption_noise: float = 0.0, conversations: bool = False, spoken_questions: float = 0.0) -> list[Task]:
    pools = digits.image_splits(seed) if name == "digits" else None
    noisy = noisy_positions(n, seed, caption_noise) if caption_noise > 0 else {}
    spoken = spoken_positions(n, seed, spoken_questions) if spoken_questions > 0 else set()
    tasks: list[Task] = []
    for index, (split, pos) in enumerate(assign_splits(n, seed)):
        image_index = pools[split][pos % len(pools[split])] if pools is not None else -1
        kind = noisy.get(pos) if split == "train" else None
        tasks.append((name, index, split, image_index, seed, langs, modalities, kind,
                      (conversations, (split, pos) in spoken)))
    return tasks


def _make(task: Task) -> Sample:
    """Worker entry point (module level so a process pool can pickle it)."""
    name, index, split, image_index, seed, langs, modalities, noise, (convs, spoken) = task
    if name == "shapes":
        sample = shapes.make_sample(index, split, seed=seed, langs=langs, modalities=modalities, caption_noise=noise)
        return instruct.add_conversations(sample, seed=seed, langs=langs, spoken=spoken) if convs else sample
    return digits.make_sample(index, split, image_index, seed=seed, langs=langs, modalities=modalities)


def _validate(name: str, n: int, seed: int, langs: Sequence[str] | None, modalities: Sequence[str] | None,
              shard_size: int, workers: int | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if name not in DATASETS:
        raise NotFound(f"unknown data set {name!r} (known: {', '.join(DATASETS)})", field="name")
    for field, value, low in (("n", n, 1), ("seed", seed, 0), ("shard_size", shard_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise InvalidInput(f"must be an integer >= {low}, got {value!r}", field=field)
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise InvalidInput(f"must be an integer >= 1 or None, got {workers!r}", field="workers")
    if langs is None:
        langs = ("en",)
    if isinstance(langs, str):
        langs = [x for x in langs.split(",") if x]
    bad = [x for x in langs if x not in LANGS]
    if bad or not langs:
        raise InvalidInput(f"languages must be a non-empty subset of {list(LANGS)}, got {list(langs)}", field="langs")
    if modalities is None:
        modalities = SUPPORTED[name]
    if isinstance(modalities, str):
        modalities = [x for x in modalities.split(",") if x]
    bad = [m for m in modalities if m not in MODALITIES]
    if bad:
        raise InvalidInput(f"unknown modalities {bad} (known: {list(MODALITIES)})", field="modalities")
    chosen = tuple(m for m in MODALITIES if m in modalities and m in SUPPORTED[name])
    if not chosen:
        raise InvalidInput(f"{name} provides {list(SUPPORTED[name])}; none of {list(modalities)} requested",
                           field="modalities")
    return tuple(dict.fromkeys(langs)), chosen


def _check_noise(name: str, caption_noise: float) -> float:
    value = caption_noise
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating) or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"must be a number in [0, 1], got {value!r}", field="caption_noise")
    if value > 0 and name != "shapes":
        raise InvalidInput(f"only shapes has caption noise, not {name}", field="caption_noise")
    return float(value)


def _check_conversations(name: str, conversations: bool, spoken_questions: float) -> float:
    if not isinstance(conversations, bool):
        raise InvalidInput(f"must be true or false, got {conversations!r}", field="conversations")
    if conversations and name != "shapes":
        raise InvalidInput(f"only shapes has conversations, not {name}", field="conversations")
    value = spoken_questions
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating) or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"must be a number in [0, 1], got {value!r}", field="spoken_questions")
    if value > 0 and not conversations:
        raise InvalidInput("spoken questions are questions of the conversations: add conversations=True "
                           "(--conversations)", field="spoken_questions")
    return float(value)


def _generate(tasks: list[Task], workers: int) -> Iterator[Sample]:
    """Samples in task order; with several workers, generated in parallel but yielded in order."""
    if workers == 1 or len(tasks) < 2:
        yield from map(_make, tasks)
        return
    # fork is cheap and sound here (no threads of ours run); elsewhere spawn re-imports the module
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    chunk = max(1, min(16, len(tasks) // (workers * 8)))
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_make, tasks, chunksize=chunk)


def _clean(out: Path) -> None:
    """Remove a previous run's manifest and shards (only files this function writes)."""
    (out / "manifest.json").unlink(missing_ok=True)
    for split in SPLITS:
        d = out / split
        if d.is_dir():
            for p in [*d.glob("*.tar"), d / "sizes.json"]:
                p.unlink(missing_ok=True)


def make_dataset(name: str, out: str | os.PathLike[str], *, n: int, seed: int = 0,
                 langs: Sequence[str] = ("en",), modalities: Sequence[str] = ("text", "image", "audio", "video"),
                 shard_size: int = 1000, workers: int | None = None, progress: bool = True,
                 caption_noise: float = 0.0, conversations: bool = False,
                 spoken_questions: float = 0.0) -> dict[str, Any]:
    """Generate data set ``name`` (one of `DATASETS`) with ``n`` samples into ``out``; returns the manifest.

    ``langs``: caption languages, a subset of ``("en", "zh")``, drawn per sample. ``modalities``: what to
    generate (ones the data set lacks, e.g. video for digits, are left out; audio needs the ``[speech]``
    extra). ``workers``: processes (default ``min(2, cpu count)``); the output does not depend on it.
    ``caption_noise``: the fraction of train samples with noisy alt-text (shapes only; see the module doc).
    ``conversations``: add instruction-tuning conversations and POPE probes (shapes only); ``spoken_questions``:
    the fraction of samples per split whose first question is also their audio (needs ``conversations`` and
    the ``[speech]`` extra). A previous data set in ``out`` is replaced."""
    langs_t, mods = _validate(name, n, seed, langs, modalities, shard_size, workers)
    noise = _check_noise(name, caption_noise)
    spoken_p = _check_conversations(name, conversations, spoken_questions)
    n, seed = int(n), int(seed)
    workers = workers or min(2, os.cpu_count() or 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    tasks = _tasks(name, n, seed, langs_t, mods, noise, conversations, spoken_p)
    writers = {s: ShardWriter(out / s, shard_size) for s in SPLITS}
    from tqdm import tqdm

    samples = _generate(tasks, workers)  # start the pool before tqdm starts its monitor thread
    sample_rate = None
    with tqdm(total=n, desc=f"make {name}", unit="sample", file=sys.stderr, disable=not progress) as bar:
        for sample in samples:
            writers[sample.metadata["split"]].write(sample)
            sample_rate = sample_rate or sample.sample_rate
            bar.update(1)
    counts = {s: sum(w.close().values()) for s, w in writers.items()}
    manifest: dict[str, Any] = {
        "name": name, "version": MANIFEST_VERSION, "format": "webdataset", "seed": seed, "n": n,
        "args": {"langs": list(langs_t), "modalities": list(mods), "shard_size": shard_size, "caption_noise": noise},
        "splits": {s: {"path": s, "count": counts[s]} for s in SPLITS},
        "modalities": list(mods), "langs": list(langs_t),
        "labels": shapes.labels() if name == "shapes" else digits.labels(),
        "targets": shapes.target_kinds(mods) if name == "shapes" else digits.target_kinds(mods),
        "details": _details(name, sample_rate),
        "caption_noise": _noise_counts(noise, [t[7] for t in tasks]),
    }
    if conversations:  # recorded only when asked for, so manifests without them stay byte-identical
        manifest["args"].update(conversations=True, spoken_questions=spoken_p)
        manifest["conversations"] = instruct.manifest_entry(True, spoken_p, sum(t[8][1] for t in tasks))
    data = json.dumps(manifest, ensure_ascii=False, indent=1) + "\n"
    atomic_write_bytes(out / "manifest.json", data.encode("utf-8"))
    return manifest


def _noise_counts(p: float, kinds: list[str | None]) -> dict[str, Any]:
    """What the manifest records of the caption noise: the fraction asked for and the noisy train samples."""
    return {"p": p, "noisy": sum(k is not None for k in kinds), **{k: kinds.count(k) for k in shapes.NOISE_KINDS}}


def _details(name: str, sample_rate: int | None) -> dict[str, Any]:
    """Fixed sizes of what was generated, for readers and docs."""
    out: dict[str, Any] = {"split_fractions": [*FRACTIONS, round(1.0 - sum(FRACTIONS), 6)],
                           "audio_sample_rate": sample_rate}
    if name == "shapes":
        out.update(image_size=[shapes.IMAGE_SIZE, shapes.IMAGE_SIZE], video_frames=shapes.VIDEO_FRAMES,
                   video_size=[shapes.VIDEO_SIZE, shapes.VIDEO_SIZE])
    else:
        out.update(image_size=[digits.IMAGE_SIZE, digits.IMAGE_SIZE])
    return out
