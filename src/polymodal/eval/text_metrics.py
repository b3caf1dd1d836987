"""Captioning metrics as COCO caption evaluation computes them (`pycocoevalcap`, what LAVIS reports):
BLEU-1..4, ROUGE-L, CIDEr-D, and METEOR when Java is present.

    from polymodal.eval.text_metrics import caption_scores
    caption_scores({"img1": ["A red circle.", "a small red circle"]}, {"img1": "a red circle"})
    # {"bleu1": ..., "bleu2": ..., "bleu3": ..., "bleu4": ..., "rouge_l": ..., "cider_d": ...}

The scorers are pycocoevalcap's own classes (BLEU: corpus level, closest reference length for the brevity
penalty; ROUGE-L: LCS F-measure with beta 1.2, averaged over images). Only the tokenisation is ours:
pycocoevalcap's `PTBTokenizer` runs Stanford CoreNLP 3.4.1 in Java, which is not everywhere, so
`ptb_tokenize` reproduces what it outputs (lower case, the PTB splits, then COCO's PUNCTUATIONS removed);
tests/eval/test_text_metrics.py checks it token for token against the Java tokenizer on typical captions.

**Which CIDEr.** pycocoevalcap 1.2 ships one class, `pycocoevalcap.cider.Cider`; its scorer is CIDEr-D
(Vedantam et al. 2015, section "CIDEr-D"): TF-IDF vectors of 1..4-grams, the hypothesis counts clipped by
the reference counts (``min(g_hyp, g_ref) * g_ref``), a Gaussian length penalty ``exp(-(l_hyp - l_ref)^2 /
(2 * 6^2))``, the cosine averaged over n and over the references, times 10; no stemming. The document
frequencies come from the references of the images being scored (not from a fixed COCO corpus, the
``coco-val-df`` mode of the separate `cider` repo), so CIDEr-D depends on the evaluated set: with a single
image every n-gram has idf ``log(1/1) = 0`` and the score is 0. We report it as ``cider_d``.

Chinese (``lang="zh"``): one token per CJK character, runs of other letters/digits as words, punctuation
and spaces dropped (after NFKC, so full-width forms become ASCII). Character-level scoring is the usual
practice for Chinese captioning metrics when no segmenter is fixed; AI Challenger (AIC-ICC) segments words
with jieba instead, so our Chinese numbers are not comparable with AIC-ICC's word-level ones. METEOR is
English-only (its paraphrase tables), so it is never run for ``zh``. SPICE is not offered (it needs
Stanford models downloaded at first use).
"""

from __future__ import annotations

import re
import shutil
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidInput, MissingExtra, require

# COCO's list (pycocoevalcap/tokenizer/ptbtokenizer.py): tokens dropped after PTB tokenisation. The bracket
# names are upper case there while `-lowerCase` output is lower case, so brackets survive as "-lrb-" etc.
PUNCTUATIONS = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"})
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_QUOTES = "\"'`\u2018\u2019\u201c\u201d"  # PTB turns them into `` '' ` ', which the list above drops
_DASHES = "-\u2013\u2014"
_CLITICS = ("n't", "'s", "'m", "'re", "'ve", "'d", "'ll")
_CLITIC_START = re.compile(r"'(?:s|m|re|ve|d|ll)(?![^\W_])", re.IGNORECASE)
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
                "wanna": ("wan", "na"), "lemme": ("lem", "me"), "gimme": ("gim", "me")}
# words whose trailing period PTB keeps (its abbreviation list, the part that shows up in captions)
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "etc", "vs", "inc", "ltd",
                            "co", "corp", "mt", "ave", "blvd", "rd", "ft", "dept", "est", "bros", "gen",
                            "rev", "sen", "rep", "gov", "sgt", "capt", "lt", "col", "jan", "feb", "mar",
                            "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mo", "calif",
                            "fla"})
