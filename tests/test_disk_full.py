"""A disk that fills while a search runs (issue 22): the search's storage, or the MLflow store's
folder, on a small tmpfs that another process fills to the last byte mid-search. The search
stops in one line (which folder, how much it has and needs) with exit 74 and no traceback, its
parent KILLED and partial (or, when the store itself is full, left for --resume to close),
nothing reported lost; once the space is freed, --resume finishes every trial, every epoch
once. Needs root (``mount -t tmpfs``); skipped with the reason elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DATA_DIR, real_data, tune_rows
from mlflow.tracking import MlflowClient

from search import schema
from search.diskspace import MB
from search.run import EXIT_NO_SPACE

pytestmark = pytest.mark.slow

DISK_MB = 96
KEEP_FREE_MB = 32  # AWDSEARCH_MIN_FREE_MB in these searches
TRIALS = 2


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    real_data("ptb")
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"a small file system needs mount (root): {made.stderr.strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _search(cwd: Path, storage: Path, store: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "search.run", "--space", "smoke", "--num-samples",
            str(TRIALS), "--max-epochs", "2", "--concurrency", "1", "--scheduler", "none",
            "--seed", "3", "--storage", str(storage), "--experiment", "full",
            "--tracking-uri", f"sqlite:///{store}", "--best-config", str(cwd / "best.json"),
            *more]


def _fill(disk: Path) -> Path:
    """Another process's file that takes the disk's last byte (`benchmarks.faults.fill`, the
    fault table's own)."""
    from benchmarks.faults import fill

    ballast = fill(disk)
    assert shutil.disk_usage(disk).free < MB
    return ballast


@pytest.mark.parametrize("full", ["storage", "store"])
def test_a_disk_that_fills_stops_the_search_honestly_and_resume_finishes_it(
        tmp_path, small_disk, full):
    storage = (small_disk if full == "storage" else tmp_path) / "rr"
    store = (small_disk if full == "store" else tmp_path) / "mlflow.db"
    env = {**os.environ, "AWD_DATA_DIR": str(DATA_DIR), "AWDSEARCH_MIN_FREE_MB": str(KEEP_FREE_MB)}
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_search(tmp_path, storage, store), cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    exp_dir = storage / "full"
    deadline = time.time() + 300
    while not any(len(r) >= 1 for r in tune_rows(exp_dir).values()):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    ballast = _fill(small_disk)
    assert proc.wait(timeout=180) == EXIT_NO_SPACE, log.read_text()[-3000:]
    printed = log.read_text()
    assert "Traceback" not in printed, printed[-3000:]
    what = "the search's storage" if full == "storage" else "the MLflow store's folder"
    errors = [line for line in printed.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: no space left for the search: {what} {small_disk}"), printed[-3000:]
    assert "--resume" in printed

    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name("full")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH)
    children = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_TRIAL]
    if full == "storage":
        assert parent.info.status == "KILLED" and parent.data.tags[schema.PARTIAL] == "true"
        assert all(c.info.status != "RUNNING" for c in children)
    else:  # a full store may take no more writes (SQLite's free pages can still hold some)
        assert parent.info.status != "FINISHED"
        assert parent.info.status == "KILLED" or "--resume closes it" in printed \
            or "they are written, and the summary too, by --resume" in printed, printed[-3000:]
    reported = {c.data.tags[schema.TRIAL_ID]: len(client.get_metric_history(c.info.run_id,
                                                                            schema.VAL_PPL))
                for c in children}
    assert sum(reported.values()) >= 1  # what was reported before the stop is kept

    ballast.unlink()
    done = subprocess.run(_search(tmp_path, storage, store, "--resume"), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH)
    assert parent.info.status == "FINISHED" and parent.data.tags[schema.PARTIAL] == "false"
    children = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_TRIAL]
    assert len(children) == TRIALS
    assert {c.data.tags[schema.STATUS] for c in children} == {schema.STATUS_COMPLETED}
    rows = tune_rows(exp_dir)
    for c in children:  # every epoch once, the ones before the stop among them
        steps = [m.step for m in client.get_metric_history(c.info.run_id, schema.VAL_PPL)]
        assert sorted(steps) == sorted({r[schema.EPOCH] for r in rows[c.data.tags[
            schema.TRIAL_ID]]}) == [1, 2]
        assert len(steps) >= reported.get(c.data.tags[schema.TRIAL_ID], 0)
