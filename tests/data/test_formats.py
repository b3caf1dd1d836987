"""Round trips, determinism, bad-input handling (raise and skip) and sharding for the three formats
(WebDataset shards, folder, JSONL) through the `open_dataset` front door."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymodal.data.codec import decode_audio, encode_audio
from polymodal.data.formats import (
    ShardWriter,
    open_dataset,
    read_folder,
    read_jsonl,
    read_webdataset,
    write_folder,
    write_jsonl,
)
from polymodal.data.sample import Sample
from polymodal.errors import InvalidInput, NotFound


def write_wds(samples: list[Sample], root: Path) -> Path:
    with ShardWriter(root / "wds", shard_size=4) as w:
        for s in samples:
            w.write(s)
    return root / "wds"


def write_fold(samples: list[Sample], root: Path) -> Path:
    write_folder(samples, root / "folder")
    return root / "folder"


def write_jl(samples: list[Sample], root: Path) -> Path:
    write_jsonl(samples, root / "j" / "data.jsonl")
    return root / "j" / "data.jsonl"


WRITERS: dict[str, Callable[[list[Sample], Path], Path]] = {
    "webdataset": write_wds, "folder": write_fold, "jsonl": write_jl}
READERS = {"webdataset": read_webdataset, "folder": read_folder, "jsonl": read_jsonl}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", WRITERS)
def test_round_trip(fmt: str, tmp_path: Path, tiny_samples: list[Sample], same_sample: Callable) -> None:
    path = WRITERS[fmt](tiny_samples, tmp_path)
    ds = open_dataset(path)
    assert ds.format == fmt and len(ds) == len(tiny_samples) and ds.splits == []
    got = list(ds)
    assert len(got) == len(tiny_samples)
    for a, b in zip(tiny_samples, got, strict=True):
        same_sample(a, b)
    assert "一个红色的圆" in "".join(s.text or "" for s in got)  # Chinese captions survive
    assert [s.id for s in ds] == [s.id for s in got]  # re-iterable
    assert [s.id for s in READERS[fmt](path)] == [s.id for s in got]  # plain reader agrees


@pytest.mark.parametrize("fmt", WRITERS)
def test_same_samples_same_bytes(fmt: str, tmp_path: Path, make_samples: Callable) -> None:
    WRITERS[fmt](make_samples(), tmp_path / "a")
    WRITERS[fmt](make_samples(), tmp_path / "b")
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert a == b and len(a) >= 3
    assert not any(Path(k).name.startswith(".") for k in a)  # no temp files left behind


def test_audio_within_one_lsb() -> None:
    wave = np.random.default_rng(0).uniform(-1, 1, 4000).astype(np.float32)
    back, sr = decode_audio(encode_audio(wave, 16000))
    assert sr == 16000 and np.abs(back - wave).max() <= 1 / 32767


# ------------------------------------------------------------------------------------------ bad input

def _rewrite_tar(path: Path, edit: Callable[[str, bytes], tuple[str, bytes] | None]) -> None:
    """Rewrite a shard, passing each member through ``edit`` (None drops it)."""
    members = []
    with tarfile.open(path) as tar:
        for m in tar:
            f = tar.extractfile(m)
            assert f is not None
            members.append((m.name, f.read()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            new = edit(name, data)
            if new is not None:
                info = tarfile.TarInfo(new[0])
                info.size = len(new[1])
                tar.addfile(info, io.BytesIO(new[1]))
    path.write_bytes(buf.getvalue())


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _add_field(path: Path, lineno: int, key: str) -> None:
    rec = json.loads(path.read_text(encoding="utf-8").splitlines()[lineno - 1])
    _edit_line(path, lineno, json.dumps({**rec, key: 1}))


# (format, breaker(path) -> None, id of the broken sample, text the error must contain, error type)
BREAKS = [
    ("folder", lambda p: (p / "s000.png").write_bytes(b"not a png"), "s000", "s000.png", InvalidInput),
    ("folder", lambda p: (p / "s001.flac").write_bytes(b"fLaC garbage"), "s001", "s001.flac", InvalidInput),
    ("folder", lambda p: (p / "s002.json").write_text('{"metadata": {}, "labels": 1}'), "s002", "'labels'",
     InvalidInput),
    ("folder", lambda p: (p / "s003.json").write_text("{bad"), "s003", "s003.json", InvalidInput),
    ("folder", lambda p: (p / "s002.json").unlink(), "s002", "s002.video.png", InvalidInput),
    ("folder", lambda p: (p / "s004.txt").write_bytes(b"\n"), "s004", "s004.txt", InvalidInput),
    ("jsonl", lambda p: (p.parent / "media/s001.flac").write_bytes(b"garbage"), "s001", "s001.flac", InvalidInput),
    ("jsonl", lambda p: (p.parent / "media/s000.png").unlink(), "s000", "data.jsonl:1", NotFound),
    ("jsonl", lambda p: _truncate(p.parent / "media/s002.video.png"), "s002", "s002.video.png", InvalidInput),
    ("jsonl", lambda p: _add_field(p, 2, "caption"), "s001", "data.jsonl:2: field 'caption'", InvalidInput),
    ("jsonl", lambda p: _edit_line(p, 3, "{oops"), "s002", "data.jsonl:3", InvalidInput),
    ("webdataset", lambda p: _rewrite_tar(p / "000000.tar", lambda n, d: (n, b"x" if n == "s002.png" else d)),
     "s002", "000000.tar:s002", InvalidInput),
    ("webdataset", lambda p: _rewrite_tar(p / "000001.tar", lambda n, d: (n.replace("s005.txt", "s005.caption"), d)),
     "s005", "'caption'", InvalidInput),
]


@pytest.mark.parametrize("fmt,brk,bad_id,needle,err", BREAKS, ids=[f"{b[0]}-{b[3]}" for b in BREAKS])
def test_bad_input_raise_and_skip(fmt: str, brk: Callable, bad_id: str, needle: str, err: type,
                                  tmp_path: Path, tiny_samples: list[Sample]) -> None:
    path = WRITERS[fmt](tiny_samples, tmp_path)
    brk(path)
    with pytest.raises(err) as info:
        list(open_dataset(path))
    assert needle in str(info.value)
    ds = open_dataset(path, on_error="skip")
    got = [s.id for s in ds]
    assert got == [s.id for s in tiny_samples if s.id != bad_id]
    assert len(ds.policy.skipped) == 1 and needle in ds.policy.skipped[0][1]
    assert ds.policy.summary().startswith("skipped 1 item(s):")
    assert [s.id for s in ds] == got and len(ds.policy.skipped) == 1  # a new pass starts a new report


@pytest.mark.parametrize("fmt", WRITERS)
def test_wrong_sample_rate(fmt: str, tmp_path: Path, tiny_samples: list[Sample]) -> None:
    path = WRITERS[fmt](tiny_samples, tmp_path)
    wrong = [s.id for s in tiny_samples if s.sample_rate not in (None, 16000)]
    assert wrong
    with pytest.raises(InvalidInput, match="8000 Hz, expected 16000 Hz") as info:
        list(open_dataset(path, expect_sample_rate=16000))
    assert wrong[0] in str(info.value) and info.value.field == "sample_rate"
    ds = open_dataset(path, on_error="skip", expect_sample_rate=16000)
    assert [s.id for s in ds] == [s.id for s in tiny_samples if s.id not in wrong]
    assert len(ds.policy.skipped) == len(wrong)


@pytest.mark.parametrize("cut", [1100, 1536, 1500])  # inside member data, at a header boundary, inside a header
def test_truncated_shard(cut: int, tmp_path: Path, tiny_samples: list[Sample]) -> None:
    path = write_wds(tiny_samples, tmp_path)
    shard = path / "000000.tar"
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(InvalidInput, match="000000.tar"):
        list(open_dataset(path))
    ds = open_dataset(path, on_error="skip")
    got = [s.id for s in ds]
    assert got[-2:] == ["s004", "s005"] and len(got) < len(tiny_samples)  # the second shard is intact
    assert "000000.tar" in ds.policy.summary()


def test_streaming_is_lazy(tmp_path: Path, tiny_samples: list[Sample]) -> None:
    path = write_jl(tiny_samples, tmp_path)
    _edit_line(path, 6, "{broken")
    it = iter(open_dataset(path))
    assert next(it).id == "s000"  # the bad last line is not read yet
    with pytest.raises(InvalidInput):
        list(it)


def test_skip_summary_lists_first_few(tmp_path: Path, make_samples: Callable) -> None:
    path = write_fold(make_samples(8), tmp_path)
    for i in range(7):
        (path / f"s{i:03d}.json").write_text("[]")
    ds = open_dataset(path, on_error="skip")
    assert [s.id for s in ds] == ["s007"]
    assert ds.policy.summary().startswith("skipped 7 item(s):") and "(+2 more)" in ds.policy.summary()


# ------------------------------------------------------------------------------------------ sharding

@pytest.mark.parametrize("fmt", WRITERS)
def test_iter_shard_partitions(fmt: str, tmp_path: Path, make_samples: Callable) -> None:
    samples = make_samples(7)
    path = WRITERS[fmt](samples, tmp_path)
    ids = [s.id for s in samples]
    ds = open_dataset(path)
    for world in (1, 2, 3, 4, 9):
        parts = [[s.id for s in ds.iter_shard(r, world)] for r in range(world)]
        assert parts == [ids[r::world] for r in range(world)]
    with pytest.raises(InvalidInput):
        ds.iter_shard(2, 2)


def test_iter_shard_with_skips_loses_only_bad(tmp_path: Path, make_samples: Callable) -> None:
    samples = make_samples(7)
    path = write_fold(samples, tmp_path)
    (path / "s003.png").write_bytes(b"junk")
    ds = open_dataset(path, on_error="skip")
    parts = [[s.id for s in ds.iter_shard(r, 3)] for r in range(3)]
    flat = sorted(i for p in parts for i in p)
    assert flat == [s.id for s in samples if s.id != "s003"]


# ------------------------------------------------------------------------------------------ detection

def make_generated(root: Path, samples: list[Sample], counts: bool = True) -> Path:
    """A data set dir shaped like `polymodal.data.synth` output: manifest.json + one shard dir per split."""
    splits = {"train": samples[:4], "val": samples[4:5], "test": samples[5:]}
    for name, part in splits.items():
        write_wds(part, root / name)
        (root / name / "wds").rename(root / f"{name}_shards")
    manifest = {"name": "tiny", "version": 1, "format": "webdataset", "seed": 0, "n": len(samples), "args": {},
                "splits": {k: {"path": f"{k}_shards", **({"count": len(v)} if counts else {})}
                           for k, v in splits.items()},
                "modalities": ["text"], "langs": ["en", "zh"], "labels": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.parametrize("counts", [True, False])
def test_generated_dataset_dir(counts: bool, tmp_path: Path, tiny_samples: list[Sample]) -> None:
    root = make_generated(tmp_path, tiny_samples, counts)
    ds = open_dataset(root)
    assert ds.format == "dataset" and ds.splits == ["train", "val", "test"] and len(ds) == 6
    assert [s.id for s in ds] == [s.id for s in tiny_samples]  # all splits, manifest order
    val = open_dataset(root, split="test")
    assert len(val) == 1 and [s.id for s in val] == ["s005"]
    assert ds.manifest is not None and ds.manifest["name"] == "tiny"
    with pytest.raises(NotFound, match="available: train, val, test"):
        open_dataset(root, split="dev")


def test_detection_errors(tmp_path: Path, tiny_samples: list[Sample]) -> None:
    with pytest.raises(NotFound):
        open_dataset(tmp_path / "nope")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InvalidInput, match=".jsonl"):
        open_dataset(tmp_path / "x.csv")
    folder = write_fold(tiny_samples, tmp_path)
    with pytest.raises(InvalidInput, match="split"):
        open_dataset(folder, split="train")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{nope")
    with pytest.raises(InvalidInput, match="manifest.json"):
        open_dataset(tmp_path / "bad")


def test_wds_without_sizes_and_single_tar(tmp_path: Path, tiny_samples: list[Sample]) -> None:
    path = write_wds(tiny_samples, tmp_path)
    (path / "sizes.json").unlink()
    ds = open_dataset(path)
    assert ds.format == "webdataset" and len(ds) == 6 and len(list(ds)) == 6
    one = open_dataset(path / "000001.tar")
    assert len(one) == 2 and [s.id for s in one] == ["s004", "s005"]


# ------------------------------------------------------------------------------------------ folder / jsonl details

def test_folder_recursive_sorted_and_ignores(tmp_path: Path) -> None:
    img = np.full((3, 4, 3), 7, np.uint8)
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(img).save(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("\ufeffcaption b\n", encoding="utf-8")
    (tmp_path / "a.b.txt").write_text("dotted stem", encoding="utf-8")
    (tmp_path / "sub" / "c.wav").write_bytes(encode_audio(np.zeros(50, np.float32), 8000))
    (tmp_path / "sub" / "deep" / "d.txt").write_text("深", encoding="utf-8")
    (tmp_path / ".hidden" / "e.txt").write_text("hidden")
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / ".f.txt").write_text("hidden")
    got = list(open_dataset(tmp_path))
    assert [s.id for s in got] == ["a_b", "b", "sub__c", "sub__deep__d"]
    assert got[1].text == "caption b" and np.array_equal(got[1].image, img)
    assert got[2].sample_rate == 8000 and got[2].audio is not None and got[3].text == "深"
    assert len(open_dataset(tmp_path)) == 4


def test_folder_two_images_for_one_stem(tmp_path: Path) -> None:
    img = Image.fromarray(np.zeros((2, 2, 3), np.uint8))
    img.save(tmp_path / "a.png")
    img.save(tmp_path / "a.jpg")
    with pytest.raises(InvalidInput, match="two files") as info:
        list(open_dataset(tmp_path))
    assert info.value.field == "image"


def test_jsonl_paths_defaults_and_blank_lines(tmp_path: Path) -> None:
    media = tmp_path / "shared"
    media.mkdir()
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(media / "x.png")
    (tmp_path / "m").mkdir()
    lines = [json.dumps({"image": "../shared/x.png", "text": "上"}), "",
             json.dumps({"id": "abs", "image": str(media / "x.png")}),
             json.dumps({"id": "v", "video": "../shared/x.png"})]
    (tmp_path / "m" / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = open_dataset(tmp_path / "m" / "d.jsonl", on_error="skip")
    assert [s.id for s in ds] == ["line1", "abs"] and len(ds) == 3
    assert ds.policy.skipped[0][0].endswith("d.jsonl:4") and "video_frames" in ds.policy.skipped[0][1]
