"""Search pieces without a Ray cluster: options, spaces, searcher, persistent ASHA, the best-trial
rule, and the MLflow records (against a recording client: nothing is read back from MLflow)."""

from __future__ import annotations

import json
import math
import pickle
import re
import socket
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from awd.config import from_flat, preset
from awd.errors import UserError
from reports.tables import best_trial
from search import schema, storage
from search.driver import SearchError, _saved_state
from search.options import OptionError, SearchOptions, build_parser, options_from_args
from search.results import TrialSummary, best_index, pick_best, status_of
from search.state import SearchState
from search.tracking.store import (
    TrackingError,
    check_tracking_location,
    close_open_trials,
    finish_trial_run,
    search_summary_metrics,
    trial_summary_metrics,
    write_summary,
)
from search.tune.scheduler import PersistentASHA
from search.tune.searcher import AWDOptunaSearch, SpaceConfig, make_searcher, searcher_for
from search.uris import resolve_tracking_uri
from spaces import SPACES, UnknownSpaceError, get_space, spec_of

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
        assert models == set(spec_of(space).model)
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
    with pytest.raises(UnknownSpaceError, match=r"^unknown space 'nope'; known spaces: ") as err:
        get_space("nope")
    for name in SPACES:
        assert name in str(err.value)
    assert isinstance(err.value, UserError) and not isinstance(err.value, KeyError)
    assert str(err.value).startswith("unknown space 'nope'")  # no KeyError quoting


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
    # sampled: a valid config of the same budget, off the warm start in some searched value
    from_flat(second)
    assert second["epochs"] == 2
    warm = get_space("smoke").warm_start
    assert [k for k in warm if second.get(k) != warm[k]], second


