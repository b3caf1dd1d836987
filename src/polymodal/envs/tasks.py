"""The symbolic tabletop the tasks are stated in: objects on a grid (`State`), the text actions (`Action`,
`format_action`), the tasks (`Task`: a starting scene, goals, an instruction in English or Chinese), the held-out
split and the oracle planner (`oracle_action`).

The table is a ``grid x grid`` board of cells ``(column, row)``, column 0 on the left, row 0 at the top (as the
picture shows it). An object stands on a cell or on another object (a stack shares its base's cell, at most
`MAX_HEIGHT` high). Objects are colored shapes of the `shapes` vocabulary, at most one of each color+shape, so "the
red star" names one object. A relation goal "X left of Y" holds when X's cell is the cell directly left of Y's
(above/below: the cell directly up/down in the picture); "X on Y" holds when X stands directly on Y.

Held-out combos (`HELDOUT`): for every shape and relation (the four directions and "on") one color is held out
(30 of the 240 (color, shape, relation) combos, each color+shape pair at most once). A train or val task never has a
goal that moves a held-out combo (and `episodes` drops the rare train episode whose oracle would move one while
clearing the way), so "move the red star onto ..." with a held-out (red star, on) never occurs in training. Half of
the test tasks have a held-out combo as their first goal (``task.heldout``); the other half are new instances of
seen combos (drawn from their own seeds)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.synth.captions import COLOR_ZH, SHAPE_ZH
from ..data.synth.shapes import COLORS, SHAPES
from ..errors import InvalidInput

GRID = 5
MAX_OBJECTS = 4
MAX_HEIGHT = 3  # objects in one stack
LANGS: tuple[str, ...] = ("en", "zh")
# relation of X to Y -> offset of X's cell from Y's cell (column, row)
OFFSETS: dict[str, tuple[int, int]] = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}
DIRECTIONS: tuple[str, ...] = tuple(OFFSETS)
ON = "on"
RELATIONS: tuple[str, ...] = (*DIRECTIONS, ON)
REL_ZH: dict[str, str] = {"left of": "左边", "right of": "右边", "above": "上方", "below": "下方", ON: "上面"}
SINGLE_FAMILIES: tuple[str, ...] = ("place", "stack")
MULTI_FAMILIES: tuple[str, ...] = ("place2", "stack_place", "stack2", "tower")
FAMILIES: tuple[str, ...] = SINGLE_FAMILIES + MULTI_FAMILIES
KINDS: tuple[str, ...] = ("single", "multi")
SPLITS: tuple[str, ...] = ("train", "val", "test")
P_HELDOUT_TEST = 0.5  # share of test tasks whose first goal moves a held-out combo
P_INITIAL_STACK = 0.3  # share of scenes that start with one object on another
P_OBSTACLE = 0.4  # share of tasks where an object is put in the way of the first goal (on it or on its target)
_COLOR_LIST, _SHAPE_LIST = list(COLORS), list(SHAPES)

Pair = tuple[str, str]  # (color, shape)
Cell = tuple[int, int]  # (column, row)

# one held-out color per (shape, relation): color index (shape index + 3 * relation index) mod 8
HELDOUT: frozenset[tuple[str, str, str]] = frozenset(
    (_COLOR_LIST[(s + 3 * k) % len(_COLOR_LIST)], shape, rel)
    for s, shape in enumerate(_SHAPE_LIST) for k, rel in enumerate(RELATIONS))


def object_name(pair: Pair, lang: str = "en") -> str:
    """``("red", "star")`` -> "red star" / "红色的星形"."""
    return f"{COLOR_ZH[pair[0]]}的{SHAPE_ZH[pair[1]]}" if lang == "zh" else f"{pair[0]} {pair[1]}"


def check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise InvalidInput(f"expected one of {list(LANGS)}, got {lang!r}", field="lang")
    return lang


# ----------------------------------------------------------------------------------------------- state

@dataclass(frozen=True)
class State:
    """Objects, the cell of each (a stacked object has its base's cell) and what each stands on (None: the table)."""

    objects: tuple[Pair, ...]
    cells: tuple[Cell, ...]
    below: tuple[int | None, ...]
    grid: int = GRID

    def __post_init__(self) -> None:
        n = len(self.objects)
        if not 1 <= n <= MAX_OBJECTS or len(self.cells) != n or len(self.below) != n:
            raise InvalidInput(f"expected 1..{MAX_OBJECTS} objects with one cell and one support each", field="state")
        if len(set(self.objects)) != n or any(c not in COLORS or s not in SHAPES for c, s in self.objects):
            raise InvalidInput(f"objects must be distinct (color, shape) pairs of the vocabulary, got {self.objects}",
                               field="state.objects")
        if any(not self.inside(c) for c in self.cells):
            raise InvalidInput(f"cells must lie on the {self.grid}x{self.grid} table, got {self.cells}",
                               field="state.cells")
        supports = [b for b in self.below if b is not None]
        if len(set(supports)) != len(supports) or any(not 0 <= b < n for b in supports):
            raise InvalidInput(f"each object carries at most one other, got {self.below}", field="state.below")
        for i, b in enumerate(self.below):
            if b is not None and self.cells[i] != self.cells[b]:
                raise InvalidInput(f"object {i} stands on {b} but not on its cell", field="state.cells")
        table = [self.cells[i] for i in range(n) if self.below[i] is None]
        if len(set(table)) != len(table) or any(self.level(i) >= MAX_HEIGHT for i in range(n)):
            raise InvalidInput("two stacks share a cell, a stack is too high or cyclic", field="state.below")

    def inside(self, cell: Cell) -> bool:
        return 0 <= cell[0] < self.grid and 0 <= cell[1] < self.grid

    def index(self, pair: Pair) -> int | None:
        return self.objects.index(pair) if pair in self.objects else None

    def on_top(self, i: int) -> int | None:
        """The object standing directly on object i."""
        return self.below.index(i) if i in self.below else None

    def clear(self, i: int) -> bool:
        return self.on_top(i) is None

    def level(self, i: int) -> int:
        """0 on the table, 1 on one object, ..."""
        depth, b = 0, self.below[i]
        while b is not None and depth <= len(self.objects):
            depth, b = depth + 1, self.below[b]
        return depth

    def top(self, i: int) -> int:
        """The highest object of i's stack above i (i itself when clear)."""
        while (j := self.on_top(i)) is not None:
            i = j
        return i

    def base_at(self, cell: Cell) -> int | None:
        """The object standing on the table at ``cell``."""
        return next((i for i, c in enumerate(self.cells) if c == cell and self.below[i] is None), None)

    def free(self, cell: Cell) -> bool:
        return self.inside(cell) and cell not in self.cells

    def moved(self, i: int, cell: Cell) -> State:
        """Object i (clear) put on the table at ``cell``."""
        return self._with(i, cell, None)

    def stacked(self, i: int, j: int) -> State:
        """Object i (clear) put on object j (clear)."""
        return self._with(i, self.cells[j], j)

    def _with(self, i: int, cell: Cell, below: int | None) -> State:
        cells, supports = list(self.cells), list(self.below)
        cells[i], supports[i] = cell, below
        return dataclasses.replace(self, cells=tuple(cells), below=tuple(supports))

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [list(p) for p in self.objects], "cells": [list(c) for c in self.cells],
                "below": list(self.below), "grid": self.grid}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> State:
        try:
            return cls(tuple((str(c), str(s)) for c, s in obj["objects"]),
                       tuple((int(x), int(y)) for x, y in obj["cells"]),
                       tuple(None if b is None else int(b) for b in obj["below"]), int(obj.get("grid", GRID)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"not a tabletop state ({exc!r})", field="state") from None


def shifted(cell: Cell, relation: str) -> Cell:
    """The cell in ``relation`` to ``cell`` (e.g. "left of": one column to the left)."""
    dx, dy = OFFSETS[relation]
    return cell[0] + dx, cell[1] + dy


def target_cell(state: State, relation: str, ref: int) -> Cell:
    """Where an object in ``relation`` to object ``ref`` stands."""
    return shifted(state.cells[ref], relation)


# ----------------------------------------------------------------------------------------------- actions

@dataclass(frozen=True)
class Action:
    """``verb``: "move" (``obj`` to the cell in ``relation`` to ``ref``), "stack" (``obj`` onto ``ref``), "done"."""

    verb: str
    obj: Pair | None = None
    relation: str | None = None
    ref: Pair | None = None


DONE = Action("done")
DONE_TEXT = {"en": "done", "zh": "完成"}


def format_action(action: Action, lang: str = "en") -> str:
    """The canonical text of an action (what the oracle writes and the history shows)."""
    if action.verb == "done":
        return DONE_TEXT[lang]
    assert action.obj is not None and action.ref is not None
    x, y = object_name(action.obj, lang), object_name(action.ref, lang)
    if action.verb == "stack":
        return f"把{x}放到{y}上面" if lang == "zh" else f"move the {x} onto the {y}"
    assert action.relation is not None
    return f"把{x}移到{y}{REL_ZH[action.relation]}" if lang == "zh" else f"move the {x} {action.relation} the {y}"


# ----------------------------------------------------------------------------------------------- tasks

@dataclass(frozen=True)
class Goal:
    """``obj`` (an object index) in ``relation`` (`RELATIONS`) to ``ref``."""

    relation: str
    obj: int
    ref: int

    def holds(self, state: State) -> bool:
        if self.relation == ON:
            return state.below[self.obj] == self.ref
        return state.cells[self.obj] == target_cell(state, self.relation, self.ref)


_EN: dict[str, tuple[str, ...]] = {
    "place": ("put the {x} {r} the {y}", "place the {x} {r} the {y}", "move the {x} so that it is {r} the {y}"),
    "stack": ("stack the {x} on the {y}", "put the {x} on top of the {y}", "place the {x} onto the {y}"),
    "place2": ("put the {x} {r} the {y} and the {z} {r2} the {y}",
               "place the {x} {r} the {y}, then the {z} {r2} the {y}",
               "move the {x} {r} the {y} and move the {z} {r2} the {y}"),
    "stack_place": ("stack the {x} on the {y} and put the {z} {r2} the {y}",
                    "put the {x} on top of the {y}, then place the {z} {r2} the {y}"),
    "stack2": ("stack the {x} on the {y}, then the {z} on the {x}",
               "put the {x} on top of the {y} and then the {z} on top of the {x}",
               "first stack the {x} on the {y}, then stack the {z} on the {x}"),
    "tower": ("make a tower of the {y}, the {x} and the {z}, with the {y} at the bottom and the {z} on top",
              "build a tower: the {y} at the bottom, the {x} in the middle, the {z} on top"),
}
_ZH: dict[str, tuple[str, ...]] = {
    "place": ("把{x}放到{y}的{r}", "把{x}移到{y}{r}", "将{x}放在{y}的{r}"),
    "stack": ("把{x}叠到{y}上面", "把{x}放到{y}上面", "将{x}堆在{y}上"),
    "place2": ("把{x}放到{y}的{r}，把{z}放到{y}的{r2}", "先把{x}移到{y}{r}，再把{z}移到{y}{r2}"),
    "stack_place": ("把{x}叠到{y}上面，再把{z}放到{y}的{r2}", "先把{x}放到{y}上面，然后把{z}移到{y}{r2}"),
    "stack2": ("把{x}叠到{y}上面，然后把{z}叠到{x}上面", "先把{x}放到{y}上面，再把{z}放到{x}上面"),
    "tower": ("用{y}、{x}和{z}搭一座塔，{y}在最下面，{z}在最上面", "搭一座塔：最下面是{y}，中间是{x}，最上面是{z}"),
}
_EN_REL = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


@dataclass(frozen=True)
class Task:
    """A task instance: the ``family`` (`FAMILIES`), the starting ``scene``, the ``goals`` (all must hold at once;
    listed in the order the instruction gives them), the language and which phrasing of the instruction."""

    family: str
    scene: State
    goals: tuple[Goal, ...]
    lang: str = "en"
    phrasing: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise InvalidInput(f"expected one of {list(FAMILIES)}, got {self.family!r}", field="task.family")
        check_lang(self.lang)
        n = len(self.scene.objects)
        if not self.goals or any(g.relation not in RELATIONS or not 0 <= g.obj < n or not 0 <= g.ref < n
                                 or g.obj == g.ref for g in self.goals):
            raise InvalidInput(f"bad goals {self.goals}", field="task.goals")

    @property
    def kind(self) -> str:
        return "single" if len(self.goals) == 1 else "multi"

    @property
    def heldout(self) -> bool:
        """Whether the first goal moves a held-out (color, shape, relation) combo."""
        return goal_combo(self.scene, self.goals[0]) in HELDOUT

    @property
    def instruction(self) -> str:
        table = _ZH if self.lang == "zh" else _EN
        templates = table[self.family]
        g = self.goals
        names = {"x": g[0].obj, "y": g[0].ref, "z": g[-1].obj}
        words = {k: object_name(self.scene.objects[i], self.lang) for k, i in names.items()}
        rel = (lambda r: REL_ZH[r]) if self.lang == "zh" else (lambda r: _EN_REL.get(r, r))
        return templates[self.phrasing % len(templates)].format(**words, r=rel(g[0].relation), r2=rel(g[-1].relation))

    def success(self, state: State) -> bool:
        return all(g.holds(state) for g in self.goals)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "scene": self.scene.to_dict(),
                "goals": [[g.relation, g.obj, g.ref] for g in self.goals], "lang": self.lang,
                "phrasing": self.phrasing}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Task:
        try:
            goals = tuple(Goal(str(r), int(i), int(j)) for r, i, j in obj["goals"])
            return cls(str(obj["family"]), State.from_dict(obj["scene"]), goals, str(obj.get("lang", "en")),
                       int(obj.get("phrasing", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"not a tabletop task ({exc!r})", field="task") from None

    def with_lang(self, lang: str) -> Task:
        return dataclasses.replace(self, lang=check_lang(lang))


def goal_combo(state: State, goal: Goal) -> tuple[str, str, str]:
    color, shape = state.objects[goal.obj]
    return color, shape, goal.relation


def action_combo(action: Action) -> tuple[str, str, str] | None:
    """(color, shape, relation) an action moves; None for "done"."""
    if action.obj is None:
        return None
    return action.obj[0], action.obj[1], ON if action.verb == "stack" else str(action.relation)


# ----------------------------------------------------------------------------------------------- sampling

def _goals(family: str, rng: np.random.Generator) -> tuple[Goal, ...]:
    """Goals over objects 0 (x), 1 (y), 2 (z); the scene shuffles the objects afterwards."""
    r1, r2 = (DIRECTIONS[int(i)] for i in rng.choice(len(DIRECTIONS), size=2, replace=False))
    return {"place": (Goal(r1, 0, 1),), "stack": (Goal(ON, 0, 1),),
            "place2": (Goal(r1, 0, 1), Goal(r2, 2, 1)), "stack_place": (Goal(ON, 0, 1), Goal(r2, 2, 1)),
            "stack2": (Goal(ON, 0, 1), Goal(ON, 2, 0)), "tower": (Goal(ON, 0, 1), Goal(ON, 2, 0))}[family]


def _obstacle(state: State, goal: Goal, rng: np.random.Generator) -> State:
    """Put another object in the way of ``goal``: on its object, on its reference (stacking) or on its target."""
    others = [i for i in range(len(state.objects)) if i not in (goal.obj, goal.ref) and state.clear(i)]
    if not others:
        return state
    w = others[int(rng.integers(len(others)))]
    spots: list[State] = []
    for j in (goal.obj, goal.ref) if goal.relation == ON else (goal.obj,):
        if state.clear(j) and state.below[w] != j and state.level(j) < MAX_HEIGHT - 1:
            spots.append(state.stacked(w, j))
    if goal.relation != ON and state.free(t := target_cell(state, goal.relation, goal.ref)):
        spots.append(state.moved(w, t))
    return spots[int(rng.integers(len(spots)))] if spots else state


def _draw(rng: np.random.Generator, families: Sequence[str], lang: str, grid: int) -> Task:
    groups = [g for g in ([f for f in families if f in SINGLE_FAMILIES], [f for f in families if f in MULTI_FAMILIES])
              if g]  # single- and multi-step tasks equally often
    group = groups[int(rng.integers(len(groups)))]
    family = group[int(rng.integers(len(group)))]
    n = int(rng.integers(3, MAX_OBJECTS + 1))
    pairs = [(c, s) for c in _COLOR_LIST for s in _SHAPE_LIST]
    objects = tuple(pairs[int(i)] for i in rng.choice(len(pairs), size=n, replace=False))
    cells = tuple((int(k) % grid, int(k) // grid) for k in rng.choice(grid * grid, size=n, replace=False))
    state = State(objects, cells, (None,) * n, grid)
    goals = _goals(family, rng)
    if rng.random() < P_INITIAL_STACK:
        i, j = (int(k) for k in rng.choice(n, size=2, replace=False))
        state = state.stacked(i, j)
    if rng.random() < P_OBSTACLE:
        state = _obstacle(state, goals[0], rng)
    perm = [int(k) for k in rng.permutation(n)]  # new position of each object: no slot is the task's by rule
    where = {old: new for new, old in enumerate(perm)}
    state = State(tuple(state.objects[k] for k in perm), tuple(state.cells[k] for k in perm),
                  tuple(None if (b := state.below[k]) is None else where[b] for k in perm), grid)
    goals = tuple(Goal(g.relation, where[g.obj], where[g.ref]) for g in goals)
    phrasing = int(rng.integers(len((_ZH if lang == "zh" else _EN)[family])))
    return Task(family, state, goals, lang, phrasing)


def _admissible(task: Task, split: str, heldout: bool) -> bool:
    s = task.scene
    if any(g.holds(s) for g in task.goals):
        return False
    if any(g.relation != ON and not s.inside(target_cell(s, g.relation, g.ref)) for g in task.goals):
        return False
    if split != "test" or not heldout:
        return not any(goal_combo(s, g) in HELDOUT for g in task.goals)
    return task.heldout


def sample_task(rng: np.random.Generator, *, split: str = "train", families: Sequence[str] = FAMILIES,
                lang: str = "en", grid: int = GRID, heldout: bool | None = None) -> Task:
    """A random task instance of one of ``families`` for ``split`` (see the module doc for the held-out combos;
    ``heldout`` forces a test task's kind, default: held out with probability `P_HELDOUT_TEST`)."""
    if split not in SPLITS:
        raise InvalidInput(f"expected one of {list(SPLITS)}, got {split!r}", field="split")
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise InvalidInput(f"expected a non-empty subset of {list(FAMILIES)}, got {list(families)}", field="families")
    if not 3 <= grid <= 16:
        raise InvalidInput(f"expected a grid of 3..16 cells a side, got {grid}", field="grid")
    check_lang(lang)
    want = bool(heldout) if heldout is not None else split == "test" and bool(rng.random() < P_HELDOUT_TEST)
    for _ in range(10_000):  # a few dozen draws at most in practice
        task = _draw(rng, families, lang, grid)
        if _admissible(task, split, want and split == "test"):
            return task
    raise InvalidInput(f"no admissible task of {list(families)} on a {grid}x{grid} table", field="families")


def families_of(kinds: Sequence[str]) -> tuple[str, ...]:
    """The task families of the kinds "single" and/or "multi"."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise InvalidInput(f"expected a non-empty subset of {list(KINDS)}, got {list(kinds)}", field="kinds")
    return tuple(f for f in FAMILIES if ("single" if f in SINGLE_FAMILIES else "multi") in kinds)


# ----------------------------------------------------------------------------------------------- oracle

def oracle_action(state: State, task: Task, lang: str | None = None) -> str:
    """The oracle's next action for ``task`` in ``state``, as text (in ``lang``, default the task's): replanned
    from the current state each call, "done" once every goal holds."""
    return format_action(plan_step(state, task), lang or task.lang)


def plan_step(state: State, task: Task) -> Action:
    """The oracle's next action: goals in the instruction's order; an object in the way is first moved aside."""
    if task.success(state):
        return DONE
    # first, a reference whose target cell is off the table moves (the stack on it too), and the base of a
    # three-high tower stands on the table (else it would be too high)
    supports = {g.ref for g in task.goals if g.relation == ON}
    for g in task.goals:
        if g.relation != ON and not state.inside(target_cell(state, g.relation, g.ref)):
            return _aside(state, task, state.top(g.ref))
        if g.relation == ON and g.obj in supports and state.below[g.ref] is not None:
            return _aside(state, task, state.top(g.ref))
    pending = [g for g in task.goals if not g.holds(state)]
    # a goal whose object is buried under a reference object (which stays) comes first, else it would stay covered
    refs = {g.ref for g in task.goals}
    goal = next((g for g in pending if any(g.obj in _beneath(state, k) for k in refs)), pending[0])
    x, y = goal.obj, goal.ref
    if not state.clear(x):
        return _aside(state, task, state.top(x))
    if goal.relation == ON:
        if not state.clear(y):
            return _aside(state, task, state.top(y))
        if state.level(y) >= MAX_HEIGHT - 1:
            return _aside(state, task, y)
        return Action("stack", state.objects[x], None, state.objects[y])
    t = target_cell(state, goal.relation, y)
    blocker = state.base_at(t)
    if blocker is not None:
        return _aside(state, task, state.top(blocker))
    return Action("move", state.objects[x], goal.relation, state.objects[y])


def _aside(state: State, task: Task, i: int) -> Action:
    """Move object i (clear) to a free cell that no goal needs, keeping the targets of the goals it is the
    reference of on the table; a seen (object, relation) combo when there is one."""
    reserved = {target_cell(state, g.relation, g.ref) for g in task.goals if g.relation != ON}
    pending = [g for g in task.goals if g.relation != ON and not g.holds(state)]
    if (g := next((g for g in pending if g.obj == i), None)) is not None:
        t = target_cell(state, g.relation, g.ref)
        if state.free(t):  # it is in the way, and its own goal's cell is free: do that goal now
            return Action("move", state.objects[i], g.relation, state.objects[g.ref])
    options: list[tuple[tuple[bool, int, bool], Action]] = []
    for ref, rel in ((r, rel) for r in range(len(state.objects)) if r != i for rel in DIRECTIONS):
        c = target_cell(state, rel, ref)
        if state.free(c):
            targets = [shifted(c, g.relation) for g in task.goals if g.relation != ON and g.ref == i]
            keeps = all(state.inside(t) for t in targets)
            taken = sum(not state.free(t) for t in targets if state.inside(t))
            action = Action("move", state.objects[i], rel, state.objects[ref])
            options.append(((c in reserved or not keeps, taken, action_combo(action) in HELDOUT), action))
    if not options:
        return DONE  # a full table: nowhere to go (never happens with MAX_OBJECTS objects on the default grid)
    return min(options, key=lambda o: o[0])[1]  # the first of the best


def _beneath(state: State, i: int) -> set[int]:
    out, b = set(), state.below[i]
    while b is not None and b not in out:
        out.add(b)
        b = state.below[b]
    return out
