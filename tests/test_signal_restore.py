"""A signal while `--resume` restores a search (issue 22): before Ray starts, and while the driver
verifies and restores the saved state (the parent run is RUNNING again), SIGINT and SIGTERM end
the driver within seconds with the shell's status (130, 143), one line and no traceback; the
parent goes back to what it was, and a last `--resume` finishes every trial, every epoch once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA_DIR, real_data, tune_rows
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from processes import kill_tree, tail

from search import schema

pytestmark = pytest.mark.slow

TRIALS = 2


def _search(root: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "search.run", "--space", "smoke", "--num-samples",
            str(TRIALS), "--max-epochs", "2", "--concurrency", "1", "--scheduler", "none",
            "--seed", "5", "--storage", str(root / "rr"), "--experiment", "sig",
            "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", *more]


def _parent(client: MlflowClient) -> Run:
    exp = client.get_experiment_by_name("sig")
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`{schema.ROLE}` = '{schema.ROLE_SEARCH}'")
    assert len(runs) == 1
    return runs[0]


def _stopped_when(root: Path, env: dict[str, str], ready, signum: int, log: Path) -> tuple[
        int, float]:
    """Start ``--resume``, wait for ``ready(seconds since)``, send ``signum``: (exit status,
    seconds it took to end)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(_search(root, "--resume"), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        began = time.time()
        deadline = began + 120
        while not ready(time.time() - began):
            assert proc.poll() is None, tail(log)
            assert time.time() < deadline, tail(log)
            time.sleep(0.05)
        sent = time.time()
        os.kill(proc.pid, signum)
        code = proc.wait(timeout=30)
        return code, time.time() - sent
    finally:
        kill_tree(proc.pid)


def test_a_signal_during_restore_ends_the_driver_in_seconds(tmp_path):
    real_data("ptb")
    env = {**os.environ, "AWD_DATA_DIR": str(DATA_DIR),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_dir = tmp_path / "rr" / "sig"
    first = tmp_path / "first.log"
    with open(first, "w") as out:
        proc = subprocess.Popen(_search(tmp_path), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while not any(tune_rows(exp_dir).values()):
        assert proc.poll() is None and time.time() < deadline, tail(first)
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, tail(first)
    assert "Tuner.restore(" not in first.read_text()  # Ray's advice: the search prints its own
    assert _parent(client).info.status == "KILLED"

    log = tmp_path / "resume.log"
    # SIGINT before Ray starts; SIGTERM once the parent is RUNNING again (state being restored)
    for signum, ready in [
            (signal.SIGINT, lambda elapsed: elapsed > 1.0),
            (signal.SIGTERM, lambda elapsed: _parent(client).info.status == "RUNNING")]:
        code, took = _stopped_when(tmp_path, env, ready, signum, log)
        printed = log.read_text()
        assert code == 128 + signum, printed[-3000:]
        assert took < 15, (took, printed[-3000:])
        assert "Traceback" not in printed, printed[-3000:]
        stops = [line for line in printed.splitlines() if line.startswith("Search stopped by")]
        assert len(stops) == 1 and signal.Signals(signum).name in stops[0], printed[-3000:]
        assert "--resume" in printed
        assert _parent(client).info.status == "KILLED", printed[-3000:]

    done = subprocess.run(_search(tmp_path, "--resume"), env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Restored on" not in done.stdout + done.stderr  # a worker's line per trial, quiet
    parent = _parent(client)
    assert parent.info.status == "FINISHED"
    trials = client.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.`{schema.ROLE}` = '{schema.ROLE_TRIAL}'")
    assert len(trials) == TRIALS
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, schema.VAL_PPL)]
        assert sorted(steps) == [1, 2], steps