_ACRONYM = re.compile(r"[^\W\d_](?:\.[^\W\d_])+")  # u.s, p.m, e.g (the final period is checked separately)
# inside a word: a comma or colon splits it unless it sits between digits (2,000 / 5:30), so does a hyphen
# after a clitic (dog's-eye -> dog 's eye); '*' splits and is a token
_INNER_SPLIT = re.compile(r"(?<!\d)[,:]|[,:](?!\d)|(?:(?<=n't)|(?<='s)|(?<='m)|(?<='d)|(?<='re)|(?<='ve)|(?<='ll))-"
                          r"|(\*)", re.IGNORECASE)
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_ZH_TOKEN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+(?:\.\d+)?")


def _is_abbreviation(core: str) -> bool:
    return core.lower() in _ABBREVIATIONS or bool(_ACRONYM.fullmatch(core))


def _peel_front(chunk: str, out: list[str]) -> str:
    while chunk:
        c = chunk[0]
        if c in _QUOTES and not (c == "'" and _CLITIC_START.match(chunk)):  # 's 're ... stay tokens
            chunk = chunk[1:]
        elif c in _BRACKETS:
            out.append(_BRACKETS[c])
            chunk = chunk[1:]
        elif c in "$/" or (c == "#" and chunk[1:2].isdigit()):
            out.append(c)
            chunk = chunk[1:]
        elif c in _DASHES:
            dashes = len(chunk) - len(chunk.lstrip(_DASHES))
            if chunk[0] == "-" and dashes == 1 and chunk[1:2].isdigit():
                break  # "-5" is a number
            chunk = chunk[dashes:]  # "-", "--", "----" and dashes in front of a word are dropped
        else:
            break
    return chunk


def _peel_back(chunk: str, out: list[str], before_capital: bool) -> str:
    """Strip trailing punctuation; ``out`` receives the kept tokens in reverse order. A lone letter keeps its
    period ("plan b. for") except before a sentence start: PTB splits it before words on its list (The, A,
    It, There, ... but not Two or On) and, at the end of a caption, looks into the next caption; we split
    before any capitalised word and at the end (COCOEvalCap's next caption usually starts with "A")."""
    while chunk:
        c = chunk[-1]
        if c in _QUOTES or c in _DASHES or c in ",;:":
            chunk = chunk[:-1]
        elif c in _BRACKETS or c in "%/":
            out.append(_BRACKETS.get(c, c))
            chunk = chunk[:-1]
        elif c in ".?!":
            run = re.search(r"[.?!]+$", chunk)
            assert run is not None
            core, tail = chunk[: run.start()], run.group()
            lone = len(core) == 1 and core.isalpha() and (tail.startswith("..") or not before_capital)
            keep_period = tail[0] == "." and (lone or _is_abbreviation(core))
            tail = tail[1:] if keep_period else tail
            if len(tail) > 1 and set(tail) <= {"?", "!"}:
                out.append(tail)  # "?!", "!!" are tokens PTB keeps; ".", "?", "!", "..." are dropped
            if keep_period:
                return core + "."
            chunk = core
        else:
            break
    return chunk


def _split_core(core: str) -> list[str]:
    words: list[str] = []
    for piece in _INNER_SPLIT.split(core):
        if not piece:
            continue
        if piece.lower() in _SPLIT_WORDS:
            words.extend(_SPLIT_WORDS[piece.lower()])
            continue
        clitics: list[str] = []
        found = True
        while found:
            found = False
            for clitic in _CLITICS:
                if len(piece) > len(clitic) and piece.lower().endswith(clitic):
                    clitics.insert(0, piece[-len(clitic):])
                    piece = piece[: -len(clitic)]
                    found = True
                    break
        words.extend([piece, *clitics])
    return words


def ptb_tokenize(text: str) -> str:
    """What pycocoevalcap's PTBTokenizer (Stanford PTBTokenizer ``-preserveLines -lowerCase``, then COCO's
    PUNCTUATIONS removed) makes of one caption: space-joined lower-case tokens. Covers what captions contain
    (clitics "n't 's 're", brackets as -lrb-, quotes, hyphenated words, numbers 2,000 / 3.5 / 5:30, $ and %,
    abbreviations that keep their period); rarer PTB rules ('tis, y'all, 6'2") are not reproduced."""
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    tokens: list[str] = []
    chunks = text.split()
    for i, chunk in enumerate(chunks):
        head: list[str] = []
        tail: list[str] = []
        before_capital = i + 1 == len(chunks) or chunks[i + 1][0].isupper()
        core = _peel_back(_peel_front(chunk, head), tail, before_capital)
        tokens += head + (_split_core(core) if core else []) + tail[::-1]
    return " ".join(t.lower() for t in tokens if t and t not in PUNCTUATIONS)


