"""The tabletop world: the gymnasium contract (env_checker), the action grammar (round trip and lenient forms), the
controller against a reference simulator written here from the rules (stacks as lists per cell), the picture and
the state vector read back into the state, the splits, and the oracle solving every task."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env  # noqa: E402

from polymodal.data.synth.shapes import COLORS, SHAPES  # noqa: E402
from polymodal.envs import ENV_ID, STATE_DIM, TabletopEnv  # noqa: E402
from polymodal.envs.tabletop import execute, parse_action, render, state_text, state_vector  # noqa: E402
from polymodal.envs.tasks import (  # noqa: E402
    DIRECTIONS,
    FAMILIES,
    HELDOUT,
    MAX_HEIGHT,
    OFFSETS,
    REL_ZH,
    RELATIONS,
    Action,
    Goal,
    State,
    Task,
    format_action,
    goal_combo,
    object_name,
    oracle_action,
    sample_task,
)
from polymodal.errors import InvalidInput  # noqa: E402

PAIRS = [(c, s) for c in COLORS for s in SHAPES]


def test_env_passes_the_gymnasium_checker():
    env = gym.make(ENV_ID, size=32, render_mode="rgb_array")
    check_env(env.unwrapped)  # with the render check
    obs, info = env.reset(seed=5)
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (STATE_DIM,) and obs["state"].dtype == np.float32
    assert {"instruction", "state_text", "task_kind"} <= set(info)


def test_reset_is_deterministic_and_takes_a_task():
    env = TabletopEnv(size=32)
    _, a = env.reset(seed=3)
    _, b = env.reset(seed=3)
    assert a["task"] == b["task"]
    task = Task.from_dict(a["task"])
    assert task.to_dict() == a["task"]
    _, c = env.reset(seed=99, options={"task": a["task"]})
    assert c["task"] == a["task"] and c["instruction"] == a["instruction"]
    with pytest.raises(InvalidInput):
        env.reset(options={"task": 3})


# ----------------------------------------------------------------------------------------------- grammar

def _all_actions(pairs):
    x, y = pairs
    yield Action("done")
    yield Action("stack", x, None, y)
    for rel in DIRECTIONS:
        yield Action("move", x, rel, y)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_action_text_round_trip(lang):
    for x, y in itertools.permutations(PAIRS[::7], 2):
        for action in _all_actions((x, y)):
            assert parse_action(format_action(action, lang)) == action


@pytest.mark.parametrize(("text", "expected"), [
    ("Move the Red Star to the left of the blue square.", Action("move", ("red", "star"), "left of", ("blue", "square"))),
    ("  put red star RIGHT OF blue square!! ", Action("move", ("red", "star"), "right of", ("blue", "square"))),
    ("stack the red star on top of the blue square", Action("stack", ("red", "star"), None, ("blue", "square"))),
    ("move the green circle onto the pink cross.", Action("stack", ("green", "circle"), None, ("pink", "cross"))),
    ("把 红色的星形 移到 蓝色的正方形的左边。", Action("move", ("red", "star"), "left of", ("blue", "square"))),
    ("将红色星形放在蓝色的正方形下方", Action("move", ("red", "star"), "below", ("blue", "square"))),
    ("把绿色的圆形叠到粉色的十字形上面！", Action("stack", ("green", "circle"), None, ("pink", "cross"))),
    ("DONE!", Action("done")), ("完成。", Action("done")),
])
def test_lenient_parsing(text, expected):
    assert parse_action(text) == expected


@pytest.mark.parametrize("text", ["", "move", "move the red star left of", "move the red ball left of the blue "
                                  "square", "jump", "把红色的星形移到", "move the red star near the blue square"])
def test_unparseable_text_is_an_error_that_changes_nothing(text):
    state = State((("red", "star"), ("blue", "square")), ((1, 1), (3, 3)), (None, None))
    out = execute(state, text)
    assert out.action is None and out.error and out.state == state


# ----------------------------------------------------------------------------------------------- controller

def _reference_step(state: State, action: Action) -> dict | None:
    """The rules, written over stacks (cell -> objects bottom to top); None when the action is infeasible."""
    stacks: dict = {}
    for i in sorted(range(len(state.objects)), key=state.level):
        stacks.setdefault(state.cells[i], []).append(state.objects[i])
    where = {o: c for c, s in stacks.items() for o in s}
    x, y = action.obj, action.ref
    if x not in where or y not in where or x == y or stacks[where[x]][-1] != x:
        return None
    if action.verb == "stack":
        below = stacks[where[x]][stacks[where[x]].index(x) - 1] if stacks[where[x]].index(x) > 0 else None
        if below == y:
            return stacks
        if stacks[where[y]][-1] != y or len(stacks[where[y]]) >= MAX_HEIGHT:
            return None
        stacks[where[x]].remove(x)
        stacks[where[y]].append(x)
    else:
        dx, dy = OFFSETS[action.relation]
        t = (where[y][0] + dx, where[y][1] + dy)
        if not (0 <= t[0] < state.grid and 0 <= t[1] < state.grid) or (stacks.get(t) and stacks[t] != [x]):
            return None
        stacks[where[x]].remove(x)
        stacks.setdefault(t, []).append(x)
    return {c: s for c, s in stacks.items() if s}


def _stacks(state: State) -> dict:
    out: dict = {}
    for i in sorted(range(len(state.objects)), key=state.level):
        out.setdefault(state.cells[i], []).append(state.objects[i])
    return out


def test_controller_matches_the_reference_rules():
    rng = np.random.default_rng(0)
    executed = refused = 0
    for _ in range(150):
        state = sample_task(rng).scene
        for _ in range(6):
            objs = list(state.objects) + [("orange", "cross")] * (rng.random() < 0.1)
            x, y = (objs[int(k)] for k in rng.integers(len(objs), size=2))
            rel = RELATIONS[int(rng.integers(len(RELATIONS)))]
            action = Action("stack", x, None, y) if rel == "on" else Action("move", x, rel, y)
            lang = ("en", "zh")[int(rng.integers(2))]
            out = execute(state, format_action(action, lang))
            expected = _reference_step(state, action)
            assert out.action == action
            if expected is None:
                assert out.error is not None and out.state == state, (state, action)
                refused += 1
            else:
                assert out.error is None and _stacks(out.state) == expected, (state, action, out.error)
                executed += 1
                state = out.state
    assert executed > 100 and refused > 100


def test_infeasible_actions_say_why():
    # red star on the blue square at (0, 0); green circle at (1, 0); pink cross at (4, 4)
    s = State((("red", "star"), ("blue", "square"), ("green", "circle"), ("pink", "cross")),
              ((0, 0), (0, 0), (1, 0), (4, 4)), (1, None, None, None))
    cases = {"move the blue square right of the pink cross": "under",
             "move the green circle left of the blue square": "off the table",
             "move the pink cross right of the blue square": "taken",
             "move the pink cross onto the blue square": "under",
             "move the yellow star onto the green circle": "no yellow star",
             "move the green circle onto the green circle": "itself"}
    for text, why in cases.items():
        out = execute(s, text)
        assert out.error is not None and why in out.error and out.state == s, text
    tall = execute(s, "move the green circle onto the red star").state
    out = execute(tall, "move the pink cross onto the green circle")
    assert "too high" in out.error


def test_episode_rewards_and_endings():
    env = TabletopEnv(size=32, max_steps=3)
    _, info = env.reset(seed=1)
    _, reward, term, trunc, info = env.step("done")
    assert (reward, term, trunc, info["success"]) == (0.0, True, False, False)
    env.reset(seed=1)
    for k in range(3):
        _, reward, term, trunc, info = env.step("move the nothing")
        assert info["error"] and reward == 0.0 and not term and trunc == (k == 2)


# ----------------------------------------------------------------------------------------------- observations

def _pixels(image: np.ndarray, rgb) -> tuple[np.ndarray, np.ndarray]:
    d = np.abs(image.astype(int) - np.array(rgb)).sum(-1)
    return np.nonzero(d < 40)


def test_picture_shows_each_object_in_its_cell_and_a_stack_keeps_all_visible():
    # a three-high stack (blue square, red circle, green triangle), a yellow star alone
    s = State((("red", "circle"), ("blue", "square"), ("yellow", "star"), ("green", "triangle")),
              ((1, 3), (1, 3), (4, 0), (1, 3)), (1, None, None, 0))
    for size in (64, 100):
        image = render(s, size)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        cell = size / 5
        centres = {}
        for pair in s.objects:
            col, row = s.cells[s.index(pair)]
            ys, xs = _pixels(image, COLORS[pair[0]])
            assert len(xs) >= 3, (pair, size)  # visible
            assert col * cell <= xs.min() and xs.max() < (col + 1) * cell  # inside its cell
            assert row * cell <= ys.min() and ys.max() < (row + 1) * cell
            centres[pair] = (xs.mean(), ys.mean())
        # up the stack: further right and up
        (x0, y0), (x1, y1), (x2, y2) = (centres[p] for p in (("blue", "square"), ("red", "circle"), ("green", "triangle")))
        assert x0 < x1 < x2 and y0 > y1 > y2
    np.testing.assert_array_equal(render(s), render(s))


def _decode(vector: np.ndarray, grid: int = 5):
    """The state vector read back by its documented layout: (pair, cell, level, clear) per present slot."""
    out = []
    for slot in vector.reshape(4, -1):
        if slot[0] == 1:
            color = list(COLORS)[int(np.argmax(slot[1:1 + len(COLORS)]))]
            shape = list(SHAPES)[int(np.argmax(slot[1 + len(COLORS):1 + len(COLORS) + len(SHAPES)]))]
            col, row, level, clear = slot[-4:]
            out.append(((color, shape), (round(col * (grid - 1)), round(row * (grid - 1))),
                        round(level * (MAX_HEIGHT - 1)), bool(clear)))
    return out


def test_state_vector_and_text_describe_the_state():
    rng = np.random.default_rng(1)
    for _ in range(40):
        s = sample_task(rng).scene
        v = state_vector(s)
        assert v.shape == (STATE_DIM,) and v.min() >= 0 and v.max() <= 1
        assert _decode(v) == [(p, s.cells[i], s.level(i), s.clear(i)) for i, p in enumerate(s.objects)]
        en, zh = state_text(s, "en"), state_text(s, "zh")
        for i, (c, sh) in enumerate(s.objects):
            assert f"{c} {sh}" in en
            b = s.below[i]
            if b is None:
                assert f"{c} {sh} at column {s.cells[i][0] + 1}, row {s.cells[i][1] + 1}" in en
            else:
                assert f"{c} {sh} on the {' '.join(s.objects[b])}" in en
        assert "第" in zh and ("；" in zh or len(s.objects) == 1)


# ----------------------------------------------------------------------------------------------- tasks

def test_heldout_combos_and_splits():
    assert len(HELDOUT) == len(SHAPES) * len(RELATIONS)
    assert all(sum((c, s, r) in HELDOUT for c in COLORS) == 1 for s in SHAPES for r in RELATIONS)
    assert all(sum((c, s, r) in HELDOUT for r in RELATIONS) <= 1 for c in COLORS for s in SHAPES)
    rng = np.random.default_rng(2)
    for _ in range(200):
        t = sample_task(rng, split="train")
        assert not any(goal_combo(t.scene, g) in HELDOUT for g in t.goals)
    test = [sample_task(rng, split="test") for _ in range(200)]
    assert 0.35 < np.mean([t.heldout for t in test]) < 0.65
    assert {t.family for t in test} == set(FAMILIES) and {t.kind for t in test} == {"single", "multi"}


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_instructions_name_the_goal_objects_and_relations(lang):
    rng = np.random.default_rng(3)
    words = {"en": {"left of": "left of", "right of": "right of", "above": "above", "below": "below"},
             "zh": {r: REL_ZH[r] for r in DIRECTIONS}}[lang]
    for family in FAMILIES:
        t = sample_task(rng, families=(family,), lang=lang)
        texts = {Task(t.family, t.scene, t.goals, lang, k).instruction for k in range(3)}
        assert len(texts) >= 2  # several phrasings
        for text in texts:
            for g in t.goals:
                assert object_name(t.scene.objects[g.obj], lang) in text
                assert object_name(t.scene.objects[g.ref], lang) in text
                if g.relation in words:
                    assert words[g.relation] in text, (text, g)


def _run_oracle(env: TabletopEnv, seed: int, split: str) -> tuple[bool, int]:
    _, info = env.reset(seed=seed)
    for step in range(env.max_steps):
        action = oracle_action(env.state, env.task)
        _, reward, term, trunc, info = env.step(action)
        assert info["error"] is None, (info["task"], action)
        if term or trunc:
            return reward == 1.0 and info["success"], step + 1
    return False, env.max_steps


@pytest.mark.parametrize("split", ["train", "test"])
def test_oracle_solves_every_task(split):
    env = TabletopEnv(size=16, split=split, lang="zh" if split == "test" else "en")
    results = [_run_oracle(env, seed, split) for seed in range(250)]
    assert all(ok for ok, _ in results)
    assert max(n for _, n in results) <= 5 and np.mean([n for _, n in results]) > 1.3  # some need clearing first


def test_oracle_recovers_from_a_disturbed_table():
    """Closed loop: after random (executed) actions, the oracle replans from the state it finds."""
    rng = np.random.default_rng(4)
    for _ in range(150):
        task = sample_task(rng)
        state = task.scene
        for _ in range(int(rng.integers(1, 5))):
            x, y = (state.objects[int(k)] for k in rng.choice(len(state.objects), size=2, replace=False))
            state = execute(state, f"move the {' '.join(x)} {DIRECTIONS[int(rng.integers(4))]} the {' '.join(y)}").state
        for _ in range(8):
            out = execute(state, oracle_action(state, task))
            assert out.error is None
            state = out.state
        assert task.success(state), task


def test_goal_predicates():
    s = State((("red", "star"), ("blue", "square"), ("green", "circle")), ((1, 2), (2, 2), (2, 2)), (None, None, 1))
    assert Goal("left of", 0, 1).holds(s) and not Goal("right of", 0, 1).holds(s)
    assert Goal("left of", 0, 2).holds(s)  # by cells: the circle stands on the square's cell
    assert Goal("on", 2, 1).holds(s) and not Goal("on", 1, 2).holds(s)
    with pytest.raises(InvalidInput):
        State((("red", "star"), ("blue", "square")), ((1, 2), (1, 2)), (None, None))  # two stacks in one cell
