"""`polymodal index build` and `polymodal search` with a fake model (monkeypatched), the Python query helper,
fusion, and the CLI's filter / weight parsing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polymodal.commands import index as cli
from polymodal.commands import main as polymodal_main
from polymodal.commands import search as search_cli
from polymodal.data import codec
from polymodal.data.formats import ShardWriter
from polymodal.data.sample import Sample
from polymodal.errors import InvalidInput
from polymodal.index import Collection, MediaStore, fuse, search_with_model

DIM = 16


def key_vec(key: int) -> np.ndarray:
    v = np.random.default_rng(key).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


class FakeModel:
    """Sample i embeds to key_vec(i) from any modality: image filled with i, text 'item i', audio starting at
    i/100. So a text query 'item 3' should find sample 3's image."""

    modalities = ("audio", "image", "text")
    dim = DIM

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def embed(self, text: Any = None, image: Any = None, audio: Any = None, video: Any = None) -> np.ndarray:
        given = {m: v for m, v in {"text": text, "image": image, "audio": audio, "video": video}.items()
                 if v is not None}
        assert len(given) == 1, "the CLI embeds one modality per call"
        (modality, values), = given.items()
        self.calls.append((modality, len(values)))
        keys = {"text": lambda t: int(t.split()[-1]), "image": lambda im: int(im[0, 0, 0]),
                "audio": lambda a: int(round(float(a[0][0]) * 100))}[modality]
        return np.stack([key_vec(keys(v)) for v in values])


def make_samples(n: int = 12) -> list[Sample]:
    out = []
    for i in range(n):
        audio = {"audio": np.full(400, i / 100, np.float32), "sample_rate": 16000} if i % 2 else {}
        out.append(Sample(id=f"s{i}", text=f"item {i}", image=np.full((4, 4, 3), i, np.uint8),
                          metadata={"label": i % 3, "nested": {"color": "red"}, "split": "x", "tags": ["a"]},
                          source=f"src{i}", **audio))
    return out


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    model = FakeModel()
    monkeypatch.setattr(cli, "load", lambda run, **_: model)
    monkeypatch.setattr(search_cli, "load", lambda run, **_: model)
    return model


