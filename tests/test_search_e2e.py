"""End-to-end searches on a real local Ray cluster, tracked in a real MLflow SQLite store."""

from __future__ import annotations

import glob
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import torch
from conftest import DATA_DIR, SMOKE_TRIALS, real_data, tune_rows
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from awd.config import from_flat
from awd.data import load_corpus
from awd.trainer import Trainer, load_exported, perplexity
from search import schema
from search.results import best_index, status_of
from search.tracking.registry import download_export
from search.tune.searcher import AWDOptunaSearch
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
    """The one test of ``python -m search.run`` as a command (the session's smoke search)."""
    cwd, proc, uri = smoke
    assert "Best trials:" in proc.stdout
    assert f"mlflow ui --backend-store-uri {uri}" in proc.stdout
    best = json.loads((cwd / "best_config_smoke.json").read_text())
    from_flat(best)  # a valid, complete trial config
    # the winner's handle and the study's (issue 21): what a newcomer types next
    client = MlflowClient(uri)
    parent = next(r for r in client.search_runs(
        [client.get_experiment_by_name("smoke").experiment_id])
        if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH)
    version_uri = parent.data.tags[schema.MODEL_URI]
    assert f"Winner: {version_uri} (alias models:/awdsearch-smoke@smoke;" in proc.stdout
    assert "python -m search.evaluate --model-uri models:/awdsearch-smoke@smoke" in proc.stdout
    name = parent.data.tags[schema.STUDY_NAME]
    assert f"Optuna study: optuna.load_study(study_name={name!r}, " in proc.stdout


