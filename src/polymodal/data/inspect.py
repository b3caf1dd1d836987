"""Summarize a data set in one streaming pass: counts per modality, image/video sizes, audio durations
and sample rates, video frame counts, caption lengths and languages, generation targets (captions, questions
per type, transcripts, dialog turns, conversations and their scored turns per skill; in total and per split), and
what was skipped."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from .formats.dataset import Dataset
from .sample import MODALITIES, Sample
from .targets import Targets

# CJK Unified Ideographs (+ extension A, compatibility ideographs, extension B): a caption holding any is "zh".
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df]")
_LATIN = re.compile("[A-Za-z]")
MAX_SKIPPED_SHOWN = 5


def detect_lang(text: str) -> str:
    """A heuristic, not a language identifier: ``zh`` if any Han character, ``en`` if any Latin letter,
    else ``other``."""
    if _HAN.search(text):
        return "zh"
    return "en" if _LATIN.search(text) else "other"


@dataclass
class Running:
    """min / mean / max of a stream of numbers in constant memory."""

    n: int = 0
    total: float = 0.0
    lo: float = float("inf")
    hi: float = float("-inf")

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x
        self.lo, self.hi = min(self.lo, x), max(self.hi, x)

    def as_dict(self) -> dict[str, float] | None:
        if self.n == 0:
            return None
        return {"min": self.lo, "mean": self.total / self.n, "max": self.hi}


@dataclass
class Extent:
    """Element-wise min and max of (H, W) pairs."""

    lo: tuple[int, int] | None = None
    hi: tuple[int, int] | None = None

    def add(self, h: int, w: int) -> None:
        self.lo = (h, w) if self.lo is None else (min(self.lo[0], h), min(self.lo[1], w))
        self.hi = (h, w) if self.hi is None else (max(self.hi[0], h), max(self.hi[1], w))

    def as_dict(self) -> dict[str, list[int] | None]:
        return {"min_hw": list(self.lo) if self.lo else None, "max_hw": list(self.hi) if self.hi else None}


@dataclass
class TargetCounts:
    """How many targets of each kind some samples carry (``samples``: those with any target)."""

    samples: int = 0
    captions: int = 0
    qa: int = 0
    transcripts: int = 0
    dialog_turns: int = 0
    qa_types: dict[str, int] = field(default_factory=dict)
    conversations: int = 0
    conversation_skills: dict[str, int] = field(default_factory=dict)  # assistant turns per skill

    def add(self, t: Targets) -> None:
        self.samples += bool(t)
        self.captions += len(t.captions)
        self.qa += len(t.qa)
        self.transcripts += t.transcript is not None
        self.dialog_turns += len(t.dialog)
        for q in t.qa:
            self.qa_types[q.type] = self.qa_types.get(q.type, 0) + 1
        self.conversations += len(t.conversations)
        for c in t.conversations:
            for turn in c.turns:
                if turn.role == "assistant" and turn.skill is not None:
                    self.conversation_skills[turn.skill] = self.conversation_skills.get(turn.skill, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "captions": self.captions, "qa": self.qa, "transcripts": self.transcripts,
                "dialog_turns": self.dialog_turns, "qa_types": dict(sorted(self.qa_types.items())),
                "conversations": self.conversations,
                "conversation_skills": dict(sorted(self.conversation_skills.items()))}


class Summary:
    """The running statistics `inspect_dataset` fills, one sample at a time."""

    def __init__(self) -> None:
        self.n = 0
        self.counts = dict.fromkeys(MODALITIES, 0)
        self.chars, self.duration, self.frames = Running(), Running(), Running()
        self.image, self.video = Extent(), Extent()
        self.langs: dict[str, int] = {}
        self.rates: dict[int, int] = {}
        self.meta_keys: set[str] = set()
        self.targets = TargetCounts()
        self.split_targets: dict[str, TargetCounts] = {}  # by metadata["split"], where samples say

    def add(self, s: Sample) -> None:
        self.n += 1
        for m in s.modalities:
            self.counts[m] += 1
        if s.text is not None:
            self.chars.add(len(s.text))
            lang = detect_lang(s.text)
            self.langs[lang] = self.langs.get(lang, 0) + 1
        if s.image is not None:
            self.image.add(*s.image.shape[:2])
        if s.audio is not None and s.sample_rate is not None:
            self.duration.add(s.audio.shape[0] / s.sample_rate)
            self.rates[int(s.sample_rate)] = self.rates.get(int(s.sample_rate), 0) + 1
        if s.video is not None:
            self.frames.add(s.video.shape[0])
            self.video.add(*s.video.shape[1:3])
        self.meta_keys.update(s.metadata)
        self.targets.add(s.targets)
        split = s.metadata.get("split")
        if isinstance(split, str):
            self.split_targets.setdefault(split, TargetCounts()).add(s.targets)

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.n,
            "modalities": self.counts,
            "text": {"chars": self.chars.as_dict(), "langs": dict(sorted(self.langs.items()))},
            "image": self.image.as_dict(),
            "audio": {"duration_s": self.duration.as_dict(),
                      "sample_rates": {str(k): v for k, v in sorted(self.rates.items())}},
            "video": {"frames": self.frames.as_dict(), **self.video.as_dict()},
            "metadata_keys": sorted(self.meta_keys),
            "targets": {"total": self.targets.as_dict(),
                        "splits": {k: v.as_dict() for k, v in self.split_targets.items()}},
        }


def inspect_dataset(ds: Dataset, progress: bool = True) -> dict[str, Any]:
    """One pass over ``ds``; returns a JSON-ready dict (see docs/data.md for the fields)."""
    stored = len(ds)
    summary = Summary()
    bar = tqdm(total=stored, desc=f"inspect {ds.path.name}", unit="sample", file=sys.stderr,
               disable=not progress, leave=False)
    with bar:
        for s in ds:
            summary.add(s)
            bar.update(1)
    out: dict[str, Any] = {"path": str(ds.path), "format": ds.format, "split": ds.split, "stored": stored}
    if ds.manifest is not None:
        out["name"] = ds.manifest.get("name")
        out["splits"] = {name: (spec or {}).get("count") for name, spec in ds.manifest["splits"].items()}
    out.update(summary.as_dict())
    skipped = ds.policy.skipped
    out["skipped"] = {"count": len(skipped), "first": [n for n, _ in skipped[:MAX_SKIPPED_SHOWN]],
                      "errors": [e for _, e in skipped[:MAX_SKIPPED_SHOWN]], "summary": ds.policy.summary()}
    return out


def _stat(d: dict[str, float] | None, fmt: str = "{:.1f}") -> str:
    if d is None:
        return "-"
    return " / ".join(f"{k} {d[k] if isinstance(d[k], int) else fmt.format(d[k])}" for k in ("min", "mean", "max"))


def _hw(d: dict[str, Any]) -> str:
    if d["min_hw"] is None:
        return "-"
    return "HxW min {}x{}, max {}x{}".format(*d["min_hw"], *d["max_hw"])


def _targets_line(c: dict[str, Any]) -> str:
    if not c["samples"]:
        return "-"
    types = ", ".join(f"{k} {v}" for k, v in c["qa_types"].items())
    line = (f"captions {c['captions']}, qa {c['qa']}" + (f" ({types})" if types else "")
            + f", transcripts {c['transcripts']}, dialog turns {c['dialog_turns']}")
    if c.get("conversations"):  # only data sets made with conversations say so (older summaries stay as they were)
        skills = ", ".join(f"{k} {v}" for k, v in c["conversation_skills"].items())
        line += f", conversations {c['conversations']}" + (f" (turns: {skills})" if skills else "")
    return line


def format_summary(info: dict[str, Any]) -> str:
    """The human-readable form of `inspect_dataset`'s dict."""
    head = f"{info['path']} ({info['format']}"
    head += f", split {info['split']})" if info.get("split") else ")"
    if info.get("name"):
        head += f" data set '{info['name']}'"
    lines = [head, f"samples:    {info['samples']} read of {info['stored']} stored; {info['skipped']['summary']}"]
    if info.get("splits"):
        lines.append("splits:     " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()))
    lines.append("modalities: " + ", ".join(f"{m} {c}" for m, c in info["modalities"].items()))
    t, a, v = info["text"], info["audio"], info["video"]
    langs = ", ".join(f"{k} {c}" for k, c in t["langs"].items()) or "-"
    lines.append(f"text:       chars {_stat(t['chars'])}; langs {langs}")
    lines.append(f"image:      {_hw(info['image'])}")
    rates = ", ".join(f"{r} Hz ({c})" for r, c in a["sample_rates"].items()) or "-"
    lines.append(f"audio:      seconds {_stat(a['duration_s'], '{:.2f}')}; rates {rates}")
    lines.append(f"video:      frames {_stat(v['frames'])}; {_hw(v)}")
    lines.append("metadata:   " + (", ".join(info["metadata_keys"]) or "-"))
    targets = info["targets"]
    lines.append(f"targets:    {_targets_line(targets['total'])}")
    if targets["total"]["samples"]:
        lines += [f"  {split}:" + " " * max(1, 9 - len(split)) + _targets_line(c)
                  for split, c in targets["splits"].items()]
    for err in info["skipped"]["errors"]:
        lines.append(f"  skipped: {err}")
    return "\n".join(lines)
