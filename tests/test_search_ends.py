"""How a search ends when it does not simply run to its end: signals, a second driver, driver
kills at the worst moment, trials that can never succeed, resources that never come, a
corrupt checkpoint. Real local Ray, real MLflow SQLite store, the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import ray
from conftest import DATA_DIR, real_data, tune_rows
from mlflow.tracking import MlflowClient

from search import schema
from search.driver import run_search
from search.options import SearchOptions
from search.run import main
from spaces import SPACES, Space, smoke

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def need_ptb():
    real_data("ptb")


ENV = {**os.environ, "AWD_DATA_DIR": str(DATA_DIR)}


def start(cwd: Path, args: list[str], log: str) -> subprocess.Popen:
    out = open(cwd / log, "w")  # noqa: SIM115 (closed with the process by the OS)
    return subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=cwd, env=ENV,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def finish(cwd: Path, args: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.run", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "timed out; " + log.read_text()[-3000:]
        time.sleep(0.2)


def mlflow_runs(uri: str, name: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    parents = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH]
    children = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_TRIAL]
    return client, parents, children


def assert_every_epoch_once(client: MlflowClient, children, exp_dir: Path) -> None:
    ray_results = tune_rows(exp_dir)
    assert {c.data.tags[schema.TRIAL_ID] for c in children} == set(ray_results)
    for c in children:
        rows = ray_results[c.data.tags[schema.TRIAL_ID]]
        steps = [m.step for m in client.get_metric_history(c.info.run_id, schema.VAL_PPL)]
        assert sorted(steps) == sorted({r[schema.EPOCH] for r in rows}), c.info.run_id
        assert c.info.status != "RUNNING"


# --- signals, a second driver, a failed resume ----------------------------------------------------
def test_sigint_and_sigterm_stop_honestly_and_resume_goes_on(tmp_path):
    # Four trials one at a time: the first driver is still running when the second one has
    # been refused, even on a busy machine (two trials were over by then under pytest -n 2).
    args = ["--space", "smoke", "--num-samples", "4", "--max-epochs", "2", "--concurrency", "1",
            "--scheduler", "none", "--storage", "rr", "--experiment", "stops",
            "--best-config", "best.json"]
    exp_dir, uri = tmp_path / "rr" / "stops", f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = start(tmp_path, args, "first.log")
    wait_for(lambda: any(exp_dir.glob("experiment_state-*.json")), first, tmp_path / "first.log")

    # a second driver on the same search is refused at once, and changes nothing
    second = finish(tmp_path, [*args, "--resume"], timeout=60)
    assert first.poll() is None, "the first driver ended before the second one started"
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stderr.strip().startswith("error: another driver is running the search")
    assert len(second.stderr.strip().splitlines()) == 1

    wait_for(lambda: any(len(r) >= 1 for r in tune_rows(exp_dir).values()), first,
             tmp_path / "first.log")
    first.send_signal(signal.SIGINT)  # Ctrl-C
    assert first.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-3000:]
    log = (tmp_path / "first.log").read_text()
    assert "stopped by SIGINT" in log and "--resume" in log
    assert not (tmp_path / "best.json").exists()  # nothing written from a partial search
    client, parents, children = mlflow_runs(uri, "stops")
    assert parents[0].info.status == "KILLED" and parents[0].data.tags[schema.PARTIAL] == "true"
    statuses = [c.data.tags[schema.STATUS] for c in children]
    assert schema.STATUS_INTERRUPTED in statuses and schema.STATUS_STOPPED not in statuses
    assert all(c.info.status != "RUNNING" for c in children)

    resumed = start(tmp_path, [*args, "--resume"], "second.log")
    before = sum(len(r) for r in tune_rows(exp_dir).values())
    wait_for(lambda: sum(len(r) for r in tune_rows(exp_dir).values()) > before, resumed,
             tmp_path / "second.log")
    resumed.send_signal(signal.SIGTERM)  # `kill`, a scheduler's preemption
    assert resumed.wait(timeout=120) == 143, (tmp_path / "second.log").read_text()[-3000:]
    client, parents, children = mlflow_runs(uri, "stops")
    assert parents[0].info.status == "KILLED"

    done = finish(tmp_path, [*args, "--resume"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads((tmp_path / "best.json").read_text())["model"]
    client, parents, children = mlflow_runs(uri, "stops")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags[schema.PARTIAL] == "false"
    assert len(children) == 4
    assert {c.data.tags[schema.STATUS] for c in children} == {schema.STATUS_COMPLETED}
    assert_every_epoch_once(client, children, exp_dir)

    # a resume of the finished search whose checkpoints were truncated changes nothing in it
    for f in exp_dir.glob("*/checkpoint_*/trainer.pt"):
        f.write_bytes(f.read_bytes()[:100])
    again = finish(tmp_path, [*args, "--resume"])
    assert "Traceback" not in again.stderr, again.stderr[-3000:]
    _, parents, _ = mlflow_runs(uri, "stops")
    assert parents[0].info.status == "FINISHED"


# --- trials that can never succeed ---------------------------------------------------------------
def doomed_trials(trial):
    config = smoke.define(trial)
    if trial.number == 1:
        config["dataset"] = "/nonexistent/corpus"  # DataError in the trial
    if trial.number == 2:
        config["nhid"] = 400_000  # 2.6 TB of LSTM weights: no allocator gives that
    return config


def test_trials_that_cannot_succeed_fail_once_with_their_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("AWD_DATA_DIR", str(DATA_DIR))
    monkeypatch.setitem(SPACES, "doomed", Space(
        name="doomed", description="smoke with a trial on missing data and one too large",
        model="mixed", dataset="ptb", define=doomed_trials, warm_start=smoke.SPACE.warm_start,
        max_epochs=1, grace_period=1))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        outcome = run_search(SearchOptions(
            space="doomed", num_samples=3, concurrency=1, storage=str(tmp_path / "rr"),
            tracking_uri=uri, best_config=str(tmp_path / "best.json"), max_failures=2,
            scheduler="none"))
    finally:
        ray.shutdown()
    failed = [t for t in outcome.trials if t.status == schema.STATUS_FAILED]
    assert len(failed) == 2, [(t.status, t.error) for t in outcome.trials]
    reasons = sorted(t.error for t in failed)
    missing = next(r for r in reasons if r.startswith("DataError: "))
    assert "/nonexistent/corpus" in missing
    # a size no allocator gives is refused by the config's bound before any allocation; an
    # allocator's failure within the bound (a full GPU) ends the trial the same way
    too_large = next(r for r in reasons if r is not missing)
    assert too_large.startswith(("ConfigError: nhid", "out of memory: ")), too_large
    assert outcome.best is not None and outcome.best.status == schema.STATUS_COMPLETED
    assert any(t.config.get("nhid") == 400_000 for t in failed)
    # not retried: one result each in Ray's records, no restore
    rows = tune_rows(tmp_path / "rr" / "doomed")
    for t in failed:
        assert len(rows[t.trial_id]) == 1 and rows[t.trial_id][0][schema.FATAL] == t.error
    client, _, children = mlflow_runs(uri, "doomed")
    bad = [c for c in children if c.data.tags[schema.STATUS] == schema.STATUS_FAILED]
    assert len(bad) == 2 and all(c.info.status == "FAILED" for c in bad)
    assert sorted(c.data.tags[schema.FAILURE] for c in bad) == reasons
    parent = next(r for r in client.search_runs([children[0].info.experiment_id])
                  if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH)
    study = optuna.load_study(study_name=parent.data.tags[schema.STUDY_NAME],
                              storage=parent.data.tags[schema.STUDY_STORAGE])
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.FAIL) == 2


# --- resources that never come, an address nobody answers ---------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--cpus-per-trial", "100"], "--cpus-per-trial 100: this machine has"),
    (["--gpus-per-trial", "1"], "--gpus-per-trial 1: this machine has no GPUs"),
])
def test_resources_the_local_cluster_can_never_give_fail_in_seconds(tmp_path, capsys, flags,
                                                                    message):
    """Refused before Ray starts and before the driver's lock (issue 21): nothing is left."""
    began = time.monotonic()
    try:
        code = main(["--space", "smoke", "--storage", str(tmp_path / "rr"), "--tracking-uri",
                     f"sqlite:///{tmp_path / 'm.db'}", *flags])
        assert not ray.is_initialized()
    finally:
        ray.shutdown()
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and message in errors[0]
    assert time.monotonic() - began < 30
    assert not (tmp_path / "rr").exists() and not (tmp_path / "m.db").exists()