def test_searcher_tells_optuna_failed_pruned_and_complete():
    searcher = make_searcher(get_space("smoke"), {}, seed=0, study_name="t2",
                             concurrency=4).searcher
    for tid in "abc":
        searcher.suggest(tid)
        searcher.on_trial_result(tid, {"best_val_ppl": 500.0, "epoch": 1,
                                       "training_iteration": 1})
    searcher.on_trial_complete("a", {"best_val_ppl": 400.0, "finished": True})
    searcher.on_trial_complete("b", {"best_val_ppl": 500.0, "finished": False})
    searcher.on_trial_complete("c", {"best_val_ppl": 500.0}, error=True)
    states = [t.state for t in searcher.study().trials]
    values = [t.value for t in searcher.study().trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert values[0] == 400.0


def test_searcher_pickles_for_tune_experiment_state(tmp_path):
    """Tune saves the searcher with `save` and a restored search reads it with `restore`: the
    study (with the enqueued paper point), the seeded sampler and the space must survive."""
    space = get_space("compare_ptb")
    searcher = make_searcher(space, {"epochs": 5}, 0, "t3", 2).searcher
    fresh, used = tmp_path / "fresh.pkl", tmp_path / "used.pkl"
    searcher.save(str(fresh))  # before any trial: the warm start is still enqueued
    first = searcher.suggest("x")
    searcher.save(str(used))

    restored = AWDOptunaSearch()
    restored.restore(str(fresh))
    study = restored.study()
    assert [t.state for t in study.trials] == [TrialState.WAITING]
    assert study.trials[0].system_attrs["fixed_params"] == space.warm_start
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    sampler = study.sampler
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert (sampler._multivariate, sampler._group, sampler._constant_liar) == (True, True, True)
    assert restored._space == SpaceConfig(space, {"epochs": 5})
    assert (restored.metric, restored.mode) == (space.metric, space.mode)
    assert restored.suggest("y") == first  # the paper configuration, with the override
    assert {k: first[k] for k in space.warm_start} == space.warm_start and first["epochs"] == 5

    resumed = AWDOptunaSearch()
    resumed.restore(str(used))
    assert set(resumed._ot_trials) == {"x"}
    assert resumed.tune_trial_id(0) == "x"
    assert resumed.study().trials[0].state == TrialState.RUNNING
    following = resumed.suggest("z")
    from_flat(following)  # a valid config
    assert following["epochs"] == 5 and following != first
    assert following == searcher.suggest("z")  # the sampler's seeded state survived too


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


# --- the tracking URI: one rule for the search and the reports -----------------------------
def test_tracking_uri_explicit_beats_the_environment(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://env:5000"}
    assert resolve_tracking_uri("http://h:5000", env, tmp_path) == "http://h:5000"
    assert resolve_tracking_uri(f"sqlite:///{tmp_path}/a.db", env, tmp_path) == \
        f"sqlite:///{tmp_path}/a.db"


def test_tracking_uri_from_the_environment(tmp_path):
    assert resolve_tracking_uri(None, {"MLFLOW_TRACKING_URI": "http://env:5000"}, tmp_path) == \
        "http://env:5000"
    assert resolve_tracking_uri(None, {"MLFLOW_TRACKING_URI": " sqlite:///e.db "}, tmp_path) == \
        f"sqlite:///{tmp_path / 'e.db'}"


def test_tracking_uri_default_is_mlflow_db_in_the_working_folder(tmp_path, monkeypatch):
    assert resolve_tracking_uri(None, {}, tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("", {"MLFLOW_TRACKING_URI": ""}, tmp_path) == \
        f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_relative_sqlite_uri_is_made_absolute(tmp_path):
    assert resolve_tracking_uri("sqlite:///x.db", {}, tmp_path) == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_tracking_uri("sqlite:///sub/../y.db", {}, tmp_path) == \
        f"sqlite:///{tmp_path / 'y.db'}"
    absolute = f"sqlite:///{tmp_path / 'z.db'}"  # sqlite:////abs/path: left as it is
    assert absolute.startswith("sqlite:////")
    assert resolve_tracking_uri(absolute, {}, Path("/elsewhere")) == absolute
    assert resolve_tracking_uri("http://h:5000", {}, tmp_path) == "http://h:5000"


def test_dead_tracking_server_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TrackingError, match=f"cannot reach the MLflow tracking server at "
                       f"http://127.0.0.1:{port}"):
        check_tracking_location(f"http://127.0.0.1:{port}", timeout=2)


def test_sqlite_in_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TrackingError, match="does not exist"):
        check_tracking_location(f"sqlite:///{tmp_path}/missing/mlflow.db")


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


# --- --set KEY=VALUE: config values fixed for every trial ---------------------------------
@pytest.mark.parametrize("fixed, message", [
    (("lr",), "--set takes KEY=VALUE, got 'lr'"),
    (("=3",), "--set takes KEY=VALUE, got '=3'"),
    (("train_tokens=5000", "nonsense"), "--set takes KEY=VALUE, got 'nonsense'"),
    (("bogus=1",), "--set: unknown config field 'bogus'"),
    (("dropout=1.5",), "--set: dropout must be in [0, 1)"),
    (("emsize=big",), "--set: emsize: cannot use 'big'"),
])
def test_bad_fixed_values_are_option_errors(fixed, message):
    with pytest.raises(OptionError, match=f"^{re.escape(message)}") as err:
        SearchOptions(space="smoke", fixed=fixed).validate()
    assert str(err.value).startswith(message)


def test_fixed_values_reach_every_trial_config():
    opts = options_from_args(build_parser().parse_args(
        ["--space", "smoke", "--max-epochs", "2", "--set", "train_tokens=5000",
         "--set", "seed=9", "--set", "dropout=0.3"]))
    assert opts.fixed == ("train_tokens=5000", "seed=9", "dropout=0.3")
    assert opts.fixed_values == {"train_tokens": 5000, "seed": 9, "dropout": 0.3}  # typed
    searcher = searcher_for(opts, None, "smoke-01234567", 2, []).searcher
    for tid in ("a", "b", "c"):
        run = from_flat(searcher.suggest(tid))
        assert (run.train.train_tokens, run.train.seed, run.train.epochs) == (5000, 9, 2)
        assert run.arch.dropout == 0.3  # fixed beats sampled
    assert SearchOptions(space="smoke").fixed_values == {}


# --- the best-trial rule (search.results), shared by the search and the reports -----------
C, S, F, R = (schema.STATUS_COMPLETED, schema.STATUS_STOPPED, schema.STATUS_FAILED,
              schema.STATUS_RUNNING)
NAN, INF = math.nan, math.inf


def rec(status: str, best: float | None = None, final: float | None = None) -> dict:
    out: dict = {"status": status}
    if best is not None:
        out[schema.BEST_VAL_PPL] = best
    if final is not None:
        out[schema.FINAL_VAL_PPL] = final
    return out


@pytest.mark.parametrize("records, expected", [
    # a completed trial beats any stopped one, even one whose val ppl went lower
    ([rec(S, best=10.0), rec(C, best=49.0, final=50.0)], 1),
    # among completed trials: the lowest final val ppl, not the lowest best_val_ppl
    ([rec(C, best=40.0, final=60.0), rec(C, best=45.0, final=55.0)], 1),
    # NaN, inf or missing final values do not count as completed results
    ([rec(C, best=5.0, final=NAN), rec(C, best=70.0, final=70.0)], 1),
    ([rec(C, best=5.0, final=INF), rec(C, best=9.0), rec(C, best=70.0, final=70.0)], 2),
    # no completed result: the unfailed trial with the lowest val ppl reached
    ([rec(S, best=80.0), rec(R, best=70.0), rec(F, best=1.0)], 1),
    ([rec(C, best=40.0, final=NAN), rec(S, best=50.0)], 0),
    ([rec(S, best=NAN), rec(S, best=90.0), rec(F, best=1.0, final=1.0)], 1),
    # nothing to choose
    ([], None),
    ([rec(F, best=1.0, final=1.0)], None),
    ([rec(S, best=NAN), rec(R), rec(S, best=INF)], None),
])
def test_best_index_rules(records, expected):
    assert best_index(records) == expected
    # the report's table picks the same row from the same records
    frame = pd.DataFrame(records, columns=["status", schema.BEST_VAL_PPL, schema.FINAL_VAL_PPL])
    chosen = best_trial(frame)
    assert (None if chosen is None else int(chosen.name)) == expected


def summary(tid: str, status: str, **metrics) -> TrialSummary:
    config = get_space("smoke").paper_config(epochs=2)
    return TrialSummary(trial_id=tid, status=status, config=config, metrics=metrics,
                        checkpoint=None, error="boom" if status == F else None)


def test_pick_best_returns_the_trial_best_index_names():
    trials = [summary("a", S, best_val_ppl=10.0), summary("b", C, best_val_ppl=60.0,
                                                           final_val_ppl=61.0),
              summary("c", F, best_val_ppl=1.0)]
    assert pick_best(trials).trial_id == "b"
    assert pick_best(trials[:1]).trial_id == "a"
    assert pick_best(trials[2:]) is None and pick_best([]) is None


@pytest.mark.parametrize("result, status", [
    ({"finished": True, "best_val_ppl": 5.0}, C),
    ({"finished": False, "best_val_ppl": 5.0}, S),
    ({"best_val_ppl": 5.0}, S),
    ({"diverged": 1.0, "finished": False}, F),
])
def test_status_of_the_last_result(result, status):
    assert status_of(result) == status


# --- MLflow records, from Tune's last results only ------------------------------------------
def test_trial_summary_metrics_come_from_the_last_result():
    running = {"epoch": 3, "epochs_run": 3, "train_seconds": 12.345, "ntasgd_trigger_epoch": 0,
               "finished": False, "best_val_ppl": 90.0, "num_params": 1000}
    assert trial_summary_metrics(running) == {"epochs_run": 3.0, "train_seconds": 12.345}
    done = {**running, "ntasgd_trigger_epoch": 2, "finished": True, "final_val_ppl": 88.5,
            "final_test_ppl": 85.25}
    assert trial_summary_metrics(done) == {"epochs_run": 3.0, "train_seconds": 12.345,
                                           "ntasgd_trigger_epoch": 2.0, "final_val_ppl": 88.5,
                                           "final_test_ppl": 85.25}
    diverged = {"epoch": 2, "diverged": 1.0, "best_val_ppl": 1e12, "epochs_run": 1,
                "train_seconds": 3.5}
    assert trial_summary_metrics(diverged) == {"epochs_run": 1.0, "train_seconds": 3.5}
    assert trial_summary_metrics({}) == {}
    assert set(trial_summary_metrics(done)) <= set(schema.TRIAL_SUMMARY_METRICS)


def test_search_summary_metrics_come_from_the_trials_last_results():
    trials = [summary("a", C, best_val_ppl=59.0, final_val_ppl=60.0, final_test_ppl=58.0,
                      train_seconds=100.0),
              summary("b", S, best_val_ppl=70.0, train_seconds=50.0),
              summary("c", F, train_seconds=6.0),
              summary("d", F)]  # errored before any result
    best = pick_best(trials)
    got = search_summary_metrics(trials, best, wall_seconds=123.0, gpus_per_trial=0.5)
    assert got == {"trials_total": 4.0, "trials_completed": 1.0, "trials_stopped_early": 1.0,
                   "trials_failed": 2.0, "trials_interrupted": 0.0, "wall_seconds": 123.0,
                   "gpu_hours": pytest.approx(156.0 * 0.5 / 3600),
                   schema.BEST_VAL_PPL: 60.0, schema.BEST_TEST_PPL: 58.0}
    assert set(got) == set(schema.SEARCH_SUMMARY_METRICS)
    # no completed trial: the best stopped one's val ppl, and no test perplexity
    stopped = search_summary_metrics(trials[1:], pick_best(trials[1:]), 1.0, 1.0)
    assert stopped[schema.BEST_VAL_PPL] == 70.0 and schema.BEST_TEST_PPL not in stopped
    nothing = search_summary_metrics(trials[2:], None, 1.0, 0.0)
    assert schema.BEST_VAL_PPL not in nothing and nothing["trials_failed"] == 2.0


class RecordingClient:
    """The MLflow client calls that closing a search may make; no reads of metric history
    exist here, so a summary read back from MLflow would fail with AttributeError."""

    def __init__(self, start_time_ms: int = 0) -> None:
        self.batches: list[tuple[str, dict, dict]] = []  # run id, metrics, tags
        self.terminated: dict[str, str] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self.artifacts: list[tuple[str, str | None, str, bytes]] = []
        self.start_time_ms = start_time_ms

    def log_batch(self, run_id, metrics=(), params=(), tags=()) -> None:
        self.batches.append((run_id, {m.key: m.value for m in metrics},
                             {t.key: t.value for t in tags}))

    def set_terminated(self, run_id, status=None, end_time=None) -> None:
        self.terminated[run_id] = status

    def set_tag(self, run_id, key, value) -> None:
        self.tags.setdefault(run_id, {})[key] = value

    def get_run(self, run_id):
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id,
                                                    start_time=self.start_time_ms))

    def log_artifact(self, run_id, local_path, artifact_path=None) -> None:
        path = Path(local_path)
        self.artifacts.append((run_id, artifact_path, path.name, path.read_bytes()))


