"""End-to-end searches on a real local Ray cluster, tracked in a real MLflow SQLite store."""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR, SMOKE_TRIALS, real_data
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from awd.config import from_flat
from awd.models import build_model
from search import schema
from search.searcher import AWDOptunaSearch
from spaces import get_space

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module", autouse=True)
def need_ptb():
    real_data("ptb")


def search_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.run", *args]


def run_search(cwd: Path, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWD_DATA_DIR": str(DATA_DIR)}
    return subprocess.run(search_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def runs_of(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH]
    children = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_TRIAL]
    return client, parents, children


# --- one smoke search, many assertions -------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(smoke_search):
    return smoke_search


def test_smoke_search_prints_best_trials_and_the_mlflow_ui_command(smoke):
    cwd, proc, uri = smoke
    assert "Best trials:" in proc.stdout
    assert f"mlflow ui --backend-store-uri {uri}" in proc.stdout
    best = json.loads((cwd / "best_config_smoke.json").read_text())
    from_flat(best)  # a valid, complete trial config


def test_parent_run_has_search_tags_and_config(smoke):
    _, _, uri = smoke
    _, parents, children = runs_of(uri, "smoke")
    assert len(parents) == 1
    parent = parents[0]
    tags, params, metrics = parent.data.tags, parent.data.params, parent.data.metrics
    assert tags[schema.SPACE] == "smoke" and tags[schema.SEED] == "7"
    assert len(tags[schema.GIT_COMMIT]) >= 7 and tags[schema.RAY_ADDRESS]
    assert params["num_samples"] == str(SMOKE_TRIALS) and params["max_epochs"] == "2"
    assert params["scheduler"] == "asha"
    assert parent.info.status == "FINISHED"
    assert set(schema.SEARCH_SUMMARY_METRICS) <= set(metrics)
    assert metrics["trials_total"] == SMOKE_TRIALS == len(children)
    assert (metrics["trials_completed"] + metrics["trials_stopped_early"]
            + metrics["trials_failed"]) == SMOKE_TRIALS


def test_every_trial_is_a_nested_child_with_params_and_epoch_metrics(smoke):
    _, _, uri = smoke
    client, parents, children = runs_of(uri, "smoke")
    for child in children:
        data = child.data
        assert data.tags[schema.PARENT_RUN_ID] == parents[0].info.run_id
        assert data.tags[schema.STATUS] in (schema.STATUS_COMPLETED, schema.STATUS_STOPPED)
        config = {k: v for k, v in data.params.items() if k != "gpus_per_trial"}
        run = from_flat(config)  # every hyperparameter is there
        assert run.train.epochs == 2
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_ppl")]
        assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= 2
        for key in schema.EPOCH_METRICS:
            assert key in data.metrics, key
        assert data.metrics["num_params"] > 0
        assert data.metrics["epochs_run"] == len(steps)
        if data.tags[schema.STATUS] == schema.STATUS_COMPLETED:
            assert data.metrics["final_val_ppl"] > 1 and data.metrics["final_test_ppl"] > 1


def test_paper_configuration_is_the_first_trial(smoke):
    cwd, _, uri = smoke
    searcher = AWDOptunaSearch()  # the searcher as Tune saved it at the end of the search
    searcher.restore_from_dir(str(cwd / "ray_results" / "smoke"))
    first_id = searcher.tune_trial_id(0)
    first = next(t for t in ExperimentAnalysis(str(cwd / "ray_results" / "smoke")).trials
                 if t.trial_id == first_id)
    warm = get_space("smoke").warm_start
    assert {k: first.config[k] for k in warm} == warm
    _, _, children = runs_of(uri, "smoke")
    logged = next(c for c in children if c.data.tags[schema.TRIAL_ID] == first_id)
    assert {k: logged.data.params[k] for k in warm} == {k: str(v) for k, v in warm.items()}


def test_best_trial_has_config_and_checkpoint_artifacts(smoke, tmp_path):
    cwd, _, uri = smoke
    client, parents, children = runs_of(uri, "smoke")
    parent = parents[0]
    best_id = parent.data.tags["awdsearch.best_trial_id"]
    best = next(c for c in children if c.data.tags[schema.TRIAL_ID] == best_id)
    finished = [c for c in children if "final_val_ppl" in c.data.metrics]
    assert best.data.metrics["final_val_ppl"] == min(c.data.metrics["final_val_ppl"]
                                                     for c in finished)
    assert parent.data.metrics["best_val_ppl"] == best.data.metrics["final_val_ppl"]
    for run in (parent, best):
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "checkpoint"} <= names
    path = client.download_artifacts(best.info.run_id, "checkpoint/best_model.pt", str(tmp_path))
    saved = torch.load(path, weights_only=False)
    model = build_model(from_flat(saved["config"]), 10_000)
    model.load_state_dict(saved["model"])  # the weights fit the logged config exactly
    assert json.loads((cwd / "best_config_smoke.json").read_text()) == saved["config"]


