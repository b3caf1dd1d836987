"""The curated public API: what `import polymodal` offers, and `polymodal.search` end to end."""

import subprocess
import sys
import types

import numpy as np

import polymodal as pm
from polymodal.index import Collection


def test_public_names_are_exactly_all():
    """Every public name of the package is in __all__ and vice versa; the only extra attributes allowed are
    the package's own submodules (Python binds those on import). A stray `import os` or `from typing import
    Any` in __init__ fails here."""
    public = {n for n, v in vars(pm).items() if not n.startswith("_")
              and not (isinstance(v, types.ModuleType) and v.__name__ == f"polymodal.{n}")}
    assert public == set(pm.__all__) - {"__version__"}
    assert "__version__" in pm.__all__ and isinstance(pm.__version__, str)
    assert sorted(pm.__all__, key=str.lower) == sorted(set(pm.__all__), key=str.lower), "duplicates in __all__"
    assert dir(pm) == sorted(pm.__all__)  # what tab completion offers


def test_importing_the_package_stays_light():
    """`import polymodal` pulls in no optional extra and no command-line code (those load on use)."""
    code = ("import sys, polymodal; heavy = ('faiss', 'fastapi', 'transformers', 'sklearn', 'polymodal.commands'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class VectorModel:
    modalities = ("text",)
    dim = 4
    table = {"a": [1, 0, 0, 0], "b": [0, 1, 0, 0]}

    def embed(self, text=None, **_):
        x = np.array([self.table[t] for t in text], dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_opens_a_collection_directory(tmp_path):
    with Collection.create(tmp_path / "c", dim=4, index="flat") as c:
        c.add([10, 20], np.eye(4, dtype=np.float32)[:2], metadata=[{"caption": "a"}, {"caption": "b"}])
    res = pm.search(tmp_path / "c", VectorModel(), text="b", k=1)
    assert int(res.ids[0, 0]) == 20 and res.metadata[0][0]["caption"] == "b"
