"""Oracle episodes as data: every sample replayed from its task through the controller gives back its picture,
state text and the oracle's answer; the prompt format; the held-out combos never reach training; the data folder
reads back through `open_dataset` with its test tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gymnasium")

from polymodal.data.formats.dataset import Dataset  # noqa: E402
from polymodal.envs.episodes import (  # noqa: E402
    episode_samples,
    load_tasks,
    policy_prompt,
    split_tasks,
    task_key,
    write_tabletop,
)
from polymodal.envs.tabletop import execute, parse_action, render, state_text, state_vector  # noqa: E402
from polymodal.envs.tasks import HELDOUT, Task, action_combo, oracle_action  # noqa: E402


def test_policy_prompt_format():
    assert policy_prompt("stack the red star on the blue square", []) == (
        "Task: stack the red star on the blue square\nDone: nothing\nNext action?")
    assert policy_prompt("x", ["a", "b"], "red star at column 1, row 1") == (
        "Task: x\nDone: a; b\nState: red star at column 1, row 1\nNext action?")
    assert policy_prompt("把红色的星形叠到蓝色的正方形上面", ["甲", "乙"], "状态文本", "zh") == (
        "任务：把红色的星形叠到蓝色的正方形上面\n已完成：甲；乙\n状态：状态文本\n下一步动作？")
    assert policy_prompt("x", [], None, "zh") == "任务：x\n已完成：无\n下一步动作？"


def test_samples_replay_from_their_task():
    samples = episode_samples(12, "train", seed=3, langs=("en", "zh"), size=32)
    episodes: dict[int, list] = {}
    for s in samples:
        episodes.setdefault(s.metadata["episode"], []).append(s)
    assert len(episodes) == 12 and {s.metadata["lang"] for s in samples} == {"en", "zh"}
    for steps in episodes.values():
        task = Task.from_dict(steps[0].metadata["task"])
        state, history = task.scene, []
        for k, s in enumerate(steps):
            m, qa = s.metadata, s.targets.qa[0]
            assert m["step"] == k and m["steps"] == len(steps) and m["history"] == history
            np.testing.assert_array_equal(s.image, render(state, 32))
            assert m["state_text"] == state_text(state, task.lang) and m["state"] == state_vector(state).tolist()
            assert qa.answer == oracle_action(state, task) and qa.type == "action" and qa.lang == task.lang
            assert qa.question == policy_prompt(task.instruction, history, None, task.lang)
            assert m["prompt_state"] == policy_prompt(task.instruction, history, m["state_text"], task.lang)
            assert m["task_kind"] == task.kind and m["instruction"] == task.instruction
            if k < len(steps) - 1:
                out = execute(state, qa.answer)
                assert out.error is None
                state, history = out.state, history + [qa.answer]
        assert steps[-1].targets.qa[0].answer in ("done", "完成") and task.success(state)


def test_heldout_combos_never_move_in_training():
    train = episode_samples(60, "train", seed=1, size=16)
    combos = {action_combo(parse_action(s.targets.qa[0].answer)) for s in train}
    assert not combos & HELDOUT
    test = split_tasks(40, "test", seed=1)
    heldout = [t for t, _ in test if t.heldout]
    assert heldout and len(heldout) < len(test)


def test_kinds_select_the_families():
    single = episode_samples(6, "val", seed=0, kinds=("single",), size=16)
    assert {s.metadata["task_kind"] for s in single} == {"single"}
    assert {s.metadata["family"] for s in single} <= {"place", "stack"}


def test_episodes_are_deterministic():
    a, b = episode_samples(5, "test", seed=7, size=16), episode_samples(5, "test", seed=7, size=16)
    assert [s.id for s in a] == [s.id for s in b] and [s.metadata for s in a] == [s.metadata for s in b]
    c = episode_samples(5, "test", seed=8, size=16)
    assert [s.metadata["task"] for s in a] != [s.metadata["task"] for s in c]


def test_write_tabletop_reads_back(tmp_path):
    manifest = write_tabletop(tmp_path / "tt", 10, 3, 6, seed=2, langs=("en", "zh"), size=24, shard_size=16)
    on_disk = json.loads((tmp_path / "tt" / "manifest.json").read_text())
    assert on_disk == manifest and manifest["name"] == "tabletop"
    keys: dict[str, set] = {}
    for split in ("train", "val", "test"):
        samples = list(Dataset(tmp_path / "tt", split=split))
        assert len(samples) == manifest["splits"][split]["count"]
        assert all(s.image.shape == (24, 24, 3) and s.targets.qa[0].type == "action" for s in samples)
        tasks = load_tasks(tmp_path / "tt" / f"tasks_{split}.jsonl")
        assert len(tasks) == manifest["splits"][split]["episodes"]
        first = {s.metadata["episode"]: s.metadata["task"] for s in samples}
        assert [t.to_dict() for t in tasks] == [first[e] for e in range(len(tasks))]
        keys[split] = {task_key(t) for t in tasks}
    assert not keys["test"] & (keys["train"] | keys["val"]) and not keys["val"] & keys["train"]
