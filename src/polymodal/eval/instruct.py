"""Instruction following and hallucination (POPE) of a multimodal LLM on conversations about samples.

    from polymodal.eval.instruct import instruct_items, instruct_eval, format_instruct_table
    items = instruct_items(test_samples, langs=["en", "zh"])
    metrics = instruct_eval(items, respond)        # respond(items) -> one reply per item
    print(format_instruct_table(metrics))

**Items.** Every assistant turn with a canonical ``answer`` of every conversation (`Targets.conversations`) is
one item. Its ``history`` is the conversation up to and including the question, with the *reference* replies of
the earlier turns (teacher forcing: a wrong early answer does not spoil the later ones). ``spoken``: the item's
question is the sample's audio (the first question of a spoken conversation).

**Scoring** (`score_reply`): tolerant parsing of the reply by the kind of answer (`instruct_parse`): yes/no
words in both languages, digits or number words, the set of objects named, an attribute value, or a format that
must be obeyed with the right content (JSON keys, capital letters, one word, a comma list).

**Metrics** (`instruct_eval`, JSON-ready): ``n`` and ``accuracy`` over every item, ``by_skill`` (POPE included
as skill ``pope``); over the instruction items only (``kind == "instruct"``): ``instruct`` (their accuracy),
``by_lang``, ``pairs`` (seen / held-out color+shape pairs: ``sample.metadata["heldout"]``), ``templates``
(seen / held-out instruction phrasings), ``input`` (typed / spoken question); and ``pope``: accuracy,
precision, recall, F1 with "yes" (the object is there) as the positive class, ``yes_rate`` (share of
replies read as yes), ``false_yes_rate`` (share of yes on absent objects: hallucination), over all probes and
``by_setting`` (random / popular / adversarial) and ``by_lang``. A reply read as neither yes nor no counts as
wrong and as not-yes. A group without items has ``accuracy`` None."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from ..data.sample import Sample
from ..data.synth.instruct import HELDOUT_TEMPLATES
from ..data.targets import CONVERSATION_KINDS, Conversation, Turn
from ..errors import InvalidInput
from .instruct_parse import parse_yes_no, score_answer


@dataclass(frozen=True)
class InstructItem:
    """One scored assistant turn: the model sees ``history`` (ending with the question) and the sample."""

    sample: Sample
    conversation: int  # index into sample.targets.conversations
    turn: int  # index of the scored assistant turn in that conversation's turns
    lang: str
    history: tuple[Turn, ...]
    skill: str
    answer: str
    reference: str  # the reference reply (``content``; may be a whole sentence)
    template: str | None
    heldout_pair: bool
    heldout_template: bool
    spoken: bool
    kind: str
    pope_setting: str | None

    @property
    def question(self) -> str:
        return self.history[-1].content

    @property
    def conv(self) -> Conversation:
        return self.sample.targets.conversations[self.conversation]


Respond = Callable[[Sequence[InstructItem]], list[str]]


def _items_of(sample: Sample, index: int, conv: Conversation) -> list[InstructItem]:
    out = []
    first_user = next(i for i, t in enumerate(conv.turns) if t.role == "user")
    for j, turn in enumerate(conv.turns):
        if turn.role != "assistant" or turn.answer is None:
            continue
        setting = turn.template.split("/", 1)[1] if conv.kind == "pope" and turn.template else None
        out.append(InstructItem(
            sample, index, j, conv.lang, conv.turns[:j], turn.skill or "other", turn.answer, turn.content,
            turn.template, bool(sample.metadata.get("heldout", False)), turn.template in HELDOUT_TEMPLATES,
            conv.spoken and j == first_user + 1, conv.kind, setting))
    return out


def instruct_items(samples: Iterable[Sample], langs: Sequence[str] | None = None,
                   kinds: Sequence[str] = CONVERSATION_KINDS, limit: int | None = None) -> list[InstructItem]:
    """Every scorable assistant turn of the conversations of ``samples`` in ``langs`` (None: all) and ``kinds``
    (``"instruct"``, ``"pope"``), in order; at most ``limit`` items."""
    bad = [k for k in kinds if k not in CONVERSATION_KINDS]
    if bad or isinstance(kinds, str):
        raise InvalidInput(f"kinds must be a subset of {list(CONVERSATION_KINDS)}, got {kinds!r}", field="kinds")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInput(f"limit must be an integer >= 1 or None, got {limit!r}", field="limit")
    out: list[InstructItem] = []
    for s in samples:
        for i, conv in enumerate(s.targets.conversations):
            if conv.kind in kinds and (langs is None or conv.lang in langs):
                out.extend(_items_of(s, i, conv))
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


def score_reply(item: InstructItem | tuple[str, str, str, str | None], reply: str) -> bool:
    """Whether ``reply`` is right for ``item`` (an `InstructItem` or ``(skill, lang, answer, template)``)."""
    skill, lang, answer, _template = ((item.skill, item.lang, item.answer, item.template)
                                      if isinstance(item, InstructItem) else item)
    if not isinstance(reply, str):
        raise InvalidInput(f"a reply must be a string, got {type(reply).__name__}", field="reply")
    return score_answer(skill, lang, answer, reply)


def _acc(flags: Sequence[bool]) -> dict[str, Any]:
    return {"accuracy": sum(flags) / len(flags) if flags else None, "n": len(flags)}


def _group(items: Sequence[InstructItem], right: Sequence[bool], key: Callable[[InstructItem], str],
           names: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[bool]] = {name: [] for name in names}
    for it, ok in zip(items, right, strict=True):
        groups.setdefault(key(it), []).append(ok)
    return {k: _acc(groups[k]) for k in (*names, *sorted(set(groups) - set(names)))}


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def pope_metrics(said_yes: Sequence[bool], present: Sequence[bool]) -> dict[str, Any]:
    """POPE's numbers with "yes" as the positive class: ``said_yes[i]`` (the reply was read as yes) against
    ``present[i]`` (the object is in the picture)."""
    pairs = list(zip(said_yes, present, strict=True))
    tp = sum(y and p for y, p in pairs)
    fp = sum(y and not p for y, p in pairs)
    tn = sum(not y and not p for y, p in pairs)
    fn = sum(not y and p for y, p in pairs)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = None if precision is None or recall is None or precision + recall == 0 \
        else 2 * precision * recall / (precision + recall)
    return {"n": len(pairs), "accuracy": _ratio(tp + tn, len(pairs)), "precision": precision, "recall": recall,
            "f1": f1, "yes_rate": _ratio(tp + fp, len(pairs)), "false_yes_rate": _ratio(fp, fp + tn)}


def _pope(items: Sequence[InstructItem], replies: Sequence[str]) -> dict[str, Any]:
    yes = [parse_yes_no(r, it.lang) is True for it, r in zip(items, replies, strict=True)]
    present = [it.answer.strip() in ("yes", "是") for it in items]
    out = pope_metrics(yes, present)

    def split(key: Callable[[InstructItem], str | None]) -> dict[str, Any]:
        names = sorted({str(key(it)) for it in items})
        return {name: pope_metrics([y for it, y in zip(items, yes, strict=True) if str(key(it)) == name],
                                   [p for it, p in zip(items, present, strict=True) if str(key(it)) == name])
                for name in names}

    out["by_setting"] = split(lambda it: it.pope_setting)
    out["by_lang"] = split(lambda it: it.lang)
    return out


def _replies(items: Sequence[InstructItem], respond: Respond, batch_size: int, progress: bool | None) -> list[str]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"batch_size must be an integer >= 1, got {batch_size!r}", field="batch_size")
    show = sys.stderr.isatty() if progress is None else progress
    out: list[str] = []
    with tqdm(total=len(items), desc="instruct", unit="item", file=sys.stderr, disable=not show) as bar:
        for lo in range(0, len(items), batch_size):
            batch = items[lo:lo + batch_size]
            got = list(respond(batch))
            if len(got) != len(batch):
                raise InvalidInput(f"respond returned {len(got)} replies for {len(batch)} items", field="respond")
            out.extend(got)
            bar.update(len(batch))
    return out


def instruct_eval(items: Sequence[InstructItem], respond: Respond, batch_size: int = 32,
                  progress: bool | None = None) -> dict[str, Any]:
    """Ask ``respond`` every item (in batches of ``batch_size``; ``progress``: a bar on stderr, None: when it
    is a terminal) and score the replies; the metrics are described in the module docstring."""
    items = list(items)
    if not items:
        raise InvalidInput("no instruction items to evaluate (were the samples made with --conversations?)",
                           field="items")
    replies = _replies(items, respond, batch_size, progress)
    right = [score_reply(it, r) for it, r in zip(items, replies, strict=True)]
    inst = [(it, ok) for it, ok in zip(items, right, strict=True) if it.kind == "instruct"]
    i_items, i_right = [it for it, _ in inst], [ok for _, ok in inst]
    pope = [(it, r) for it, r in zip(items, replies, strict=True) if it.kind == "pope"]
    return {
        "n": len(items), "accuracy": sum(right) / len(right),
        "by_skill": _group(items, right, lambda it: it.skill),
        "instruct": _acc(i_right),
        "by_lang": _group(i_items, i_right, lambda it: it.lang),
        "pairs": _group(i_items, i_right, lambda it: "heldout" if it.heldout_pair else "seen", ("seen", "heldout")),
        "templates": _group(i_items, i_right, lambda it: "heldout" if it.heldout_template else "seen",
                            ("seen", "heldout")),
        "input": _group(i_items, i_right, lambda it: "spoken" if it.spoken else "typed", ("typed", "spoken")),
        "pope": _pope([it for it, _ in pope], [r for _, r in pope]) if pope else None,
    }


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _row(name: str, g: dict[str, Any]) -> str:
    return f"  {name:<12} {g['n']:>6}  {_fmt(g['accuracy'])}"


def format_instruct_table(metrics: dict[str, Any]) -> str:
    """A readable text table of `instruct_eval`'s metrics."""
    lines = [f"instruction following: {metrics['n']} items, accuracy {_fmt(metrics['accuracy'])} "
             f"(instruction turns {_fmt(metrics['instruct']['accuracy'])}, n {metrics['instruct']['n']})",
             f"  {'group':<12} {'n':>6}  accuracy"]
    for title, key in (("skill", "by_skill"), ("language", "by_lang"), ("pairs", "pairs"),
                       ("templates", "templates"), ("question", "input")):
        lines.append(f"{title}:")
        lines += [_row(name, g) for name, g in metrics[key].items()]
    pope = metrics.get("pope")
    if pope:
        cols = ("n", "accuracy", "precision", "recall", "f1", "yes_rate", "false_yes_rate")
        lines.append("POPE (yes = the object is there):")
        lines.append(f"  {'':<12} " + " ".join(f"{c:>14}" for c in cols))
        rows = [("all", pope)] + [(k, v) for k, v in pope["by_setting"].items()] \
            + [(f"lang {k}", v) for k, v in pope["by_lang"].items()]
        for name, g in rows:
            lines.append(f"  {name:<12} " + " ".join(
                f"{g[c]:>14}" if c == "n" else f"{_fmt(g[c]):>14}" for c in cols))
    return "\n".join(lines)


__all__ = ["InstructItem", "Respond", "format_instruct_table", "instruct_eval", "instruct_items", "pope_metrics",
           "score_reply"]
