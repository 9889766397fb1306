"""The distributed path for real, on one machine: a two-node Ray cluster started with
`ray start` (head + worker, one CPU each, token authentication on), a real `mlflow server`, and
`python -m search.run --address ...` run against both, as on the cluster of cluster.yaml.

Every process is started here in its own session and stopped by its id: never `ray stop`,
which would also kill any other Ray cluster on the machine. Each Ray node keeps its files (and
its `ray_current_cluster` address file) in a private temporary folder, so a plain `ray.init()`
elsewhere on the machine never finds this cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import DATA_DIR, real_data
from mlflow.tracking import MlflowClient

from awd.evaluate import download_export
from awd.trainer import load_exported
from search import schema

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
EXPERIMENT = "multinode"
NUM_SAMPLES, EPOCHS = 4, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executable(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


@dataclass
class Cluster:
    address: str
    node_ids: list[str]
    env: dict[str, str]  # what a driver needs: the data folder and the cluster's token
    root: Path


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen, grace: float = 45.0) -> None:
    """SIGTERM to our process (a blocking `ray start` drains and stops its node), then SIGKILL
    to its process group if it is still there."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created with start_new_session
    proc.wait(10)


def _kill_leftovers(root: Path) -> None:
    """Ray processes that outlived their node: those whose command line names our folder."""
    mine = str(root).encode()
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if int(entry.name) != os.getpid() and mine in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path} missing)"


