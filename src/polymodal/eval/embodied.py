"""Closed-loop evaluation of tabletop policies (PaLM-E style): run a batch of `TabletopEnv`s in lockstep, ask the
policy for every live episode's next action at once, step each env with its action, until every episode has
ended (success, "done", or ``max_steps``).

    from polymodal.envs.episodes import load_tasks
    report = closed_loop_eval(oracle_policy, load_tasks("data/tabletop/tasks_test.jsonl"))
    report["success"], report["success_by_kind"]["multi"], report["invalid_action_rate"]

A policy is ``policy(observations: Sequence[Observation]) -> list[str]``, one action text per observation.
`prompt_policy` turns a batched text generator into one for the model variants of the comparison: "vision" (the
picture and the prompt), "state" (the state text in the prompt, no picture), "text" (neither), "vision_state"
(both); the prompt is `episodes.policy_prompt`, the one the training data uses. `oracle_policy` (the planner
that wrote the training data; success 1.0), `instruction_policy` (the instruction's goals as actions, blind to
the table: what a text-only policy gets by following the words) and `random_policy` (random well-formed actions on
the scene's objects) are the reference points.

Metrics: success rate overall, per kind (single/multi), per language, per family and over seen vs held-out
combos; mean steps (all episodes, and successful ones); the invalid action rate (actions that could not be
parsed or executed, over all actions); ``records``: one dict per task (its actions, errors, outcome)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from ..envs.episodes import policy_prompt
from ..envs.tabletop import IMAGE_SIZE, MAX_STEPS, TabletopEnv
from ..envs.tasks import DIRECTIONS, DONE_TEXT, ON, Action, State, Task, format_action, oracle_action
from ..errors import InvalidInput

VARIANTS: tuple[str, ...] = ("vision", "state", "text", "vision_state")
P_RANDOM_DONE = 0.1  # how often the random policy says "done"


@dataclass(frozen=True)
class Observation:
    """What a policy sees at one step. ``task`` and ``world`` are privileged (the symbolic task and state, for the
    oracle and the random baseline): a model policy must not read them."""

    image: np.ndarray
    state: np.ndarray
    state_text: str
    instruction: str
    history: tuple[str, ...]
    lang: str
    task_kind: str
    task: Task
    world: State

    def prompt(self, with_state: bool = False) -> str:
        """`policy_prompt` of this step, with the state text or without."""
        return policy_prompt(self.instruction, self.history, self.state_text if with_state else None, self.lang)


Policy = Callable[[Sequence[Observation]], list[str]]


def oracle_policy(observations: Sequence[Observation]) -> list[str]:
    """The oracle planner's actions (it reads the privileged task and state)."""
    return [oracle_action(o.world, o.task, o.lang) for o in observations]


def instruction_policy(observations: Sequence[Observation]) -> list[str]:
    """A blind reference: the instruction's goals as actions, in order (one per executed action so far), then
    "done"; what following the words without looking at the table achieves (no object is moved out of the way)."""
    out = []
    for o in observations:
        goals, k = o.task.goals, len(o.history)
        if k >= len(goals):
            out.append(DONE_TEXT[o.lang])
            continue
        g, objects = goals[k], o.task.scene.objects
        verb, rel = ("stack", None) if g.relation == ON else ("move", g.relation)
        out.append(format_action(Action(verb, objects[g.obj], rel, objects[g.ref]), o.lang))
    return out


def random_policy(seed: int = 0) -> Policy:
    """Random well-formed actions on the scene's objects: "done" with probability `P_RANDOM_DONE`, else a move
    (uniform over relation and "onto") of a random object relative to another one."""
    rng = np.random.default_rng(seed)

    def policy(observations: Sequence[Observation]) -> list[str]:
        out = []
        for o in observations:
            objects = o.world.objects
            if rng.random() < P_RANDOM_DONE or len(objects) < 2:
                out.append(DONE_TEXT[o.lang])
                continue
            i, j = (int(k) for k in rng.choice(len(objects), size=2, replace=False))
            rel = int(rng.integers(len(DIRECTIONS) + 1))
            action = (Action("stack", objects[i], None, objects[j]) if rel == len(DIRECTIONS)
                      else Action("move", objects[i], DIRECTIONS[rel], objects[j]))
            out.append(format_action(action, o.lang))
        return out

    return policy


