"""The search's Optuna study: every epoch reaches it, it lives where Optuna's tools open it, and
earlier searches' best configurations start a new one.

Fast tests drive the real searcher (no Ray); the slow ones run real smoke searches."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings

import optuna
import pytest
from conftest import DATA_DIR, SMOKE_TRIALS, real_data
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune.search import ConcurrencyLimiter

from search import schema
from search.errors import SearchError
from search.tracking.transfer import best_configurations
from search.tune.searcher import default_study_storage, make_searcher
from spaces import get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _searcher(report_intermediate: bool = True, storage: str | None = None,
              warm_starts: list[dict] | None = None, name: str = "s") -> ConcurrencyLimiter:
    lim = make_searcher(get_space("smoke"), {"epochs": 3}, 0, name, 4, storage_url=storage,
                        warm_starts=warm_starts or [], report_intermediate=report_intermediate)
    lim.set_search_properties("best_val_ppl", "min", {})
    return lim


def _run(lim: ConcurrencyLimiter, tid: str, values: list[float], finished: bool) -> dict:
    config = lim.suggest(tid)
    for epoch, value in enumerate(values, 1):
        lim.on_trial_result(tid, {"best_val_ppl": value, "epoch": epoch})
    lim.on_trial_complete(tid, {"best_val_ppl": values[-1], "epoch": len(values),
                                "finished": finished})
    return config


# --- 1. every epoch reaches Optuna ----------------------------------------------------------
def test_a_pruned_trial_keeps_every_epochs_value_at_step_epoch():
    lim = _searcher()
    _run(lim, "a", [900.0, 700.0], finished=False)  # ASHA stopped it after two epochs
    trial = lim.searcher.study().trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.intermediate_values == {1: 900.0, 2: 700.0}


def test_the_result_that_stops_a_trial_is_its_last_intermediate_value():
    """Tune gives the result on which ASHA stops a trial to on_trial_complete only: a trial
    stopped at its first rung must still reach the study with that value."""
    lim = _searcher()
    lim.suggest("a")
    lim.on_trial_complete("a", {"best_val_ppl": 900.0, "epoch": 1, "finished": False})
    trial = lim.searcher.study().trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.intermediate_values == {1: 900.0} and trial.value == 900.0


def test_an_epoch_re_run_after_a_restore_is_kept_once():
    lim = _searcher()
    lim.suggest("a")
    for epoch, value in ((1, 900.0), (2, 700.0), (2, 650.0), (3, 600.0)):
        lim.on_trial_result("a", {"best_val_ppl": value, "epoch": epoch})
    assert lim.searcher.study().trials[0].intermediate_values == {1: 900.0, 2: 700.0, 3: 600.0}


def test_diverged_results_do_not_reach_the_study():
    lim = _searcher()
    lim.suggest("a")
    lim.on_trial_result("a", {"best_val_ppl": 1e12, "epoch": 1, "diverged": 1.0})
    assert lim.searcher.study().trials[0].intermediate_values == {}


def test_tpe_suggests_differently_when_pruned_trials_carry_their_values():
    """Same trials, same results, same seed: TPE's next configuration depends on the pruned
    trials' intermediate values. One trial completed and 10 were stopped by ASHA, the later
    ones better: TPE's "good" group is the completed trial plus the best pruned one, which only
    the intermediate values can tell apart from the rest."""
    def history(lim: ConcurrencyLimiter) -> dict:
        _run(lim, "t0", [900.0, 850.0, 800.0], finished=True)
        for i in range(1, 11):  # 11 finished trials: TPE samples the next, 2 "good" ones
            _run(lim, f"t{i}", [900.0 - 20 * i], finished=False)
        return lim.suggest("next")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with_values = history(_searcher(report_intermediate=True))
        without = history(_searcher(report_intermediate=False))
    # each is what the seed gives (asked again, the same): the values alone make the difference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert history(_searcher(report_intermediate=True)) == with_values
        assert history(_searcher(report_intermediate=False)) == without
    assert with_values != without


# --- 2. a study Optuna's own tools open -----------------------------------------------------
def test_default_study_storage_sits_beside_the_mlflow_database(tmp_path):
    assert default_study_storage(f"sqlite:///{tmp_path}/mlflow.db") == \
        f"sqlite:///{tmp_path.resolve()}/optuna.db"
    assert default_study_storage("http://127.0.0.1:5000", workdir=tmp_path) == \
        f"sqlite:///{tmp_path.resolve()}/optuna.db"


def test_the_study_is_in_the_storage_and_survives_the_searcher(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    lim = _searcher(storage=url, name="kept")
    _run(lim, "a", [900.0, 700.0, 650.0], finished=True)
    lim.suggest("b")
    study = optuna.load_study(study_name="kept", storage=url)  # what optuna-dashboard reads
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    assert study.trials[0].value == 650.0 and study.trials[0].intermediate_values[3] == 650.0
    assert study.trials[0].params == get_space("smoke").warm_start
    assert [t.user_attrs[schema.OPTUNA_TUNE_TRIAL_ID] for t in study.trials] == ["a", "b"]
    # the same study opened again (a resumed driver) adds to it rather than starting over
    again = _searcher(storage=url, name="kept")
    assert len(again.searcher.study().trials) == 2


def test_an_unusable_study_storage_is_a_search_error(tmp_path):
    with pytest.raises(SearchError, match="cannot open the Optuna study storage"):
        _searcher(storage=f"sqlite:///{tmp_path}/missing/folder/optuna.db")


# --- 5. transfer between searches -----------------------------------------------------------
@pytest.fixture(scope="module")
def earlier_store(tmp_path_factory: pytest.TempPathFactory, new_mlflow_store) -> str:
    """An MLflow store whose experiment "earlier" holds five trial runs (one failed)."""
    uri = new_mlflow_store(tmp_path_factory.mktemp("earlier"))
    client = MlflowClient(uri)
    exp = client.create_experiment("earlier")
    trials = [  # (status, best_val_ppl, final_val_ppl, dropout)
        (schema.STATUS_COMPLETED, 300.0, 300.0, 0.1),
        (schema.STATUS_COMPLETED, 250.0, 250.0, 0.2),
        (schema.STATUS_STOPPED, 200.0, None, 0.3),   # ranks after every completed trial
        (schema.STATUS_FAILED, 100.0, None, 0.4),    # never transferred
        (schema.STATUS_COMPLETED, 280.0, 280.0, 0.5),
    ]
    for i, (status, best, final, dropout) in enumerate(trials):
        run = client.create_run(exp, tags={schema.ROLE: schema.ROLE_TRIAL})
        metrics = [Metric(schema.BEST_VAL_PPL, best, 0, 1)]
        if final is not None:
            metrics.append(Metric(schema.FINAL_VAL_PPL, final, 0, 0))
        client.log_batch(run.info.run_id, metrics=metrics,
                         params=[Param("model", "awd_lstm"), Param("dropout", str(dropout)),
                                 Param("nhid", str(32 + 16 * i)), Param("gpus_per_trial", "0")],
                         tags=[RunTag(schema.STATUS, status)])
    return uri


def test_best_configurations_follow_the_one_ranking_with_typed_values(earlier_store):
    client = MlflowClient(earlier_store)
    best = best_configurations(client, "earlier", 4)
    assert [c["dropout"] for c in best] == [0.2, 0.5, 0.1, 0.3]
    assert best[0] == {"model": "awd_lstm", "dropout": 0.2, "nhid": 48}
    assert len(best_configurations(client, "earlier", 2)) == 2


def test_warm_start_from_an_unknown_experiment_is_a_search_error(earlier_store):
    client = MlflowClient(earlier_store)
    with pytest.raises(SearchError, match="no MLflow experiment 'nope'"):
        best_configurations(client, "nope", 3)


def test_transferred_configurations_follow_the_paper_one():
    earlier = [{"model": "zaremba", "nhid": 48, "dropout": 0.1, "lr": 1.0, "dataset": "ptb"},
               {"model": "awd_gru", "emsize": 16, "nhid": 64, "dropout": 0.2}]
    lim = _searcher(warm_starts=earlier)
    first, second, third = (lim.suggest(t) for t in ("a", "b", "c"))
    assert {k: first[k] for k in get_space("smoke").warm_start} == get_space("smoke").warm_start
    assert (second["model"], second["nhid"], second["dropout"], second["lr"]) == \
        ("zaremba", 48, 0.1, 1.0)
    assert (third["model"], third["emsize"], third["nhid"], third["dropout"]) == \
        ("awd_gru", 16, 64, 0.2)


# --- the same, with real searches -----------------------------------------------------------
def _study_of(uri: str, experiment: str) -> optuna.Study:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    parent = next(r for r in client.search_runs([exp.experiment_id])
                  if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH)
    return optuna.load_study(study_name=parent.data.tags[schema.STUDY_NAME],
                             storage=parent.data.tags[schema.STUDY_STORAGE])


@pytest.mark.slow
def test_a_finished_search_leaves_its_study_beside_mlflow(smoke_search):
    cwd, _, uri = smoke_search
    study = _study_of(uri, "smoke")
    assert (cwd / "optuna.db").is_file()
    assert len(study.trials) == SMOKE_TRIALS
    done = [t for t in study.trials if t.state.is_finished()]
    assert len(done) == SMOKE_TRIALS
    for t in done:
        if t.state == optuna.trial.TrialState.FAIL:
            continue
        steps = sorted(t.intermediate_values)
        assert steps == list(range(1, len(steps) + 1)) and steps  # one value per epoch run
        assert t.value == t.intermediate_values[steps[-1]]
    assert study.trials[0].params == get_space("smoke").warm_start


@pytest.mark.slow
def test_the_study_opens_during_the_search_and_warm_starts_the_next(smoke_search, tmp_path):
    """A second search in the same folder: its study is readable while it runs, and its first
    trials after the paper configuration are the best two of the first search."""
    real_data("ptb")
    cwd, _, uri = smoke_search
    earlier = best_configurations(MlflowClient(uri), "smoke", 2)
    args = ["--space", "smoke", "--num-samples", "4", "--max-epochs", "1", "--concurrency", "1",
            "--seed", "3", "--experiment", "warm", "--warm-start-from", "smoke", "--top", "2",
            "--storage", str(tmp_path / "rr")]
    env = {**os.environ, "AWD_DATA_DIR": str(DATA_DIR)}
    proc = subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        seen = 0
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not seen:
            with contextlib.suppress(Exception):  # no parent run or study yet
                seen = len(_study_of(uri, "warm").trials)
            time.sleep(0.5)
        assert seen >= 1, "the study was not readable while the search ran"
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    study = _study_of(uri, "warm")
    assert len(study.trials) == 4
    assert study.trials[0].params == get_space("smoke").warm_start
    for trial, config in zip(study.trials[1:3], earlier, strict=True):
        assert trial.params == {k: config[k] for k in trial.params}


def test_a_restored_searcher_fails_trials_asked_after_its_snapshot(tmp_path):
    """A driver killed between asking Optuna for a trial and Tune's next snapshot leaves that
    trial RUNNING in the study; the restored searcher marks it failed (Tune asks anew)."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    lim = _searcher(storage=url, name="killed")
    lim.suggest("a")
    lim.searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's snapshot
    lim.suggest("b")  # asked after it, then the driver dies
    restored = _searcher(storage=url, name="killed").searcher
    restored.restore(str(tmp_path / "searcher.pkl"))
    states = {t.number: t.state for t in optuna.load_study(study_name="killed",
                                                           storage=url).trials}
    assert states == {0: optuna.trial.TrialState.RUNNING, 1: optuna.trial.TrialState.FAIL}


@pytest.mark.slow
def test_an_unusable_study_storage_writes_nothing_to_mlflow(tmp_path):
    """The study is opened before the parent run is created: no run is left RUNNING."""
    real_data("ptb")
    env = {**os.environ, "AWD_DATA_DIR": str(DATA_DIR)}
    (tmp_path / "optuna.db").write_text("not a database")  # passes the flag's own checks
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--space", "smoke", "--num-samples", "1",
         "--study-storage", f"sqlite:///{tmp_path}/optuna.db"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: cannot open the Optuna study storage" in proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])] == []
