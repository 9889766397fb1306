"""Each rule a search and its report share lives in one function: these pin the rule itself,
and that every reader gets the same answer from it (fast tier, no Ray cluster)."""

from __future__ import annotations

import http.server
import math
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from reports import tables
from reports.build import searches_table
from reports.load import load
from search import schema
from search.results import (
    TrialSummary,
    failure_reason,
    gpu_hours,
    objective,
    status_counts,
)
from search.tracking.records import RunSpec, RunWriter, epoch_record, finish_record
from search.tracking.store import (
    ensure_experiment,
    run_state,
    start_parent_run,
    write_summary,
)
from search.uris import is_server, resolve_tracking_uri, server_problem, sqlite_path, sqlite_uri

# --- status counts ---------------------------------------------------------------------------


def test_status_counts_cover_every_status_and_add_up():
    statuses = ["running", schema.STATUS_INTERRUPTED, schema.STATUS_COMPLETED, "pending",
                schema.STATUS_INTERRUPTED]
    counts = status_counts(statuses)
    assert list(counts) == [*schema.TRIAL_STATUSES, "pending"]
    assert counts[schema.STATUS_INTERRUPTED] == 2 and counts[schema.STATUS_FAILED] == 0
    assert sum(counts.values()) == len(statuses)
    assert status_counts([]) == dict.fromkeys(schema.TRIAL_STATUSES, 0)


# --- failure reason, objective, GPU-hours, run state ---------------------------------------------


def test_failure_reason_is_the_error_else_what_the_last_result_says():
    fatal = {schema.FATAL: "out of memory", schema.DIVERGED: 1.0}
    assert failure_reason(fatal, "RuntimeError: boom") == "RuntimeError: boom"
    assert failure_reason(fatal) == "out of memory"
    assert failure_reason({schema.DIVERGED: 1.0}) == "diverged"
    assert failure_reason({schema.FINISHED: True}) is None


def test_objective_is_the_final_val_ppl_else_the_lowest_reached():
    assert objective({schema.FINAL_VAL_PPL: 70.0, schema.BEST_VAL_PPL: 68.0}) == 70.0
    assert objective({schema.FINAL_VAL_PPL: math.nan, schema.BEST_VAL_PPL: 68.0}) == 68.0
    assert objective({schema.BEST_VAL_PPL: 68.0}) == 68.0
    assert math.isnan(objective(None)) and math.isnan(objective({}))


def test_gpu_hours_sum_train_seconds_times_gpus_unknowns_as_zero():
    records = [{schema.TRAIN_SECONDS: 3600.0, "gpus_per_trial": 0.5},
               {schema.TRAIN_SECONDS: 7200.0, "gpus_per_trial": math.nan},
               {"gpus_per_trial": 1.0}]
    assert gpu_hours(records) == 0.5
    assert gpu_hours(records, gpus_per_trial=1.0) == 3.0
    assert gpu_hours([]) == 0.0


def test_a_trial_run_ends_in_one_mlflow_state_per_status():
    assert [run_state(s) for s in schema.TRIAL_STATUSES] == [
        "FINISHED", "FINISHED", "FAILED", "FINISHED", "KILLED"]


# --- tracking URIs ---------------------------------------------------------------------------


