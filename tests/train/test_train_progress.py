"""The progress bar of a time-budget run (train --minutes without a step count): a total (the budget), the
elapsed time against it, the percentage and an ETA. The clock is handed in, so nothing here is timed."""

from __future__ import annotations

import pytest

from polymodal.train.monitor import Progress


def _frames(err: str) -> list[str]:
    return [f.strip() for f in err.replace("\r", "\n").splitlines() if f.strip()]


def test_time_budget_bar_has_total_percent_and_eta(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress(total=None, initial=0, enabled=True, budget_s=600.0)
    bar.update(0.75, 8, elapsed=150.0)
    frame = _frames(capsys.readouterr().err)[-1]
    assert "25%" in frame and "02:30/10:00" in frame and "ETA 07:30" in frame
    assert "step 1" in frame and "loss 0.7500" in frame
    bar.update(0.5, 16, elapsed=450.0)
    frame = _frames(capsys.readouterr().err)[-1]
    assert "75%" in frame and "07:30/10:00" in frame and "ETA 02:30" in frame and "step 2" in frame
    bar.update(0.25, 24, elapsed=700.0)  # past the budget (the run stops at the next check): capped
    bar.close()
    frame = _frames(capsys.readouterr().err)[-1]
    assert "100%" in frame and "10:00/10:00" in frame and "ETA 00:00" in frame


def test_resumed_time_budget_bar_starts_at_the_time_already_spent(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress(total=None, initial=5, enabled=True, budget_s=120.0, elapsed=60.0)
    bar.update(1.0, 48, elapsed=90.0)
    frame = _frames(capsys.readouterr().err)[-1]
    assert "75%" in frame and "01:30/02:00" in frame and "ETA 00:30" in frame and "step 6" in frame
    bar.close()


def test_step_bar_unchanged_without_a_budget(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress(total=10, initial=0, enabled=True)
    bar.update(0.5, 8)
    bar.close()
    frame = _frames(capsys.readouterr().err)[-1]
    assert "1/10" in frame and "10%" in frame
