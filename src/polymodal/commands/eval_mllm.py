"""`polymodal eval` for multimodal-LLM runs (``arch: "mllm"``, docs/mllm.md):

- ``--task instruct``: instruction following on the data's conversations (``data make shapes --conversations``):
  accuracy per skill, English vs Chinese, seen vs held-out colour+shape pairs and instruction phrasings, and the
  POPE hallucination probe (false "yes" rate on absent objects). Earlier turns are the references (teacher-forced).
- ``--task fewshot``: in-context learning of a question form never trained (`polymodal.eval.fewshot`), 0/2/4/8 shots.
- ``--task embodied``: closed-loop success on the tabletop world's unseen test tasks (`polymodal.eval.embodied`).
- ``--task captioning`` / ``vqa`` go through the generative evaluation like any captioner / vqa run."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInput

MLLM_TASKS: tuple[str, ...] = ("instruct", "fewshot", "embodied")


@dataclass(frozen=True)
class _Msg:
    role: str
    content: str
    images: tuple[np.ndarray, ...] = field(default_factory=tuple)
    audio: tuple[tuple[np.ndarray, int], ...] = field(default_factory=tuple)


def _chat(args: argparse.Namespace) -> Any:
    from ..models.mllm_front import load_mllm

    return load_mllm(args.run, args.device)


def _options(args: argparse.Namespace) -> Any:
    from ..lm.decoding import DecodingOptions

    return DecodingOptions(max_new_tokens=args.max_new_tokens, num_beams=args.beams)


def evaluate_instruct(args: argparse.Namespace, samples: Sequence[Any]) -> dict[str, Any]:
    from ..eval.instruct import instruct_eval, instruct_items

    chat = _chat(args)
    reads_image, hears = "image" in chat.modalities, "audio" in chat.modalities
    items = instruct_items(samples, langs=args.lang and [args.lang] or chat.model.langs)
    spoken = [it for it in items if it.spoken and not (hears and it.sample.audio is not None)]
    items = [it for it in items if not it.spoken or (hears and it.sample.audio is not None)]
    if not items:
        raise InvalidInput("no conversations to evaluate (make the data with `data make shapes --conversations`)",
                           field="--data")
    options = _options(args)
    too_long: list[int] = []

    def respond(batch: Sequence[Any]) -> list[str]:
        convs = []
        for it in batch:
            msgs, pic, first = [], reads_image, True
            for t in it.history:
                images = (it.sample.image,) if pic and t.role == "user" and it.sample.image is not None else ()
                pic = pic and not images
                if it.spoken and first and t.role == "user":  # the first question is heard, not read
                    msgs.append(_Msg(t.role, "", images, ((it.sample.audio, it.sample.sample_rate),)))
                else:
                    msgs.append(_Msg(t.role, t.content, images))
                first = first and t.role != "user"
            convs.append(msgs)
        try:
            out: list[str] = chat.chat(convs, options)
        except InvalidInput:  # a conversation longer than the model reads: that one gets no reply (wrong)
            out = []
            for conv in convs:
                try:
                    out += chat.chat([conv], options)
                except InvalidInput:
                    too_long.append(1)
                    out.append("")
        return out

    report = instruct_eval(items, respond, batch_size=args.batch_size, progress=not args.no_progress)
    return {"arch": "mllm", "bridge": chat.model.bridge, "model_input": chat.model.c.input,
            "spoken_skipped": len(spoken), "too_long": len(too_long), **report}


def evaluate_fewshot(args: argparse.Namespace, samples: Sequence[Any]) -> dict[str, Any]:
    from ..eval.fewshot import Example, fewshot_eval, task_examples
    from ..models.mllm_seq import Segment

    chat = _chat(args)
    model = chat.model
    options = _options(args)
    out: dict[str, Any] = {"arch": "mllm", "bridge": model.bridge}
    for task in args.fewshot_tasks.split(","):
        examples = task_examples(samples, task)

        def respond(prompts: Sequence[tuple[list[Example], Example]]) -> list[str | None]:
            rows: list[list[Segment]] = []
            pics: list[Any] = []
            fits: list[bool] = []
            for shots, query in prompts:
                segs = []
                for e in [*shots, query]:
                    segs.append(Segment(len(pics), [(e.prompt, None if e is query else e.answer)]))
                    pics.append(e.sample.image)
                n = 1 + sum(model.slots + 4 + len(model._tok().encode(e.prompt + e.answer)) for e in [*shots, query])
                fits.append(n < model.max_len)
                rows.append(segs)
            keep = [i for i, f in enumerate(fits) if f]
            replies: list[str | None] = [None] * len(rows)
            if keep:
                used = sorted({s.image for i in keep for s in rows[i] if s.image is not None})
                remap = {old: new for new, old in enumerate(used)}
                kept = [[Segment(remap[s.image] if s.image is not None else None, s.turns) for s in rows[i]]
                        for i in keep]
                got = model.decode(kept, chat.pixels([pics[j] for j in used]), options)
                for i, r in zip(keep, got, strict=True):
                    replies[i] = r
            return replies

        shots = [int(k) for k in args.shots.split(",")]
        out[task] = fewshot_eval(examples, respond, shots=shots, queries=args.limit_queries,
                                 batch_size=max(1, args.batch_size // 4), progress=not args.no_progress)
    return out


def evaluate_embodied(args: argparse.Namespace) -> dict[str, Any]:
    from ..eval.embodied_policy import mllm_policy, run_embodied

    chat = _chat(args)
    return {"arch": "mllm", "bridge": chat.model.bridge, "input": chat.model.c.input,
            **run_embodied(args.data, mllm_policy(chat, _options(args)), limit=args.limit,
                           batch_size=args.batch_size, progress=not args.no_progress)}


def evaluate_mllm(args: argparse.Namespace, samples: Sequence[Any]) -> dict[str, Any]:
    if args.task == "instruct":
        return evaluate_instruct(args, samples)
    if args.task == "fewshot":
        return evaluate_fewshot(args, samples)
    raise InvalidInput(f"unknown mllm task {args.task!r}", field="--task")


def format_mllm(r: dict[str, Any]) -> list[str]:
    from ..eval.instruct import format_instruct_table

    shown = r.get("model_input") or (r.get("input") if isinstance(r.get("input"), str) else None)
    lines = [f"bridge {r.get('bridge')}" + (f", reads {shown}" if shown else "")]
    if r["task"] == "instruct":
        lines.append(format_instruct_table(r))
        if r.get("spoken_skipped"):
            lines.append(f"({r['spoken_skipped']} spoken-question turns skipped: this model reads no audio, or the "
                         "sample has none)")
    elif r["task"] == "fewshot":
        for task, rep in r.items():
            if not isinstance(rep, dict) or "majority" not in rep:
                continue
            cells = [f"{k.split('_')[1]}-shot {v['accuracy']:.3f}" if v["accuracy"] is not None else
                     f"{k.split('_')[1]}-shot n/a" for k, v in rep.items() if k.startswith("shots_")]
            lines.append(f"{task}: " + "  ".join(cells) + f"  (majority {rep['majority']:.3f}, n {rep['n']})")
    elif r["task"] == "embodied":
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in r.get("success_by_kind", {}).items())
        lines.append(f"success {r['success']:.3f} over {r['n']} tasks ({kinds}); mean steps {r['mean_steps']:.2f}, "
                     f"invalid actions {r['invalid_action_rate']:.3f}")
    return lines


__all__ = ["MLLM_TASKS", "evaluate_embodied", "evaluate_mllm", "evaluate_instruct", "format_mllm"]
