"""Speech recognition error rates with `jiwer`'s definitions, corpus level.

    from polymodal.eval.asr_metrics import asr_report, cer, wer
    wer(["the cat sat"], ["The cat, sat."])             # 0.0 after normalisation
    cer(["今天天气很好。"], ["今天天汽很好"])              # 1/6
    asr_report([("the cat", "a cat", "en"), ("你好", "你好", "zh")])

WER = (S + D + I) / N over words and CER the same over characters, where S, D, I are the substitutions,
deletions and insertions of a minimum edit alignment and N the number of reference words (characters),
summed over the whole corpus before dividing (not a mean of per-utterance rates): ``jiwer.wer`` /
``jiwer.cer`` on lists. When every reference is empty, jiwer's rate is the number of insertions.

Both sides are normalised the same way first, with jiwer's transforms: lower case, punctuation
(Unicode categories P*) removed, runs of spaces collapsed, ends stripped. For CER in languages written
without spaces (Chinese, Japanese: ``lang`` in `CHAR_LANGS`) all whitespace is removed too, so only the
characters are compared; elsewhere a single space between words counts as a character.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import InvalidInput, require

CHAR_LANGS = frozenset({"zh", "ja"})  # scored by CER; every other language by WER


def _base(lang: str) -> str:
    return lang.lower().replace("_", "-").split("-")[0]


def _transform(chars: bool, keep_spaces: bool) -> Any:
    jiwer = require("jiwer", "gen")
    steps = [jiwer.ToLowerCase(), jiwer.RemovePunctuation()]
    steps.append(jiwer.RemoveMultipleSpaces() if keep_spaces else jiwer.RemoveWhiteSpace(replace_by_space=False))
    steps += [jiwer.Strip(), jiwer.ReduceToListOfListOfChars() if chars else jiwer.ReduceToListOfListOfWords()]
    return jiwer.Compose(steps)


def _pairs(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> tuple[list[str], list[str]]:
    r = [refs] if isinstance(refs, str) else list(refs)
    h = [hyps] if isinstance(hyps, str) else list(hyps)
    if len(r) != len(h):
        raise InvalidInput(f"{len(r)} references but {len(h)} hypotheses", field="hyps")
    if not r:
        raise InvalidInput("no utterances to score", field="refs")
    return r, h


def wer(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> float:
    """Corpus word error rate of ``hyps`` against ``refs`` (same length, or one string each)."""
    r, h = _pairs(refs, hyps)
    t = _transform(chars=False, keep_spaces=True)
    return float(require("jiwer", "gen").wer(r, h, reference_transform=t, hypothesis_transform=t))


def cer(refs: Sequence[str] | str, hyps: Sequence[str] | str, lang: str = "zh") -> float:
    """Corpus character error rate; for ``lang`` in `CHAR_LANGS` whitespace is ignored."""
    r, h = _pairs(refs, hyps)
    t = _transform(chars=True, keep_spaces=_base(lang) not in CHAR_LANGS)
    return float(require("jiwer", "gen").cer(r, h, reference_transform=t, hypothesis_transform=t))


def asr_report(items: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, float | int]]:
    """``items``: (reference transcript, hypothesis, language). Per language as given: ``{"wer": ..., "n": ...}``
    for space-delimited languages, ``{"cer": ..., "n": ...}`` for `CHAR_LANGS` (n = utterances)."""
    by_lang: dict[str, tuple[list[str], list[str]]] = {}
    for ref, hyp, lang in items:
        refs, hyps = by_lang.setdefault(str(lang), ([], []))
        refs.append(ref)
        hyps.append(hyp)
    if not by_lang:
        raise InvalidInput("no utterances to score", field="items")
    out: dict[str, dict[str, float | int]] = {}
    for lang, (refs, hyps) in sorted(by_lang.items()):
        if _base(lang) in CHAR_LANGS:
            out[lang] = {"cer": cer(refs, hyps, lang), "n": len(refs)}
        else:
            out[lang] = {"wer": wer(refs, hyps), "n": len(refs)}
    return out


__all__ = ["CHAR_LANGS", "asr_report", "cer", "wer"]
