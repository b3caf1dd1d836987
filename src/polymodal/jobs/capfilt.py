"""BLIP's CapFilt (Li et al. 2022) as a data job: clean a noisy image-text data set with a captioner and a filter.

For every sample of one split that has a picture, a captioner (``arch: "captioner"`` run) writes a synthetic
caption, and a filter (``arch: "vl_encoder"`` run; its image-text matching head) scores P(match) of the picture
with the original text and with the synthetic one. The rule (`decide`): keep the original when its score is
>= ``threshold``; else take the synthetic caption when its score is >= ``threshold``; else drop the sample.
BLIP keeps both texts when both pass; we keep one text per sample so the data set keeps its shape.

Decoding is greedy by default (deterministic: the same runs give the same data set). BLIP sampled its captions
with nucleus sampling (``top_p=0.9``) because diverse, surprising captions teach the retrained model more than
safe, repetitive greedy ones; pass ``decoding={"do_sample": True, "top_p": 0.9, "seed": 0}`` for that.

What changes: a kept original leaves the sample as it was; a synthetic caption becomes the sample's ``text``
(when it had one) and its only image caption target (video captions, QA and the transcript are kept); every
written sample records ``metadata["capfilt"] = {original_score, synthetic, synthetic_score, decision}``.
Samples without a picture are copied as they are; other splits are copied byte for byte. The output is a data
set dir like ``polymodal data make`` writes (WebDataset shards per split + ``manifest.json`` with a ``capfilt``
record), written into a temp folder renamed into place at the end. The captioner and the filter may be given
as callables (`Captioner`, `Scorer`), which is how the tests inject known captions and scores."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_bytes
from ..data.collate import collate
from ..data.formats.dataset import Dataset, open_dataset
from ..data.formats.webdataset import ShardWriter, shard_paths, shard_sizes
from ..data.sample import Sample
from ..data.targets import Caption
from ..errors import InvalidInput
from ..lm.decoding import DecodingOptions
from ..models.generative import MAX_BATCH, load_generative_model
from ..models.loading import load_model
from ..models.vl_encoder import VLEncoder

Captioner = Callable[[Sequence[Sample]], Sequence[str]]  # pictures -> one caption each
Scorer = Callable[[Sequence[Sample], Sequence[str]], Sequence[float]]  # (picture i, text i) -> P(match)
DECISIONS: tuple[str, ...] = ("original", "synthetic", "dropped")


def decide(original_score: float | None, synthetic_score: float | None, threshold: float) -> str:
    """The CapFilt rule; a missing score (no original text, an empty synthetic caption) never passes."""
    if original_score is not None and original_score >= threshold:
        return "original"
    if synthetic_score is not None and synthetic_score >= threshold:
        return "synthetic"
    return "dropped"


class RunCaptioner:
    """A captioner run (``arch: "captioner"`` reading images) as a `Captioner`; ``lang``: what it writes."""

    def __init__(self, run: str | os.PathLike[str], decoding: DecodingOptions, batch_size: int = 16):
        self.model = load_generative_model(run)
        if self.model.task != "captioning" or "image" not in self.model.modalities:
            raise InvalidInput(f"{run} is not an image captioner (a {self.model.task} model reading "
                               f"{', '.join(self.model.modalities) or 'no media'})", field="captioner")
        langs = getattr(self.model.model, "langs", None)
        self.lang = str(langs[0]) if isinstance(langs, list | tuple) and langs else "en"
        self.decoding, self.batch_size = decoding, max(1, min(batch_size, MAX_BATCH))

    def __call__(self, samples: Sequence[Sample]) -> list[str]:
        pictures = [Sample(id=s.id, image=s.image, source=s.source) for s in samples]  # the picture alone
        return self.model.generate_samples(pictures, None, self.decoding, batch_size=self.batch_size)


class RunFilter:
    """A ``vl_encoder`` run trained with image-text matching as a `Scorer`. Batches are collated as
    ``polymodal.eval.vl`` does: the run's transform, the picture only, the samples' metadata (region boxes)."""

    def __init__(self, run: str | os.PathLike[str], batch_size: int = 64):
        model, self.transform, cfg = load_model(run)
        if not isinstance(model, VLEncoder) or not model.c.objectives.get("itm", 0):
            raise InvalidInput(f"{run} is not a vl_encoder run trained with image-text matching "
                               f"(arch {cfg.get('arch')!r})", field="filter")
        self.model, self.batch_size = model, max(1, batch_size)

    def _picture(self, s: Sample) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.transform(s).items() if k == "image"}

    def __call__(self, samples: Sequence[Sample], texts: Sequence[str]) -> list[float]:
        device = self.model.itm_head.weight.device
        out: list[float] = []
        for i in range(0, len(samples), self.batch_size):
            batch = collate(list(samples[i:i + self.batch_size]), self._picture).to(device)
            out.extend(float(x) for x in self.model.itm_scores(batch, list(texts[i:i + self.batch_size])))
        return out


# ----------------------------------------------------------------------------------------------- one batch

def original_text(s: Sample) -> str | None:
    """The web text judged: the sample's text, else its first image caption (None when it has neither)."""
    if s.text is not None:
        return s.text
    caps = s.targets.captions_for("image")
    return caps[0].text if caps else None