def test_tracking_uris_are_parsed_in_one_place(tmp_path):
    assert sqlite_path("sqlite:///a/b.db") == Path("a/b.db")
    assert sqlite_path("sqlite:////abs/b.db") == Path("/abs/b.db")
    assert sqlite_path("http://h:5000") is None and sqlite_path("file:/x") is None
    assert sqlite_uri(Path("/abs/b.db")) == "sqlite:////abs/b.db"
    assert sqlite_path(sqlite_uri(tmp_path / "m.db")) == tmp_path / "m.db"
    assert is_server("http://h:5000") and is_server("https://h") and not is_server("sqlite:///x")
    assert resolve_tracking_uri("sqlite:///m.db", {}, tmp_path) == sqlite_uri(tmp_path / "m.db")


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_the_server_health_check(monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        assert server_problem(uri, timeout=5) is None
        monkeypatch.setattr(_Health, "status", 503)
        assert "Service Unavailable" in (server_problem(uri, timeout=5) or "")
    finally:
        server.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    assert "refused" in (server_problem(f"http://127.0.0.1:{port}", timeout=2) or "")


# --- ResultGrid -> TrialSummary ----------------------------------------------------------------


@dataclass
class _Result:
    metrics: dict[str, Any]
    config: dict[str, Any]
    path: str
    error: Exception | None = None
    checkpoint: Any = None


def test_one_function_turns_tune_results_into_trial_summaries():
    from search.tune.grid import summarize

    grid = [
        _Result({"trial_id": "a", schema.FINISHED: True}, {"run": {"lr": 1}}, "/r/t_a"),
        _Result({"trial_id": "b"}, {"run": {"lr": 2}}, "/r/t_b",
                error=RuntimeError("CUDA out of memory")),
        _Result({schema.DIVERGED: 1.0}, {"run": {"lr": 3}}, "/r/t_c"),
        _Result({"trial_id": "d"}, {"run": {"lr": 4}}, "/r/t_d"),
        _Result({"trial_id": "e", schema.FATAL: "bad"}, {"run": {"lr": 5}}, "/r/t_e"),
    ]
    got = summarize(grid, interrupted=frozenset({"d", "e"}),  # type: ignore[arg-type]
                    run_config=lambda c: c["run"])
    assert [(t.trial_id, t.status, t.error) for t in got] == [
        ("a", schema.STATUS_COMPLETED, None),
        ("b", schema.STATUS_FAILED, "CUDA out of memory"),
        ("c", schema.STATUS_FAILED, "diverged"),
        ("d", schema.STATUS_INTERRUPTED, None),
        ("e", schema.STATUS_FAILED, "bad"),  # failed before the stop: failed
    ]
    assert [t.config for t in got] == [{"lr": i} for i in range(1, 6)]
    assert summarize(grid[:1])[0].config == {"run": {"lr": 1}}  # type: ignore[arg-type]


# --- the report counts every status ------------------------------------------------------------


def _result(status: str, i: int) -> dict[str, Any]:
    """A trial's last Tune result that `search.results.status_of` reads as ``status``."""
    out: dict[str, Any] = {schema.EPOCH: 2, schema.VAL_PPL: 90.0 + i,
                           schema.BEST_VAL_PPL: 90.0 + i, schema.NUM_PARAMS: 1000,
                           schema.EPOCHS_RUN: 2, schema.TRAIN_SECONDS: 60.0 * (i + 1),
                           schema.FINISHED: status == schema.STATUS_COMPLETED}
    if status == schema.STATUS_COMPLETED:
        out.update({schema.FINAL_VAL_PPL: 89.0, schema.FINAL_TEST_PPL: 87.0})
    if status == schema.STATUS_FAILED:
        out[schema.FATAL] = "CUDA out of memory"
    return out


STOPPED_BY_CTRL_C = [schema.STATUS_COMPLETED, schema.STATUS_STOPPED, schema.STATUS_FAILED,
                     schema.STATUS_INTERRUPTED, schema.STATUS_INTERRUPTED]


def _stopped_search(uri: str, name: str, summarized: bool) -> None:
    """A search stopped by Ctrl-C, written by the search's own writers: its trial runs, and
    (``summarized``) the parent's summary as `search.driver` writes it after the stop."""
    client = MlflowClient(uri)
    exp_id = ensure_experiment(client, name, uri)
    parent = start_parent_run(client, exp_id, f"{name}-search", {schema.SPACE: "smoke"},
                              {"gpus_per_trial": 0.5})
    spec = RunSpec(exp_id, parent, "smoke", extra_params={"gpus_per_trial": 0.5})
    writer = RunWriter(uri)
    trials = []
    for i, status in enumerate(STOPPED_BY_CTRL_C):
        tid, result = f"t{i}", _result(status, i)
        writer(spec.start(tid, {"model": "awd_lstm", "dataset": "ptb"}, {}))
        writer(epoch_record(spec, tid, result))
        writer(finish_record(spec, tid, result, status, failure_reason(result)))
        trials.append(TrialSummary(tid, status, {}, result, None, failure_reason(result)))
    if summarized:
        write_summary(client, parent, 0.5, {}, trials, None, None, stopped=True)


@pytest.mark.parametrize("summarized", [True, False], ids=["summarized", "killed"])
def test_report_trials_equal_the_sum_of_its_status_columns(tmp_path, new_mlflow_store,
                                                           summarized):
    """After a Ctrl-C the report counts the interrupted trials: its Trials column is the sum of
    its status columns, from the parent's summary and from the trial runs alike."""
    uri = new_mlflow_store(tmp_path / "store")
    _stopped_search(uri, "stopped", summarized)
    data = load(uri, ["stopped"])
    statuses = list(schema.TRIAL_STATUSES)
    (row,) = tables.searches(data).to_dict("records")
    assert row["trials"] == len(STOPPED_BY_CTRL_C) == sum(row[s] for s in statuses)
    assert row[schema.STATUS_INTERRUPTED] == 2
    for group in tables.summary(data).to_dict("records"):
        assert group["trials"] == sum(group[s] for s in statuses)
        assert group[schema.STATUS_INTERRUPTED] == 2
    table = searches_table(data)
    cells = dict(zip(table.columns, table.rows[0], strict=True))
    shown = ["Completed", "Stopped early", "Failed", "Running", "Interrupted"]
    assert int(cells["Trials"]) == sum(int(cells[c]) for c in shown) == 5
    assert cells["Interrupted"] == "2"
    assert row["gpu_hours"] == pytest.approx(gpu_hours(data.trials().to_dict("records")))
    # each trial run ended in its status's MLflow state (the interrupted ones KILLED)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("stopped").experiment_id],
                              f"tags.`{schema.ROLE}` = '{schema.ROLE_TRIAL}'")
    assert sorted(r.info.status for r in runs) == sorted(map(run_state, STOPPED_BY_CTRL_C))
