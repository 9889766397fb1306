"""Search pieces without a Ray cluster: options, spaces, searcher, persistent ASHA, tracking."""

from __future__ import annotations

import pickle
import socket
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from awd.config import from_flat, preset
from search import storage
from search.options import OptionError, SearchOptions
from search.scheduler import PersistentASHA
from search.searcher import make_searcher
from search.tracking import TrackingError, check_tracking_uri, normalize_tracking_uri
from spaces import SPACES, UnknownSpaceError, get_space

PAPER_SPACES = {"awd_ptb": ("awd_lstm", "ptb", ""), "awd_wt2": ("awd_lstm", "wikitext-2", ""),
                "gru_ptb": ("awd_gru", "ptb", ""), "gru_wt2": ("awd_gru", "wikitext-2", ""),
                "zaremba_ptb": ("zaremba", "ptb", "medium"), "compare_ptb": ("awd_lstm", "ptb", "")}


@pytest.mark.parametrize("name", sorted(PAPER_SPACES))
def test_warm_start_of_each_real_space_is_the_paper_configuration(name):
    space = get_space(name)
    model, dataset, size = PAPER_SPACES[name]
    paper = preset(model, dataset, size)
    run = from_flat(space.paper_config())
    assert run.arch == paper.arch and run.model == paper.model
    assert run.train == replace(paper.train, optimizer="ntasgd")  # every trial: NT-ASGD


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_samples_valid_configs_in_both_branches(name):
    space = get_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    models = set()
    for _ in range(25):
        trial = study.ask()
        config = space.config(trial, epochs=2)
        run = from_flat(config)  # raises on any invalid field or value
        models.add(run.model)
        study.tell(trial, 1.0)
    if space.model == "mixed":
        assert models == {"awd_lstm", "awd_gru", "zaremba"}
    else:
        assert models == {space.model}


@pytest.mark.parametrize("name", sorted(set(SPACES) - {"smoke"}))
def test_real_spaces_search_dropouts_and_embedding_size(name):
    space = get_space(name)
    study = optuna.create_study()
    trial = study.ask(); space.config(trial)  # noqa: E702
    searched = set(trial.params)
    if space.model == "zaremba":  # one dropout; the embedding is nhid wide
        assert {"dropout", "nhid"} <= searched
    else:
        if space.model == "mixed":
            while trial.params["model"] == "zaremba":
                trial = study.ask(); space.config(trial)  # noqa: E702
            searched = set(trial.params)
        assert {"dropout", "dropouth", "dropouti", "dropoute", "wdrop", "emsize"} <= searched


def test_unknown_space_lists_the_known_ones():
    with pytest.raises(UnknownSpaceError) as err:
        get_space("nope")
    for name in SPACES:
        assert name in str(err.value)


@pytest.mark.parametrize("field, value, flag", [
    ("num_samples", 0, "--num-samples"), ("max_epochs", 0, "--max-epochs"),
    ("cpus_per_trial", 0, "--cpus-per-trial"), ("gpus_per_trial", -1, "--gpus-per-trial"),
    ("gpus_per_trial", 1.5, "--gpus-per-trial"), ("scheduler", "hyperband", "--scheduler"),
    ("concurrency", 0, "--concurrency"), ("time_budget", -5, "--time-budget"),
])
def test_bad_option_values_name_the_flag(field, value, flag):
    with pytest.raises(OptionError, match=flag):
        SearchOptions(space="smoke", **{field: value}).validate()


def test_fractional_gpus_are_allowed_for_packing():
    assert SearchOptions(space="smoke", gpus_per_trial=0.25).validate().gpus_per_trial == 0.25


def test_grace_period_never_exceeds_the_epoch_budget():
    opts = SearchOptions(space="awd_ptb", max_epochs=10)
    assert opts.grace == 10 and opts.epochs == 10
    assert SearchOptions(space="awd_ptb").grace == get_space("awd_ptb").grace_period


def test_searcher_proposes_the_warm_start_first_then_samples():
    limiter = make_searcher(get_space("smoke"), {"epochs": 2}, seed=3, study_name="t",
                            concurrency=4)
    searcher = limiter.searcher
    first = searcher.suggest("a")
    assert {k: first[k] for k in get_space("smoke").warm_start} == get_space("smoke").warm_start
    assert first["epochs"] == 2
    second = searcher.suggest("b")
    assert second != first