def _scores(scorer: Scorer, samples: Sequence[Sample], originals: Sequence[str | None], synthetic: Sequence[str]
            ) -> tuple[list[float | None], list[float | None]]:
    """Both texts of every sample scored in one call (pairs without a text are left out and get None)."""
    pairs = [(i, t) for i, t in enumerate(originals) if t is not None]
    pairs += [(len(samples) + i, t) for i, t in enumerate(synthetic) if t]
    got = list(scorer([samples[i % len(samples)] for i, _ in pairs], [t for _, t in pairs])) if pairs else []
    if len(got) != len(pairs):
        raise InvalidInput(f"the filter gave {len(got)} scores for {len(pairs)} pairs", field="filter")
    flat: list[float | None] = [None] * (2 * len(samples))
    for (i, _), score in zip(pairs, got, strict=True):
        if not math.isfinite(float(score)):
            raise InvalidInput(f"the filter gave a score of {score!r}", field="filter")
        flat[i] = float(score)
    return flat[:len(samples)], flat[len(samples):]


def _rewrite(s: Sample, record: dict[str, Any], lang: str) -> Sample | None:
    """The sample as written (None when dropped)."""
    decision, meta = record["decision"], {**s.metadata, "capfilt": record}
    if decision == "dropped":
        return None
    if decision == "original":
        return s.replace(metadata=meta)
    synthetic = record["synthetic"]
    others = tuple(c for c in s.targets.captions if c.media != "image")
    targets = dataclasses.replace(s.targets, captions=(Caption(synthetic, lang, "image"), *others))
    return s.replace(text=synthetic if s.text is not None else None, targets=targets, metadata=meta)


def filter_batch(samples: Sequence[Sample], captioner: Captioner, scorer: Scorer, threshold: float, lang: str
                 ) -> list[tuple[Sample, Sample | None, str | None]]:
    """(sample, sample as written or None when dropped, decision) in order; a sample without a picture passes
    unchanged with decision None."""
    pictures = [s for s in samples if s.image is not None]
    captions = list(captioner(pictures)) if pictures else []
    if len(captions) != len(pictures):
        raise InvalidInput(f"the captioner gave {len(captions)} captions for {len(pictures)} pictures",
                           field="captioner")
    synthetic = [str(c).strip() for c in captions]
    o_scores, s_scores = _scores(scorer, pictures, [original_text(s) for s in pictures], synthetic)
    judged = iter(zip(pictures, synthetic, o_scores, s_scores, strict=True))
    out: list[tuple[Sample, Sample | None, str | None]] = []
    for s in samples:
        if s.image is None:
            out.append((s, s, None))
            continue
        _, syn, o, sy = next(judged)
        decision = decide(o, sy, threshold)
        record = {"original_score": o, "synthetic": syn, "synthetic_score": sy, "decision": decision}
        out.append((s, _rewrite(s, record, lang), decision))
    return out


