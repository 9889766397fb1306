"""A real `mlflow server` stopped during a real smoke search and started again later: the
search does not stall, says so once when MLflow goes and once when it is caught up, and every
epoch Ray has ends up in MLflow exactly once; a driver killed during the outage leaves a spool
that a later run writes, once.

The search runs as ``python -m search.run`` with ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` so that
a write fails at once instead of after MLflow's own minutes of retries (the outbox retries).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import DATA_DIR, real_data, tune_rows
from mlflow.tracking import MlflowClient
from processes import free_port

from search import schema
from search.tracking.records import SPOOL_FILE, replay

pytestmark = pytest.mark.slow



class Server:
    """`mlflow server` on one port and one SQLite file, stopped and started at will."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.folder / "server.log", "a") as out:
            self.proc = self._popen(out)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("mlflow server did not start: "
                             + (self.folder / "server.log").read_text()[-2000:])

    def _popen(self, out) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1", "--backend-store-uri",
             f"sqlite:///{self.folder / 'mlflow.db'}", "--artifacts-destination",
             str(self.folder / "artifacts")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # an outage, not a clean shutdown
            self.proc.wait(10)


@pytest.fixture
def server(tmp_path):
    real_data("ptb")
    (tmp_path / "mlflow").mkdir()
    srv = Server(tmp_path / "mlflow")
    srv.start()
    yield srv
    srv.stop()


def start_search(tmp_path: Path, uri: str, epochs: int, resume: bool = False
                 ) -> subprocess.Popen:
    env = {**os.environ, "AWD_DATA_DIR": str(DATA_DIR), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "search.run", "--space", "smoke", "--num-samples", "2",
           "--concurrency", "2", "--max-epochs", str(epochs), "--scheduler", "none",
           "--storage", "rr", "--experiment", "outage", "--tracking-uri", uri]
    cmd += ["--resume"] if resume else []
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=open(tmp_path / "log.txt", "a"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def ray_epochs(tmp_path: Path) -> dict[str, list[int]]:
    """Each trial's epochs as Ray has them (result.json, one line per reported result)."""
    return {trial: [r["epoch"] for r in rows if "val_ppl" in r]
            for trial, rows in tune_rows(tmp_path / "rr" / "outage").items()}


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        assert proc.poll() is None, f"search ended before {what}: {log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-3000:]}")


def mlflow_epochs(uri: str) -> tuple[dict[str, list[int]], dict[str, float]]:
    """Each trial run's val_ppl steps (repeats kept) and its epochs_run."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("outage")
    steps, runs = {}, {}
    for run in client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`{schema.ROLE}` = 'trial'"):
        tid = run.data.tags[schema.TRIAL_ID]
        steps[tid] = sorted(m.step for m in client.get_metric_history(run.info.run_id,
                                                                       "val_ppl"))
        runs[tid] = run.data.metrics.get(schema.EPOCHS_RUN, float("nan"))
    return steps, runs


def total(epochs: dict[str, list[int]]) -> int:
    return sum(len(v) for v in epochs.values())


def search_into_an_outage(tmp_path: Path, server, epochs: int, during: int
                          ) -> subprocess.Popen:
    """A search whose MLflow server stops after its first epoch; returned once ``during`` more
    epochs (no stall: they keep coming while MLflow is away) and the outage line have come."""
    proc = start_search(tmp_path, server.uri, epochs=epochs)
    log = tmp_path / "log.txt"
    try:
        wait_for("a first epoch", lambda: total(ray_epochs(tmp_path)) >= 1, 240, proc, log)
        server.stop()
        before = total(ray_epochs(tmp_path))
        wait_for("epochs during the outage",
                 lambda: total(ray_epochs(tmp_path)) >= before + during, 120, proc, log)
        wait_for("the outage line", lambda: "unreachable since" in log.read_text(), 30, proc,
                 log)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc


def test_search_goes_on_through_an_mlflow_outage_and_loses_nothing(tmp_path, server):
    proc = search_into_an_outage(tmp_path, server, epochs=5, during=1)
    log = tmp_path / "log.txt"
    try:
        server.start()  # (some 10 s): epochs 2 to 5 of 5 are left
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    lines = [x for x in text.splitlines() if "MLflow" in x]
    assert text.count("unreachable since") == 1 and text.count("MLflow caught up:") == 1, lines
    ray = ray_epochs(tmp_path)
    steps, epochs_run = mlflow_epochs(server.uri)
    assert steps == {t: sorted(set(e)) for t, e in ray.items()}  # every epoch, exactly once
    assert epochs_run == {t: float(max(e)) for t, e in ray.items()}
    assert not list(tmp_path.rglob("mlflow_spool*.jsonl"))  # all written: no spool left


def test_driver_killed_during_an_outage_leaves_a_spool_that_resume_writes_once(tmp_path,
                                                                                server):
    proc = search_into_an_outage(tmp_path, server, epochs=4, during=2)
    log = tmp_path / "log.txt"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray, mid-outage
    proc.wait(30)
    spool = tmp_path / "rr" / "outage" / SPOOL_FILE  # beside Ray's results
    records = [json.loads(x) for x in spool.read_text().splitlines()]
    assert any(r.get("kind") == "epoch" for r in records)
    server.start()
    resumed = start_search(tmp_path, server.uri, epochs=4, resume=True)  # replay, then backfill
    assert resumed.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not spool.exists()
    steps, epochs_run = mlflow_epochs(server.uri)
    ray = ray_epochs(tmp_path)
    assert steps == {t: sorted(set(e)) for t, e in ray.items()}  # every epoch, exactly once
    assert epochs_run == {t: 4.0 for t in ray}
    # a spool replayed twice (its acks lost in a crash) adds nothing
    spool.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert replay(spool, server.uri, timeout=60)
    assert mlflow_epochs(server.uri)[0] == steps
