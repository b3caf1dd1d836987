"""`index build --from-embeddings` and `index.bulk.build_from_vectors`: a collection built from the shards of
`polymodal embed` equals one built by `index build --model` on the same data (ids, metadata, model record,
search results with a flat index); IVF indexes are trained once on a sample and never retrained while the
shards are added; a failed build leaves nothing; the model record makes searches with another model fail."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polymodal.commands import index as cli
from polymodal.data.formats import ShardWriter
from polymodal.data.sample import Sample
from polymodal.errors import InvalidInput, ModelMismatch
from polymodal.index import Collection, build_from_vectors, search_with_model
from polymodal.jobs import EmbeddingShards, EmbedOptions, embed_dataset

DIM = 8


class Fake:
    """A deterministic 'model': an image embeds to a fixed projection of its pixels, a text to a hash."""

    modalities = ("image", "text")
    dim = DIM

    def __init__(self, fingerprint: str = "a" * 64, seed: int = 0):
        self.fingerprint, self.name = fingerprint, "runs/fake"
        self.proj = np.random.default_rng(seed).standard_normal((4 * 4 * 3, DIM)).astype(np.float32)

    def embed(self, image: Any = None, text: Any = None, **_: Any) -> np.ndarray:
        if image is not None:
            out = np.stack([im.astype(np.float32).reshape(-1) / 255 for im in image]) @ self.proj
        else:
            out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM) for t in text])
        out = out.astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _data(root: Path, n: int = 30) -> Path:
    rng = np.random.default_rng(1)
    with ShardWriter(root, shard_size=8) as w:
        for i in range(n):
            w.write(Sample(id=f"x{i:03d}", text=f"caption {i}", image=rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
                           metadata={"label": i % 4, "group": {"name": "g" + str(i % 2)}}))
    return root


def test_collection_from_embeddings_equals_index_build_with_the_model(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data, fake = _data(tmp_path / "data"), Fake()
    monkeypatch.setattr(cli, "load", lambda run, **_: fake)
    assert cli.main(["build", "--model", "runs/fake", "--data", str(data), "--collection", str(tmp_path / "a"),
                     "--index", "flat", "--no-media", "--batch-size", "8", "--json"]) == 0
    embed_dataset("runs/fake", data, tmp_path / "emb", EmbedOptions(shard_size=7, batch_size=8, progress=False),
                  model=fake)
    capsys.readouterr()
    assert cli.main(["build", "--from-embeddings", str(tmp_path / "emb"), "--collection", str(tmp_path / "b"),
                     "--index", "flat", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["added"] == 30 and summary["count"] == 30 and summary["kind"] == "flat"
    a, b = Collection.open(tmp_path / "a", readonly=True), Collection.open(tmp_path / "b", readonly=True)
    try:
        assert a.ids().tolist() == b.ids().tolist() == list(range(30))
        ga, gb = a.get(a.ids()), b.get(a.ids())
        assert ga.metadata == gb.metadata and gb.metadata[3]["sample_id"] == "x003"
        assert gb.metadata[3]["group.name"] == "g1" and gb.metadata[3]["label"] == 3 and "split" not in gb.metadata[3]
        np.testing.assert_allclose(ga.vectors, gb.vectors, atol=1e-6)
        assert a.model == b.model == {"fingerprint": "a" * 64, "name": "runs/fake", "modalities": ["image"]}
        q = fake.embed(text=["caption 1", "caption 2", "caption 3"])
        ra, rb = a.search(q, k=5), b.search(q, k=5)
        assert ra.ids.tolist() == rb.ids.tolist()
        np.testing.assert_allclose(ra.scores, rb.scores, atol=1e-6)
        with pytest.raises(ModelMismatch):   # what `polymodal search --model` checks
            search_with_model(b, Fake("b" * 64), text="caption 1")
    finally:
        a.close()
        b.close()


class Random:
    """A VectorSource of random vectors in chunks (what EmbeddingShards provides), counting full passes."""

    def __init__(self, n: int, dim: int = 16, chunk: int = 700, seed: int = 0):
        self.vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
        self.dim, self.chunk, self.passes = dim, chunk, 0

    def __len__(self) -> int:
        return len(self.vectors)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        rows = np.random.default_rng(seed).choice(len(self.vectors), size=n, replace=False)
        return self.vectors[np.sort(rows)]

    def chunks(self) -> Any:
        self.passes += 1
        for a in range(0, len(self.vectors), self.chunk):
            yield self.vectors[a:a + self.chunk], [{"row": i} for i in range(a, min(a + self.chunk, len(self)))]


def test_ivf_is_trained_once_on_a_sample_then_the_chunks_are_added(tmp_path: Path) -> None:
    src = Random(3000)
    coll, report = build_from_vectors(tmp_path / "c", src, index="IVF8,Flat", train_sample=600,
                                      model={"fingerprint": "f" * 64, "name": "m"}, modalities=["image"])
    try:
        info = coll.info()
        assert report["trained_on"] == 600 and report["added"] == 3000 and src.passes == 1
        assert info["faiss"] == "IVF8,Flat" and info["trained_at"] == 3000 and info["count"] == 3000
        assert info["model"] == {"fingerprint": "f" * 64, "name": "m", "modalities": ["image"]}
        q = src.vectors[:20] + 0.1
        exact = coll.search(q, k=10, params={"exact": True})
        every_list = coll.search(q, k=10, params={"nprobe": 8})   # all lists: IVF-Flat is exact
        assert every_list.ids.tolist() == exact.ids.tolist()
        assert exact.metadata[0][0] == {"row": int(exact.ids[0, 0])}
        coll.upsert([5], src.vectors[6:7])   # the collection stays an ordinary, writable one
    finally:
        coll.close()
    again = Collection.open(tmp_path / "c", readonly=True)
    assert len(again) == 3000 and again.info()["faiss"] == "IVF8,Flat"
    again.close()


def test_auto_picks_the_index_for_the_final_size_and_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    src = Random(10_500, chunk=4000)
    coll, report = build_from_vectors(tmp_path / "auto", src, index="auto", memory_budget="600KB")
    try:   # auto for 10.5k vectors under this budget: IVF-PQ, trained once up front (never staged or retrained)
        info = coll.info()
        assert info["kind"] == "ivf_pq" and info["trained_at"] == 10_500 and report["trained_on"] > 0
        assert info["faiss"].startswith("IVF") and "PQ" in info["faiss"]
    finally:
        coll.close()
    with pytest.raises(InvalidInput, match="train"):   # 10 points cannot train 64 lists
        build_from_vectors(tmp_path / "bad", Random(3000), index="IVF64,Flat", train_sample=10)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_cli_refuses_mixed_sources_and_unfinished_embeddings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, fake = _data(tmp_path / "data", n=10), Fake()

    class Dying(Fake):
        def embed(self, **kw: Any) -> np.ndarray:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_dataset("runs/fake", data, tmp_path / "emb", EmbedOptions(shard_size=4, progress=False), model=Dying())
    with pytest.raises(InvalidInput, match="not finished"):
        cli.main(["build", "--from-embeddings", str(tmp_path / "emb"), "--collection", str(tmp_path / "c")])
    embed_dataset("runs/fake", data, tmp_path / "emb", EmbedOptions(shard_size=4, progress=False), model=fake)
    assert len(EmbeddingShards(tmp_path / "emb")) == 10
    for extra in (["--data", str(data)], ["--append"], ["--modality", "image"]):
        with pytest.raises(InvalidInput, match="from-embeddings"):
            cli.main(["build", "--from-embeddings", str(tmp_path / "emb"), "--collection", str(tmp_path / "c"),
                      *extra])
    with pytest.raises(InvalidInput, match="--data"):
        cli.main(["build", "--model", "RUN", "--collection", str(tmp_path / "c")])
    with pytest.raises(SystemExit):   # argparse: --model and --from-embeddings exclude each other
        cli.main(["build", "--model", "RUN", "--from-embeddings", "E", "--collection", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()


def test_from_embeddings_checks_tune_first_and_a_failed_tune_leaves_nothing(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """--tune out of (0, 1] is refused before any vector is added; a tune that fails after the build removes
    the collection (as the --model path does); flags that only --model uses are refused, naming the flag."""
    data = _data(tmp_path / "data", n=10)
    embed_dataset("runs/fake", data, tmp_path / "emb", EmbedOptions(shard_size=4, progress=False), model=Fake())
    base = ["build", "--from-embeddings", str(tmp_path / "emb"), "--collection", str(tmp_path / "c")]

    def no_build(*a: Any, **k: Any) -> Any:
        raise AssertionError("built before the arguments were checked")

    import polymodal.index.bulk as bulk_mod

    with monkeypatch.context() as m:
        m.setattr(bulk_mod, "build_from_vectors", no_build)
        for bad in ("1.5", "0", "-0.1", "nan"):
            with pytest.raises(InvalidInput, match="--tune"):
                cli.main([*base, "--tune", bad])
        for extra in (["--runtime", "onnx"], ["--runtime", "torch"], ["--batch-size", "8"], ["--no-media"],
                      ["--split", "train"]):
            with pytest.raises(InvalidInput, match=extra[0]):
                cli.main([*base, *extra])
    assert not (tmp_path / "c").exists()

    def failing_tune(self: Collection, **_: Any) -> Any:
        raise InvalidInput("tuning failed", field="target_recall")

    monkeypatch.setattr(Collection, "tune", failing_tune)
    with pytest.raises(InvalidInput, match="tuning failed"):
        cli.main([*base, "--tune", "0.9"])
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