def zh_tokenize(text: str) -> str:
    """Chinese caption -> space-joined tokens: each CJK character a token, other letter/digit runs one word,
    punctuation and whitespace dropped (after NFKC normalisation and lower-casing)."""
    return " ".join(_ZH_TOKEN.findall(unicodedata.normalize("NFKC", text).lower()))


def tokenize_caption(text: str, lang: str = "en") -> str:
    if lang == "en":
        return ptb_tokenize(text)
    if lang == "zh":
        return zh_tokenize(text)
    raise InvalidInput(f"unknown caption language {lang!r} (known: 'en', 'zh')", field="lang")


def java_available() -> bool:
    return shutil.which("java") is not None


def _check(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str]) -> None:
    if not refs:
        raise InvalidInput("no references to score against", field="refs")
    missing, extra = set(refs) - set(hyps), set(hyps) - set(refs)
    if missing or extra:
        raise InvalidInput(f"hypotheses and references name different ids (without a hypothesis: "
                           f"{sorted(map(str, missing))[:5]}, without references: {sorted(map(str, extra))[:5]})",
                           field="hyps")
    for key, captions in refs.items():
        if isinstance(captions, str) or not captions:
            raise InvalidInput(f"id {key!r} needs a non-empty list of reference captions", field="refs")


def caption_scores(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str], lang: str = "en",
                   meteor: bool | None = None) -> dict[str, float]:
    """COCO caption metrics of one hypothesis per id against that id's references.

    Returns ``bleu1``..``bleu4``, ``rouge_l``, ``cider_d`` (see the module docstring for which CIDEr), plus
    ``meteor`` when ``meteor`` is True, or None and Java is on PATH and ``lang == "en"``. An empty hypothesis
    scores 0 on every metric. Raises `MissingExtra` without pycocoevalcap (or with ``meteor=True`` and no
    Java), `InvalidInput` when the ids differ or an id has no references."""
    _check(refs, hyps)
    if meteor and lang != "en":
        raise InvalidInput("METEOR is English-only (its paraphrase tables); pass meteor=False", field="meteor")
    if meteor and not java_available():
        raise MissingExtra("METEOR needs Java ('java' is not on PATH); install a JRE or pass meteor=False")
    bleu = require("pycocoevalcap.bleu.bleu", "gen")
    rouge = require("pycocoevalcap.rouge.rouge", "gen")
    cider = require("pycocoevalcap.cider.cider", "gen")
    gts = {k: [tokenize_caption(c, lang) for c in refs[k]] for k in refs}
    res = {k: [tokenize_caption(hyps[k], lang)] for k in refs}
    b, _ = bleu.Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu{n + 1}": float(b[n]) for n in range(4)}
    out["rouge_l"] = float(rouge.Rouge().compute_score(gts, res)[0])
    # pycocoevalcap asserts on a corpus whose references have no n-gram at all: CIDEr-D is 0 there
    has_ngrams = any(c for captions in gts.values() for c in captions)
    out["cider_d"] = float(cider.Cider().compute_score(gts, res)[0]) if has_ngrams else 0.0
    if meteor or (meteor is None and lang == "en" and java_available()):
        out["meteor"] = _meteor(gts, res)
    return out


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    module = require("pycocoevalcap.meteor.meteor", "gen")
    scorer: Any = module.Meteor()
    try:
        return float(scorer.compute_score(gts, res)[0])
    finally:
        del scorer  # its __del__ stops the Java process


__all__ = ["PUNCTUATIONS", "caption_scores", "java_available", "ptb_tokenize", "tokenize_caption", "zh_tokenize"]
