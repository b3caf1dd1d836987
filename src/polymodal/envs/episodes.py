"""Oracle episodes as training data: `policy_prompt` (the one prompt format of training and closed-loop
evaluation), `episode_samples` (one `Sample` per step of an oracle episode) and `write_tabletop` (a data folder).

A sample is the picture the policy saw at a step; its target is ``QA(question=<prompt without state>,
answer=<oracle action>, type="action")``. The last step of every episode is the picture of the solved table with
the answer "done" (in closed loop the episode ends on success, so this step only teaches what "done" means).
``metadata``: split, episode, step, steps (of the episode), instruction, history, state_text, prompt_state (the
prompt with the state text), state (the `tabletop.state_vector` as a list), task (`Task.to_dict`), task_kind,
family, heldout, lang.

Splits: every split draws its tasks from its own seeds; `write_tabletop` also drops a val/test task whose
instance (scene and goals) occurs in an earlier split. Train and val tasks never move a held-out combo
(`tasks.HELDOUT`; a train episode whose oracle would move one on the way is drawn again), half of the test tasks
do (``metadata["heldout"]``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes
from ..data.formats.webdataset import ShardWriter
from ..data.sample import Sample
from ..data.targets import QA, Targets
from ..errors import InvalidInput, NotFound
from .tabletop import (
    IMAGE_SIZE,
    MAX_STEPS,
    STATE_DIM,
    execute,
    parse_action,
    render,
    state_text,
    state_vector,
)
from .tasks import (
    DIRECTIONS,
    FAMILIES,
    GRID,
    HELDOUT,
    KINDS,
    LANGS,
    ON,
    SPLITS,
    State,
    Task,
    action_combo,
    check_lang,
    families_of,
    plan_step,
    sample_task,
)
from .tasks import format_action as _format

NAME = "tabletop"
VERSION = 1
_TAG = 0x7AB1E
_SPLIT_IDS = {s: i for i, s in enumerate(SPLITS)}
_NOTHING = {"en": "nothing", "zh": "无"}
Step = tuple[State, list[str], str]  # the state a policy saw, the actions done before, the oracle's action


def policy_prompt(instruction: str, history: Sequence[str], state_text: str | None = None, lang: str = "en") -> str:
    """The policy's prompt: the instruction, the actions done so far and (state-input variants) the state text::

        Task: stack the red star on the blue square
        Done: move the green circle left of the red star
        State: red star at column 2, row 1; ...            (only with state_text)
        Next action?

    In Chinese: 任务：… / 已完成：…（无） / 状态：… / 下一步动作？"""
    check_lang(lang)
    zh = lang == "zh"
    done = ("；" if zh else "; ").join(history) or _NOTHING[lang]
    lines = [f"任务：{instruction}" if zh else f"Task: {instruction}", f"已完成：{done}" if zh else f"Done: {done}"]
    if state_text is not None:
        lines.append(f"状态：{state_text}" if zh else f"State: {state_text}")
    lines.append("下一步动作？" if zh else "Next action?")
    return "\n".join(lines)


def oracle_episode(task: Task, max_steps: int = MAX_STEPS) -> list[Step] | None:
    """(state, history, oracle action) per step until the goals hold, then the final "done"; None when the
    oracle does not solve the task within ``max_steps`` actions."""
    state, history, out = task.scene, list[str](), list[Step]()
    for _ in range(max_steps + 1):
        action = plan_step(state, task)
        text = _format(action, task.lang)
        out.append((state, list(history), text))
        if action.verb == "done":
            return out if task.success(state) else None
        outcome = execute(state, text)
        if outcome.error is not None:
            return None
        state = outcome.state
        history.append(text)
    return None


def _moves_heldout(steps: Sequence[Step]) -> bool:
    return any((a := parse_action(text)) is not None and action_combo(a) in HELDOUT for _, _, text in steps)


def task_key(task: Task) -> str:
    """The instance (scene and goals, not the language or phrasing), for de-duplicating across splits."""
    return json.dumps([task.scene.to_dict(), task.to_dict()["goals"]], sort_keys=True)


def split_tasks(n_tasks: int, split: str = "train", seed: int = 0, langs: Sequence[str] = ("en",),
                kinds: Sequence[str] = KINDS, exclude: Iterable[str] = (), max_steps: int = MAX_STEPS
                ) -> list[tuple[Task, list[Step]]]:
    """``n_tasks`` tasks of ``split`` with their oracle episodes; task i is drawn from its own seed
    ``(seed, split, i)`` (redrawn while it is in ``exclude`` (`task_key`), unsolved, or, in train, moves a
    held-out combo); its language is drawn from ``langs``."""
    if split not in SPLITS:
        raise InvalidInput(f"expected one of {list(SPLITS)}, got {split!r}", field="split")
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 0:
        raise InvalidInput(f"expected an integer >= 0, got {n_tasks!r}", field="n_tasks")
    langs = [check_lang(x) for x in langs] or ["en"]
    families, skip = families_of(kinds), set(exclude)
    out = []
    for i in range(n_tasks):
        rng = np.random.default_rng(np.random.SeedSequence([_TAG, seed, _SPLIT_IDS[split], i]))
        while True:
            lang = langs[int(rng.integers(len(langs)))]
            task = sample_task(rng, split=split, families=families, lang=lang)
            steps = oracle_episode(task, max_steps)
            if steps is not None and task_key(task) not in skip and not (split == "train"
                                                                         and _moves_heldout(steps)):
                out.append((task, steps))
                break
    return out


def _samples(split: str, episode: int, task: Task, steps: Sequence[Step],
             size: int) -> list[Sample]:
    lang = task.lang
    out = []
    for k, (state, history, action) in enumerate(steps):
        text = state_text(state, lang)
        prompt = policy_prompt(task.instruction, history, None, lang)
        meta: dict[str, Any] = {
            "split": split, "episode": episode, "step": k, "steps": len(steps), "instruction": task.instruction,
            "history": history, "state_text": text, "prompt_state": policy_prompt(task.instruction, history, text, lang),
            "state": state_vector(state).tolist(), "task": task.to_dict(), "task_kind": task.kind,
            "family": task.family, "heldout": task.heldout, "lang": lang}
        qa = QA(question=prompt, answer=action, type="action", lang=lang, media="image")
        out.append(Sample(id=f"{NAME}-{split}-{episode:06d}-{k:02d}", image=render(state, size), metadata=meta,
                          targets=Targets(qa=(qa,))))
    return out


def episode_samples(n_tasks: int, split: str = "train", seed: int = 0, langs: Sequence[str] = ("en",),
                    kinds: Sequence[str] = KINDS, size: int = IMAGE_SIZE) -> list[Sample]:
    """One `Sample` per step of the oracle episodes of ``n_tasks`` random tasks (see the module doc)."""
    _check_size(size)
    return [s for e, (task, steps) in enumerate(split_tasks(n_tasks, split, seed, langs, kinds))
            for s in _samples(split, e, task, steps, size)]


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise InvalidInput(f"expected an integer >= 16, got {size!r}", field="size")


def load_tasks(path: str | os.PathLike[str]) -> list[Task]:
    """The tasks of a ``tasks_<split>.jsonl`` that `write_tabletop` wrote."""
    p = Path(path)
    if not p.is_file():
        raise NotFound("no such task file", source=str(p))
    tasks = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                tasks.append(Task.from_dict(json.loads(line)))
            except (json.JSONDecodeError, InvalidInput) as exc:
                raise InvalidInput(f"line {n}: {exc}", source=str(p)) from None
    return tasks


def write_tabletop(out_dir: str | os.PathLike[str], n_train: int, n_val: int, n_test: int, seed: int = 0,
                   langs: Sequence[str] = ("en",), kinds: Sequence[str] = KINDS, size: int = IMAGE_SIZE,
                   shard_size: int = 1000) -> dict[str, Any]:
    """A polymodal data set dir of oracle episodes (``n_*`` tasks per split): WebDataset shards per split (as
    ``polymodal data make`` writes), ``tasks_<split>.jsonl`` (one task per line: closed-loop evaluation rebuilds
    them with `load_tasks`) and ``manifest.json``; returns the manifest."""
    _check_size(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    seen: set[str] = set()
    splits: dict[str, dict[str, Any]] = {}
    for split, n in zip(SPLITS, (n_train, n_val, n_test), strict=True):
        tasks = split_tasks(n, split, seed, langs, kinds, exclude=seen)
        seen.update(task_key(t) for t, _ in tasks)
        for old in [*(out / split).glob("*.tar"), out / split / "sizes.json"]:
            old.unlink(missing_ok=True)
        writer = ShardWriter(out / split, shard_size)
        for e, (task, steps) in enumerate(tasks):
            for sample in _samples(split, e, task, steps, size):
                writer.write(sample)
        count = sum(writer.close().values())
        lines = "".join(json.dumps({**t.to_dict(), "episode": e, "heldout": t.heldout}, ensure_ascii=False) + "\n"
                        for e, (t, _) in enumerate(tasks))
        atomic_write_bytes(out / f"tasks_{split}.jsonl", lines.encode("utf-8"))
        splits[split] = {"path": split, "count": count, "episodes": n, "tasks": f"tasks_{split}.jsonl",
                         "heldout": sum(t.heldout for t, _ in tasks)}
    manifest = {
        "name": NAME, "version": VERSION, "format": "webdataset", "seed": seed,
        "n": sum(s["count"] for s in splits.values()),
        "args": {"n_train": n_train, "n_val": n_val, "n_test": n_test, "langs": list(langs), "kinds": list(kinds),
                 "size": size, "shard_size": shard_size},
        "splits": splits, "modalities": ["image"], "langs": list(langs),
        "labels": {"families": list(FAMILIES), "relations": [*DIRECTIONS, ON], "langs": list(LANGS),
                   "heldout_combos": sorted(list(c) for c in HELDOUT)},
        "targets": {"qa": {"media": ["image"], "types": ["action"], "max_per_lang": 1}},
        "details": {"image_size": [size, size], "grid": GRID, "max_steps": MAX_STEPS, "state_dim": STATE_DIM},
    }
    atomic_write_bytes(out / "manifest.json", (json.dumps(manifest, ensure_ascii=False, indent=1) + "\n").encode())
    return manifest