def test_ray_keeps_every_result_and_a_checkpoint_per_trial(smoke):
    cwd, _, _ = smoke
    trial_dirs = [d for d in (cwd / "ray_results" / "smoke").iterdir() if d.is_dir()]
    assert len(trial_dirs) == SMOKE_TRIALS
    for d in trial_dirs:
        results = [json.loads(x) for x in (d / "result.json").read_text().splitlines()]
        assert [r["epoch"] for r in results] == list(range(1, len(results) + 1))
        assert list(d.glob("checkpoint_*/trainer.pt"))


# --- interruption and resume -----------------------------------------------------------------
def _progress(exp_dir: Path) -> tuple[int, int]:
    done = running = 0
    for f in glob.glob(str(exp_dir / "*" / "result.json")):
        lines = [json.loads(x) for x in Path(f).read_text().splitlines() if x.strip()]
        if lines and lines[-1].get("finished"):
            done += 1
        elif lines:
            running += 1
    return done, running


def test_resume_after_the_driver_is_killed_loses_nothing_and_reruns_nothing(tmp_path):
    args = ["--space", "smoke", "--num-samples", "3", "--max-epochs", "3", "--concurrency", "1",
            "--scheduler", "none", "--storage", "rr", "--experiment", "resumable"]
    env = {**os.environ, "AWD_DATA_DIR": str(DATA_DIR)}
    exp_dir = tmp_path / "rr" / "resumable"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(search_cmd(*args), cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and _progress(exp_dir) < (1, 1):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.3)
        # SIGKILL the driver and its local Ray cluster: no chance to save anything on the way out.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = {d.name: (d / "result.json").read_text() for d in exp_dir.iterdir()
                   if d.is_dir() and '"finished": true' in (d / "result.json").read_text()}
    assert len(done_before) >= 1

    resumed = run_search(tmp_path, *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trial_dirs = [d for d in exp_dir.iterdir() if d.is_dir()]
    assert len(trial_dirs) == 3
    for name, text in done_before.items():  # finished trials were not run again
        assert (exp_dir / name / "result.json").read_text() == text
    for d in trial_dirs:
        epochs = [json.loads(x)["epoch"] for x in (d / "result.json").read_text().splitlines()]
        assert epochs == [1, 2, 3]
    client, parents, children = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "resumable")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3
    for child in children:  # each epoch logged exactly once, in the same run as before
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_ppl")]
        assert sorted(steps) == [1, 2, 3]
        assert child.data.tags[schema.STATUS] == schema.STATUS_COMPLETED


# --- bad input: clear errors before any trial ------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--space", "nope"], "unknown space 'nope'; known spaces: awd_ptb"),
    (["--space", "smoke", "--num-samples", "0"], "--num-samples must be >= 1"),
    (["--space", "smoke", "--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0"),
    (["--space", "smoke", "--scheduler", "pbt"], "--scheduler must be one of asha, none"),
    (["--space", "smoke", "--resume", "--storage", "nowhere"], "nothing to resume"),
    (["--space", "smoke", "--max-epochs", "-2"], "--max-epochs must be >= 1"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    proc = run_search(tmp_path, *args, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"]
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_tracking_server_fails_before_any_trial(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.time()
    proc = run_search(tmp_path, "--space", "smoke", "--tracking-uri", uri, timeout=60)
    assert proc.returncode == 2
    assert f"cannot reach the MLflow tracking server at {uri}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ray_results").exists()  # no Ray, no trial
    assert time.time() - start < 30


def test_missing_data_fails_before_any_trial(tmp_path):
    env = {**os.environ, "AWD_DATA_DIR": str(tmp_path / "no-data")}
    proc = subprocess.run(search_cmd("--space", "smoke"), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "fetch it with `python -m awd.data fetch ptb`" in proc.stderr
    assert not (tmp_path / "ray_results").exists()


def test_list_spaces_names_every_space():
    proc = subprocess.run(search_cmd("--list-spaces"), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names == ["awd_ptb", "awd_wt2", "gru_ptb", "gru_wt2", "zaremba_ptb", "compare_ptb",
                     "smoke"]
