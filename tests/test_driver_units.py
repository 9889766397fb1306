"""The driver's guards, without Ray: one driver per search, honest resumes, fast failures,
deterministic trial failures, and one MLflow run per trial Ray knows."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import fields, replace

import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from awd.errors import ConfigError, DataError, TrainingDiverged
from search import schema
from search.errors import SearchError
from search.lock import DriverLock, SearchInUse
from search.options import (
    OptionError,
    SearchOptions,
    build_parser,
    options_from_args,
    resume_conflicts,
    resumed,
)
from search.results import TrialSummary, status_of
from search.run import _stopped
from search.state import SearchState
from search.tracking.store import (
    TrackingError,
    close_open_trials,
    prune_child_runs,
    reopen_interrupted_trials,
    write_summary,
)
from search.tune.session import check_ray_address
from search.tune.trainable import fatal_reason


# --- one driver per search ---------------------------------------------------------------------
def test_a_second_driver_on_one_search_is_refused_with_the_holder(tmp_path):
    refused = pytest.raises(SearchInUse, match=r"^another driver is running the search at .*pid")
    with DriverLock(str(tmp_path / "exp")), refused as caught:
        DriverLock(str(tmp_path / "exp")).acquire()
    message = str(caught.value)
    assert "another driver" in message and "pid" in message and "\n" not in message
    with DriverLock(str(tmp_path / "exp")):  # released on exit: the next driver gets it
        pass


def test_the_lock_of_a_killed_driver_is_not_stale(tmp_path):
    exp = tmp_path / "exp"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from search.lock import DriverLock; "
         f"DriverLock({str(exp)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(SearchInUse, match=f"pid {holder.pid}"):
        DriverLock(str(exp)).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with DriverLock(str(exp)):  # the kernel dropped the dead driver's lock
        assert (exp / "driver.lock").exists()


# --- honest resumes ----------------------------------------------------------------------------
def saved_options(**changes: object) -> SearchOptions:
    return SearchOptions(space="smoke", num_samples=3, max_epochs=2, **changes)


def test_resume_names_each_flag_that_differs_from_the_saved_search():
    saved = saved_options(fixed=("train_tokens=5000",))
    same = SearchOptions(space="smoke", num_samples=3, max_epochs=2, resume=True,
                         fixed=("train_tokens=5000",))
    assert resume_conflicts(same, saved) == []
    # flags left at their defaults mean "as saved": the usual `--resume --experiment X`
    assert resume_conflicts(SearchOptions(space="smoke", resume=True), saved) == []
    other = SearchOptions(space="awd_ptb", num_samples=5, seed=1, resume=True,
                          fixed=("train_tokens=9",), address="auto", confirm_top=2)
    conflicts = resume_conflicts(other, saved)
    assert conflicts == ["--space awd_ptb (saved: smoke)", "--num-samples 5 (saved: 3)",
                         "--seed 1 (saved: 0)", "--set train_tokens=9 (saved: train_tokens=5000)"]


def test_a_state_file_that_is_not_json_is_a_one_line_error(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "awdsearch.json").write_text("{trunc")
    with pytest.raises(SearchError, match=r"^the saved search at .*exp is unreadable "
                                          r"\(awdsearch.json: Expecting property name"):
        SearchState.load(str(exp))


# --- fast failures -----------------------------------------------------------------------------
def test_an_unreachable_ray_address_fails_in_seconds():
    start = time.monotonic()
    with pytest.raises(SearchError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1"):
        check_ray_address("127.0.0.1:1")
    assert time.monotonic() - start < 10
    with pytest.raises(SearchError, match="HOST:PORT"):
        check_ray_address("nonsense")
    check_ray_address("auto")  # found by Ray itself
    check_ray_address(None)


# --- trial failures that retries cannot fix ----------------------------------------------------
@pytest.mark.parametrize("error, fatal", [
    (DataError("train.txt is empty"), "DataError: train.txt is empty"),
    (ConfigError("dropout must be in [0, 1)"), "ConfigError: dropout must be in [0, 1)"),
    (RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: 1 TB"),
     "out of memory: "),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB"), "out of memory: "),
    (MemoryError(), "out of memory: "),
    (RuntimeError("NCCL: connection reset"), None),  # worth a retry
    (TrainingDiverged(1, float("nan"), "train"), None),  # its own mechanism (a marker)
])
def test_deterministic_trial_failures_are_told_apart_from_retryable_ones(error, fatal):
    reason = fatal_reason(error)
    assert (reason is None) if fatal is None else reason.startswith(fatal)


def test_a_fatal_result_is_a_failed_trial():
    assert status_of({schema.FATAL: "DataError: x", schema.EPOCH: 0}) == schema.STATUS_FAILED
    assert status_of({schema.FINISHED: True}) == schema.STATUS_COMPLETED


# --- one run per trial Ray knows; honest ends ---------------------------------------------------
@pytest.fixture
def store(tmp_path, new_mlflow_store):
    uri = new_mlflow_store(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp, tags={schema.ROLE: schema.ROLE_SEARCH}).info.run_id
    return client, exp, parent


def child(client: MlflowClient, exp: str, parent: str, trial_id: str,
          status: str = schema.STATUS_RUNNING) -> str:
    return client.create_run(exp, tags={schema.PARENT_RUN_ID: parent, schema.TRIAL_ID: trial_id,
                                        schema.ROLE: schema.ROLE_TRIAL,
                                        schema.STATUS: status}).info.run_id


def test_runs_of_trials_ray_never_kept_are_deleted_and_one_run_per_trial_stays(store):
    client, exp, parent = store
    first_a = child(client, exp, parent, "a")
    child(client, exp, parent, "a")  # a second run of one trial
    phantom = child(client, exp, parent, "ghost")  # created just before a driver was killed
    b = child(client, exp, parent, "b")
    confirm_run = client.create_run(exp, tags={schema.PARENT_RUN_ID: parent,
                                               schema.TRIAL_ID: "cf", schema.ROLE: "confirm"})
    kept = prune_child_runs(client, exp, parent, {"a", "b"})
    assert {k: r.info.run_id for k, r in kept.items()} == {"a": first_a, "b": b}
    assert client.get_run(phantom).info.lifecycle_stage == "deleted"
    alive = client.search_runs([exp], filter_string=f"tags.`{schema.PARENT_RUN_ID}` = '{parent}'")
    assert len(alive) == 3 and confirm_run.info.run_id in {r.info.run_id for r in alive}


def test_runs_holding_results_are_never_deleted_even_if_ray_forgot_their_trial(store):
    """A restore that lost Tune's state must not take MLflow's results with it (issue 22)."""
    client, exp, parent = store
    done = child(client, exp, parent, "old-done", schema.STATUS_COMPLETED)
    on_disk = child(client, exp, parent, "old-partial")  # result.json still on disk
    ghost = child(client, exp, parent, "ghost")  # nothing anywhere: the phantom case
    new = child(client, exp, parent, "new")
    kept = prune_child_runs(client, exp, parent, {"new"}, on_disk={"old-partial"})
    assert set(kept) == {"new"} and kept["new"].info.run_id == new
    assert client.get_run(ghost).info.lifecycle_stage == "deleted"
    for run_id in (done, on_disk):
        assert client.get_run(run_id).info.lifecycle_stage == "active"
    partial = client.get_run(on_disk)
    assert partial.info.status == "KILLED"
    assert partial.data.tags[schema.STATUS] == schema.STATUS_INTERRUPTED
    assert client.get_run(done).data.tags[schema.STATUS] == schema.STATUS_COMPLETED
    assert client.get_run(done).info.status == "FINISHED"


def test_a_stopped_search_is_killed_partial_and_its_interrupted_trials_reopen(store):
    client, exp, parent = store
    run_a = child(client, exp, parent, "a")
    run_b = child(client, exp, parent, "b")
    trials = [TrialSummary("a", schema.STATUS_COMPLETED, {}, {
        schema.FINISHED: True, schema.EPOCHS_RUN: 2, schema.FINAL_VAL_PPL: 90.0,
        schema.FINAL_TEST_PPL: 88.0}, None, None),
              TrialSummary("b", schema.STATUS_INTERRUPTED, {}, {schema.EPOCHS_RUN: 1}, None,
                           None)]
    runs = prune_child_runs(client, exp, parent, {"a", "b"})
    close_open_trials(client, runs, trials)
    write_summary(client, parent, 0.0, runs, trials, None, None, stopped=True)
    b = client.get_run(run_b)
    assert b.info.status == "KILLED" and b.data.tags[schema.STATUS] == schema.STATUS_INTERRUPTED
    assert client.get_run(run_a).info.status == "FINISHED"
    top = client.get_run(parent)
    assert top.info.status == "KILLED" and top.data.tags[schema.PARTIAL] == "true"
    assert top.data.metrics["trials_interrupted"] == 1 and schema.BEST_TRIAL_ID not in top.data.tags
    reopen_interrupted_trials(client, exp, parent)  # --resume
    b = client.get_run(run_b)
    assert b.info.status == "RUNNING" and b.data.tags[schema.STATUS] == schema.STATUS_RUNNING
    assert client.get_run(run_a).data.tags[schema.STATUS] == schema.STATUS_COMPLETED  # as it was


def test_the_stop_message_gives_the_resume_command_and_the_signal_exit_status(capsys):
    from search.driver import SearchOutcome

    trials = [TrialSummary("a", schema.STATUS_INTERRUPTED, {}, {}, None, None)]
    outcome = SearchOutcome(trials, None, "p", "sqlite:////x/mlflow.db", "/x", None,
                            stopped_by=signal.SIGTERM)
    assert _stopped(outcome, ["--space", "smoke", "--set", "note=a b"]) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM" in err and "1 interrupted" in err
    assert "python -m search.run --space smoke --set 'note=a b' --resume" in err


def test_a_registered_dataset_edited_on_disk_is_refused_before_any_trial(tmp_path, monkeypatch):
    import shutil

    from conftest import real_data

    from search.driver import check_data

    shutil.copytree(real_data("ptb"), tmp_path / "ptb")
    monkeypatch.setenv("AWD_DATA_DIR", str(tmp_path))
    check_data("ptb")  # the published files
    valid = tmp_path / "ptb" / "valid.txt"
    valid.write_text(valid.read_text().replace(" the ", " a ", 1))
    with pytest.raises(SearchError, match=r"valid\.txt does not match the ptb registry checksum"):
        check_data("ptb")


def test_a_search_in_which_no_trial_produced_a_result_exits_1_with_the_first_reason(
        monkeypatch, capsys):
    import search.driver
    import search.run
    from search.driver import SearchOutcome

    failed = [TrialSummary(t, schema.STATUS_FAILED, {}, {schema.FATAL: "DataError: gone"}, None,
                           "DataError: gone") for t in ("a", "b")]
    outcome = SearchOutcome(failed, None, "p", "sqlite:////x/mlflow.db", "/x", None)
    monkeypatch.setattr(search.driver, "run_search", lambda opts: outcome)
    assert search.run.main(["--space", "smoke"]) == 1
    err = capsys.readouterr().err
    assert "error: no trial produced a result (2 trials, 2 failed; the first failure: " \
           "DataError: gone)" in err


def test_an_end_that_mlflow_did_not_take_is_not_a_success(monkeypatch, capsys, tmp_path):
    """Results still spooled at the end: exit 75 with the --resume command, not 0 (issue 22)."""
    import search.driver
    import search.run
    from search.driver import SearchOutcome

    done = [TrialSummary("a", schema.STATUS_COMPLETED, {}, {
        schema.FINISHED: True, schema.FINAL_VAL_PPL: 90.0, schema.FINAL_TEST_PPL: 88.0}, None,
        None)]
    outcome = SearchOutcome(done, done[0], "p", "http://127.0.0.1:9/", "/x",
                            tmp_path / "best.json", unsynced=("/x/mlflow_spool.jsonl",))
    monkeypatch.setattr(search.driver, "run_search", lambda opts: outcome)
    assert search.run.main(["--space", "smoke"]) == search.run.EXIT_UNSYNCED == 75
    err = capsys.readouterr().err
    assert "has not taken all its results; they are kept in /x/mlflow_spool.jsonl" in err
    assert "python -m search.run --space smoke --resume" in err


def test_the_best_trials_table_shows_every_searched_parameter_and_dashes(monkeypatch):
    """Issue 21: the space's own parameters (not a fixed list), — where one does not apply to
    a trial's model, integers as integers."""
    from search.driver import SearchOutcome
    from search.run import results_table
    from spaces import get_space

    space = get_space("smoke")
    awd = {"model": "awd_lstm", "emsize": 32, "nhid": 64, "dropout": 0.4, "dropouth": 0.25,
           "dropouti": 0.4, "dropoute": 0.1, "wdrop": 0.5, "lr": 10.0, "nlayers": 2}
    zar = {"model": "zaremba", "nhid": 48, "dropout": 0.1234, "lr": 1.0, "preset": "small"}
    trials = [TrialSummary("a", schema.STATUS_COMPLETED, awd, {
        schema.EPOCHS_RUN: 3, schema.BEST_VAL_PPL: 500.0, schema.FINAL_VAL_PPL: 500.0,
        schema.FINAL_TEST_PPL: 490.0}, None, None),
        TrialSummary("z", schema.STATUS_STOPPED, zar, {schema.EPOCHS_RUN: 1,
                                                       schema.BEST_VAL_PPL: 900.0}, None, None)]
    outcome = SearchOutcome(trials, trials[0], "p", "sqlite:////x/mlflow.db", "/x", None)
    table = results_table(outcome, space)
    assert list(table.columns)[6:] == ["model", "nhid", "dropout", "lr", "emsize", "dropouth",
                                       "dropouti", "dropoute", "wdrop"]
    z = table[table["trial"] == "z"].iloc[0]
    a = table[table["trial"] == "a"].iloc[0]
    assert z["emsize"] == "—" and z["wdrop"] == "—" and z["nhid"] == "48"
    assert z["dropout"] == "0.123" and z[schema.FINAL_VAL_PPL] == "—" and z["epochs"] == "1"
    assert a["emsize"] == "32" and a[schema.FINAL_TEST_PPL] == "490.00"
    assert table.iloc[0]["trial"] == "a"  # the best first


