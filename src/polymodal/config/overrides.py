"""Type-checked dotted overrides of a config dataclass (``--set train.lr=1e-3``; see `polymodal.config`)."""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ConfigError
from .convert import base_type, coerce, hint_name, json_type, matches, suggest, to_dict

C = TypeVar("C")  # a config dataclass (a Recipe, or any frozen config)


Override = str | tuple[str, Any]  # "key=value" (the CLI's text, parsed) or (key, value) (checked, never parsed)


@dataclass(frozen=True)
class _Change:
    parts: tuple[str, ...]  # the dotted key
    value: Any
    raw: bool  # value is text to parse against the target's type
    add: bool  # "+key": may create a key inside a free-form section

    @property
    def full(self) -> str:
        return ".".join(self.parts)

    def at(self, i: int) -> str:
        return ".".join(self.parts[: i + 1])

    def leaf(self, i: int) -> bool:
        return i == len(self.parts) - 1


def apply_overrides(recipe: C, overrides: Iterable[Override]) -> C:
    """Apply overrides (syntax: `polymodal.config`) in order. Each dataclass section is rebuilt once with
    `dataclasses.replace` (so its checks see the final values); free-form sections are copied, then set."""
    changes = [_change(item) for item in overrides]
    return _apply(recipe, changes, 0) if changes else recipe


def _change(item: Override) -> _Change:
    if isinstance(item, str):
        key, sep, value = item.partition("=")
        raw = True
        if not sep:
            key = ""
    else:
        key, value = item
        raw = False
    key = key.strip()
    if not key.lstrip("+"):
        raise ConfigError(f"expected key=value, got {item!r}", field="--set")
    return _Change(tuple(key.lstrip("+").split(".")), value, raw, key.startswith("+"))


def _apply(node: Any, changes: list[_Change], i: int) -> Any:
    """``node`` with ``changes`` applied; their keys at depth ``i`` name ``node``'s keys."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return _apply_dataclass(node, changes, i)
    if isinstance(node, dict):
        out = copy.deepcopy(node)
        for c in changes:
            _set_free(out, c, i)
        return out
    c = changes[0]
    raise ConfigError(f"'{'.'.join(c.parts[:i])}' is a {json_type(node)}, not an object", field=c.full)


def _apply_dataclass(node: Any, changes: list[_Change], i: int) -> Any:
    cls = type(node)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    removed: dict[str, tuple[Any, str]] = getattr(cls, "REMOVED", {})
    updates: dict[str, Any] = {}
    for name, runs in _runs(changes, i).items():
        if name not in names:
            message = removed[name][1] if name in removed else f"unknown key{suggest(name, names)}"
            raise ConfigError(message, field=runs[0][0].at(i))
        value = getattr(node, name)
        for run in runs:
            c = run[0]
            if c.leaf(i):
                value = _value(c, hints[name])
            else:
                value = _apply(value, run, i + 1)
        updates[name] = value
    return dataclasses.replace(node, **updates)


def _runs(changes: list[_Change], i: int) -> dict[str, list[list[_Change]]]:
    """Changes by their key at depth ``i``, in order, cut into runs: a change of the key itself alone, or
    consecutive changes below it (applied together, so a nested section is replaced once)."""
    out: dict[str, list[list[_Change]]] = {}
    for c in changes:
        runs = out.setdefault(c.parts[i], [])
        if runs and not c.leaf(i) and not runs[-1][0].leaf(i):
            runs[-1].append(c)
        else:
            runs.append([c])
    return out


def _set_free(obj: dict[str, Any], c: _Change, i: int) -> None:
    """Set ``c`` in the free-form JSON ``obj`` (in place), type-checked against the existing value."""
    node: Any = obj
    for j in range(i, len(c.parts)):
        part = c.parts[j]
        if not isinstance(node, dict):
            raise ConfigError(f"'{'.'.join(c.parts[:j])}' is a {json_type(node)}, not an object", field=c.full)
        if part not in node:
            if not (c.add and c.leaf(j)):
                how = " (prefix the key with + to add a new one)" if c.leaf(j) else ""
                raise ConfigError(f"unknown key{suggest(part, list(node))}{how}", field=c.at(j))
            node[part] = _value(c, None)
            return
        if c.leaf(j):
            node[part] = _value(c, None if node[part] is None else type(node[part]))  # keep the value's type
            return
        node = node[part]


def _value(c: _Change, hint: Any) -> Any:
    """``c``'s value for a key of type ``hint`` (None: any): CLI text is parsed against it, a Python value is
    checked (an int is accepted for a float) but never parsed."""
    if c.raw:
        return _json_or_str(c.value) if hint is None else _parse_typed(c.value, hint, c.full)
    value = to_dict(c.value)
    return copy.deepcopy(value if hint is None else coerce(value, hint, c.full))


def _json_or_str(raw: str) -> Any:
    text = raw.strip()
    if text.lower() in ("null", "none"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return raw


def _as_list(raw: str) -> Any:
    value = _json_or_str(raw)
    if isinstance(value, str):  # comma-separated convenience: a,b,c
        return [_json_or_str(v) for v in value.split(",") if v.strip()]
    return value


def _parse_typed(raw: str, hint: Any, path: str) -> Any:
    base = base_type(hint)
    if base is str and raw.strip().lower() not in ("null", "none"):
        value: Any = raw
    elif base is list:
        value = _as_list(raw)
    else:
        value = _json_or_str(raw)
    if not matches(value, hint):
        raise ConfigError(f"expected {hint_name(hint)}, got {raw!r}", field=path)
    return float(value) if base is float and value is not None else value
