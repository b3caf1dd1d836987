"""The embodied tabletop: a scripted controller that executes text actions (`execute`), the picture of the table
(`render`), the state as text (`state_text`) and as a vector (`state_vector`), and the gymnasium environment
`TabletopEnv` (registered as ``polymodal/Tabletop-v0``).

Actions, one per step (case and punctuation do not matter; see `parse_action`)::

    move the red star left of the blue square     (or: right of, above, below)
    move the red star onto the blue square        (stack it)
    done
    把红色的星形移到蓝色的正方形左边  (右边, 上方, 下方)   把红色的星形放到蓝色的正方形上面   完成

A move puts the object on the table in the cell next to the reference object; it must be free and on the table.
Only an object with nothing on it can be moved, and only onto an object with nothing on it (stacks are at most
`MAX_HEIGHT` high). An action that cannot be parsed or executed changes nothing and says why (``info["error"]``).

Picture: the table (a dark board with faint cell lines), each object drawn in its cell with a dark outline; in a
stack each object is drawn smaller, up and to the right of the one it stands on, so all stay visible.

State vector (float32, `STATE_DIM` = 4 x 19, all in [0, 1]): for each of `MAX_OBJECTS` slots, in the scene's
object order, ``[present, color one-hot (8, shapes.COLORS order), shape one-hot (6, shapes.SHAPES order),
column / (grid - 1), row / (grid - 1), level / (MAX_HEIGHT - 1), clear (nothing on it)]``; empty slots are 0."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, SupportsFloat

import numpy as np
from PIL import Image, ImageDraw

from ..data.synth.captions import COLOR_ZH, SHAPE_ZH
from ..data.synth.shapes import COLORS, SHAPES
from ..data.synth.shapes import _polygon as shape_polygon  # the shapes' outlines, shared with the shapes data
from ..errors import InvalidInput, require
from .tasks import (
    DIRECTIONS,
    DONE,
    FAMILIES,
    GRID,
    MAX_HEIGHT,
    MAX_OBJECTS,
    ON,
    REL_ZH,
    SPLITS,
    Action,
    State,
    Task,
    check_lang,
    format_action,
    object_name,
    sample_task,
    target_cell,
)

require("gymnasium", "mllm")
import gymnasium as gym  # noqa: E402  (after the one-line install hint)
from gymnasium import spaces  # noqa: E402

ENV_ID = "polymodal/Tabletop-v0"
IMAGE_SIZE = 64
MAX_STEPS = 10  # the oracle needs at most 4 actions on the default tasks; the rest is room for mistakes
SLOT = 1 + len(COLORS) + len(SHAPES) + 4
STATE_DIM = MAX_OBJECTS * SLOT
MAX_ACTION_CHARS = 200
_TABLE, _LINE, _OUTLINE = (58, 60, 68), (76, 78, 88), (18, 18, 22)
_RADIUS, _STACK_RADIUS = 0.4, (0.34, 0.28, 0.23)  # object "radius" alone / per stack level, fraction of the cell
_STACK_STEP = 0.14  # each level up is drawn this much (of the cell) further right and up
_SUPERSAMPLE = 4
_COLOR_IDS, _SHAPE_IDS = {c: i for i, c in enumerate(COLORS)}, {s: i for i, s in enumerate(SHAPES)}
CHARSET = frozenset(string.ascii_letters + string.digits + " ,.'-" + "".join(COLOR_ZH.values())
                    + "".join(SHAPE_ZH.values()) + "".join(REL_ZH.values()) + "把移到放的完成")


# ----------------------------------------------------------------------------------------------- parsing

_EN_REL = r"(to the left of|left of|to the right of|right of|above|below|onto|on top of|on)"
_EN_MOVE = re.compile(rf"^(?:move|put|place|stack) (?:the )?(\w+) (\w+) {_EN_REL} (?:the )?(\w+) (\w+)$")
_EN_DONE = frozenset({"done", "finished", "i am done"})
_ZH_MOVE = re.compile(r"^(?:把|将)(.+?)(?:移动到|移到|放到|放在|叠到|叠在|堆到|堆在|挪到)(.+?)的?"
                      r"(左边|左侧|右边|右侧|上方|下方|上面|上)$")
_ZH_REL = {"左边": "left of", "左侧": "left of", "右边": "right of", "右侧": "right of", "上方": "above",
           "下方": "below", "上面": ON, "上": ON}
_ZH_DONE = frozenset({"完成", "完成了", "结束", "做完了"})
_ZH_COLOR = {**{v: k for k, v in COLOR_ZH.items()}, **{v.removesuffix("色"): k for k, v in COLOR_ZH.items()}}
_ZH_SHAPE = {**{v: k for k, v in SHAPE_ZH.items()}, **{v.removesuffix("形"): k for k, v in SHAPE_ZH.items()}}
_ZH_OBJECT = re.compile(rf"^({'|'.join(sorted(_ZH_COLOR, key=len, reverse=True))})的?"
                        rf"({'|'.join(sorted(_ZH_SHAPE, key=len, reverse=True))})$")


def _normalize(text: str) -> str:
    """Lower case; punctuation (ASCII and Unicode) becomes a space; spaces collapsed."""
    chars = (" " if unicodedata.category(ch).startswith("P") or ch in string.punctuation else ch
             for ch in text.lower())
    return " ".join("".join(chars).split())


def parse_action(text: str) -> Action | None:
    """The action a text names (English or Chinese), or None when it is not an action."""
    t = _normalize(text)
    if t in _EN_DONE or t.replace(" ", "") in _ZH_DONE:
        return DONE
    if m := _EN_MOVE.match(t):
        x, y = (m[1], m[2]), (m[4], m[5])
        if not all(c in COLORS and s in SHAPES for c, s in (x, y)):
            return None
        rel = m[3].removeprefix("to the ")
        return Action("stack", x, None, y) if rel in ("onto", "on top of", "on") else Action("move", x, rel, y)
    if m := _ZH_MOVE.match(t.replace(" ", "")):
        ox, oy = _ZH_OBJECT.match(m[1]), _ZH_OBJECT.match(m[2])
        if ox is None or oy is None:
            return None
        x, y = (_ZH_COLOR[ox[1]], _ZH_SHAPE[ox[2]]), (_ZH_COLOR[oy[1]], _ZH_SHAPE[oy[2]])
        rel = _ZH_REL[m[3]]
        return Action("stack", x, None, y) if rel == ON else Action("move", x, rel, y)
    return None


# ----------------------------------------------------------------------------------------------- controller

@dataclass(frozen=True)
class Outcome:
    """What the controller did: the new ``state``, the parsed ``action`` (None if unparseable) and the
    ``error`` (None when the action was executed; the state is then unchanged)."""

    state: State
    action: Action | None
    error: str | None


def execute(state: State, text: str) -> Outcome:
    """Parse ``text`` and execute it on ``state`` (the scripted low-level controller)."""
    action = parse_action(text) if isinstance(text, str) else None
    if action is None:
        return Outcome(state, None, f"cannot parse the action {str(text)[:80]!r}")
    if action.verb == "done":
        return Outcome(state, action, None)
    assert action.obj is not None and action.ref is not None
    i, j = state.index(action.obj), state.index(action.ref)
    missing = [p for p, k in ((action.obj, i), (action.ref, j)) if k is None]
    if missing or i is None or j is None:
        return Outcome(state, action, f"there is no {object_name(missing[0])} on the table")
    error = _check(state, action, i, j)
    if error is not None:
        return Outcome(state, action, error)
    if action.verb == "stack":
        new = state if state.below[i] == j else state.stacked(i, j)
    else:
        assert action.relation is not None
        new = state.moved(i, target_cell(state, action.relation, j))
    return Outcome(new, action, None)


def _check(state: State, action: Action, i: int, j: int) -> str | None:
    """Why the action cannot be executed, or None."""
    names = [object_name(p) for p in state.objects]
    if i == j:
        return "an object cannot move relative to itself"
    if not state.clear(i):
        return f"the {names[i]} is under the {names[state.top(i)]}"
    if action.verb == "stack":
        if state.below[i] == j:
            return None  # already there: nothing to do
        if not state.clear(j):
            return f"the {names[j]} is under the {names[state.top(j)]}"
        return f"the stack under the {names[j]} is too high" if state.level(j) >= MAX_HEIGHT - 1 else None
    assert action.relation is not None
    t = target_cell(state, action.relation, j)
    if not state.inside(t):
        return f"the cell {action.relation} the {names[j]} is off the table"
    base = state.base_at(t)
    if base is not None and base != i:
        return f"the cell {action.relation} the {names[j]} is taken by the {names[base]}"
    return None


# ----------------------------------------------------------------------------------------------- observation

def render(state: State, size: int = IMAGE_SIZE) -> np.ndarray:
    """The table seen from above, ``size x size x 3`` uint8 (drawn at 4x and box-filtered: smooth edges)."""
    big = size * _SUPERSAMPLE
    cell = big / state.grid
    canvas = Image.new("RGB", (big, big), _TABLE)
    draw = ImageDraw.Draw(canvas)
    for k in range(1, state.grid):
        p = round(k * cell)
        draw.line((p, 0, p, big), fill=_LINE, width=_SUPERSAMPLE)
        draw.line((0, p, big, p), fill=_LINE, width=_SUPERSAMPLE)
    for i in sorted(range(len(state.objects)), key=state.level):  # lower levels first
        (color, shape), (col, row) = state.objects[i], state.cells[i]
        level, height = state.level(i), state.level(state.top(i)) + 1
        shift = (level - (height - 1) / 2) * _STACK_STEP  # a stack stays centred in its cell
        r = (_RADIUS if height == 1 else _STACK_RADIUS[level]) * cell
        cx, cy = (col + 0.5 + shift) * cell, (row + 0.5 - shift) * cell
        fill, width = COLORS[color], max(2, round(0.12 * r))  # a thin outline: small objects keep their color
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=_OUTLINE, width=width)
        else:
            draw.polygon(shape_polygon(shape, cx, cy, r, 0.0), fill=fill, outline=_OUTLINE, width=width)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.uint8).copy()


def state_vector(state: State) -> np.ndarray:
    """The state as `STATE_DIM` float32 numbers (layout in the module doc)."""
    out = np.zeros((MAX_OBJECTS, SLOT), dtype=np.float32)
    span = max(1, state.grid - 1)
    for i, (color, shape) in enumerate(state.objects):
        out[i, 0] = 1.0
        out[i, 1 + _COLOR_IDS[color]] = 1.0
        out[i, 1 + len(COLORS) + _SHAPE_IDS[shape]] = 1.0
        col, row = state.cells[i]
        out[i, -4:] = (col / span, row / span, state.level(i) / (MAX_HEIGHT - 1), float(state.clear(i)))
    return out.reshape(-1)


def state_text(state: State, lang: str = "en") -> str:
    """The objects and where they are, e.g. "red star at column 2, row 1; green circle on the blue square"
    (columns from the left, rows from the top, counted from 1) / "红色的星形在第2列第1行；绿色的圆形在蓝色的正方形上面"."""
    parts = []
    for i, pair in enumerate(state.objects):
        name, b = object_name(pair, lang), state.below[i]
        col, row = state.cells[i][0] + 1, state.cells[i][1] + 1
        if lang == "zh":
            parts.append(f"{name}在{object_name(state.objects[b], lang)}上面" if b is not None
                         else f"{name}在第{col}列第{row}行")
        else:
            parts.append(f"{name} on the {object_name(state.objects[b])}" if b is not None
                         else f"{name} at column {col}, row {row}")
    return ("；" if lang == "zh" else "; ").join(parts)


# ----------------------------------------------------------------------------------------------- environment

class TabletopEnv(gym.Env[dict[str, Any], str]):
    """The tabletop behind the gymnasium API. ``reset(seed, options={"task": Task | its dict})`` starts a task (a
    random one of ``families`` for ``split`` in ``lang`` without one; a given task brings its own language);
    observations are ``{"image": uint8 size x size x 3, "state": float32 (STATE_DIM,)}``; ``step(text)`` executes
    one text action. Reward 1.0 when the goals hold; terminated on success or "done"; truncated after
    ``max_steps`` steps. ``info``: instruction, state_text, task_kind, family, heldout, lang, task (its dict),
    history (the executed actions, canonical text), error (why the last action did nothing, or None), action,
    success, steps. ``env.state`` / ``env.task`` hold the symbolic world (for the oracle)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(self, size: int = IMAGE_SIZE, max_steps: int = MAX_STEPS, lang: str = "en", split: str = "train",
                 families: tuple[str, ...] = FAMILIES, grid: int = GRID, render_mode: str | None = None):
        for field, value, low in (("size", size, 16), ("max_steps", max_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInput(f"expected an integer >= {low}, got {value!r}", field=field)
        if split not in SPLITS:
            raise InvalidInput(f"expected one of {list(SPLITS)}, got {split!r}", field="split")
        if not families or any(f not in FAMILIES for f in families):
            raise InvalidInput(f"expected a non-empty subset of {list(FAMILIES)}, got {families!r}", field="families")
        if render_mode not in (None, "rgb_array"):
            raise InvalidInput(f"expected None or 'rgb_array', got {render_mode!r}", field="render_mode")
        self.size, self.max_steps, self.lang, self.split = size, max_steps, check_lang(lang), split
        self.families, self.grid, self.render_mode = tuple(families), grid, render_mode
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (size, size, 3), np.uint8),
            "state": spaces.Box(0.0, 1.0, (STATE_DIM,), np.float32)})
        self.action_space = spaces.Text(max_length=MAX_ACTION_CHARS, charset=CHARSET)
        self.task: Task | None = None
        self.state: State | None = None
        self.history: list[str] = []
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        task = (options or {}).get("task")
        if task is None:
            task = sample_task(self.np_random, split=self.split, families=self.families, lang=self.lang,
                               grid=self.grid)
        elif isinstance(task, Mapping):
            task = Task.from_dict(task)
        elif not isinstance(task, Task):
            raise InvalidInput(f"expected a Task or its dict, got {type(task).__name__}", field="options.task")
        self.task, self.state, self.history, self.steps = task, task.scene, [], 0
        return self._observation(), self._info(None, None)

    def step(self, action: str) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        if self.task is None or self.state is None:
            raise InvalidInput("call reset() before step()", field="action")
        outcome = execute(self.state, action)
        self.steps += 1
        if outcome.error is None and outcome.action is not None and outcome.action.verb != "done":
            self.state = outcome.state
            self.history.append(format_action(outcome.action, self.task.lang))
        success = self.task.success(self.state)
        done = outcome.error is None and outcome.action == DONE
        terminated = success or done
        truncated = not terminated and self.steps >= self.max_steps
        info = self._info(outcome.error, outcome.action)
        return self._observation(), 1.0 if success else 0.0, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self.state is None:
            return None
        return render(self.state, self.size)

    def _observation(self) -> dict[str, np.ndarray]:
        assert self.state is not None
        return {"image": render(self.state, self.size), "state": state_vector(self.state)}

    def _info(self, error: str | None, action: Action | None) -> dict[str, Any]:
        assert self.task is not None and self.state is not None
        lang = self.task.lang
        return {"instruction": self.task.instruction, "state_text": state_text(self.state, lang),
                "task_kind": self.task.kind, "family": self.task.family, "heldout": self.task.heldout,
                "lang": lang, "task": self.task.to_dict(), "history": list(self.history), "error": error,
                "action": None if action is None or error is not None else format_action(action, lang),
                "success": self.task.success(self.state), "steps": self.steps}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="polymodal.envs.tabletop:TabletopEnv")

__all__ = ["CHARSET", "DIRECTIONS", "ENV_ID", "IMAGE_SIZE", "MAX_STEPS", "STATE_DIM", "Outcome", "TabletopEnv",
           "execute", "parse_action", "render", "state_text", "state_vector"]