def test_searcher_tells_optuna_failed_pruned_and_complete():
    searcher = make_searcher(get_space("smoke"), {}, seed=0, study_name="t2",
                             concurrency=4).searcher
    for tid in "abc":
        searcher.suggest(tid)
        searcher.on_trial_result(tid, {"best_val_ppl": 500.0, "training_iteration": 1})
    searcher.on_trial_complete("a", {"best_val_ppl": 400.0, "finished": True})
    searcher.on_trial_complete("b", {"best_val_ppl": 500.0, "finished": False})
    searcher.on_trial_complete("c", {"best_val_ppl": 500.0}, error=True)
    states = [t.state for t in searcher.study().trials]
    values = [t.value for t in searcher.study().trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert values[0] == 400.0


def test_searcher_pickles_for_tune_experiment_state(tmp_path):
    searcher = make_searcher(get_space("compare_ptb"), {"epochs": 5}, 0, "t3", 2).searcher
    searcher.suggest("x")
    path = tmp_path / "s.pkl"
    searcher.save(str(path))
    assert path.stat().st_size > 0


def _trial(tid):
    return SimpleNamespace(trial_id=tid)


def test_asha_rungs_survive_a_restore(tmp_path):
    state = str(tmp_path / "rungs.json")

    def make():
        return PersistentASHA(state, time_attr="epoch", metric="best_val_ppl", mode="min",
                              max_t=9, grace_period=1, reduction_factor=3)

    asha = make()
    for i, tid in enumerate(["a", "b", "c"]):
        asha.on_trial_add(None, _trial(tid))
        asha.on_trial_result(None, _trial(tid), {"epoch": 1, "best_val_ppl": 100.0 + i})
    before = asha.rungs()
    assert any(recorded for _, recorded in before[0])
    # Tuner.restore unpickles the scheduler as it was at the start of the experiment:
    restored = pickle.loads(pickle.dumps(make()))
    assert restored.rungs() == [[(m, dict(r)) for m, r in b] for b in before]
    # ... so a new trial is judged against the rung recorded before the interruption.
    restored.on_trial_add(None, _trial("d"))
    assert restored.on_trial_result(None, _trial("d"), {"epoch": 1, "best_val_ppl": 500.0}) \
        == "STOP"
    # A trial ASHA stopped stays stopped if Tune's older snapshot restores it as live.
    stopped = pickle.loads(pickle.dumps(make()))
    stopped.on_trial_add(None, _trial("d"))
    assert stopped.on_trial_result(None, _trial("d"), {"epoch": 2, "best_val_ppl": 1.0}) \
        == "STOP"
    fresh = PersistentASHA(str(tmp_path / "other.json"), time_attr="epoch", metric="best_val_ppl",
                           mode="min", max_t=9, grace_period=1, reduction_factor=3)
    fresh.on_trial_add(None, _trial("d"))
    assert fresh.on_trial_result(None, _trial("d"), {"epoch": 1, "best_val_ppl": 500.0}) \
        == "CONTINUE"


def test_relative_sqlite_uri_is_made_absolute(tmp_path):
    assert normalize_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert normalize_tracking_uri("sqlite:///x.db", tmp_path) == f"sqlite:///{tmp_path / 'x.db'}"
    assert normalize_tracking_uri("http://h:5000") == "http://h:5000"


def test_dead_tracking_server_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TrackingError, match=f"cannot reach the MLflow tracking server at "
                       f"http://127.0.0.1:{port}"):
        check_tracking_uri(f"http://127.0.0.1:{port}", timeout=2)


def test_sqlite_in_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TrackingError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path}/missing/mlflow.db")


def test_storage_uris_reach_ray_untouched_and_local_paths_become_absolute(tmp_path):
    assert SearchOptions(space="smoke", storage="s3://b/r").experiment_dir == "s3://b/r/smoke"
    local = SearchOptions(space="smoke", storage="rr", experiment="x").experiment_dir
    assert local == str(Path.cwd() / "rr" / "x")


@pytest.mark.parametrize("uri", [False, True])
def test_small_state_files_round_trip_on_paths_and_uris(tmp_path, uri):
    location = storage.join((tmp_path.as_uri() if uri else str(tmp_path)), "exp", "state.json")
    assert storage.read_text(location) is None
    storage.write_text(location, '{"a": 1}')
    storage.write_text(location, '{"a": 2}')
    assert storage.read_text(location) == '{"a": 2}'
    assert (tmp_path / "exp" / "state.json").read_text() == '{"a": 2}'
