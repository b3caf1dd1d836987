"""Targets through every format: exact round trip (Chinese included), nothing written when a sample has none,
a bad value names its field (``targets.qa[2].answer``) and its file, `data convert` keeps them, and
`data inspect` counts them per split and per question type."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from polymodal.commands.data import main
from polymodal.data.formats import ShardWriter, open_dataset, write_folder, write_jsonl
from polymodal.data.inspect import format_summary, inspect_dataset
from polymodal.data.sample import Sample
from polymodal.data.targets import QA, Caption, Conversation, Targets, Transcript, Turn
from polymodal.errors import InvalidInput


def rich_targets(i: int) -> Targets:
    """Every kind of target, English and Chinese, varying with ``i`` so samples differ."""
    qa = [QA("what color is the star?", "red", "color", "en", "image"),
          QA("星形是什么颜色？", "红色", "color", "zh", "image"),
          QA("how many shapes are there?", str(1 + i % 2), "count", "en", "image", ("2", "two", "2")),
          QA("which way does the green cross move?", "left", "motion", "en", "video")]
    return Targets(
        captions=(Caption(f"A red star {i}.", "en", "image"), Caption("红色的小星形。", "zh", "image"),
                  Caption("The red star moves left.", "en", "video")),
        qa=tuple(qa[: 1 + i % 4]),
        transcript=Transcript("红色的小星形。" if i % 2 else "a red star", "zh" if i % 2 else "en"),
        dialog=(Turn("user", "这是什么？"), Turn("assistant", "a star")) if i % 3 == 0 else (),
        conversations=(Conversation("zh", (Turn("system", "简短回答。"), Turn("user", "图中有几个星形？"),
                                           Turn("assistant", "图中有1个星形。", skill="count", answer="1",
                                                template="count/0")), spoken=True),
                       Conversation("en", (Turn("user", "Is there a red star in the image?"),
                                           Turn("assistant", "Yes.", skill="pope", answer="yes",
                                                template="pope/random")), kind="pope")) if i % 4 == 0 else ())


def with_targets(samples: list[Sample]) -> list[Sample]:
    """Every other sample gets targets; the rest keep none (both must survive)."""
    return [s.replace(targets=rich_targets(i)) if i % 2 == 0 else s for i, s in enumerate(samples)]


def write(fmt: str, samples: list[Sample], root: Path) -> Path:
    if fmt == "jsonl":
        write_jsonl(samples, root / "d.jsonl")
        return root / "d.jsonl"
    if fmt == "folder":
        write_folder(samples, root / "f")
        return root / "f"
    with ShardWriter(root / "w", shard_size=4) as w:
        for s in samples:
            w.write(s)
    return root / "w"


FORMATS = ("webdataset", "folder", "jsonl")


@pytest.mark.parametrize("fmt", FORMATS)
def test_targets_round_trip_exactly(fmt: str, tmp_path: Path, tiny_samples: list[Sample],
                                    same_sample: Callable) -> None:
    samples = with_targets(tiny_samples)
    assert sum(bool(s.targets) for s in samples) == 3
    got = list(open_dataset(write(fmt, samples, tmp_path)))
    for a, b in zip(samples, got, strict=True):
        same_sample(a, b)
        assert b.targets == a.targets, a.id
    assert any(c.text == "红色的小星形。" for s in got for c in s.targets.captions)
    assert got[0].targets.qa[0].answers == () and got[2].targets.qa[2].answers == ("2", "two", "2")


def test_nothing_is_written_for_a_sample_without_targets(tmp_path: Path) -> None:
    plain = Sample(id="p", text="only text")
    write_jsonl([plain], tmp_path / "d.jsonl")
    assert "targets" not in json.loads((tmp_path / "d.jsonl").read_text("utf-8"))
    write_folder([plain], tmp_path / "f")
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["p.txt"]  # no sidecar for nothing
    write_folder([Sample(id="q", text="x", targets=rich_targets(1))], tmp_path / "g")
    assert json.loads((tmp_path / "g" / "q.json").read_text("utf-8")) == {
        "metadata": {}, "targets": rich_targets(1).to_dict()}
    with ShardWriter(tmp_path / "w") as w:
        w.write(plain)
    with tarfile.open(tmp_path / "w" / "000000.tar") as tar:
        member = tar.extractfile("p.json")
        assert member is not None and "targets" not in json.loads(member.read())


def bad_targets() -> dict:
    t = rich_targets(3).to_dict()
    t["qa"][2]["answer"] = ""
    return t


def test_bad_targets_in_jsonl_name_field_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [{"id": "a", "text": "ok", "targets": rich_targets(0).to_dict()},
             {"id": "b", "text": "bad", "targets": bad_targets()}]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", "utf-8")
    with pytest.raises(InvalidInput) as err:
        list(open_dataset(path))
    assert err.value.field == "targets.qa[2].answer" and f"{path}:2" in str(err.value)
    path.write_text(json.dumps({"id": "c", "text": "x", "targets": {"captions": "a red star"}}) + "\n", "utf-8")
    with pytest.raises(InvalidInput, match="list") as err:
        list(open_dataset(path))
    assert err.value.field == "targets.captions"


def test_bad_targets_in_folder_name_field_and_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a caption", "utf-8")
    (tmp_path / "a.json").write_text(json.dumps({"targets": bad_targets()}), "utf-8")
    with pytest.raises(InvalidInput) as err:
        list(open_dataset(tmp_path))
    assert err.value.field == "targets.qa[2].answer" and "a.json" in str(err.value)
    (tmp_path / "a.json").write_text(json.dumps({"targets": {"transcript": {"text": "x", "lang": 3}}}), "utf-8")
    with pytest.raises(InvalidInput) as err:
        list(open_dataset(tmp_path))
    assert err.value.field == "targets.transcript.lang" and "a.json" in str(err.value)


def test_bad_targets_in_a_shard_name_field_and_member(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("k1.txt", b"caption"),
                           ("k1.json", json.dumps({"metadata": {}, "targets": bad_targets()}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (root / "000000.tar").write_bytes(buf.getvalue())
    with pytest.raises(InvalidInput) as err:
        list(open_dataset(root))
    assert err.value.field == "targets.qa[2].answer" and "000000.tar:k1" in str(err.value)
    ds = open_dataset(root, on_error="skip")
    assert list(ds) == [] and "targets.qa[2].answer" in ds.policy.skipped[0][1]


@pytest.mark.parametrize("to", FORMATS)
def test_convert_keeps_targets(to: str, tmp_path: Path, tiny_samples: list[Sample],
                               capsys: pytest.CaptureFixture[str]) -> None:
    samples = with_targets(tiny_samples)
    src = write("jsonl", samples, tmp_path / "src")
    dest = tmp_path / ("out.jsonl" if to == "jsonl" else "out")
    assert main(["convert", str(src), "--to", to, "--out", str(dest)]) == 0
    capsys.readouterr()
    assert [s.targets for s in open_dataset(dest)] == [s.targets for s in samples]


def expected_counts(samples: list[Sample]) -> dict:
    """The inspect target counts, computed plainly from the samples."""
    return {"samples": sum(bool(s.targets) for s in samples),
            "captions": sum(len(s.targets.captions) for s in samples),
            "qa": sum(len(s.targets.qa) for s in samples),
            "transcripts": sum(s.targets.transcript is not None for s in samples),
            "dialog_turns": sum(len(s.targets.dialog) for s in samples),
            "qa_types": dict(sorted(Counter(q.type for s in samples for q in s.targets.qa).items())),
            "conversations": sum(len(s.targets.conversations) for s in samples),
            "conversation_skills": dict(sorted(Counter(t.skill for s in samples for c in s.targets.conversations
                                                       for t in c.turns if t.role == "assistant" and t.skill
                                                       ).items()))}


def test_inspect_counts_targets_per_split_and_type(tmp_path: Path, tiny_samples: list[Sample],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    samples = with_targets(tiny_samples)
    samples = [s.replace(metadata={**s.metadata, "split": "val" if i >= 4 else "train"})
               for i, s in enumerate(samples)]
    path = write("webdataset", samples, tmp_path)
    assert main(["inspect", str(path), "--json", "--no-progress"]) == 0
    got = json.loads(capsys.readouterr().out)["targets"]
    assert got["total"] == expected_counts(samples)
    assert got["total"]["qa_types"] == {"color": 4, "count": 1} and got["total"]["dialog_turns"] == 2
    assert got["splits"] == {"train": expected_counts(samples[:4]), "val": expected_counts(samples[4:])}
    assert main(["inspect", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    total = got["total"]
    assert (f"targets:    captions {total['captions']}, qa {total['qa']} (color 4, count 1), "
            f"transcripts {total['transcripts']}, dialog turns 2") in out
    assert "  train:" in out and "  val:" in out


def test_inspect_without_targets_says_none(tmp_path: Path, tiny_samples: list[Sample]) -> None:
    info = inspect_dataset(open_dataset(write("folder", tiny_samples, tmp_path)), progress=False)
    assert info["targets"]["total"]["captions"] == 0 and info["targets"]["total"]["qa_types"] == {}
    assert "targets:    -" in format_summary(info)
    assert np.array_equal(next(iter(open_dataset(tmp_path / "f"))).image, tiny_samples[0].image)