def fake_run(run_id: str, status: str):
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id,
                                                status="RUNNING" if status == R else "FINISHED"),
                           data=SimpleNamespace(tags={schema.STATUS: status}))


def test_finish_trial_run_logs_status_and_the_last_results_summary():
    client = RecordingClient()
    last = {"epoch": 2, "epochs_run": 2, "train_seconds": 7.5, "ntasgd_trigger_epoch": 0,
            "finished": True, "final_val_ppl": 80.0, "final_test_ppl": 77.0}
    finish_trial_run(client, "r1", last, C, None)
    finish_trial_run(client, "r2", {"epochs_run": 1, "train_seconds": 2.0}, F, "OOM")
    assert client.batches == [
        ("r1", trial_summary_metrics(last), {schema.STATUS: C}),
        ("r2", {"epochs_run": 1.0, "train_seconds": 2.0}, {schema.STATUS: F,
                                                           schema.FAILURE: "OOM"})]
    assert client.terminated == {"r1": "FINISHED", "r2": "FAILED"}


def test_close_open_trials_closes_only_runs_still_running():
    client = RecordingClient()
    runs = {"a": fake_run("ra", R), "b": fake_run("rb", C), "c": fake_run("rc", R)}
    trials = [summary("a", S, epochs_run=1, train_seconds=3.0, best_val_ppl=90.0),
              summary("b", C, epochs_run=2, train_seconds=6.0, finished=True,
                      final_val_ppl=80.0, final_test_ppl=79.0),
              summary("c", F, epochs_run=1, train_seconds=1.0),
              summary("gone", S)]  # no run: nothing to close
    close_open_trials(client, runs, trials)
    assert client.batches == [
        ("ra", {"epochs_run": 1.0, "train_seconds": 3.0}, {schema.STATUS: S}),
        ("rc", {"epochs_run": 1.0, "train_seconds": 1.0}, {schema.STATUS: F,
                                                           schema.FAILURE: "boom"})]
    assert client.terminated == {"ra": "FINISHED", "rc": "FAILED"}


