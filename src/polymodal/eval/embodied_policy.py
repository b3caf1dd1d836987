"""A trained ``mllm`` run as a tabletop policy (PaLM-E style), and the closed-loop run over a data dir's test tasks.

The run's ``model.input`` picks what the policy reads, the same way it trained: ``image`` -> the rendered picture
and the prompt (instruction + actions so far), ``state`` -> the prompt with the scene as text (no picture),
``none`` -> the prompt alone. Each step decodes greedily and takes the first line as the action."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..envs.episodes import load_tasks
from ..errors import InvalidInput
from .embodied import Policy, closed_loop_eval, prompt_policy

VARIANT = {"image": "vision", "state": "state", "text": "text"}


def mllm_policy(chat: Any, options: Any = None) -> Policy:
    """``chat``: a `polymodal.models.mllm_front.MLLMChat`."""
    from ..models.mllm_seq import Segment

    model = chat.model

    def generate(prompts: list[str], images: list[np.ndarray | None]) -> list[str]:
        pics = [im for im in images if im is not None]
        rows, k = [], 0
        for p, im in zip(prompts, images, strict=True):
            rows.append([Segment(k if im is not None else None, [(p, None)])])
            k += im is not None
        out: list[str] = model.decode(rows, chat.pixels(pics), options)
        return out

    return prompt_policy(generate, VARIANT[model.c.input])


def run_embodied(data: str | os.PathLike[str], policy: Policy, *, split: str = "test", limit: int | None = None,
                 batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    """Closed-loop metrics of ``policy`` on ``data``'s ``tasks_<split>.jsonl`` (written by `data make tabletop`)."""
    path = Path(data) / f"tasks_{split}.jsonl"
    if not path.is_file():
        raise InvalidInput(f"{data} has no {path.name} (make it with `polymodal data make tabletop`)",
                           field="--data")
    tasks: Sequence[Any] = load_tasks(path)
    if limit is not None:
        tasks = tasks[:limit]
    return closed_loop_eval(policy, tasks, batch_size=batch_size, progress=progress)


__all__ = ["mllm_policy", "run_embodied"]