# --- a corrupt checkpoint -------------------------------------------------------------------------
def test_a_trial_whose_checkpoint_is_corrupt_starts_afresh_with_a_warning(tmp_path):
    args = ["--space", "smoke", "--num-samples", "1", "--max-epochs", "3", "--storage", "rr",
            "--experiment", "corrupt"]
    exp_dir = tmp_path / "rr" / "corrupt"
    proc = start(tmp_path, args, "log.txt")
    # a checkpoint that Tune has registered (its result is in result.json), not one in flight
    wait_for(lambda: tune_rows(exp_dir) and list(exp_dir.glob("*/checkpoint_*/trainer.pt")), proc,
             tmp_path / "log.txt")
    victims = subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "ray::ImplicitFunc"],
                             capture_output=True, text=True).stdout.split()
    assert victims, "no trial process found"
    for pid in victims:  # the worker first: it writes no checkpoint after this
        os.kill(int(pid), signal.SIGKILL)
    for f in exp_dir.glob("*/checkpoint_*/trainer.pt"):
        f.write_bytes(b"")  # as a crash during the write would leave it
    assert proc.wait(timeout=300) == 0, (tmp_path / "log.txt").read_text()[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert "the trial starts afresh" in log
    rows = next(iter(tune_rows(exp_dir).values()))
    assert rows[-1]["finished"] is True and rows[-1][schema.EPOCHS_RUN] == 3