def _wait_for(what: str, ok, timeout: float, procs: list[subprocess.Popen], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        dead = [p.args[:3] for p in procs if p.poll() is not None]
        if dead:
            pytest.fail(f"{dead} exited while waiting for {what}:\n{_tail(log)}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{_tail(log)}")


def alive_node_ids(address: str, env: dict[str, str], expected: int, timeout: float) -> list[str]:
    """The ids of the cluster's live nodes, once `expected` of them have joined."""
    code = (
        "import json, time, ray\n"
        f"ray.init(address={address!r}, include_dashboard=False, log_to_driver=False)\n"
        f"deadline = time.monotonic() + {timeout}\n"
        "while True:\n"
        "    ids = sorted(n['NodeID'] for n in ray.nodes() if n['Alive'])\n"
        f"    if len(ids) >= {expected} or time.monotonic() > deadline:\n"
        "        break\n"
        "    time.sleep(0.5)\n"
        "print(json.dumps(ids))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout + 60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    """A private folder for the cluster, the MLflow server and the search; on the way out, any
    process whose command line still names it is killed."""
    real_data("ptb")
    # Short path: Ray's Unix sockets live under it and must stay below ~107 characters.
    folder = Path(tempfile.mkdtemp(prefix="awdmn", dir="/tmp"))
    try:
        yield folder
    finally:
        _kill_leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class MlflowServer:
    uri: str
    proc: subprocess.Popen
    log: Path

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait(self, timeout: float = 120) -> str:
        _wait_for("the MLflow server", self.healthy, timeout, [self.proc], self.log)
        return self.uri


@pytest.fixture(scope="module")
def mlflow_server(root) -> Iterator[MlflowServer]:
    """Started before the cluster and waited for only when needed: both start in parallel."""
    port = free_port()
    folder = root / "mlflow"
    folder.mkdir()
    log = folder / "server.log"
    proc = _start([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                   "--port", str(port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                   "--artifacts-destination", str(folder / "artifacts")], log, dict(os.environ))
    try:
        yield MlflowServer(f"http://127.0.0.1:{port}", proc, log)
    finally:
        _stop(proc, grace=15)


@pytest.fixture(scope="module")
def cluster(root) -> Iterator[Cluster]:
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    # Token authentication as on the real cluster, with a token of our own (RAY_AUTH_TOKEN_PATH)
    # so that the user's ~/.ray/auth_token is neither used nor changed.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(AWD_DATA_DIR=str(DATA_DIR), RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(token))
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--block",
              "--disable-usage-stats"]
    head_log, worker_log = root / "head.log", root / "worker.log"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start(
            [executable("ray"), "start", "--head", f"--port={port}", "--include-dashboard=false",
             f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={root / 'head'}",
             *common], head_log, env))
        _wait_for("the Ray head", lambda: "Ray runtime started" in _tail(head_log), 120, procs,
                  head_log)
        procs.append(_start(
            [executable("ray"), "start", f"--address={address}",
             f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={root / 'worker'}",
             *common], worker_log, env))
        _wait_for("the Ray worker node", lambda: "Ray runtime started" in _tail(worker_log), 120,
                  procs, worker_log)
        node_ids = alive_node_ids(address, env, expected=2, timeout=60)
        assert len(node_ids) == 2, f"nodes alive: {node_ids}\n{_tail(worker_log)}"
        yield Cluster(address, node_ids, env, root)
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.fixture(scope="module")
def search(mlflow_server, cluster):
    uri = mlflow_server.wait()
    work = cluster.root / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "search.run", "--space", "smoke",
           "--num-samples", str(NUM_SAMPLES), "--max-epochs", str(EPOCHS), "--concurrency", "2",
           "--cpus-per-trial", "1", "--address", cluster.address,
           "--tracking-uri", uri, "--storage", str(cluster.root / "ray_results"),
           "--experiment", EXPERIMENT]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=work, env=cluster.env, capture_output=True, text=True,
                          timeout=300)
    print(f"two-node search: {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH]
    children = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_TRIAL]
    return proc, client, parents, children, work


def test_search_on_a_two_node_cluster_finishes_and_reports(search, mlflow_server):
    proc, *_ = search
    assert "Best trials:" in proc.stdout
    assert f"Compare the runs: {mlflow_server.uri}/#/experiments/" in proc.stdout


def test_one_parent_run_with_every_trial_nested_under_it(search, cluster):
    _, _, parents, children, _ = search
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[schema.RAY_ADDRESS].endswith(f":{cluster.address.rsplit(':')[1]}")
    assert parent.data.metrics["trials_total"] == NUM_SAMPLES
    assert len(children) == NUM_SAMPLES
    assert {c.data.tags[schema.PARENT_RUN_ID] for c in children} == {parent.info.run_id}
    assert len({c.data.tags[schema.TRIAL_ID] for c in children}) == NUM_SAMPLES


def test_trials_ran_on_both_nodes_and_say_which(search, cluster):
    _, _, _, children, _ = search
    node_ids = [c.data.tags.get(schema.NODE_ID) for c in children]
    assert all(node_ids), node_ids
    assert set(node_ids) == set(cluster.node_ids)
    assert all(c.data.tags.get(schema.NODE_IP) for c in children)


def test_every_trial_logged_val_ppl_for_each_epoch_it_ran(search):
    """ASHA may stop a trial after its first epoch; a completed one has both epochs."""
    _, client, _, children, _ = search
    completed = 0
    for child in children:
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_ppl"))
        assert steps == list(range(1, int(child.data.metrics["epochs_run"]) + 1))
        if child.data.tags[schema.STATUS] == schema.STATUS_COMPLETED:
            completed += 1
            assert steps == list(range(1, EPOCHS + 1))
            assert "final_test_ppl" in child.data.metrics
    assert completed >= 1


def test_parent_holds_the_best_config_and_names_the_registered_model(search):
    _, client, parents, children, work = search
    parent = parents[0]
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "config.json" in names and "checkpoint" not in names
    local = Path(client.download_artifacts(parent.info.run_id, "config.json", str(work)))
    assert json.loads(local.read_text()) == \
        json.loads((work / f"best_config_{EXPERIMENT}.json").read_text())
    best = parent.data.tags[schema.BEST_TRIAL_ID]
    assert best in {c.data.tags[schema.TRIAL_ID] for c in children}
    model = download_export(parent.data.tags[schema.MODEL_URI], client.tracking_uri, work)
    exported = load_exported(model)  # weights_only: the file runs no code
    assert exported.run.to_flat() == json.loads(local.read_text())
    exported.build()


def test_a_driver_without_the_clusters_token_is_refused(cluster, tmp_path):
    """Token authentication is really on: the same search, minus the token, stops at once with
    a clear error instead of running."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray retries the refused connection 20 times
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--space", "smoke", "--num-samples", "1",
         "--address", cluster.address, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--storage", str(tmp_path / "ray_results")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"cannot connect to Ray at {cluster.address}" in proc.stderr
    assert "Authentication token is missing or incorrect" in proc.stderr