def test_the_parser_takes_every_default_from_search_options():
    parsed = vars(build_parser().parse_args([]))
    for f in fields(SearchOptions):
        if f.name in parsed:
            expected = list(f.default) if isinstance(f.default, tuple) else f.default
            assert parsed[f.name] == expected, f.name
    assert options_from_args(build_parser().parse_args([])) == SearchOptions()


def test_a_resumed_search_runs_with_its_saved_options_and_the_flags_a_resume_may_change():
    saved = saved_options(fixed=("train_tokens=5000",), seed=7, confirm_top=2, seeds=4)
    given = SearchOptions(resume=True, experiment="other", storage="elsewhere", address="auto")
    opts = resumed(given, saved)
    assert opts == replace(saved, resume=True, experiment="other", storage="elsewhere",
                           address="auto")  # the confirmation asked for at the start, kept
    assert resumed(replace(given, confirm_top=1), saved).confirm_top == 1
    assert resumed(replace(given, confirm_top=1), saved).seeds == 3  # asked for now: its seeds
    with pytest.raises(OptionError, match=r"^--resume continues the saved search as it was "
                       r"started; these flags differ from it: --seed 1 \(saved: 7\)\. Leave"):
        resumed(replace(given, seed=1), saved)


def test_fixed_values_reach_mlflow_as_a_json_list():
    opts = SearchOptions(fixed=("train_tokens=5000", "emsize=32"))
    assert json.loads(opts.as_params()["fixed"]) == ["train_tokens=5000", "emsize=32"]
    assert SearchOptions.from_json(json.loads(json.dumps(opts.to_json()))) == opts