def test_the_watch_command_prints_every_epoch_ray_has(smoke):
    """`python -m search.watch` on the finished search: one line per (trial, epoch) Ray has."""
    cwd, _, _ = smoke
    done = subprocess.run([sys.executable, "-m", "search.watch", "smoke", "--once"], cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = sorted((x.split()[0].rsplit("_", 1)[-1], int(x.split()[2]))
                  for x in done.stdout.splitlines())
    expected = sorted((trial, r["epoch"]) for trial, rows in
                      tune_rows(cwd / "ray_results" / "smoke").items() for r in rows)
    assert seen == expected and seen


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


def test_trial_summaries_are_tunes_last_results(smoke):
    """epochs_run, train_seconds, the trigger epoch and the final perplexities of every child
    run are the values of the trial's last Tune result, exactly."""
    cwd, _, uri = smoke
    results = tune_rows(cwd / "ray_results" / "smoke")
    _, _, children = runs_of(uri, "smoke")
    assert len(results) == len(children) == SMOKE_TRIALS
    for child in children:
        rows = results[child.data.tags[schema.TRIAL_ID]]
        last, metrics = rows[-1], child.data.metrics
        assert child.data.tags[schema.STATUS] == status_of(last)
        assert metrics[schema.EPOCHS_RUN] == last[schema.EPOCHS_RUN] == len(rows)
        assert metrics[schema.TRAIN_SECONDS] == last[schema.TRAIN_SECONDS]
        assert last[schema.TRAIN_SECONDS] == pytest.approx(
            sum(r[schema.EPOCH_SECONDS] for r in rows))  # cumulative over the epochs
        if last[schema.NTASGD_TRIGGER_EPOCH]:
            assert metrics[schema.NTASGD_TRIGGER_EPOCH] == last[schema.NTASGD_TRIGGER_EPOCH]
        else:
            assert schema.NTASGD_TRIGGER_EPOCH not in metrics
        if status_of(last) == schema.STATUS_COMPLETED:
            assert metrics[schema.FINAL_VAL_PPL] == last[schema.FINAL_VAL_PPL]
            assert metrics[schema.FINAL_TEST_PPL] == last[schema.FINAL_TEST_PPL]
        else:
            assert schema.FINAL_VAL_PPL not in metrics


def test_parent_names_the_best_trial_by_the_one_rule(smoke):
    cwd, _, uri = smoke
    exp_dir = cwd / "ray_results" / "smoke"
    results = tune_rows(exp_dir)
    errored = {tid for tid in results for d in exp_dir.glob(f"*{tid}*")
               if (d / "error.txt").exists()}
    ids = sorted(results)
    records = [{**results[t][-1], "status": schema.STATUS_FAILED if t in errored
                else status_of(results[t][-1])} for t in ids]
    chosen = best_index(records)
    assert chosen is not None
    _, parents, children = runs_of(uri, "smoke")
    parent = parents[0]
    assert parent.data.tags[schema.BEST_TRIAL_ID] == ids[chosen]
    best = next(c for c in children if c.data.tags[schema.TRIAL_ID] == ids[chosen])
    final = best.data.metrics.get(schema.FINAL_VAL_PPL, best.data.metrics[schema.BEST_VAL_PPL])
    assert parent.data.metrics[schema.BEST_VAL_PPL] == final
    if schema.FINAL_TEST_PPL in best.data.metrics:
        assert parent.data.metrics[schema.BEST_TEST_PPL] == best.data.metrics[
            schema.FINAL_TEST_PPL]
    completed = [c for c in children if c.data.tags[schema.STATUS] == schema.STATUS_COMPLETED]
    if completed:
        assert final == min(c.data.metrics[schema.FINAL_VAL_PPL] for c in completed)


def test_best_trial_has_config_and_an_exported_model(smoke, tmp_path):
    cwd, _, uri = smoke
    client, parents, children = runs_of(uri, "smoke")
    parent = parents[0]
    best = next(c for c in children
                if c.data.tags[schema.TRIAL_ID] == parent.data.tags[schema.BEST_TRIAL_ID])
    for run in (parent, best):  # the config on both; the weights only in the registered model
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "config.json" in names and "checkpoint" not in names  # (a report may be there)
        assert run.data.tags[schema.MODEL_URI] == parent.data.tags[schema.MODEL_URI]
    with tempfile.TemporaryDirectory() as d:  # awd.evaluate's download: the export alone
        exported = load_exported(download_export(parent.data.tags[schema.MODEL_URI], uri,
                                                 Path(d)))
    config = json.loads((cwd / "best_config_smoke.json").read_text())
    assert exported.run.to_flat() == config
    logged = {k: v for k, v in best.data.params.items() if k != "gpus_per_trial"}
    assert from_flat(logged).to_flat() == config  # the best trial's own config
    assert len(exported.vocab) == 10_000
    # the exported weights are the trial's best: they give its validation perplexity
    trainer = Trainer(exported.run, load_corpus(real_data("ptb")), device="cpu")
    assert trainer.vocab == exported.vocab
    trainer.model = exported.build()
    final = best.data.metrics.get(schema.FINAL_VAL_PPL, best.data.metrics[schema.BEST_VAL_PPL])
    assert perplexity(trainer.evaluate("valid")) == pytest.approx(final, rel=1e-5)
    assert math.isfinite(final)
    # the same model on the best trial's own run
    with tempfile.TemporaryDirectory() as d:
        again = load_exported(download_export(f"runs:/{best.info.run_id}/model", uri, Path(d)))
    for k, v in again.state_dict.items():
        assert torch.equal(v, exported.state_dict[k]), k


def test_ray_keeps_every_result_and_a_checkpoint_per_trial(smoke):
    cwd, _, _ = smoke
    trial_dirs = [d for d in (cwd / "ray_results" / "smoke").iterdir()
                  if d.is_dir() and not d.name.startswith(".")]  # not the signed copies
    assert len(trial_dirs) == SMOKE_TRIALS
    for d in trial_dirs:
        results = [json.loads(x) for x in (d / "result.json").read_text().splitlines()]
        assert [r["epoch"] for r in results] == list(range(1, len(results) + 1))
        (checkpoint,) = d.glob("checkpoint_*/trainer.pt")  # num_to_keep=1: the last one
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        # the whole trainer after the last reported epoch: enough to resume the trial
        assert state["epoch"] == len(results)
        assert [m["val_ppl"] for m in state["history"]] == [r["val_ppl"] for r in results]
        assert from_flat(state["config"]).to_flat() == state["config"]
        assert len(state["vocab"]) == 10_000 and state["best_state"] is not None


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


def _trial_runs(uri: str, experiment: str) -> list:
    try:
        return runs_of(uri, experiment)[2]
    except Exception:  # no store or experiment yet
        return []


def test_resume_after_the_driver_is_killed_loses_nothing_and_reruns_nothing(tmp_path):
    args = ["--space", "smoke", "--num-samples", "3", "--max-epochs", "3", "--concurrency", "1",
            "--scheduler", "none", "--storage", "rr", "--experiment", "resumable"]
    env = {**os.environ, "AWD_DATA_DIR": str(DATA_DIR)}
    exp_dir = tmp_path / "rr" / "resumable"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(search_cmd(*args), cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        # the second trial's run has just appeared: Tune has not saved that trial yet, and the
        # resumed search asks for it anew (its run must not survive as a phantom)
        while time.time() < deadline and (_progress(exp_dir)[0] < 1
                                          or len(_trial_runs(uri, "resumable")) < 2):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.1)
        # SIGKILL the driver and its local Ray cluster: no chance to save anything on the way out.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = {d.name: (d / "result.json").read_text() for d in exp_dir.iterdir()
                   if d.is_dir() and not d.name.startswith(".")
                   and '"finished": true' in (d / "result.json").read_text()}
    assert len(done_before) >= 1

    resumed = run_search(tmp_path, *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trial_dirs = [d for d in exp_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert len(trial_dirs) == 3
    for name, text in done_before.items():  # finished trials were not run again
        assert (exp_dir / name / "result.json").read_text() == text
    for d in trial_dirs:
        epochs = [json.loads(x)["epoch"] for x in (d / "result.json").read_text().splitlines()]
        assert epochs == [1, 2, 3]
    client, parents, children = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "resumable")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3  # one run per trial Ray knows: no phantom of the killed start
    assert {c.data.tags[schema.TRIAL_ID] for c in children} == set(tune_rows(exp_dir))
    results = tune_rows(exp_dir)
    for child in children:  # each epoch logged exactly once, in the same run as before
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_ppl")]
        assert sorted(steps) == [1, 2, 3]
        assert child.data.tags[schema.STATUS] == schema.STATUS_COMPLETED
        # the summary is the last result's, the seconds before the kill included
        last = results[child.data.tags[schema.TRIAL_ID]][-1]
        assert child.data.metrics[schema.EPOCHS_RUN] == last[schema.EPOCHS_RUN] == 3
        assert child.data.metrics[schema.TRAIN_SECONDS] == last[schema.TRAIN_SECONDS]
    # the resumed driver went on with the same Optuna study: three trials told COMPLETE, one
    # value per epoch each, and nothing left RUNNING
    tags = parents[0].data.tags
    study = optuna.load_study(study_name=tags[schema.STUDY_NAME],
                              storage=tags[schema.STUDY_STORAGE])
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert optuna.trial.TrialState.RUNNING not in states
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert sorted(t.intermediate_values) == [1, 2, 3]
