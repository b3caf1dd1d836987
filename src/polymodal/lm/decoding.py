"""Decoding settings, one dataclass for Python, the CLI and the HTTP API, mapped onto transformers' ``generate``.

- greedy (the default): the most likely token each step;
- ``num_beams > 1``: beam search (no streaming: a beam's text is only known at the end);
- ``do_sample``: sampling at ``temperature``, optionally cut to the ``top_k`` most likely tokens and/or the
  smallest set of probability ``top_p`` (nucleus), reproducible with ``seed``;
- ``repetition_penalty`` (> 1 discourages repeats, CTRL-style as in transformers), ``stop`` strings (the text
  is cut before the first one), ``max_new_tokens``, and ``use_cache`` (the KV cache; off only to measure it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InvalidInput

MAX_NEW_TOKENS = 512  # the most one request may ask for (bounds a request's time)


@dataclass(frozen=True)
class DecodingOptions:
    max_new_tokens: int = 48
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> InvalidInput:
            return InvalidInput(f"expected {expected}, got {getattr(self, name)!r}", field=name)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.max_new_tokens) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise bad("max_new_tokens", f"an integer in [1, {MAX_NEW_TOKENS}]")
        if not is_int(self.num_beams) or not 1 <= self.num_beams <= 16:
            raise bad("num_beams", "an integer in [1, 16]")
        if not isinstance(self.do_sample, bool):
            raise bad("do_sample", "true or false")
        if not _finite(self.temperature) or self.temperature <= 0:
            raise bad("temperature", "a number > 0")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 1):
            raise bad("top_k", "an integer >= 1 or null")
        if self.top_p is not None and (not _finite(self.top_p) or not 0 < self.top_p <= 1):
            raise bad("top_p", "a number in (0, 1] or null")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "a number > 0")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, Sequence) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 8:
            raise bad("stop", "up to 8 non-empty strings")
        object.__setattr__(self, "stop", tuple(stop))
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise bad("seed", "an integer >= 0 or null")
        if not isinstance(self.use_cache, bool):
            raise bad("use_cache", "true or false")
        if self.do_sample and self.num_beams > 1:
            raise InvalidInput("choose sampling or beam search, not both", field="num_beams")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any] | None) -> DecodingOptions:
        if obj is None:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise InvalidInput(f"unknown decoding option (known: {', '.join(sorted(known))})", field=unknown[0])
        values = {k: v for k, v in obj.items() if v is not None or k in ("top_k", "top_p", "seed")}
        if isinstance(values.get("stop"), list):
            values["stop"] = tuple(values["stop"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stop"] = list(self.stop)
        return out

    @property
    def streamable(self) -> bool:
        return self.num_beams == 1

    def generate_kwargs(self, pad_id: int, eos_id: int) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate`` (stop strings are applied by `cut_at_stop`)."""
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                              "do_sample": self.do_sample, "use_cache": self.use_cache,
                              "pad_token_id": pad_id, "eos_token_id": eos_id}
        if self.repetition_penalty != 1.0:
            kw["repetition_penalty"] = self.repetition_penalty
        if self.do_sample:
            kw.update(temperature=self.temperature, top_k=self.top_k or 0, top_p=self.top_p or 1.0)
        return kw


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` before the first stop string (unchanged without one)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


__all__ = ["MAX_NEW_TOKENS", "DecodingOptions", "cut_at_stop"]
