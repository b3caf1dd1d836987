"""The quickstart's step runner: named steps whose results are reused on a re-run when their parameters are
unchanged and their output is still there.

A step is finished when ``OUT/steps/<step>.json`` exists with the same parameters and ``done()`` confirms its
output; each marker holds a fresh token that the parameters of later steps include, so redoing a step redoes
everything built on it."""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes


class Steps:
    """Runs named steps, skipping those whose marker matches; logs one line per step to stderr."""

    def __init__(self, out: Path, fresh: bool, total: int):
        self.dir, self.fresh, self.total = out / "steps", fresh, total
        self.log: list[dict[str, Any]] = []

    def _marker(self, name: str) -> dict[str, Any] | None:
        try:
            obj = json.loads((self.dir / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    def say(self, label: str, text: str) -> None:
        print(f"[quickstart {len(self.log) + 1}/{self.total}] {label}{text}", file=sys.stderr, flush=True)

    def run(self, name: str, label: str, params: dict[str, Any], work: Callable[[], dict[str, Any]],
            done: Callable[[], bool] = lambda: True, cache: bool = True) -> dict[str, Any]:
        """The step's marker ``{params, token, seconds, finished, result}``: the stored one when its
        parameters match and ``done()`` confirms the output, else after running ``work()``."""
        params = json.loads(json.dumps(params))  # tuples -> lists, as they come back from the file
        old = None if self.fresh or not cache else self._marker(name)
        if old is not None and old.get("params") == params and done():
            self.say(label, f": reused (finished {old.get('finished')})")
            self.log.append({"name": name, "status": "reused", "seconds": 0.0, "token": old["token"],
                             "took": old.get("seconds")})
            return old
        self.say(label, " ...")
        (self.dir / f"{name}.json").unlink(missing_ok=True)  # an interrupted redo must not look finished
        t0 = time.perf_counter()
        result = work()
        seconds = round(time.perf_counter() - t0, 2)
        marker = {"params": params, "token": uuid.uuid4().hex, "seconds": seconds,
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "result": result}
        if cache:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.dir / f"{name}.json", json.dumps(marker, ensure_ascii=False).encode("utf-8"))
        self.log.append({"name": name, "status": "ran", "seconds": seconds, "token": marker["token"]})
        print(f"    {label}: done in {seconds:.1f} s", file=sys.stderr, flush=True)
        return marker


def reset(path: Path) -> None:
    """Remove a step's output folder before redoing it."""
    if path.exists():
        shutil.rmtree(path)


__all__ = ["Steps", "reset"]
