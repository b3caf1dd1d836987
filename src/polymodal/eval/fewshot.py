"""In-context few-shot evaluation (Flamingo's protocol) on a task the model never trained on as such.

The task is a question form absent from training: ``"star ->"`` asks for the colour of the star (``"red"``),
built from the data's colour questions ("what color is the star?" -> "red"). A k-shot prompt interleaves k other
pictures with their solved examples, then the query picture with its open prompt::

    [IMG] star -> red </s> [IMG] circle -> blue </s> ... [IMG] square ->

The shots come from other samples of the same split (seeded: every shot count sees the same queries, and a larger
count extends a smaller one's shots). Accuracy is exact match of the reply's first word with the answer; rising
accuracy with k is what in-context learning means here. ``max_len`` bounds what fits: a prompt that does not fit is
counted as skipped, never cut."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.sample import Sample

TASKS: dict[str, tuple[str, str]] = {
    # name: (QA type it is built from, regex over the English question naming the object)
    "color_of": ("color", r"^what color is the (.+)\?$"),
    "size_of": ("size", r"^what size is the (.+)\?$"),
}
FORMS = {"color_of": "{} ->", "size_of": "{} size:"}


@dataclass(frozen=True)
class Example:
    sample: Sample
    prompt: str
    answer: str


def task_examples(samples: Sequence[Sample], task: str = "color_of") -> list[Example]:
    """One example per sample that has a matching (English) question."""
    qa_type, pattern = TASKS[task]
    out = []
    for s in samples:
        for q in s.targets.qa:
            m = re.match(pattern, q.question) if q.type == qa_type and q.lang == "en" else None
            if m and s.image is not None:
                out.append(Example(s, FORMS[task].format(m.group(1)), q.answer))
                break
    return out


Respond = Callable[[Sequence[tuple[list[Example], Example]]], list[str | None]]


def first_word(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""


def fewshot_eval(examples: Sequence[Example], respond: Respond, shots: Sequence[int] = (0, 2, 4, 8),
                 queries: int = 200, seed: int = 0, batch_size: int = 16,
                 progress: bool = False) -> dict[str, Any]:
    """Accuracy per shot count; ``respond([(shots, query), ...])`` returns each reply (None: did not fit)."""
    from tqdm import tqdm

    if len(examples) < max(shots, default=0) + 2:
        raise ValueError(f"need more than {max(shots)} examples, got {len(examples)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))[:queries].tolist()
    pools = {q: [j for j in rng.permutation(len(examples)).tolist() if j != q][:max(shots, default=0)]
             for q in order}
    answers = sorted({e.answer for e in examples})
    majority = max(answers, key=lambda a: sum(e.answer == a for e in examples))
    out: dict[str, Any] = {"n": len(order), "answers": answers,
                           "majority": sum(examples[q].answer == majority for q in order) / len(order)}
    bar = tqdm(total=len(order) * len(shots), desc="few-shot", unit="prompt", disable=not progress)
    for k in shots:
        prompts = [([examples[j] for j in pools[q][:k]], examples[q]) for q in order]
        replies: list[str | None] = []
        for start in range(0, len(prompts), batch_size):
            replies += respond(prompts[start:start + batch_size])
            bar.update(len(prompts[start:start + batch_size]))
        scored = [(first_word(r) == first_word(p[1].answer)) for r, p in zip(replies, prompts, strict=True)
                  if r is not None]
        out[f"shots_{k}"] = {"accuracy": (sum(scored) / len(scored)) if scored else None,
                             "scored": len(scored), "skipped": len(prompts) - len(scored)}
    bar.close()
    return out


__all__ = ["FORMS", "TASKS", "Example", "fewshot_eval", "first_word", "task_examples"]
