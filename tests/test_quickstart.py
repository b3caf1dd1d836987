"""`polymodal quickstart` end to end at a tiny scale (text + image + speech, fusion included), then the reuse
logic (a second run redoes nothing but the queries and the report) and `--fresh` (everything again).

One real first run is shared by the module; every test that reruns starts from that run's output restored as it
was, so the tests pass alone, in any order, and never see what another test did."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from html import escape
from pathlib import Path

import pytest

from polymodal.commands import quickstart
from polymodal.errors import InvalidInput

BUDGET = ["--steps", "3", "--fusion-steps", "2", "--generation-steps", "2"]
TINY = ["--n-shapes", "40", "--n-digits", "40", *BUDGET, "--langs", "en,zh", "--no-progress", "--json"]
CACHED = ["data_shapes", "data_digits", "train", "evaluate", "collection", "fusion_late", "fusion_attention",
          "robustness", "gen_caption", "gen_vqa", "gen_asr"]


def _run(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> tuple[dict, str]:
    assert quickstart.main(["--out", str(out), *TINY, *extra]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def _status(summary: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["steps"]}


def _tokens(summary: dict) -> dict[str, str]:
    return {s["name"]: s["token"] for s in summary["steps"]}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, str]:
    """The one real first run of the module, made by whichever test needs it first: (output dir, an untouched
    copy of it, the JSON summary, stderr)."""
    out = tmp_path_factory.mktemp("qs") / "quickstart"
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        assert quickstart.main(["--out", str(out), *TINY]) == 0
    pristine = tmp_path_factory.mktemp("qs_pristine") / "quickstart"
    shutil.copytree(out, pristine, symlinks=True)  # copy2: file times kept, which the reuse checks compare
    return out, pristine, json.loads(so.getvalue()), se.getvalue()


@pytest.fixture
def first(first_run: tuple[Path, Path, dict, str]) -> tuple[Path, dict, str]:
    """The output dir exactly as the first run left it, whatever earlier tests did to it. Restored in place,
    not copied elsewhere: the run's files record absolute paths."""
    out, pristine, summary, err = first_run
    shutil.rmtree(out)
    shutil.copytree(pristine, out, symlinks=True)
    return out, summary, err


def test_first_run_writes_the_report(first):
    out, summary, err = first
    assert set(_status(summary)) == {*CACHED, "queries", "generation", "report"}
    assert set(_status(summary).values()) == {"ran"}
    # one progress line per step on stderr
    assert [line for line in err.splitlines() if line.startswith("[quickstart ")] != []
    assert sum(line.startswith("[quickstart ") for line in err.splitlines()) == 14
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
    assert shlex.split(summary["serve_command"]) == [*quickstart.polymodal_command(), "serve", "--model",
                                                     str(out / "runs" / "audioclip"), "--collection",
                                                     str(out / "collection")]
    for name in CACHED:
        assert (out / "steps" / f"{name}.json").is_file()
    # fixed step budgets, announced up front; the steps actually trained and the wall times in the summary
    assert ("quickstart plan: audioclip_tiny 3 steps, fusion_late 2 steps, fusion_attention 2 steps, gen_caption 2 "
            "steps, gen_vqa 2 steps, gen_asr 2 steps (fixed") in err
    trained = summary["trained"]
    assert {k: (t["budget"], t["steps"], t["stopped_by"]) for k, t in trained.items()} == {
        "train": ({"steps": 3}, 3, "steps"), "fusion_late": ({"steps": 2}, 2, "steps"),
        "fusion_attention": ({"steps": 2}, 2, "steps"), **{f"gen_{k}": ({"steps": 2}, 2, "steps")
                                                           for k in ("caption", "vqa", "asr")}}
    assert all(0 < t["train_s"] <= t["wall_s"] for t in trained.values())
    assert summary["training"]["step"] == 3 and json.loads((out / "summary.json").read_text())["trained"] == trained
    assert "audioclip_tiny 3 steps -&gt; 3 steps in" in doc  # the report's budget line
    # the generation section: captions of test images, answers marked, transcripts with their error rate
    gen = doc.split("<h2>Generation</h2>", 1)[1]
    assert "Captions of test images" in gen and "Questions about test images" in gen and "<audio" in gen
    assert ("&#10003;" in gen or "&#10007;" in gen) and ("WER" in gen or "CER" in gen)
    assert set(summary["generation"]) >= {"VQA accuracy", "test samples scored"}
    # the step table lists every step, the report itself included, in order, with its time
    steps_table = doc.split("<h2>Steps</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td class='num'>([^<]*)</td></tr>", steps_table)
    assert [name for name, _, _ in rows] == [s["name"] for s in summary["steps"]] and rows[-1][0] == "report"
    assert rows[-1][1] == "ran" and float(rows[-1][2]) >= 0