# ----------------------------------------------------------------------------------------------- counting

class Tally:
    """Decisions, and (when the data set marks its noisy texts, ``metadata["caption_noise"]``) how well the
    filter found them: a noisy text is removed when the original is not kept."""

    def __init__(self) -> None:
        self.counts = {d: 0 for d in DECISIONS} | {"without_image": 0}
        self.noisy: dict[str, list[int]] = {}  # kind -> [samples, removed]
        self.clean = [0, 0]
        self.marked = False

    def add(self, sample: Sample, decision: str | None) -> None:
        if decision is None:
            self.counts["without_image"] += 1
            return
        self.counts[decision] += 1
        kind = sample.metadata.get("caption_noise")
        self.marked = self.marked or kind is not None
        row = self.clean if kind is None else self.noisy.setdefault(str(kind), [0, 0])
        row[0] += 1
        row[1] += decision != "original"

    def as_dict(self, noise: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"samples": sum(self.counts[d] for d in DECISIONS), **self.counts}
        if noise or self.marked:
            n, removed = sum(r[0] for r in self.noisy.values()), sum(r[1] for r in self.noisy.values())
            out["noise"] = {
                "noisy": n, "noisy_removed": removed, "recall": removed / n if n else None,
                "clean": self.clean[0], "clean_removed": self.clean[1],
                "clean_removed_rate": self.clean[1] / self.clean[0] if self.clean[0] else None,
                "precision": removed / (removed + self.clean[1]) if removed + self.clean[1] else None,
                "by_kind": {k: {"noisy": r[0], "removed": r[1]} for k, r in sorted(self.noisy.items())}}
        return out


# ----------------------------------------------------------------------------------------------- the job

def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput("exists and is not an empty folder; choose a new one", field="out", source=str(out))


def _check_args(threshold: float, batch_size: int) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise InvalidInput(f"must be a number in [0, 1], got {threshold!r}", field="threshold")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"must be an integer >= 1, got {batch_size!r}", field="batch_size")


def _options(decoding: DecodingOptions | Mapping[str, Any] | None) -> DecodingOptions:
    return decoding if isinstance(decoding, DecodingOptions) else DecodingOptions.from_dict(decoding)


def _chunks(ds: Dataset, size: int) -> Iterator[list[Sample]]:
    part: list[Sample] = []
    for s in ds:
        part.append(s)
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part


def _copy_split(src: Path, dst: Path) -> int:
    """A split's shards (and sizes.json) copied byte for byte; returns its stored count."""
    dst.mkdir(parents=True)
    for p in shard_paths(src):
        shutil.copyfile(p, dst / p.name)
    if (src / "sizes.json").is_file():
        shutil.copyfile(src / "sizes.json", dst / "sizes.json")
    return sum(shard_sizes(src).values()) if shard_sizes(src) else len(open_dataset(src))


def _name(x: Any) -> str:
    return str(x) if isinstance(x, str | os.PathLike) else getattr(x, "__name__", type(x).__name__)


def _filter_split(ds: Dataset, dst: Path, shard_size: int, captioner: Captioner, scorer: Scorer, threshold: float,
                  batch_size: int, progress: bool, desc: str) -> tuple[Tally, int]:
    from tqdm import tqdm

    tally, writer, lang = Tally(), ShardWriter(dst, shard_size), str(getattr(captioner, "lang", None) or "en")
    with tqdm(total=len(ds), desc=desc, unit="sample", file=sys.stderr, disable=not progress) as bar:
        for part in _chunks(ds, batch_size):
            for before, after, decision in filter_batch(part, captioner, scorer, threshold, lang):
                tally.add(before, decision)
                if after is not None:
                    writer.write(after)
            bar.update(len(part))
            bar.set_postfix(kept=tally.counts["original"], synthetic=tally.counts["synthetic"],
                            dropped=tally.counts["dropped"], refresh=False)
    return tally, sum(writer.close().values())


