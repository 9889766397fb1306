"""``--dry-run`` and the plan every search prints first (issue 21): ASHA's expected
trial-epochs, the model's size, and the estimated time from a few timed windows."""

from __future__ import annotations

import sys

import pytest
from conftest import DATA_DIR, real_data

from search.options import SearchOptions
from search.plan import asha_rungs, expected_epochs, make_plan


def test_asha_rungs_and_expected_epochs():
    assert asha_rungs(1, 10) == [1, 3, 9] and asha_rungs(30, 100) == [30, 90]
    assert asha_rungs(5, 5) == []
    # 1 epoch each, 1/3 go on to 3, 1/9 to 9, 1/27 to 10
    assert expected_epochs(1, 10, True) == pytest.approx(1 + 2 / 3 + 6 / 9 + 1 / 27)
    assert expected_epochs(1, 10, False) == 10 and expected_epochs(5, 5, True) == 5


def test_the_plan_of_a_space(tmp_path):
    opts = SearchOptions(space="smoke", num_samples=9, max_epochs=3, storage=str(tmp_path))
    plan = make_plan(opts, concurrency=2, gpus_per_trial=0.0)
    assert plan.trial_epochs == pytest.approx(9 * (1 + 2 / 3))
    assert plan.params is not None and plan.params > 0 and plan.train_tokens == 20_000
    assert plan.epoch_seconds is None and plan.wall_hours is None
    text = "\n".join(plan.lines())
    assert "9 trials of smoke" in text and "rungs at 1" in text and "about 15 trial-epochs" in text


def test_dry_run_measures_and_starts_nothing(tmp_path, monkeypatch, capsys):
    """The command line in-process: no Ray, no store, no lock, nothing written."""
    from search.run import main

    real_data("ptb")
    monkeypatch.setenv("AWD_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "")  # what main sets, undone
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    monkeypatch.chdir(tmp_path)
    assert main(["--space", "smoke", "--num-samples", "6", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Plan: 6 trials of smoke")
    assert "s an epoch, so about" in lines[2] and " at once" in lines[2]
    assert list(tmp_path.iterdir()) == []  # no store, no results, no lock
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()
