"""After the search, on a real local Ray cluster and MLflow SQLite store: ``--cache-trials N``
and ``--ensemble K`` on a smoke search whose driver gets a Ctrl-C in the middle of its cache
stage (it ends at once: status 130, the parent KILLED and partial), then resumed: the study keeps
its trials, every trial is logged once, test is evaluated once, and the registered models read
back to the logged numbers. (A SIGKILL there leaves a RUNNING study trial: tests/test_cache.py's
`tune_cache` test.)"""

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
from conftest import DATA_DIR, real_data
from mlflow.tracking import MlflowClient

from awd.cache import PAPER_VALUES, CacheParams
from search import schema

pytestmark = pytest.mark.slow

CACHE_TRIALS = 120
ARGS = ["--space", "smoke", "--num-samples", "3", "--max-epochs", "1", "--concurrency", "2",
        "--seed", "5", "--storage", "rr", "--experiment", "after",
        "--cache-trials", str(CACHE_TRIALS), "--ensemble", "3"]
COMPLETE = optuna.trial.TrialState.COMPLETE


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "AWD_DATA_DIR": str(DATA_DIR)}


def _cache_trials_done(db: Path) -> int:
    """Finished trials of the winner's cache study so far (0 before it exists)."""
    if not db.is_file():
        return 0
    storage = f"sqlite:///{db}"
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    except Exception:  # the search is still creating the tables
        return 0
    name = next((n for n in names if n.endswith("-cache") and not n.endswith("-ensemble-cache")),
                None)
    if name is None:
        return 0
    study = optuna.load_study(study_name=name, storage=storage)
    return sum(t.state == COMPLETE for t in study.trials)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """(folder, trials done when stopped, the resumed search's process, tracking URI)."""
    real_data("ptb")
    cwd = tmp_path_factory.mktemp("after")
    log = cwd / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_cmd("search.run", *ARGS), cwd=cwd, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 400
        done = 0
        while time.time() < deadline and done < 3:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
            done = _cache_trials_done(cwd / "optuna.db")
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C to the driver, in the middle of the stage
        code = proc.wait(timeout=120)
    assert code == 130, log.read_text()[-3000:]  # the signal's status, not 0 (issue 21)
    assert "--resume" in log.read_text()
    at_kill = _cache_trials_done(cwd / "optuna.db")
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    parent = next(r for r in client.search_runs(
        [client.get_experiment_by_name("after").experiment_id])
        if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH)
    assert parent.info.status == "KILLED" and parent.data.tags[schema.PARTIAL] == "true"
    again = subprocess.run(_cmd("search.run", *ARGS, "--resume"), cwd=cwd, env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return cwd, at_kill, again, f"sqlite:///{cwd / 'mlflow.db'}"


def _runs(uri: str) -> tuple[MlflowClient, dict[str, list]]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("after")
    by_role: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        by_role.setdefault(r.data.tags.get(schema.ROLE, ""), []).append(r)
    return client, by_role


def test_killed_in_the_cache_stage_the_resume_finishes_the_same_study(resumed):
    _, at_kill, _, uri = resumed
    assert 3 <= at_kill < CACHE_TRIALS  # the stop came in the middle of the stage
    client, runs = _runs(uri)
    parent = runs[schema.ROLE_SEARCH][0]
    storage = parent.data.tags[schema.STUDY_STORAGE]
    study = optuna.load_study(study_name=parent.data.tags[schema.STUDY_NAME] + "-cache",
                              storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(COMPLETE) == CACHE_TRIALS
    assert optuna.trial.TrialState.RUNNING not in states  # the killed one was closed
    first = min((t for t in study.trials if t.state == COMPLETE), key=lambda t: t.number)
    assert (first.params["window"], first.params["theta"], first.params["lambda"]) == \
        PAPER_VALUES["ptb"]
    # one cache run, every trial logged once at its own step, test evaluated once
    (cache,) = runs[schema.ROLE_CACHE]
    history = client.get_metric_history(cache.info.run_id, "trial_val_ppl")
    assert sorted(m.step for m in history) == list(range(CACHE_TRIALS))
    values = {t.number: t.value for t in study.trials if t.state == COMPLETE}
    assert sorted(m.value for m in history) == pytest.approx(sorted(values.values()))
    assert len(client.get_metric_history(cache.info.run_id, schema.CACHE_TEST_PPL)) == 1
    assert cache.data.tags[schema.PARENT_RUN_ID] == parent.info.run_id


def test_the_cache_is_chosen_on_validation_and_helps_there(resumed):
    _, _, _, uri = resumed
    client, runs = _runs(uri)
    (cache,) = runs[schema.ROLE_CACHE]
    m = cache.data.metrics
    history = client.get_metric_history(cache.info.run_id, "trial_val_ppl")
    best = min(history, key=lambda x: (x.value, x.step))
    assert m[schema.CACHE_VAL_PPL] == pytest.approx(best.value)
    chosen = CacheParams.parse(cache.data.tags[schema.CACHE_VALUES])
    steps = {k: {h.step: h.value for h in client.get_metric_history(cache.info.run_id, k)}
             for k in ("trial_window", "trial_theta", "trial_lambda")}
    assert (chosen.window, chosen.theta, chosen.lam) == pytest.approx(
        (steps["trial_window"][best.step], steps["trial_theta"][best.step],
         steps["trial_lambda"][best.step]))
    assert m[schema.CACHE_VAL_PPL] <= m["val_ppl"]  # λ = 0 is in reach: never worse
    parent = runs[schema.ROLE_SEARCH][0]
    assert parent.data.tags[schema.CACHE_VALUES] == cache.data.tags[schema.CACHE_VALUES]
    assert parent.data.metrics[schema.CACHE_TEST_PPL] == m[schema.CACHE_TEST_PPL]


# The driver and a fresh process may sum float32 logits in another order (threads): the same
# numbers to ~1e-9, so read back "the same" to 1e-6.
def _evaluate(cwd: Path, uri: str, *extra: str) -> dict:
    proc = subprocess.run(_cmd("search.evaluate", "--model-uri", uri, "--quiet", *extra),
                          cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_winner_with_its_tuned_cache_reads_back_from_the_registry(resumed):
    cwd, _, _, uri = resumed
    _, runs = _runs(uri)
    (cache,) = runs[schema.ROLE_CACHE]
    got = _evaluate(cwd, "models:/awdsearch-smoke/latest", "--cache", "tuned")
    assert got["cache"] == cache.data.tags[schema.CACHE_VALUES]
    m = cache.data.metrics
    assert got["val_ppl"] == pytest.approx(m["val_ppl"], rel=1e-6)
    assert got["test_ppl"] == pytest.approx(m["test_ppl"], rel=1e-6)
    assert got["cache_val_ppl"] == pytest.approx(m[schema.CACHE_VAL_PPL], rel=1e-6)
    assert got["cache_test_ppl"] == pytest.approx(m[schema.CACHE_TEST_PPL], rel=1e-6)


def test_the_ensemble_is_selected_logged_and_registered(resumed):
    cwd, _, again, uri = resumed
    client, runs = _runs(uri)
    (ens,) = runs[schema.ROLE_ENSEMBLE]
    m = ens.data.metrics
    members = json.loads(ens.data.tags[schema.ENSEMBLE_MEMBERS])
    assert 1 <= len(members) <= 3 and m["candidates"] == 3
    assert sum(x["weight"] for x in members) == pytest.approx(1.0)
    trials = {r.data.tags[schema.TRIAL_ID] for r in runs[schema.ROLE_TRIAL]}
    assert {x["trial_id"] for x in members} <= trials
    selection = [h.value for h in client.get_metric_history(ens.info.run_id,
                                                            "selection_val_ppl")]
    assert len(selection) == 3  # K steps, each logged once across both drivers
    assert m["val_ppl"] == pytest.approx(min(selection))  # the best step's ensemble is kept
    assert m["val_ppl"] <= m["best_single_val_ppl"] + 1e-9  # its first step is the best single
    # registered, and read back to the same numbers (with its own cache if it kept one)
    version = ens.data.tags[schema.MODEL_URI]
    assert version.startswith("models:/awdsearch-smoke-ensemble/")
    got = _evaluate(cwd, version, "--cache", "tuned") if schema.CACHE_VALUES in ens.data.tags \
        else _evaluate(cwd, version)
    assert got["val_ppl"] == pytest.approx(m["val_ppl"], rel=1e-6)
    assert got["test_ppl"] == pytest.approx(m["test_ppl"], rel=1e-6)
    if schema.CACHE_VALUES in ens.data.tags:
        assert got["cache_test_ppl"] == pytest.approx(m[schema.CACHE_TEST_PPL], rel=1e-6)
    assert len(client.search_model_versions("name = 'awdsearch-smoke-ensemble'")) == 1
    assert "ensemble of" in again.stdout and "After training" in again.stdout


def test_the_report_has_the_after_training_section_with_the_papers_beside(resumed):
    cwd, _, _, uri = resumed
    out = cwd / "report"
    proc = subprocess.run(_cmd("reports", "--experiment", "after", "--tracking-uri", uri,
                               "--out", str(out), "--no-log"), cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = (out / "report.md").read_text()
    section = text.split("## After training: cache and ensembles", 1)[1].split("\n## ", 1)[0]
    _, runs = _runs(uri)
    (cache,) = runs[schema.ROLE_CACHE]
    (ens,) = runs[schema.ROLE_ENSEMBLE]
    chosen = CacheParams.parse(cache.data.tags[schema.CACHE_VALUES])
    assert f"| after | best trial + cache | {cache.data.metrics[schema.CACHE_VAL_PPL]:,.2f} | " \
           f"{cache.data.metrics[schema.CACHE_TEST_PPL]:,.2f} | {chosen.shown()}" in section
    assert f"| {ens.data.metrics['val_ppl']:,.2f} | {ens.data.metrics['test_ppl']:,.2f} |" \
        in section
    assert "| AWD-LSTM + continuous cache | ptb | 53.90 | 52.80 |" in section
    assert "| 2 medium, averaged | ptb | 80.60 | 77.00 |" in section


def test_resuming_a_finished_search_reuses_its_stages(resumed):
    """Last in this file: it resumes the search once more. A finished stage is not run again:
    no new cache trial, no second test evaluation, no second ensemble version."""
    cwd, _, _, uri = resumed
    client, before = _runs(uri)
    (cache,) = before[schema.ROLE_CACHE]
    (ens,) = before[schema.ROLE_ENSEMBLE]
    again = subprocess.run(_cmd("search.run", *ARGS, "--resume"), cwd=cwd, env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    client, after = _runs(uri)
    assert [r.info.run_id for r in after[schema.ROLE_CACHE]] == [cache.info.run_id]
    assert [r.info.run_id for r in after[schema.ROLE_ENSEMBLE]] == [ens.info.run_id]
    for run_id, key in ((cache.info.run_id, schema.CACHE_TEST_PPL),
                        (cache.info.run_id, "seconds_per_trial"),
                        (ens.info.run_id, "test_ppl")):
        assert len(client.get_metric_history(run_id, key)) == 1, key
    assert len(client.get_metric_history(cache.info.run_id, "trial_val_ppl")) == CACHE_TRIALS
    assert len(client.search_model_versions("name = 'awdsearch-smoke-ensemble'")) == 1
    assert "ensemble of" in again.stdout  # the reused stages are reported all the same