def prompt_policy(generate: Callable[[list[str], list[np.ndarray | None]], list[str]],
                  variant: str = "vision") -> Policy:
    """A policy from a batched generator ``generate(prompts, images) -> texts`` (images None where the variant
    shows none): "vision" / "vision_state" pass the picture, "state" / "vision_state" put the state text in the
    prompt. The first line of each generated text is the action."""
    if variant not in VARIANTS:
        raise InvalidInput(f"expected one of {list(VARIANTS)}, got {variant!r}", field="variant")
    with_image, with_state = variant in ("vision", "vision_state"), variant in ("state", "vision_state")

    def policy(observations: Sequence[Observation]) -> list[str]:
        prompts = [o.prompt(with_state) for o in observations]
        texts = generate(prompts, [o.image if with_image else None for o in observations])
        return [(t.strip().splitlines() or [""])[0] for t in texts]

    return policy


def _observation(env: TabletopEnv, obs: dict[str, Any], info: dict[str, Any]) -> Observation:
    assert env.task is not None and env.state is not None
    return Observation(obs["image"], obs["state"], info["state_text"], info["instruction"], tuple(info["history"]),
                       info["lang"], info["task_kind"], env.task, env.state)


def _run_batch(policy: Policy, tasks: Sequence[Task], max_steps: int, size: int, bar: Any) -> list[dict[str, Any]]:
    """Run ``tasks`` in lockstep; one record per task."""
    envs = [TabletopEnv(size=size, max_steps=max_steps) for _ in tasks]
    records: list[dict[str, Any]] = []
    current: list[Observation] = []
    for env, task in zip(envs, tasks, strict=True):
        obs, info = env.reset(options={"task": task})
        current.append(_observation(env, obs, info))
        records.append({"family": task.family, "task_kind": task.kind, "lang": task.lang, "heldout": task.heldout,
                        "instruction": task.instruction, "success": False, "steps": 0, "invalid": 0,
                        "actions": [], "errors": []})
    live = list(range(len(tasks)))
    while live:
        actions = policy([current[i] for i in live])
        if not isinstance(actions, list) or len(actions) != len(live):
            raise InvalidInput(f"the policy must return a list of {len(live)} action texts, got {actions!r:.200}",
                               field="policy")
        still = []
        for i, action in zip(live, actions, strict=True):
            obs, reward, terminated, truncated, info = envs[i].step(str(action))
            rec = records[i]
            rec["steps"] += 1
            rec["actions"].append(str(action))
            rec["errors"].append(info["error"])
            rec["invalid"] += info["error"] is not None
            rec["success"] = bool(info["success"])
            if terminated or truncated:
                bar.update(1)
            else:
                current[i] = _observation(envs[i], obs, info)
                still.append(i)
        live = still
    return records


def _rate(records: Sequence[dict[str, Any]], key: str) -> dict[str, float]:
    groups: dict[str, list[bool]] = {}
    for r in records:
        groups.setdefault(str(r[key]), []).append(r["success"])
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}


def closed_loop_eval(policy: Policy, tasks: Sequence[Task], *, max_steps: int = MAX_STEPS, batch_size: int = 32,
                     size: int = IMAGE_SIZE, progress: bool = False) -> dict[str, Any]:
    """Run ``policy`` on every task (``batch_size`` episodes in lockstep) and report the metrics of the module
    doc; a JSON-able dict."""
    if not tasks:
        raise InvalidInput("no tasks to evaluate", field="tasks")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"expected an integer >= 1, got {batch_size!r}", field="batch_size")
    records: list[dict[str, Any]] = []
    with tqdm(total=len(tasks), desc="closed loop", unit="episode", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(tasks), batch_size):
            records += _run_batch(policy, tasks[start:start + batch_size], max_steps, size, bar)
    for n, r in enumerate(records):
        r["index"] = n
    actions = sum(r["steps"] for r in records)
    won = [r["steps"] for r in records if r["success"]]
    heldout = _rate(records, "heldout")
    return {
        "n": len(records), "success": float(np.mean([r["success"] for r in records])),
        "success_by_kind": _rate(records, "task_kind"), "success_by_lang": _rate(records, "lang"),
        "success_by_family": _rate(records, "family"),
        "success_by_combo": {{"False": "seen", "True": "heldout"}[k]: v for k, v in heldout.items()},
        "mean_steps": actions / len(records), "mean_steps_success": float(np.mean(won)) if won else None,
        "invalid_action_rate": sum(r["invalid"] for r in records) / max(1, actions),
        "max_steps": max_steps, "records": records,
    }
