"""Multi-objective search (issue 18): ``--objectives val_ppl,num_params``.

Fast: the flag's bad values, the searcher's study (one direction per objective, a trial ASHA
stopped told PRUNED without values and so never on the front), the front written to MLflow.
Slow: a real smoke search whose Pareto set in MLflow equals Optuna's ``study.best_trials``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
from conftest import DATA_DIR, real_data
from mlflow.tracking import MlflowClient

from search import schema
from search.options import OptionError, SearchOptions
from search.tracking.pareto import front_trial_ids, tag_front
from search.tune.searcher import make_searcher, searcher_for
from spaces import get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
V, P, S = schema.BEST_VAL_PPL, schema.NUM_PARAMS, schema.TRAIN_SECONDS


# --- the flag ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value, message", [
    ("val_ppl,flops", "unknown metric 'flops'; known: val_ppl, num_params, train_seconds"),
    ("val_ppl,num_params,val_ppl", "val_ppl is given twice"),
    ("num_params,train_seconds", "val_ppl must be one of them"),
    ("num_params,val_ppl", "ASHA stops trials on the first objective, which must be val_ppl"),
])
def test_bad_objectives_are_refused(value, message):
    with pytest.raises(OptionError, match=message):
        SearchOptions(space="smoke", objectives=value).validate()


def test_objectives_map_to_result_metrics_and_without_asha_any_order_goes():
    opts = SearchOptions(space="smoke", objectives="num_params,val_ppl", scheduler="none")
    assert opts.validate().objective_metrics == (P, V)
    assert SearchOptions(space="smoke").objective_metrics == (V,)


def test_the_command_refuses_bad_objectives_before_ray_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "search.run", "--space", "smoke",
                           "--objectives", "num_params"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--objectives: val_ppl must be one of them" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


# --- the study --------------------------------------------------------------------------------
def _searcher(storage: str | None = None, name: str = "mo"):
    return make_searcher(get_space("smoke"), {"epochs": 3}, 0, name, 4, storage_url=storage,
                         objectives=(V, P))


def _run(lim, tid: str, val: float, params: float, finished: bool) -> None:
    lim.suggest(tid)
    for epoch in (1, 2):  # intermediate results: Optuna takes none for several objectives
        lim.on_trial_result(tid, {V: val + 10 * (2 - epoch), P: params, S: 3.0, "epoch": epoch})
    lim.on_trial_complete(tid, {V: val, P: params, S: 6.0, "epoch": 2, "finished": finished})


def test_completed_trials_get_every_objective_and_a_stopped_one_none(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    lim = _searcher(storage)
    _run(lim, "a", 100.0, 5e6, finished=True)
    _run(lim, "b", 120.0, 2e6, finished=True)
    _run(lim, "c", 130.0, 6e6, finished=True)  # beaten by a on both
    _run(lim, "d", 50.0, 1e6, finished=False)  # stopped by ASHA: would dominate all, were it told
    study = optuna.load_study(study_name="mo", storage=storage)
    assert len(study.directions) == 2
    assert all(d == optuna.study.StudyDirection.MINIMIZE for d in study.directions)
    states = {t.user_attrs[schema.OPTUNA_TUNE_TRIAL_ID]: t for t in study.trials}
    assert states["a"].values == [100.0, 5e6]
    assert states["d"].state == optuna.trial.TrialState.PRUNED and states["d"].values is None
    assert all(not t.intermediate_values for t in study.trials)
    assert front_trial_ids(storage, "mo") == ["a", "b"]  # best first by validation perplexity


def test_searcher_for_passes_the_objectives():
    opts = SearchOptions(space="smoke", objectives="val_ppl,train_seconds").validate()
    lim = searcher_for(opts, None, "x", 2)
    assert lim.searcher.metric == [V, S] and lim.searcher.mode == ["min", "min"]


def test_the_front_is_tagged_on_every_trial_run_and_listed_on_the_parent(tmp_path,
                                                                        new_mlflow_store):
    uri = new_mlflow_store(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("mo")
    parent = client.create_run(exp).info.run_id
    runs = {tid: client.create_run(exp) for tid in ("a", "b", "c")}
    tag_front(client, parent, runs, ["b", "a"])
    assert {t: client.get_run(r.info.run_id).data.tags[schema.PARETO]
            for t, r in runs.items()} == {"a": "true", "b": "true", "c": "false"}
    assert json.loads(client.get_run(parent).data.tags[schema.PARETO_TRIALS]) == ["b", "a"]
    tag_front(client, parent, runs, ["c"])  # a resumed search's front moved: tags follow
    assert client.get_run(runs["a"].info.run_id).data.tags[schema.PARETO] == "false"


# --- one real multi-objective search -----------------------------------------------------------
@pytest.mark.slow
def test_a_multi_objective_search_tags_optunas_front_in_mlflow(tmp_path):
    real_data("ptb")
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--space", "smoke", "--num-samples", "6",
         "--max-epochs", "2", "--concurrency", "2", "--objectives", "val_ppl,num_params",
         "--set", "train_tokens=3000", "--seed", "0", "--experiment", "mo"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "AWD_DATA_DIR": str(DATA_DIR)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "objectives: best_val_ppl, num_params, all minimised" in proc.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mo").experiment_id
    runs = client.search_runs([exp], max_results=100)
    parent = next(r for r in runs if r.data.tags[schema.ROLE] == schema.ROLE_SEARCH)
    trials = [r for r in runs if r.data.tags[schema.ROLE] == schema.ROLE_TRIAL]
    study = optuna.load_study(study_name=parent.data.tags[schema.STUDY_NAME],
                              storage=parent.data.tags[schema.STUDY_STORAGE])
    optuna_front = {t.user_attrs[schema.OPTUNA_TUNE_TRIAL_ID] for t in study.best_trials}
    mlflow_front = {r.data.tags[schema.TRIAL_ID] for r in trials
                    if r.data.tags[schema.PARETO] == "true"}
    assert optuna_front and mlflow_front == optuna_front
    assert set(json.loads(parent.data.tags[schema.PARETO_TRIALS])) == optuna_front
    for r in trials:  # on the front: completed, with both objectives as Optuna was told
        if r.data.tags[schema.TRIAL_ID] in optuna_front:
            assert r.data.tags[schema.STATUS] == schema.STATUS_COMPLETED
    stopped = [r for r in trials if r.data.tags[schema.STATUS] == schema.STATUS_STOPPED]
    assert all(r.data.tags[schema.PARETO] == "false" for r in stopped)
    told = {t.user_attrs[schema.OPTUNA_TUNE_TRIAL_ID]: t.values for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE}
    for r in trials:
        tid = r.data.tags[schema.TRIAL_ID]
        if tid in told:
            assert told[tid] == pytest.approx([r.data.metrics[V], r.data.metrics[P]])
    assert "Pareto front of (best_val_ppl, num_params" in proc.stdout
    from reports.build import build

    build(uri, ["mo"], tmp_path / "report", log_artifacts=False)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "The searches' own Pareto fronts" in text
    for tid in optuna_front:
        assert f"| mo | {tid} |" in text
