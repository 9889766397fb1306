"""``python -m search.watch``: every epoch of every trial once, trials started later included,
files that Ray rewrites printed nothing twice, the end of the search ends it (issue 21)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from search.lock import DriverLock
from search.watch import driver_running, watch


def row(trial: str, epoch: int, **extra) -> str:
    return json.dumps({"trial_id": trial, "epoch": epoch, "train_ppl": 900.0 - epoch,
                       "val_ppl": 800.0 - epoch, "best_val_ppl": 800.0 - epoch, "lr": 10.0,
                       "epoch_seconds": 1.5, **extra}) + "\n"


def test_follows_new_epochs_late_trials_and_rewritten_files(tmp_path):
    exp = tmp_path / "exp"
    (exp / "trial_a").mkdir(parents=True)
    a = exp / "trial_a" / "result.json"
    a.write_text(row("a", 1) + row("a", 2))
    steps = []

    def script() -> bool:  # runs before each read: the search going on
        steps.append(None)
        n = len(steps)
        if n == 2:
            with a.open("a") as f:
                f.write(row("a", 3) + '{"trial_id": "a", "epo')  # a line half written
        if n == 3:
            (exp / "trial_b").mkdir()
            (exp / "trial_b" / "result.json").write_text(row("b", 1))
            with a.open("a") as f:
                f.write('ch": 4, "val_ppl": 1.0}\n')  # its end arrives
        if n == 4:  # a sync rewrites a's file from the start, shorter
            a.write_text(row("a", 1) + row("a", 2) + row("a", 3))
        if n == 5:
            with a.open("a") as f:
                f.write(row("a", 5, finished=True, final_val_ppl=790.0, final_test_ppl=780.0))
        return n >= 6

    out = io.StringIO()
    printed = watch(exp, out, interval=0.0, stop=script)
    lines = out.getvalue().splitlines()
    seen = [(x.split()[0], int(x.split()[2])) for x in lines]
    assert seen == [("trial_a", 1), ("trial_a", 2), ("trial_a", 3), ("trial_a", 4),
                    ("trial_b", 1), ("trial_a", 5)]
    assert printed == 6
    assert "done: final val 790.00, test 780.00" in lines[-1]
    assert "val ppl   799.00" in lines[0]


def test_the_end_of_the_search_ends_the_watch(tmp_path):
    exp = tmp_path / "exp"
    (exp / "t").mkdir(parents=True)
    (exp / "t" / "result.json").write_text(row("t", 1))
    assert not driver_running(exp)
    with DriverLock(str(exp)):
        assert driver_running(exp)
    out = io.StringIO()
    assert watch(exp, out, interval=0.0) == 1  # no driver: prints what is there, ends


def test_the_command_line(tmp_path):
    exp = tmp_path / "rr" / "exp"
    (exp / "t").mkdir(parents=True)
    (exp / "t" / "result.json").write_text(row("t", 1) + row("t", 2))
    run = [sys.executable, "-m", "search.watch"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([*run, "exp", "--storage", str(tmp_path / "rr"), "--once"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2
    missing = subprocess.run([*run, "nope", "--storage", str(tmp_path / "rr")],
                             capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode == 2 and "error: no search at" in missing.stderr