def test_write_summary_tags_the_best_trial_and_logs_its_artifacts(tmp_path):
    import time

    client = RecordingClient(start_time_ms=int(time.time() * 1000) - 60_000)
    trials = [summary("a", S, best_val_ppl=50.0, train_seconds=10.0),
              summary("b", C, best_val_ppl=61.0, final_val_ppl=62.0, final_test_ppl=60.0,
                      train_seconds=20.0)]
    best = pick_best(trials)
    model = tmp_path / "best_model.pt"
    model.write_bytes(b"weights")
    runs = {"a": fake_run("ra", S), "b": fake_run("rb", C)}
    write_summary(client, "parent", 1.0, runs, trials, best, model)

    ((run_id, metrics, _),) = client.batches
    assert run_id == "parent"
    expected = search_summary_metrics(trials, best, metrics["wall_seconds"], 1.0)
    assert metrics == expected and 59 < metrics["wall_seconds"] < 600
    assert client.tags == {"parent": {schema.BEST_TRIAL_ID: "b", schema.PARTIAL: "false"}}
    config = json.dumps(best.full_config, indent=2, sort_keys=True).encode()
    # the weights go into the registered model (tests/test_registry.py), not loose artifacts
    assert sorted(client.artifacts, key=str) == sorted([
        ("parent", None, "config.json", config), ("rb", None, "config.json", config)], key=str)
    assert client.terminated == {"parent": "FINISHED"}