def test_a_store_that_fails_while_ray_starts_leaves_no_ray_behind(monkeypatch, tmp_path):
    import search.driver as driver

    calls = []
    monkeypatch.setattr(driver.session, "connect_ray", lambda address: calls.append("ray"))
    monkeypatch.setattr(driver.session, "disconnect", lambda: calls.append("disconnect"))

    def broken(uri):
        raise TrackingError("cannot use MLflow tracking URI x: database disk image is malformed")

    monkeypatch.setattr(driver, "open_store", broken)
    with pytest.raises(TrackingError, match="database disk image is malformed"):
        driver._run(SearchOptions(storage=str(tmp_path)), "sqlite:///x.db", None, [])
    assert calls == ["ray", "disconnect"]


def test_the_export_warm_up_leaves_the_warning_filters_alone(monkeypatch):
    """The filters are the whole process's: a thread that saves and restores them (what
    ``catch_warnings`` does) can undo the main thread's. The warm-up runs in a thread, so it
    touches none of them; the driver silences torch.export's note on the main thread."""
    import warnings

    from search.tracking import registry

    def forbidden(*args, **kwargs):
        raise AssertionError("the warm-up thread changed the process's warning filters")

    registry.warm_up_export()  # the libraries it imports add their own filters, once
    before = list(warnings.filters)
    for name in ("catch_warnings", "simplefilter", "filterwarnings", "resetwarnings"):
        monkeypatch.setattr(warnings, name, forbidden)
    registry.warm_up_export()  # best effort: a failure would be logged, not raised
    monkeypatch.undo()
    assert warnings.filters == before
    logged = []
    monkeypatch.setattr(registry.log, "debug", lambda *a: logged.append(a))
    for name in ("catch_warnings", "simplefilter", "filterwarnings", "resetwarnings"):
        monkeypatch.setattr(warnings, name, forbidden)
    registry.warm_up_export()
    monkeypatch.undo()
    assert logged == []  # nothing it does touches the filters
    registry.quiet_export_notes()  # the driver's, on the main thread
    assert any(f[0] == "ignore" and f[1] is not None and f[1].pattern == "The tensor attributes"
               for f in warnings.filters)


