"""`polymodal quickstart` end to end at a tiny scale (text + image + speech, fusion included), then the reuse
logic (a second run redoes nothing but the queries and the report) and `--fresh` (everything again)."""

from __future__ import annotations

import contextlib
import io
import json
from html import escape
from pathlib import Path

import pytest

from polymodal import quickstart
from polymodal.errors import InvalidInput

TINY = ["--n-shapes", "40", "--n-digits", "40", "--minutes", "0.05", "--langs", "en,zh", "--no-progress", "--json"]
CACHED = ["data_shapes", "data_digits", "train", "evaluate", "collection", "fusion_late", "fusion_attention",
          "robustness"]


def _run(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> tuple[dict, str]:
    assert quickstart.main(["--out", str(out), *TINY, *extra]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def _status(summary: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["steps"]}


def _tokens(summary: dict) -> dict[str, str]:
    return {s["name"]: s["token"] for s in summary["steps"]}


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("qs") / "quickstart"
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        assert quickstart.main(["--out", str(out), *TINY]) == 0
    return out, json.loads(so.getvalue()), se.getvalue()


def test_first_run_writes_the_report(first):
    out, summary, err = first
    assert set(_status(summary)) == {*CACHED, "queries", "report"}
    assert set(_status(summary).values()) == {"ran"}
    # one progress line per step on stderr
    assert [line for line in err.splitlines() if line.startswith("[quickstart ")] != []
    assert sum(line.startswith("[quickstart ") for line in err.splitlines()) == 10
    report = Path(summary["report"])
    assert report == out / "report.html" and report.is_file()
    doc = report.read_text(encoding="utf-8")
    assert doc.count("<svg") >= 4 and "<audio" in doc and "data:image/png;base64," in doc
    assert len(summary["queries"]) >= 6
    for q in summary["queries"]:
        assert escape(q["title"]) in doc
        if q["text"]:
            assert escape(q["text"]) in doc
        assert q["hits"]
    assert any("中文" in q["title"] and q["text"] for q in summary["queries"])  # a Chinese caption query
    kinds = {q["kind"] for q in summary["queries"]}
    assert kinds == {"text", "speech", "fused"}
    dirs = summary["retrieval"]["directions"]
    assert {"text->image", "image->text", "audio->image", "image->audio", "text->audio", "audio->text"} <= set(dirs)
    assert set(summary["robustness"]["models"]) == {"late", "attention"}
    assert summary["serve_command"] == (f"polymodal serve --model {out / 'runs' / 'audioclip'} "
                                        f"--collection {out / 'collection'}")
    for name in CACHED:
        assert (out / "steps" / f"{name}.json").is_file()


def test_second_run_reuses_every_finished_step(first, capsys):
    out, summary, _ = first
    model = out / "runs" / "audioclip" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    again, err = _run(capsys, out)
    status = _status(again)
    assert {n: status[n] for n in CACHED} == dict.fromkeys(CACHED, "reused")
    assert status["queries"] == status["report"] == "ran"
    assert {n: _tokens(again)[n] for n in CACHED} == {n: _tokens(summary)[n] for n in CACHED}
    assert "train audioclip_tiny (0.05 min): reused" in err
    assert model.stat().st_mtime_ns == stamp  # the run was not touched
    assert again["retrieval"] == summary["retrieval"]
    assert [q["hits"] for q in again["queries"]] == [q["hits"] for q in summary["queries"]]


def test_interrupted_training_resumes_from_its_checkpoint(first, capsys):
    out, summary, _ = first
    (out / "steps" / "train.json").unlink()  # as if killed after the last checkpoint, before the marker
    again, _ = _run(capsys, out)
    status = _status(again)
    assert status["train"] == "ran" and again["training"]["resumed"] is True
    assert again["training"]["step"] == summary["training"]["step"]  # the budget was already spent
    assert status["data_shapes"] == status["fusion_late"] == "reused"
    assert status["evaluate"] == status["collection"] == "ran"  # built on a new train token


def test_changed_parameters_redo_the_step_and_what_depends_on_it(first, capsys):
    out, summary, _ = first
    changed, _ = _run(capsys, out, "--no-fusion", "--minutes", "0.04")
    status = _status(changed)
    assert status["data_shapes"] == "reused"
    assert status["train"] == status["evaluate"] == status["collection"] == "ran"
    assert "fusion_late" not in status
    assert _tokens(changed)["train"] != _tokens(summary)["train"]


def test_fresh_redoes_everything(first, capsys):
    out, summary, _ = first
    fresh, _ = _run(capsys, out, "--no-fusion", "--fresh")
    assert set(_status(fresh).values()) == {"ran"}
    assert _tokens(fresh)["data_shapes"] != _tokens(summary)["data_shapes"]
    assert Path(fresh["report"]).is_file()


def test_steps_rerun_on_changed_params_or_missing_output(tmp_path):
    calls = []

    def work(tag):
        return lambda: calls.append(tag) or {"tag": tag}

    steps = quickstart.Steps(tmp_path, fresh=False, total=9)
    a = steps.run("a", "a", {"n": 1, "t": (1, 2)}, work(1))
    assert steps.run("a", "a", {"n": 1, "t": [1, 2]}, work(2))["token"] == a["token"]  # tuples == lists
    assert steps.run("a", "a", {"n": 2, "t": [1, 2]}, work(3))["result"] == {"tag": 3}
    assert steps.run("a", "a", {"n": 2, "t": [1, 2]}, work(4), done=lambda: False)["result"] == {"tag": 4}
    assert quickstart.Steps(tmp_path, fresh=True, total=1).run("a", "a", {"n": 2, "t": [1, 2]}, work(5))["result"] \
        == {"tag": 5}
    assert calls == [1, 3, 4, 5]
    assert [s["status"] for s in steps.log] == ["ran", "reused", "ran", "ran"]


@pytest.mark.parametrize("argv, field", [(["--minutes", "0"], "--minutes"), (["--n-shapes", "5"], "--n-shapes"),
                                         (["--langs", "fr"], "--langs")])
def test_bad_arguments(tmp_path, argv, field):
    with pytest.raises(InvalidInput) as err:
        quickstart.main(["--out", str(tmp_path / "q"), *argv])
    assert err.value.field == field