def _split_roots(src: Path, source: Dataset, split: str) -> dict[str, Path]:
    """{split: its shard dir (or the source itself when it is not a data set dir)}, checked."""
    if source.manifest is None:
        return {split: src}
    roots = {name: src / str(source.manifest["splits"][name]["path"]) for name in source.splits}
    if split not in roots:
        raise InvalidInput(f"no split '{split}'; available: {', '.join(roots)}", field="split", source=str(src))
    for name in roots:
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise InvalidInput(f"split name {name!r} cannot name a folder", field="splits", source=str(src))
    return roots


def _write(src: Path, tmp: Path, split: str, captioner: Captioner, scorer: Scorer, threshold: float,
           batch_size: int, progress: bool) -> tuple[Tally, dict[str, Any], dict[str, Any]]:
    """Every split into ``tmp``: (the filtered split's tally, the manifest's split table, the source manifest)."""
    source = open_dataset(src)
    roots, table = _split_roots(src, source, split), {}
    tally = Tally()
    for name, root in roots.items():
        if name != split:
            count = _copy_split(root, tmp / name)
        else:
            ds = open_dataset(src, split=name) if source.manifest is not None else source
            shard_size = max(shard_sizes(root).values(), default=1000) if root.is_dir() else 1000
            tally, count = _filter_split(ds, tmp / name, shard_size, captioner, scorer, threshold, batch_size,
                                         progress, f"capfilt {name}")
        table[name] = {"path": name, "count": count}
    return tally, table, copy.deepcopy(source.manifest) if source.manifest is not None else {"name": src.name}


def capfilt(data: str | os.PathLike[str], out: str | os.PathLike[str], *, captioner: str | os.PathLike[str] | Captioner,
            filter: str | os.PathLike[str] | Scorer, split: str = "train", threshold: float = 0.5,
            decoding: DecodingOptions | Mapping[str, Any] | None = None, batch_size: int = 64,
            progress: bool = True) -> dict[str, Any]:
    """Clean split ``split`` of data set ``data`` into the new folder ``out`` (see the module doc); returns the
    counts: ``original`` (kept), ``synthetic`` (replaced), ``dropped``, ``without_image`` (copied), and
    ``noise`` (noisy texts removed, recall, clean texts wrongly removed) when the samples mark their noise.

    ``captioner``/``filter``: run folders or callables (`Captioner`, `Scorer`; an injected captioner may say its
    language in a ``lang`` attribute, default "en"). ``decoding``: `DecodingOptions` (or its dict) for a
    captioner run; greedy by default. A source that is not a data set dir with ``manifest.json`` (a shard dir,
    JSONL, a folder) is read whole as split ``split``."""
    _check_args(threshold, batch_size)
    options, src, dst = _options(decoding), Path(data), Path(out)
    _check_out(dst)
    open_dataset(src)  # a missing or unreadable source fails before the models load
    cap = RunCaptioner(captioner, options, batch_size) if isinstance(captioner, str | os.PathLike) else captioner
    scorer = RunFilter(filter, batch_size) if isinstance(filter, str | os.PathLike) else filter
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".capfilt-tmp", dir=dst.parent))
    try:
        tally, table, manifest = _write(src, tmp, split, cap, scorer, float(threshold), batch_size, progress)
        result = {"split": split, **tally.as_dict(isinstance(manifest.get("caption_noise"), dict))}
        manifest.update(format="webdataset", splits=table, capfilt={
            "source": str(src), "split": split, "captioner": _name(captioner), "filter": _name(filter),
            "threshold": float(threshold), "decoding": dataclasses.asdict(options), "counts": result})
        atomic_write_bytes(tmp / "manifest.json", (json.dumps(manifest, ensure_ascii=False, indent=1) + "\n").encode())
        _check_out(dst)  # still free: nobody wrote there meanwhile
        if dst.is_dir():
            dst.rmdir()
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


__all__ = ["DECISIONS", "Captioner", "RunCaptioner", "RunFilter", "Scorer", "Tally", "capfilt", "decide",
           "filter_batch", "original_text"]