def test_a_tuning_killed_mid_trial_is_continued_with_its_finished_trials(tmp_path):
    """A SIGKILL in the cache stage leaves a RUNNING study trial: the next driver closes it as
    failed and goes on from the finished ones, the paper's values still the first."""
    import optuna
    import torch

    from awd.cache import CacheParams, SplitOutputs
    from search.stages.cache import StudyPlace, tune_cache

    g = torch.Generator().manual_seed(0)
    outputs = SplitOutputs(torch.randn(300, 8, generator=g), torch.randint(0, 6, (300,),
                                                                            generator=g),
                           torch.full((300,), -1.7, dtype=torch.float64))
    place = StudyPlace(f"sqlite:///{tmp_path / 'optuna.db'}", "search-1", seed=3)
    paper = CacheParams(50, 1.0, 0.1)
    first = tune_cache(outputs, place.open("-cache"), 3, paper)
    assert first.trials[0][0] == paper
    place.open("-cache").ask()  # in flight when the driver died: RUNNING forever
    again = tune_cache(outputs, place.open("-cache"), 6, paper)
    states = [t.state for t in place.open("-cache").trials]
    state = optuna.trial.TrialState
    assert state.RUNNING not in states
    assert states.count(state.COMPLETE) == 6 and states.count(state.FAIL) == 1
    assert again.trials[:3] == first.trials
    assert again.cache_val_ppl == min(v for _, v in again.trials)