def test_write_summary_without_a_best_trial_only_counts(tmp_path):
    client = RecordingClient()
    trials = [summary("a", F)]
    write_summary(client, "parent", 0.0, {}, trials, None, None)
    assert client.batches[0][1]["trials_failed"] == 1.0
    assert schema.BEST_VAL_PPL not in client.batches[0][1]
    assert client.tags == {"parent": {schema.PARTIAL: "false"}} and client.artifacts == []
    assert client.terminated == {"parent": "FINISHED"}


# --- the saved search state ------------------------------------------------------------------
def test_resume_without_a_saved_search_is_a_search_error(tmp_path):
    with pytest.raises(SearchError, match="nothing to resume"):
        SearchState.load(str(tmp_path / "nowhere"))


def test_search_state_round_trips_through_its_file(tmp_path):
    opts = SearchOptions(space="smoke", fixed=("seed=1",), num_samples=4, max_epochs=2)
    state = SearchState(parent_run_id="p" * 32, experiment_id="3", tracking_uri="sqlite:///x.db",
                        options=opts, gpus_per_trial=0.5, study_storage="sqlite:///o.db",
                        study_name="smoke-1")
    state.save(str(tmp_path))
    saved = json.loads((tmp_path / "awdsearch.json").read_text())
    assert saved["format"] == 2 and saved["gpus_per_trial"] == 0.5
    assert saved["options"]["fixed"] == ["seed=1"]
    assert SearchState.load(str(tmp_path)) == state  # options typed again, fixed a tuple
    # Tune's own experiment state must be there too before a search counts as resumable
    with pytest.raises(SearchError, match="nothing to resume"):
        _saved_state(str(tmp_path))


def test_a_state_file_of_another_format_is_refused_with_what_to_do(tmp_path):
    older = {"parent_run_id": "p", "experiment_id": "3", "tracking_uri": "sqlite:///x.db",
             "options": {"space": "smoke"}, "gpus_per_trial": 0.0}  # format 1 had no field
    (tmp_path / "awdsearch.json").write_text(json.dumps(older))
    with pytest.raises(SearchError, match=r"^the saved search at .* has state format 1 "
                       r"\(awdsearch.json\); this awdsearch reads format 2: finish that search "
                       r"with the version that started it, or start a new one with "
                       r"--experiment NAME$"):
        SearchState.load(str(tmp_path))
    newer = {**older, "format": 3}
    (tmp_path / "awdsearch.json").write_text(json.dumps(newer))
    with pytest.raises(SearchError, match="has state format 3"):
        SearchState.load(str(tmp_path))
