"""Fast tests of tracking off Tune's loop: the spool, the outbox, idempotent records, backfill
from Ray's results, and the report's data-quality warning; real MLflow (SQLite) throughout.

An MLflow outage is an http URI nobody listens on: with ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``
each write fails at once with "connection refused" instead of after MLflow's minutes of
retries (the outbox retries with its own backoff instead).
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from processes import free_port

from search import schema
from search.tracking.backfill import backfill
from search.tracking.outbox import Outbox, Spool
from search.tracking.records import RunSpec, RunWriter, epoch_record, replay
from search.tune.callback import MLflowTrialLogger


@pytest.fixture
def fast_http_failures(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


@pytest.fixture
def store(tmp_path, new_mlflow_store):
    uri = new_mlflow_store(tmp_path / "mlflow")
    client = MlflowClient(uri)
    exp = client.create_experiment("outbox")
    parent = client.create_run(exp, tags={schema.ROLE: schema.ROLE_SEARCH}).info.run_id
    return uri, client, exp, parent


def result(epoch: int, val: float = 100.0) -> dict:
    return {"epoch": epoch, "val_ppl": val - epoch, "best_val_ppl": val - epoch,
            "train_loss": 4.0, "epoch_seconds": 2.0, "num_params": 1000.0,
            "epochs_run": epoch, "train_seconds": 2.0 * epoch, "device_name": "cpu"}


def trial(trial_id: str, last: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"model": "awd_lstm", "lr": 30},
                           last_result=last or {}, error_file=None)


def steps(client: MlflowClient, run_id: str, key: str = "val_ppl") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def child(client: MlflowClient, exp: str, trial_id: str):
    (run,) = client.search_runs([exp], filter_string=f"tags.`{schema.TRIAL_ID}` = '{trial_id}'")
    return run


# --- the spool and the outbox, with a plain write function -------------------------------
def test_spool_keeps_order_across_processes_and_goes_when_written(tmp_path):
    path = tmp_path / "spool.jsonl"
    spool = Spool(path, memory=2)
    for seq in range(1, 6):
        spool.append({"seq": seq})
    spool.ack(1)
    with path.open("a") as f:
        f.write('{"seq": 6, "cut sh')  # a killed process's last line
    again = Spool(path, memory=2)  # another process: what is left, in order, past the window
    got = []
    while (head := again.peek()) is not None:
        got.append(head["seq"])
        again.ack(head["seq"])
    assert got == [2, 3, 4, 5] and not path.exists()


def test_outbox_spools_during_an_outage_and_writes_everything_once_in_order(tmp_path, caplog):
    written, down = [], threading.Event()
    down.set()

    def write(record):
        if down.is_set():
            raise ConnectionError("connection refused")
        written.append(record["n"])

    box = Outbox(write, tmp_path / "spool.jsonl", where="http://x", capacity=3,
                 is_transient=lambda e: True, backoff=(0.05, 0.05))
    with caplog.at_level(logging.WARNING, logger="search.tracking.outbox"):
        started = time.monotonic()
        for n in range(20):  # the caller never waits, whatever the queue's size
            box.put({"n": n})
        assert time.monotonic() - started < 0.5
        assert not box.drain(0.3) and (tmp_path / "spool.jsonl").exists()
        down.clear()
        assert box.drain(5)
        box.close()
    assert written == list(range(20))
    assert not (tmp_path / "spool.jsonl").exists()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("unreachable since" in m for m in lines) == 1
    assert sum(m.startswith("MLflow caught up: 20 records") for m in lines) == 1


def test_a_full_queue_spills_to_the_spool_without_blocking_or_reordering(tmp_path):
    written, go = [], threading.Event()

    def write(record):
        go.wait()  # a store that hangs
        written.append(record["n"])

    box = Outbox(write, tmp_path / "spool.jsonl", where="x", capacity=2,
                 is_transient=lambda e: True, stall_s=60)
    for n in range(10):
        box.put({"n": n})
    assert (tmp_path / "spool.jsonl").exists()  # spilled: on disk, not only in memory
    go.set()
    assert box.close(5) and written == list(range(10))


# --- real MLflow --------------------------------------------------------------------------
def test_logger_writes_runs_off_the_loop_and_a_resent_record_is_not_duplicated(store, tmp_path):
    uri, client, exp, parent = store
    logger = MLflowTrialLogger(uri, exp, parent, "smoke", {"gpus_per_trial": 0},
                               experiment_dir=str(tmp_path / "exp"))
    logger = pickle.loads(pickle.dumps(logger))  # as Tune keeps it
    t = trial("t1", result(2))
    logger.on_trial_start(0, [], t)
    for e in (1, 2, 2):  # epoch 2 reported again (a trial restored from a checkpoint)
        logger.on_trial_result(0, [], t, result(e))
    logger.on_trial_complete(0, [], t)
    assert logger.close(10)
    run = child(client, exp, "t1")
    assert steps(client, run.info.run_id) == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "num_params")) == 1
    assert run.data.tags[schema.STATUS] == schema.STATUS_STOPPED and run.info.status == "FINISHED"
    assert run.data.metrics[schema.EPOCHS_RUN] == 2 and run.data.params["gpus_per_trial"] == "0"
    # every record again, through a writer that knows nothing (a crash before the acks)
    spec = RunSpec(exp, parent, "smoke")
    fresh = RunWriter(uri)
    fresh(spec.start("t1", {"model": "awd_lstm"}, {}))
    for e in (1, 2):
        fresh(epoch_record(spec, "t1", result(e)))
    assert steps(client, run.info.run_id) == [1, 2]
    assert len(client.search_runs([exp], filter_string=f"tags.`{schema.TRIAL_ID}` = 't1'")) == 1


def test_a_run_created_but_killed_before_its_params_gets_them_on_the_next_start(store):
    uri, client, exp, parent = store
    spec = RunSpec(exp, parent, "smoke")
    start = spec.start("k1", {"model": "awd_lstm", "lr": 20}, {})
    bare = client.create_run(exp, run_name=start["run_name"], tags=start["tags"]).info.run_id
    RunWriter(uri)(start)  # the resumed trial starts again: the same run, now with its params
    run = client.get_run(bare)
    assert run.data.params["lr"] == "20.0" and run.data.params["model"] == "awd_lstm"
    assert len(client.search_runs([exp], filter_string=f"tags.`{schema.TRIAL_ID}` = 'k1'")) == 1


def test_outage_spool_survives_the_driver_and_replays_exactly_once(store, tmp_path, caplog,
                                                                   fast_http_failures):
    uri, client, exp, parent = store
    down = f"http://127.0.0.1:{free_port()}"
    logger = MLflowTrialLogger(down, exp, parent, "smoke", experiment_dir=str(tmp_path / "exp"))
    t = trial("t1", result(3))
    with caplog.at_level(logging.WARNING):
        logger.on_trial_start(0, [], t)
        for e in (1, 2, 3):
            logger.on_trial_result(0, [], t, result(e))
        logger.on_trial_complete(0, [], t)
        assert not logger.close(0.5)  # still away: all of it stays on disk
    assert sum("unreachable since" in r.getMessage() for r in caplog.records) == 1
    spool = logger.spool_path
    assert spool == tmp_path / "exp" / "mlflow_spool.jsonl" and spool.exists()
    copy = spool.read_text()
    # a later --resume with MLflow back (here: the same records into the SQLite store)
    assert replay(spool, uri, timeout=10) and not spool.exists()
    spool.write_text(copy)  # and once more, as if the acks had been lost
    assert replay(spool, uri, timeout=10)
    run = child(client, exp, "t1")
    assert steps(client, run.info.run_id) == [1, 2, 3]
    assert len(client.get_metric_history(run.info.run_id, schema.EPOCHS_RUN)) == 1
    assert run.data.tags[schema.STATUS] == schema.STATUS_STOPPED


# --- Ray's results as the source of truth --------------------------------------------------
def write_trial_dir(folder: Path, trial_id: str, epochs: int) -> None:
    folder.mkdir(parents=True)
    rows = [{**result(e), "trial_id": trial_id, "timestamp": 1_700_000_000 + e,
             "config": {"model": "awd_lstm", "lr": 30}} for e in range(1, epochs + 1)]
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_backfill_writes_what_ray_has_and_mlflow_lacks_once_and_fixes_epochs_run(store,
                                                                               tmp_path):
    uri, client, exp, parent = store
    spec = RunSpec(exp, parent, "smoke")
    writer = RunWriter(uri)
    writer(spec.start("a", {"model": "awd_lstm"}, {}))
    for e in (1, 3):  # epoch 2 was lost, and the run's end says 2 epochs
        writer(epoch_record(spec, "a", result(e)))
    run_a = writer.find_run(spec.record("start", "a"))
    client.log_metric(run_a, schema.EPOCHS_RUN, 2.0)
    exp_dir = tmp_path / "ray" / "search"
    write_trial_dir(exp_dir / "awd_lstm_a", "a", 3)
    write_trial_dir(exp_dir / "awd_lstm_b", "b", 2)  # no run at all
    done = backfill(uri, str(exp_dir), exp, parent, "smoke", {"gpus_per_trial": 0})
    assert done.epochs == {"a": [2], "b": [1, 2]} and done.runs_created == ["b"]
    assert done.epochs_run_fixed == ["a"] and not done.error
    assert backfill(uri, str(exp_dir), exp, parent, "smoke").written == 0
    assert steps(client, run_a) == [1, 2, 3]
    assert client.get_run(run_a).data.metrics[schema.EPOCHS_RUN] == 3
    assert steps(client, child(client, exp, "b").info.run_id) == [1, 2]


def test_backfill_against_an_unreachable_store_reports_instead_of_raising(tmp_path,
                                                                        fast_http_failures):
    write_trial_dir(tmp_path / "exp" / "awd_lstm_a", "a", 1)
    done = backfill(f"http://127.0.0.1:{free_port()}", str(tmp_path / "exp"), "1", "p", "smoke")
    assert done.error and done.written == 0


# --- the report names runs with gaps ------------------------------------------------------
def test_report_names_runs_that_miss_epochs(store, tmp_path):
    from reports.build import data_quality_section
    from reports.load import load
    from reports.render import Document, to_markdown

    uri, _, exp, parent = store
    spec = RunSpec(exp, parent, "smoke")
    writer = RunWriter(uri)
    for tid, epochs in (("whole", (1, 2, 3)), ("gappy", (1, 3))):
        writer(spec.start(tid, {"model": "awd_lstm", "dataset": "ptb"}, {}))
        for e in epochs:
            writer(epoch_record(spec, tid, result(e)))
        writer(spec.record("finish", tid, status=schema.STATUS_STOPPED, failure="",
                           summary={schema.EPOCHS_RUN: 3.0, schema.TRAIN_SECONDS: 6.0}))
    data = load(uri, ["outbox"])
    assert len(data.data_quality) == 1
    assert "smoke-gappy" in data.data_quality[0] and "lacks epoch(s) 2 of 3" in \
        data.data_quality[0]
    section = data_quality_section(data)
    assert section is not None and section.css_class == "problems"
    md = to_markdown(Document("report", [], [section]))
    assert "Data quality" in md and "smoke-gappy" in md and "smoke-whole" not in md


def test_a_trial_resumed_on_another_node_names_that_node(store):
    """Node tags follow the latest epoch: after a node loss the run names where the trial went
    on, also through a writer that knows nothing of the run (a restarted driver)."""
    uri, client, exp, parent = store
    spec = RunSpec(exp, parent, "smoke")
    writer = RunWriter(uri)
    writer(spec.start("t1", {"model": "awd_lstm"}, {}))
    writer(epoch_record(spec, "t1", {**result(1), "node_id": "lost", "node_ip": "10.0.0.2"}))
    run = child(client, exp, "t1")
    assert run.data.tags[schema.NODE_ID] == "lost"
    fresh = RunWriter(uri)
    for e in (1, 2):  # epoch 1 again (replayed) changes nothing; epoch 2 ran elsewhere
        fresh(epoch_record(spec, "t1", {**result(e), "node_id": "head", "node_ip": "10.0.0.1"}))
    run = child(client, exp, "t1")
    assert (run.data.tags[schema.NODE_ID], run.data.tags[schema.NODE_IP]) == ("head", "10.0.0.1")
    assert steps(client, run.info.run_id) == [1, 2]