def test_the_printed_serve_command_runs_without_polymodal_on_path(first):
    """`make demo` never activates the venv: the printed command must name the executable it ran with."""
    out, summary, _ = first
    words = shlex.split(summary["serve_command"])
    i = words.index("serve")
    assert words[i + 1:] == ["--model", str(out / "runs" / "audioclip"), "--collection", str(out / "collection")]
    path = os.pathsep.join(p for p in ("/usr/bin", "/bin") if Path(p).is_dir())
    assert shutil.which("polymodal", path=path) is None
    env = {**os.environ, "PATH": path}
    proc = subprocess.run([*words[:i], "serve", "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage: polymodal serve" in proc.stdout, proc.stderr[-2000:]
    assert words[:i] in ([str(Path(sys.executable).parent / "polymodal")],  # absolute, or relative to the cwd
                         [os.path.relpath(Path(sys.executable).parent / "polymodal")])


def test_second_run_reuses_every_finished_step(first, capsys):
    out, summary, _ = first
    model = out / "runs" / "audioclip" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    again, err = _run(capsys, out)
    status = _status(again)
    assert {n: status[n] for n in CACHED} == dict.fromkeys(CACHED, "reused")
    assert status["queries"] == status["report"] == "ran"
    assert {n: _tokens(again)[n] for n in CACHED} == {n: _tokens(summary)[n] for n in CACHED}
    assert "train audioclip_tiny (3 steps): reused" in err
    assert again["trained"] == summary["trained"]  # a reused step reports the run that made it
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
    changed, _ = _run(capsys, out, "--no-fusion", "--steps", "2")  # the last --steps wins
    status = _status(changed)
    assert status["data_shapes"] == "reused"
    assert status["train"] == status["evaluate"] == status["collection"] == "ran"
    assert "fusion_late" not in status
    assert _tokens(changed)["train"] != _tokens(summary)["train"]
    assert changed["trained"]["train"]["steps"] == changed["training"]["step"] == 2


def test_minutes_is_a_wall_clock_budget_instead_of_steps(first, capsys):
    out, summary, _ = first
    argv = [a for a in TINY if a not in BUDGET]
    assert quickstart.main(["--out", str(out), *argv, "--no-fusion", "--no-generation", "--minutes", "0.01"]) == 0
    timed = json.loads(capsys.readouterr().out)
    assert _status(timed)["train"] == "ran" and _tokens(timed)["train"] != _tokens(summary)["train"]
    assert timed["trained"]["train"]["budget"] == {"minutes": 0.01}
    assert timed["trained"]["train"]["stopped_by"] == "minutes" and timed["trained"]["train"]["steps"] >= 1
    with pytest.raises(SystemExit):  # one budget or the other
        quickstart.main(["--out", str(out), "--steps", "3", "--minutes", "1"])


def test_training_bar_estimates_the_time_left(capsys):
    from polymodal.train.monitor import Progress, format_duration

    bar = Progress(total=40, initial=0, enabled=True)
    for i in range(1 + Progress.ESTIMATE_STEPS):
        bar.update(1.0, 8 * (i + 1))
    bar.close()
    err = capsys.readouterr().err
    assert bar.estimate is not None and bar.estimate in err
    assert f"(steps 2-{1 + Progress.ESTIMATE_STEPS}): about " in err and "on this machine for the 34 steps left" in err
    assert "<" in err  # tqdm's bar shows the time left
    assert Progress(total=None, initial=0, enabled=False).estimate is None
    quiet = Progress(total=40, initial=0, enabled=False, announce=True)  # --no-progress: the line still comes
    for i in range(1 + Progress.ESTIMATE_STEPS):
        quiet.update(1.0, 8 * (i + 1))
    err = capsys.readouterr().err
    assert quiet.estimate is not None and err.strip() == quiet.estimate
    silent = Progress(total=40, initial=0, enabled=False, announce=False)  # other ranks of a DDP run say nothing
    for i in range(1 + Progress.ESTIMATE_STEPS):
        silent.update(1.0, 8 * (i + 1))
    assert capsys.readouterr().err == "" and silent.estimate is None
    assert [format_duration(s) for s in (42, 480, 3900)] == ["42 s", "8 min", "1 h 05 min"]


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


@pytest.mark.parametrize("argv, field", [(["--minutes", "0"], "--minutes"), (["--steps", "0"], "--steps"),
                                         (["--fusion-steps", "0"], "--fusion-steps"),
                                         (["--n-shapes", "5"], "--n-shapes"), (["--langs", "fr"], "--langs")])
def test_bad_arguments(tmp_path, argv, field):
    with pytest.raises(InvalidInput) as err:
        quickstart.main(["--out", str(tmp_path / "q"), *argv])
    assert err.value.field == field
