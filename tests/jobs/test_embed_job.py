"""`polymodal embed` with the local engine: shards + ids + metadata + manifest, equal to embedding the samples
directly; resuming after a crash (finished shards verified and skipped, damaged ones redone); refusing to
resume with another model or other options; parquet == npy; range reads of every data format."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jobkit import Crashing, make_samples, write_every_format

from polymodal import load
from polymodal.commands import embed as embed_cli
from polymodal.commands import main as polymodal_main
from polymodal.data.formats import open_dataset, write_folder, write_jsonl
from polymodal.data.sample import Sample
from polymodal.errors import InvalidInput, ModelMismatch, NotFound
from polymodal.jobs import DataSource, EmbeddingShards, EmbedOptions, embed_dataset, plan_shards

OPTS = EmbedOptions(shard_size=16, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def model(job_run: Path) -> Any:
    return load(job_run)


def _read_all(out: Path) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    shards = EmbeddingShards(out)
    ids = np.concatenate([np.load(out / f"{e['name']}.ids.npy") for e in shards.entries])
    vecs, metas = [], []
    for v, m in shards.chunks():
        vecs.append(v)
        metas += m
    return ids, np.concatenate(vecs), metas


def test_shards_hold_every_item_in_data_order_with_ids_vectors_and_metadata(job_data: Path, job_run: Path,
                                                                             model: Any, tmp_path: Path) -> None:
    summary = embed_dataset(str(job_run), job_data, tmp_path / "emb", OPTS, model=model)
    assert summary["complete"] and summary["items"] == 50 and summary["count"] == 50 and summary["skipped"] == 0
    assert summary["shards"] == 4 and summary["written_shards"] == 4 and summary["resumed_shards"] == 0
    man = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert man["model"] == {"fingerprint": model.fingerprint, "name": str(job_run)}
    assert man["dim"] == 16 and man["modalities"] == ["image", "text"] and man["planned"] == 4
    assert [(e["start"], e["stop"], e["count"]) for e in man["shards"]] == [(0, 16, 16), (16, 32, 16), (32, 48, 16),
                                                                             (48, 50, 2)]
    samples = [(s, split) for split in ("train", "val") for s in open_dataset(job_data, split)]
    ids, vecs, metas = _read_all(tmp_path / "emb")
    assert ids.tolist() == [s.id for s, _ in samples]
    # the same vectors as embedding the samples directly (images, and the text of the text-only ones)
    expected = np.stack([model.embed(image=[s.image])[0] if s.image is not None else model.embed(text=[s.text])[0]
                         for s, _ in samples])
    np.testing.assert_allclose(vecs, expected, atol=1e-5)
    assert vecs.dtype == np.float32 and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert [m["split"] for m in metas] == [split for _, split in samples]
    assert metas[40]["modality"] == "text" and metas[41]["modality"] == "image"
    assert metas[3]["label"] == 0 and metas[3]["nested.k"] == 3 and metas[3]["sample_id"] == "s0003"


def test_one_modality_skips_samples_without_it(job_data: Path, job_run: Path, model: Any, tmp_path: Path) -> None:
    opts = EmbedOptions(modality="image", split="val", shard_size=4, batch_size=3, progress=False)
    summary = embed_dataset(str(job_run), job_data, tmp_path / "emb", opts, model=model)
    assert summary["items"] == 10 and summary["count"] == 7 and summary["skipped"] == 3   # v0000, v0004, v0008
    ids, vecs, metas = _read_all(tmp_path / "emb")
    assert "v0004" not in ids.tolist() and len(ids) == 7 and {m["modality"] for m in metas} == {"image"}
    assert EmbeddingShards(tmp_path / "emb").modalities == ["image"]


def test_a_killed_job_resumes_from_its_finished_shards(job_data: Path, job_run: Path, model: Any,
                                                        tmp_path: Path) -> None:
    embed_dataset(str(job_run), job_data, tmp_path / "ref", OPTS, model=model)
    out = tmp_path / "emb"
    with pytest.raises(KeyboardInterrupt):   # 2 embed calls per full shard (16 items, batches of 8)
        embed_dataset(str(job_run), job_data, out, OPTS, model=Crashing(model, calls=5))
    man = json.loads((out / "manifest.json").read_text())
    assert [e["index"] for e in man["shards"]] == [0, 1] and not man["complete"]
    with pytest.raises(InvalidInput, match="not finished"):
        EmbeddingShards(out)
    # shard 1 is damaged after it was recorded (e.g. a copy cut short): verified, found bad, redone
    (out / "shard-00001.npy").write_bytes((out / "shard-00001.npy").read_bytes()[:-8])
    (out / ".shard-00002.npy.x1y2.tmp").write_bytes(b"half a shard")   # a write the crash cut short
    counting = Crashing(model, calls=10**6)
    summary = embed_dataset(str(job_run), job_data, out, OPTS, model=counting)
    assert summary["resumed_shards"] == 1 and summary["written_shards"] == 3 and summary["complete"]
    # embed calls: shard 1: 2 (16 images); shard 2: 3 (8 images, then 6 images + 2 texts); shard 3: 2 (1 + 1)
    assert counting.seen == 2 + 3 + 2
    assert not list(out.glob(".*.tmp"))
    ref, got = _read_all(tmp_path / "ref"), _read_all(out)
    assert ref[0].tolist() == got[0].tolist() and ref[2] == got[2]
    np.testing.assert_array_equal(ref[1], got[1])
    again = embed_dataset(str(job_run), job_data, out, OPTS, model=Crashing(model, calls=0))   # nothing left to do
    assert again["written_shards"] == 0 and again["resumed_shards"] == 4


def test_resuming_with_another_model_or_other_options_is_refused(job_data: Path, job_run: Path, model: Any,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "emb"
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(str(job_run), job_data, out, OPTS, model=Crashing(model, calls=1))
    other = Crashing(model, 10**6)
    other.fingerprint = "f" * 64
    with pytest.raises(ModelMismatch, match="fingerprint"):
        embed_dataset(str(job_run), job_data, out, OPTS, model=other)
    for change in ({"shard_size": 8}, {"modality": "image"}, {"split": "train"}, {"format": "parquet"}):
        opts = EmbedOptions(**{**OPTS.__dict__, **change})
        with pytest.raises(InvalidInput, match=next(iter(change))):
            embed_dataset(str(job_run), job_data, out, opts, model=model)
    # batch size and engine settings do not change what the shards hold: resuming with them is fine
    done = embed_dataset(str(job_run), job_data, out, EmbedOptions(shard_size=16, batch_size=5, progress=False),
                         model=model)
    assert done["complete"] and done["count"] == 50
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="manifest.json"):
        embed_dataset(str(job_run), job_data, tmp_path / "busy", OPTS, model=model)


def test_parquet_shards_hold_the_same_rows_as_npy(job_data: Path, job_run: Path, model: Any, tmp_path: Path) -> None:
    embed_dataset(str(job_run), job_data, tmp_path / "npy", OPTS, model=model)
    embed_dataset(str(job_run), job_data, tmp_path / "pq", EmbedOptions(**{**OPTS.__dict__, "format": "parquet"}),
                  model=model)
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == ["manifest.json"] + [
        f"shard-0000{i}.parquet" for i in range(4)]
    a, b = EmbeddingShards(tmp_path / "npy"), EmbeddingShards(tmp_path / "pq")
    for (va, ma), (vb, mb) in zip(a.chunks(), b.chunks(), strict=True):
        np.testing.assert_array_equal(va, vb)
        assert ma == mb
    np.testing.assert_array_equal(a.sample(20, seed=3), b.sample(20, seed=3))


def test_cli_prints_a_summary_and_checks_its_flags(job_data: Path, job_run: Path, model: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(embed_cli, "load", lambda spec, device, runtime: model)
    rc = polymodal_main(["embed", str(job_run), "--data", str(job_data), "--out", str(tmp_path / "emb"),
                         "--shard-size", "20", "--split", "train", "--json", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 40 and summary["shards"] == 2 and summary["engine"] == "local"
    assert polymodal_main(["embed", "RUN", "--data", str(job_data), "--out", str(tmp_path / "x"),
                           "--ray-address", "auto"]) == 1
    assert "--engine ray" in capsys.readouterr().err
    assert polymodal_main(["embed", "RUN", "--data", str(job_data), "--out", str(tmp_path / "x"),
                           "--shard-size", "0"]) == 1
    assert not (tmp_path / "x").exists()


def test_range_reads_cover_every_format_exactly(tmp_path: Path) -> None:
    samples = make_samples(11, 2)
    write_every_format(samples, tmp_path)
    (tmp_path / "nosizes").mkdir()
    for tar in (tmp_path / "w").glob("*.tar"):
        (tmp_path / "nosizes" / tar.name).write_bytes(tar.read_bytes())
    for path in (tmp_path / "j" / "data.jsonl", tmp_path / "f", tmp_path / "w", tmp_path / "nosizes"):
        src = DataSource.open(path)
        assert len(src) == 11
        got = [s.id for k, a, b in plan_shards(len(src), 3) for s, _ in src.read(a, b)]
        assert got == [s.id for s in open_dataset(path)], path
    with pytest.raises(NotFound):
        DataSource.open(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- review fixes

def test_cli_runtime_onnx_embeds_with_an_export(job_data: Path, job_run: Path, model: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """An ONNX export (a MODEL `embed --help` lists) is usable with --runtime onnx; without it the loader's
    error names --runtime onnx; the runtime reaches the job's options (what the Ray actors load with)."""
    pytest.importorskip("onnxruntime")
    from polymodal.models.onnx import export_model

    export_model(model, tmp_path / "exp")
    args = ["--data", str(job_data), "--split", "val", "--shard-size", "4", "--json", "--no-progress"]
    assert polymodal_main(["embed", str(tmp_path / "exp"), "--out", str(tmp_path / "e0"), *args]) == 1
    assert "--runtime onnx" in capsys.readouterr().err
    assert polymodal_main(["embed", str(tmp_path / "exp"), "--runtime", "onnx", "--out", str(tmp_path / "e1"),
                           *args]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 10 and summary["options"]["runtime"] == "onnx"
    embed_dataset(str(job_run), job_data, tmp_path / "ref", EmbedOptions(split="val", shard_size=4, progress=False),
                  model=model)
    (_, got, _), (_, ref, _) = _read_all(tmp_path / "e1"), _read_all(tmp_path / "ref")
    np.testing.assert_allclose(got, ref, atol=1e-4)
    with pytest.raises(SystemExit):
        embed_cli.main(["RUN", "--data", "D", "--out", "O", "--runtime", "tensorrt"])


def test_the_batch_size_reaches_the_model_above_its_default(job_run: Path, model: Any, tmp_path: Path) -> None:
    """--batch-size 100 runs forward passes of 100 (not the model's default 64)."""
    write_jsonl([Sample(id=f"t{i}", text=f"text {i}") for i in range(150)], tmp_path / "j" / "data.jsonl")
    sizes: list[int] = []
    fresh = load(job_run)
    orig = fresh.embed_batch

    def spy(batch: Any, modality: str) -> Any:
        out = orig(batch, modality)
        sizes.append(int(out.shape[0]))
        return out

    fresh.embed_batch = spy   # type: ignore[method-assign]
    opts = EmbedOptions(batch_size=100, shard_size=1000, progress=False)
    embed_dataset(str(job_run), tmp_path / "j" / "data.jsonl", tmp_path / "emb", opts, model=fresh)
    assert sizes == [100, 50]


def test_resuming_on_edited_data_is_refused(job_run: Path, model: Any, tmp_path: Path) -> None:
    """Data edited in place (same size, same item count) is noticed: JSONL by its content, folders by each
    file's size and mtime."""
    samples = make_samples(6, 3)
    jsonl, folder = tmp_path / "j" / "data.jsonl", tmp_path / "f"
    write_jsonl(samples, jsonl)
    write_folder(samples, folder)
    opts = EmbedOptions(shard_size=2, batch_size=2, progress=False)
    for path, name in ((jsonl, "ej"), (folder, "ef")):
        with pytest.raises(KeyboardInterrupt):
            embed_dataset(str(job_run), path, tmp_path / name, opts, model=Crashing(model, calls=1))
    text = jsonl.read_text()
    jsonl.write_text(text.replace("number 0", "number 9", 1))   # same size, same lines
    assert len(jsonl.read_text()) == len(text)
    txt = sorted(folder.rglob("*.txt"))[0]
    txt.write_text(txt.read_text().replace("a square", "b square"))
    for path, name in ((jsonl, "ej"), (folder, "ef")):
        with pytest.raises(InvalidInput, match="data_digest"):
            embed_dataset(str(job_run), path, tmp_path / name, opts, model=model)


def test_the_local_engine_reads_unindexed_data_once(job_run: Path, model: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """JSONL / folders / tars without sizes.json: the shards are read in one pass (not each from the start)."""
    import polymodal.jobs.source as source_mod

    samples = make_samples(12, 4)
    write_every_format(samples, tmp_path)
    (tmp_path / "w" / "sizes.json").unlink()
    enumerated = {"n": 0}

    def counting(fn: Any) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            for item in fn(*a, **k):
                enumerated["n"] += 1
                yield item
        return wrapped

    for name in ("jsonl_items", "folder_items", "wds_items"):
        monkeypatch.setattr(source_mod, name, counting(getattr(source_mod, name)))
    opts = EmbedOptions(shard_size=2, batch_size=4, progress=False)
    for path in (tmp_path / "j" / "data.jsonl", tmp_path / "f", tmp_path / "w"):
        enumerated["n"] = 0
        out = tmp_path / f"emb-{path.name}"
        summary = embed_dataset(str(job_run), path, out, opts, model=model)
        assert summary["count"] == 12 and enumerated["n"] == 12, path
        ids, _, _ = _read_all(out)
        assert ids.tolist() == [s.id for s in samples]


def test_ray_workers_get_the_specs_paths_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray worker runs in another folder: relative paths inside KIND:PATH specs are made absolute."""
    from polymodal.jobs.ray_engine import _spec_for_workers

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel" / "dir").mkdir(parents=True)
    (tmp_path / "cfg.json").write_text("{}")
    (tmp_path / "rel" / "ckpt.bin").write_bytes(b"x")
    here = tmp_path.resolve()
    assert _spec_for_workers("rel/dir") == str(here / "rel" / "dir")
    assert _spec_for_workers("clip:rel/dir") == f"clip:{here / 'rel' / 'dir'}"
    assert _spec_for_workers("open_clip:cfg.json:rel/ckpt.bin") == f"open_clip:{here / 'cfg.json'}:{here / 'rel' / 'ckpt.bin'}"
    assert _spec_for_workers("open_clip:ViT-B-32:rel/ckpt.bin") == f"open_clip:ViT-B-32:{here / 'rel' / 'ckpt.bin'}"
    assert _spec_for_workers("open_clip:ViT-B-32") == "open_clip:ViT-B-32"
    assert _spec_for_workers(f"clip:{here / 'rel' / 'dir'}") == f"clip:{here / 'rel' / 'dir'}"


def test_without_ray_the_engine_names_the_extra(job_data: Path, job_run: Path, model: Any, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`--engine ray` where ray is not installed: one line with the install hint, exit 1, no shard written."""
    monkeypatch.setattr(embed_cli, "load", lambda spec, device, runtime: model)
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc = polymodal_main(["embed", str(job_run), "--data", str(job_data), "--out", str(tmp_path / "emb"),
                         "--engine", "ray", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "pip install 'polymodal[ray]'" in err and "Traceback" not in err
    assert not list(tmp_path.glob("emb/shard-*"))