class _FakeTuner:
    """A tuner whose fit gets a SIGTERM: with Tune's SIGINT handler installed (running), or
    before it is (restoring)."""

    def __init__(self, installs_handler: bool) -> None:
        self.installs_handler = installs_handler
        self.caught: list[int] = []

    def fit(self) -> str:
        import os

        if self.installs_handler:
            previous = signal.getsignal(signal.SIGINT)

            def tunes(signum, frame):  # Tune's: it puts the previous handler back
                self.caught.append(signum)
                signal.signal(signal.SIGINT, previous)

            signal.signal(signal.SIGINT, tunes)
        os.kill(os.getpid(), signal.SIGTERM)
        return "grid"


def test_sigterm_while_tune_restores_raises_terminated_and_while_it_runs_stops_it():
    from search.errors import Terminated
    from search.tune import session

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        session.fit(_FakeTuner(installs_handler=False))
    running = _FakeTuner(installs_handler=True)
    assert session.fit(running) == ("grid", signal.SIGTERM)
    assert running.caught == [signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_a_gc_callback_swallowed_still_stops_the_search_before_tune():
    """A SIGTERM whose handler runs inside a garbage-collection callback (SQLAlchemy's, while
    Tune restores a search): Python prints and drops its `Terminated`, and the driver went on
    to finish the search with status 0 (seen in CI). The next safe point raises it again."""
    import weakref

    from search import errors
    from search.tune import session

    class Thing:
        pass

    class NeverFit:
        def fit(self) -> None:
            raise AssertionError("Tune ran after a SIGTERM")

    errors.forget_terminations()
    try:
        thing = Thing()
        ref = weakref.ref(thing, lambda _: errors.terminate())
        del thing  # the callback runs; its Terminated goes to sys.unraisablehook, not here
        assert ref() is None
        with pytest.raises(errors.Terminated):
            session.fit(NeverFit())  # type: ignore[arg-type]
    finally:
        errors.forget_terminations()


def test_a_resume_stopped_while_the_store_refuses_keeps_the_signal(monkeypatch, tmp_path,
                                                                   new_mlflow_store, caplog):
    """A SIGTERM while a resume restores its search (`search.errors.Terminated`) puts the
    parent's status back; a store that refuses that write (its SQLite file locked, as once in
    CI) costs a warning, not the signal: the driver still ends with 143 and one line."""
    import search.driver as driver
    from search.errors import Terminated

    uri = new_mlflow_store(tmp_path)
    client = MlflowClient(uri)
    experiment = client.create_experiment("resumed")
    parent = client.create_run(experiment).info.run_id
    client.set_terminated(parent, "KILLED")
    state = SearchState(parent_run_id=parent, experiment_id=experiment, tracking_uri=uri,
                        options=SearchOptions(storage=str(tmp_path)), gpus_per_trial=0.0,
                        study_storage="sqlite:///optuna.db", study_name="s")
    monkeypatch.setattr(driver.session, "connect_ray", lambda address: None)
    monkeypatch.setattr(driver.session, "check_resources", lambda *a: None)

    def stopped(opts, state):
        raise Terminated

    monkeypatch.setattr(driver, "_catch_up", stopped)
    update_run = MlflowClient.update_run

    def locked_after_running(self, run_id, status=None, name=None):
        if status != "RUNNING":
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return update_run(self, run_id, status=status, name=name)

    monkeypatch.setattr(MlflowClient, "update_run", locked_after_running)
    with pytest.raises(Terminated), caplog.at_level("WARNING", logger="search.driver"):
        driver._run(state.options, uri, state, [])
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("the parent run's status is not put back to KILLED")
    assert "database is locked" in warning
