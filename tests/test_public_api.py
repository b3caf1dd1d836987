"""The curated public API: what `import polymodal` offers, and `polymodal.search` end to end."""

import numpy as np

import polymodal as pm
from polymodal.index import Collection


def test_public_names_exist():
    for name in pm.__all__:
        assert hasattr(pm, name), name


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
