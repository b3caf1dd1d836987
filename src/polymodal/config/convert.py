"""Frozen dataclasses <-> JSON: `from_dict` checks every key and type and names the dotted key in its errors;
`to_dict` gives plain JSON values back."""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from typing import Any, Union

from ..errors import ConfigError


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain JSON values; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


T = typing.TypeVar("T")


def from_dict(cls: type[T], obj: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from JSON, checking every key and type (errors name the dotted key). A key in
    ``cls.REMOVED`` (``{key: (old default, message)}``) is an error with that message unless it holds the old
    default, which is ignored."""
    if not isinstance(obj, dict):
        raise ConfigError(f"expected an object, got {json_type(obj)}", field=path or cls.__name__)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    removed: dict[str, tuple[Any, str]] = getattr(cls, "REMOVED", {})
    kwargs: dict[str, Any] = {}
    for key, value in obj.items():
        full = f"{path}.{key}" if path else key
        if key in removed and key not in fields:
            old_default, message = removed[key]
            if value == old_default and not isinstance(value, bool):
                continue
            raise ConfigError(message, field=full)
        if key not in fields:
            raise ConfigError(f"unknown key{suggest(key, list(fields))}", field=full)
        kwargs[key] = coerce(value, hints[key], full)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError("missing (required)", field=f"{path}.{name}" if path else name)
    return cls(**kwargs)


def coerce(value: Any, hint: Any, path: str) -> Any:
    sections = [h for h in hint_options(hint) if dataclasses.is_dataclass(h)]  # e.g. InitFrom | None
    if sections and (isinstance(value, dict) or not matches(value, hint)):
        return from_dict(typing.cast(type, sections[0]), value, path)
    if not matches(value, hint):
        raise ConfigError(f"expected {hint_name(hint)}, got {json_type(value)} {json.dumps(value)}", field=path)
    if value is not None and base_type(hint) is float:
        return float(value)
    return value


def hint_options(hint: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(hint)
    return (hint,)


def base_type(hint: Any) -> Any:
    opts = [h for h in hint_options(hint) if h is not type(None)]
    return typing.get_origin(opts[0]) or opts[0] if len(opts) == 1 else None


def matches(value: Any, hint: Any) -> bool:
    for opt in hint_options(hint):
        base = typing.get_origin(opt) or opt
        if opt is Any or (opt is type(None) and value is None):
            return True
        if base is bool and isinstance(value, bool):
            return True
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if base is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if base is str and isinstance(value, str):
            return True
        if base is list and isinstance(value, list):
            args = typing.get_args(opt)
            return not args or all(matches(v, args[0]) for v in value)
        if base is dict and isinstance(value, dict):
            return True
    return False


def hint_name(hint: Any) -> str:
    names = []
    for opt in hint_options(hint):
        base = typing.get_origin(opt) or opt
        names.append("null" if opt is type(None) else getattr(base, "__name__", str(base)))
    return " or ".join(names)


def json_type(value: Any) -> str:
    for t, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (list, "list"), (dict, "object")):
        if isinstance(value, t):
            return name
    return "null" if value is None else type(value).__name__


def suggest(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    if close:
        return f" (did you mean {', '.join(close)}?)"
    return f" (known: {', '.join(sorted(candidates))})" if candidates else ""