@pytest.fixture
def built(tmp_path: Path, fake: FakeModel, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
          ) -> Path:
    monkeypatch.setattr(cli, "_open_dataset", lambda path, split: make_samples())
    coll = tmp_path / "coll"
    rc = cli.main(["build", "--model", "RUN", "--data", "DATA", "--collection", str(coll), "--batch-size", "5",
                   "--index", "flat", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["added"] == 12 and summary["count"] == 12 and summary["skipped"] == 0
    return coll


def test_build_stores_embeddings_and_metadata(built: Path, fake: FakeModel) -> None:
    assert fake.calls == [("image", 5), ("image", 5), ("image", 2)]   # batched, progress by batch
    with Collection.open(built, readonly=True) as coll:
        items = coll.get(np.arange(12))
    np.testing.assert_allclose(items.vectors, np.stack([key_vec(i) for i in range(12)]), rtol=1e-6)
    assert items.metadata[4] == {"sample_id": "s4", "caption": "item 4", "modality": "image", "source": "src4",
                                 "label": 1, "nested.color": "red", "meta.split": "x", "tags": ["a"]}


def test_build_one_modality_skips_the_rest_and_append_continues_ids(
        tmp_path: Path, fake: FakeModel, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_open_dataset", lambda path, split: make_samples())
    coll = tmp_path / "coll"
    args = ["build", "--model", "R", "--data", "D", "--collection", str(coll), "--modality", "audio", "--json"]
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 6
    with pytest.raises(InvalidInput, match="--append"):
        cli.main(args)
    assert cli.main([*args, "--append", "--modality", "text"]) == 0
    capsys.readouterr()
    with Collection.open(coll, readonly=True) as c:
        assert sorted(c.ids().tolist()) == list(range(18))
        assert c.get([5]).metadata[0]["modality"] == "audio" and c.get([6]).metadata[0]["modality"] == "text"
        np.testing.assert_allclose(c.get([6]).vectors[0], key_vec(0), rtol=1e-6)   # text of sample 0


def test_failed_build_leaves_nothing_half_done(tmp_path: Path, fake: FakeModel,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def samples(path: str, split: str | None) -> Any:
        yield from make_samples(7)
        raise InvalidInput("corrupt shard", source="bad.tar")

    monkeypatch.setattr(cli, "_open_dataset", samples)
    with pytest.raises(InvalidInput, match="corrupt"):
        cli.main(["build", "--model", "R", "--data", "D", "--collection", str(tmp_path / "c"), "--batch-size", "3"])
    assert not (tmp_path / "c").exists()


def test_build_from_real_shards(tmp_path: Path, fake: FakeModel, capsys: pytest.CaptureFixture[str]) -> None:
    with ShardWriter(tmp_path / "shards", shard_size=4) as w:
        for s in make_samples(6):
            w.write(s)
    coll = tmp_path / "coll"
    assert cli.main(["build", "--model", "R", "--data", str(tmp_path / "shards"), "--collection", str(coll)]) == 0
    assert "added 6 items" in capsys.readouterr().out
    with Collection.open(coll, readonly=True) as c:
        res = c.search(key_vec(3), k=1)
        assert res.metadata[0][0]["sample_id"] == "s3"


def _search(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert search_cli.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_search_text_finds_the_matching_image(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _search(["--collection", str(built), "--model", "R", "--text", "item 3", "-k", "3"], capsys)
    assert out["hits"][0]["id"] == 3 and out["hits"][0]["metadata"]["caption"] == "item 3"
    assert out["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5) and len(out["hits"]) == 3


def test_search_vector_file_needs_no_model(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "q.npy", key_vec(7)[None])
    out = _search(["--collection", str(built), "--vector-file", str(tmp_path / "q.npy"), "-k", "2"], capsys)
    assert [h["id"] for h in out["hits"]][:1] == [7]
    assert search_cli.main(["--collection", str(built), "--vector-file", str(tmp_path / "q.npy")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "id", "score", "item"] and "item 7" in table[1]


def test_fused_query_is_the_weighted_normalized_sum(built: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.flac").write_bytes(codec.encode_audio(np.full(400, 0.05, np.float32), 16000))   # sample 5
    (tmp_path / "i.png").write_bytes(codec.encode_image(np.full((4, 4, 3), 9, np.uint8)))           # sample 9
    out = _search(["--collection", str(built), "--model", "R", "--text", "item 3", "--audio", str(tmp_path / "a.flac"),
                   "--image", str(tmp_path / "i.png"), "--weights", "text=0.5,audio=0.3,image=0.2", "-k", "12"],
                  capsys)
    q = 0.5 * key_vec(3) + 0.3 * key_vec(5) + 0.2 * key_vec(9)
    q /= np.linalg.norm(q)
    ref = np.stack([key_vec(i) for i in range(12)]) @ q
    assert [h["id"] for h in out["hits"]] == np.argsort(-ref, kind="stable").tolist()
    np.testing.assert_allclose([h["score"] for h in out["hits"]], np.sort(ref)[::-1], rtol=1e-5, atol=1e-6)


def test_search_filters(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--collection", str(built), "--model", "R", "--text", "item 3", "-k", "20"]
    out = _search([*base, "--filter", "label=1"], capsys)
    assert sorted(h["id"] for h in out["hits"]) == [1, 4, 7, 10]
    out = _search([*base, "--filter", "label=[0,2]", "--filter", "sample_id!=s0"], capsys)
    assert sorted(h["id"] for h in out["hits"]) == [2, 3, 5, 6, 8, 9, 11]
    out = _search([*base, "--filter", "label>=1", "--filter", "caption<item 5"], capsys)
    assert sorted(h["id"] for h in out["hits"]) == [1, 2, 4, 10, 11]   # string order: "item 10" < "item 5"


def test_parse_filters_and_weights() -> None:
    assert search_cli.parse_filters([]) is None
    assert search_cli.parse_filters(["a=1", "b=x", 'c="1"', "d=[1, 2]", "e>=2", "e<5", "f!=true"]) == {
        "a": 1, "b": "x", "c": "1", "d": {"in": [1, 2]}, "e": {"gte": 2, "lt": 5}, "f": {"ne": True}}
    with pytest.raises(InvalidInput, match="--filter"):
        search_cli.parse_filters(["novalue"])
    assert search_cli.parse_weights("text=0.5, audio=2") == {"text": 0.5, "audio": 2.0}
    with pytest.raises(InvalidInput, match="--weights"):
        search_cli.parse_weights("text=lots")


def test_search_errors_through_the_dispatcher(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert polymodal_main(["search", "--collection", str(built)]) == 1
    assert "at least one of --text" in capsys.readouterr().err
    assert polymodal_main(["search", "--collection", str(built), "--text", "x"]) == 1
    assert "--model" in capsys.readouterr().err
    assert polymodal_main(["search", "--collection", str(built), "--model", "R", "--video", "nope.npy"]) == 1
    assert "nope.npy" in capsys.readouterr().err
    assert polymodal_main(["search", "--collection", str(built), "--model", "R", "--text", "item 1",
                           "--weights", "audio=1"]) == 1
    assert "weights" in capsys.readouterr().err
    assert polymodal_main(["index", "info", str(built)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 12


def test_search_with_model_and_fuse(built: Path, fake: FakeModel) -> None:
    with Collection.open(built, readonly=True) as coll:
        res = search_with_model(coll, fake, text="item 2", k=1)
        assert res.ids[0, 0] == 2
        with pytest.raises(InvalidInput) as err:
            search_with_model(coll, fake, video=np.zeros((2, 4, 4, 3), np.uint8))
        assert err.value.field == "video"
        with pytest.raises(InvalidInput) as err:
            search_with_model(coll, None, text="item 2")
        assert err.value.field == "model"
    a, b = key_vec(1) * 3, key_vec(2)
    expect = a / np.linalg.norm(a) + 2 * b
    np.testing.assert_allclose(fuse({"x": a, "y": b[None]}, {"y": 2}), expect / np.linalg.norm(expect), rtol=1e-6)
    for bad in ({"x": -1}, {"x": float("nan")}, {"z": 1}, {"x": 0, "y": 0}):
        with pytest.raises(InvalidInput, match="weight"):
            fuse({"x": a, "y": b}, bad)
    with pytest.raises(InvalidInput, match="cancel"):
        fuse({"x": a, "y": -a})


def test_build_stores_media_for_the_service_unless_told_not_to(tmp_path: Path, fake: FakeModel,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image


    with ShardWriter(tmp_path / "shards", shard_size=4) as w:
        samples = make_samples(6)
        for s in samples:
            w.write(s)
    coll = tmp_path / "coll"
    assert cli.main(["build", "--model", "R", "--data", str(tmp_path / "shards"), "--collection", str(coll)]) == 0
    store = MediaStore(coll)
    with Collection.open(coll, readonly=True) as c:
        for i in c.ids().tolist():
            s = next(x for x in samples if x.id == c.get([i]).metadata[0]["sample_id"])
            found = store.find(i, "image")
            assert (found is not None) == (s.image is not None)
            if found is not None:
                with Image.open(found[0]) as im:  # a thumbnail of this item's own image
                    assert im.size[0] <= 256 and im.size[1] <= 256
    other = tmp_path / "plain"
    assert cli.main(["build", "--model", "R", "--data", str(tmp_path / "shards"), "--collection", str(other),
                     "--no-media"]) == 0
    assert not (other / "media").exists()


def test_every_subcommand_and_option_has_help() -> None:
    import argparse

    for parser in (cli._index_parser(), search_cli._search_parser()):
        todo = [parser]
        while todo:
            p = todo.pop()
            assert p.description and p.description.strip(), p.prog
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction):
                    todo += list(action.choices.values())
                    for choice in action._choices_actions:
                        assert choice.help and choice.help.strip(), f"{p.prog} {choice.dest}"
                elif not isinstance(action, argparse._HelpAction):
                    assert action.help and action.help.strip(), f"{p.prog} {action.option_strings or action.dest}"


def test_build_records_the_model_and_search_checks_it(tmp_path: Path, fake: FakeModel,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake.fingerprint = "a" * 64  # type: ignore[attr-defined]
    monkeypatch.setattr(cli, "_open_dataset", lambda path, split: make_samples())
    coll = tmp_path / "coll"
    assert cli.main(["build", "--model", "runs/A", "--data", "D", "--collection", str(coll), "--json"]) == 0
    capsys.readouterr()
    assert polymodal_main(["index", "info", str(coll)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == {"fingerprint": "a" * 64, "name": "runs/A",
                                                            "modalities": ["image"]}
    out = _search(["--collection", str(coll), "--model", "runs/A", "--text", "item 3", "-k", "1"], capsys)
    assert out["hits"][0]["id"] == 3
    other = FakeModel()
    other.fingerprint = "b" * 64  # type: ignore[attr-defined]
    monkeypatch.setattr(search_cli, "load", lambda run, **_: other)
    base = ["search", "--collection", str(coll), "--model", "runs/B", "--text", "item 3", "-k", "1"]
    assert polymodal_main(base) == 1
    err = capsys.readouterr().err
    assert "runs/A" in err and "--allow-model-mismatch" in err and len(err.strip().splitlines()) == 1
    assert polymodal_main([*base, "--allow-model-mismatch", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["hits"][0]["id"] == 3 and "runs/A" in captured.err
    # --append with another model would mix two embedding spaces: refused, nothing written
    monkeypatch.setattr(cli, "load", lambda run, **_: other)
    assert polymodal_main(["index", "build", "--model", "runs/B", "--data", "D", "--collection", str(coll),
                           "--append"]) == 1
    assert "runs/A" in capsys.readouterr().err
    with Collection.open(coll, readonly=True) as c:
        assert len(c) == 12


def test_filter_beyond_int64_is_one_line_not_a_traceback(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert polymodal_main(["search", "--collection", str(built), "--model", "R", "--text", "item 1",
                           "--filter", "label=99999999999999999999"]) == 1
    err = capsys.readouterr().err
    assert "filter.label" in err and "int64" in err and "Traceback" not in err


def test_build_passes_the_runtime_to_the_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[dict[str, Any]] = []
    model = FakeModel()
    monkeypatch.setattr(cli, "load", lambda run, **kw: seen.append({"run": run, **kw}) or model)
    monkeypatch.setattr(cli, "_open_dataset", lambda path, split: make_samples(3))
    assert cli.main(["build", "--model", "EXPORT", "--runtime", "onnx", "--data", "D", "--collection",
                     str(tmp_path / "c"), "--index", "flat", "--json"]) == 0
    assert seen == [{"run": "EXPORT", "runtime": "onnx"}]
