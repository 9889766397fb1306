"""Faults during a search: a diverging trial, a worker that dies mid-trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray
from conftest import DATA_DIR, real_data
from mlflow.tracking import MlflowClient

from search import schema
from search.driver import run_search
from search.options import SearchOptions
from spaces import SPACES, Space, smoke

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module", autouse=True)
def need_ptb():
    real_data("ptb")


def first_trial_diverges(trial):
    config = smoke.define(trial)
    if trial.number == 0:
        config["lr"] = 1e8  # NaN within the first epoch
    return config


def test_diverging_trial_is_failed_with_its_reason_and_the_search_goes_on(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("AWD_DATA_DIR", str(DATA_DIR))
    monkeypatch.setitem(SPACES, "diverge", Space(
        name="diverge", description="smoke whose first trial diverges", model="mixed",
        dataset="ptb", define=first_trial_diverges, warm_start=smoke.SPACE.warm_start,
        max_epochs=2, grace_period=1))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        outcome = run_search(SearchOptions(
            space="diverge", num_samples=3, concurrency=2, storage=str(tmp_path / "rr"),
            tracking_uri=uri, best_config=str(tmp_path / "best.json"), scheduler="none"))
    finally:
        ray.shutdown()
    failed = [t for t in outcome.trials if t.status == schema.STATUS_FAILED]
    assert len(failed) == 1 and failed[0].config["lr"] == 1e8
    assert "diverged at epoch 1" in failed[0].error
    assert outcome.best is not None and outcome.best.config["lr"] != 1e8
    assert sum(t.status == schema.STATUS_COMPLETED for t in outcome.trials) == 2

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("diverge")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags[schema.ROLE] == schema.ROLE_SEARCH)
    assert parent.data.metrics["trials_failed"] == 1
    assert parent.data.tags[schema.BEST_TRIAL_ID] == outcome.best.trial_id
    bad = next(r for r in runs if r.data.tags.get(schema.STATUS) == schema.STATUS_FAILED)
    assert bad.info.status == "FAILED"
    assert bad.data.tags[schema.TRIAL_ID] == failed[0].trial_id
    assert "TrainingDiverged" in bad.data.tags[schema.FAILURE]
    # nothing from a NaN run looks like a result; it ran no whole epoch
    assert not {"val_ppl", schema.BEST_VAL_PPL, schema.FINAL_VAL_PPL} & set(bad.data.metrics)
    assert bad.data.metrics[schema.EPOCHS_RUN] == 0
    # Ray's retries found the divergence marker in the checkpoint: the epoch was not re-trained.
    trial_dir = next(d for d in (tmp_path / "rr" / "diverge").iterdir()
                     if d.is_dir() and failed[0].trial_id in d.name)
    lines = (trial_dir / "result.json").read_text().splitlines()
    assert [json.loads(x).get("diverged") for x in lines] == [1.0]


def _session_pids(sid: int, needle: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, session, args = line.strip().split(None, 2)
        if int(session) == sid and needle in args:
            pids.append(int(pid))
    return pids


def test_trial_whose_worker_dies_restarts_from_its_last_checkpoint(tmp_path):
    env = {**os.environ, "AWD_DATA_DIR": str(DATA_DIR)}
    cmd = [sys.executable, "-m", "search.run", "--space", "smoke", "--num-samples", "1",
           "--max-epochs", "4", "--storage", "rr", "--experiment", "crash"]
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        result_files = []
        deadline = time.time() + 240
        while time.time() < deadline:
            result_files = list((tmp_path / "rr" / "crash").glob("*/result.json"))
            if result_files and result_files[0].read_text().strip():
                break
            time.sleep(0.2)
        # The trial's actor process: Tune wraps a function trainable in ImplicitFunc.
        victims = _session_pids(proc.pid, "ray::ImplicitFunc")
        assert victims, "no trial process found"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, (tmp_path / "log.txt").read_text()[-3000:]
    rows = [json.loads(x) for x in result_files[0].read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["finished"] is True
    # the running totals survive the restart: they come from the checkpointed history
    assert [r[schema.EPOCHS_RUN] for r in rows] == [1, 2, 3, 4]
    assert rows[-1][schema.TRAIN_SECONDS] == pytest.approx(
        sum(r[schema.EPOCH_SECONDS] for r in rows))
    # The restarted worker resumed from a checkpoint, not from scratch:
    assert any(r["iterations_since_restore"] < r["epoch"] for r in rows)
