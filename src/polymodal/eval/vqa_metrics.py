"""VQA accuracy as the official VQAv2 evaluation (vqaEval.py of the VQA API) defines it.

    from polymodal.eval.vqa_metrics import vqa_accuracy, vqa_report
    vqa_accuracy("Two", ["2"])                        # 1.0: exact match after normalisation
    vqa_accuracy("2", ["2", "2", "3", "2", ...])      # VQAv2 soft accuracy over several answers
    vqa_report([("red", ["red"], "color"), ("3", ["2"], "count")])

**Normalisation** (`normalize_answer`), the official steps, written from their definition:
newlines and tabs become spaces and the ends are stripped; then *punctuation*: each of
``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when, in the input, it touches a space
(``"p "`` or ``" p"``) or the input has a comma between two digits anywhere, and is replaced by a space
otherwise; then every period *not followed by a digit* is deleted (the official pattern means to keep
decimal points; its look-behind is misspelt as a look-ahead, so only the following character counts,
and it deletes at most 32 periods, as the official call passes ``re.UNICODE`` where the count goes);
then *digits and articles*: lower case, split on whitespace, number words none/zero..ten -> 0..10,
articles a/an/the dropped, contractions written without an apostrophe restored ("dont" -> "don't",
from the official table, including its one reversed entry "somebody'd" -> "somebodyd"), joined by one
space. The apostrophe, colon, period inside numbers, ``$ % & * # ' :`` are not punctuation there.

Chinese answers (any CJK character in the prediction or a reference): NFKC, lower case, then every
whitespace, Unicode punctuation (categories P*) and ASCII punctuation character removed ("红色。" ->
"红色", "两 个" -> "两个"). The English steps (articles, number words) do not apply.

**Accuracy.** One reference: exact match of the normalised strings (1 or 0). Several references (VQAv2
collects 10): for each reference left out in turn, ``min(1, #other references equal to the prediction
/ 3)``, averaged over the leave-one-out subsets, as the official code does.

**Where the official script differs.** It normalises the prediction and the references only when the
references are not all the same string, and otherwise compares them lower-cased but raw (VQAv2's answers
were normalised when collected, so for them this rarely matters, but a prediction "two" against ten
"2" scores 0 there). We normalise always; ``vqav2_script=True`` reproduces the script's behaviour.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import InvalidInput

_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})


# The official table: the apostrophe-less spelling -> the written contraction (words are looked up after
# lower-casing, so its "Im"/"Ive"/"Id've" entries never match, there or here).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_ASCII_PUNCT = frozenset(string.punctuation)


def _punctuation(text: str) -> str:
    delete = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _PUNCT:  # each decision looks at the input, not at the partly cleaned text
        out = out.replace(p, "" if delete or p + " " in text or " " + p in text else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=32)


def _digits_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def is_chinese(text: str) -> bool:
    return _CJK.search(text) is not None


def normalize_answer(answer: str, chinese: bool | None = None) -> str:
    """The official VQA normalisation (English), or the Chinese one (see the module docstring);
    ``chinese=None`` decides from the answer itself."""
    if chinese if chinese is not None else is_chinese(answer):
        text = unicodedata.normalize("NFKC", answer).lower()
        return "".join(c for c in text if not (c.isspace() or c in _ASCII_PUNCT
                                                or unicodedata.category(c).startswith("P")))
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def _references(references: Sequence[str] | str) -> list[str]:
    if isinstance(references, str) or not references:
        raise InvalidInput("references must be a non-empty list of answers", field="references")
    return list(references)


def vqa_accuracy(pred: str, references: Sequence[str], *, vqav2_script: bool = False) -> float:
    """Accuracy of one predicted answer: exact match with one reference, the VQAv2 leave-one-out soft
    accuracy with several (see the module docstring)."""
    refs = _references(references)
    chinese = is_chinese(pred) or any(is_chinese(r) for r in refs)
    if vqav2_script and not chinese and len(refs) > 1:
        refs = [r.replace("\n", " ").replace("\t", " ").strip() for r in refs]
        pred = pred.replace("\n", " ").replace("\t", " ").strip()
        if len(set(refs)) > 1:
            refs, pred = [normalize_answer(r, False) for r in refs], normalize_answer(pred, False)
        refs, pred = [r.lower() for r in refs], pred.lower()
    else:
        refs, pred = [normalize_answer(r, chinese) for r in refs], normalize_answer(pred, chinese)
    if len(refs) == 1:
        return float(pred == refs[0])
    matches = [r == pred for r in refs]
    total = sum(matches)
    # leaving out reference i: the others match `total - matches[i]` times
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(refs)


def vqa_report(items: Iterable[tuple[str, Sequence[str], str]], *, vqav2_script: bool = False) -> dict[str, Any]:
    """``items``: (predicted answer, reference answers, question type). Returns ``{"overall": mean accuracy,
    "n": count, "per_type": {type: {"accuracy": ..., "n": ...}}}`` (types sorted)."""
    by_type: dict[str, list[float]] = {}
    for pred, refs, qtype in items:
        by_type.setdefault(str(qtype), []).append(vqa_accuracy(pred, refs, vqav2_script=vqav2_script))
    scores = [s for values in by_type.values() for s in values]
    if not scores:
        raise InvalidInput("no VQA items to score", field="items")
    return {"overall": sum(scores) / len(scores), "n": len(scores),
            "per_type": {t: {"accuracy": sum(v) / len(v), "n": len(v)} for t, v in sorted(by_type.items())}}


__all__ = ["is_chinese", "normalize_answer", "vqa_accuracy", "vqa_report"]
