"""The distributed path for real, on one machine: a two-node Ray cluster started with
`ray start` (head + worker, one CPU each, token authentication on), a real `mlflow server`, and
`python -m search.run --address ...` run against both, as on the cluster of cluster.yaml.

Midway, the worker node is lost as a spot instance is: once one of its trials has finished an
epoch, every process of the node is SIGKILLed at once. Its trials resume from their last
checkpoint on the head and finish; MLflow holds every epoch exactly once.

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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import DATA_DIR, real_data, tune_rows
from mlflow.tracking import MlflowClient
from processes import (
    MlflowServer,
    alive_nodes,
    executable,
    free_port,
    kill_leftovers,
    kill_tree,
    start,
    start_mlflow_server,
    stop,
    tail,
    wait_for,
)

from awd.trainer import load_exported
from search import schema
from search.tracking.registry import download_export

pytestmark = pytest.mark.slow

EXPERIMENT = "multinode"
NUM_SAMPLES, EPOCHS = 4, 4  # epochs to spare: the node is lost before the victim ends


@dataclass
class Cluster:
    address: str
    head_id: str
    worker_id: str
    worker: subprocess.Popen  # the worker node's `ray start --block`: its processes below it
    env: dict[str, str]  # what a driver needs: the data folder and the cluster's token
    root: Path

    @property
    def node_ids(self) -> set[str]:
        return {self.head_id, self.worker_id}


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
        kill_leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(root) -> Iterator[MlflowServer]:
    """Started before the cluster and waited for only when needed: both start in parallel."""
    server = start_mlflow_server(root / "mlflow")
    try:
        yield server
    finally:
        stop(server.proc, grace=15)


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
        procs.append(start(
            [executable("ray"), "start", "--head", f"--port={port}", "--include-dashboard=false",
             f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={root / 'head'}",
             *common], head_log, env))
        wait_for("the Ray head", lambda: "Ray runtime started" in tail(head_log), 120, procs,
                 head_log)
        (head,) = alive_nodes(address, env, expected=1, timeout=60)
        procs.append(start(
            [executable("ray"), "start", f"--address={address}",
             f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={root / 'worker'}",
             *common], worker_log, env))
        wait_for("the Ray worker node", lambda: "Ray runtime started" in tail(worker_log), 120,
                 procs, worker_log)
        nodes = alive_nodes(address, env, expected=2, timeout=60)
        assert len(nodes) == 2, f"nodes alive: {nodes}\n{tail(worker_log)}"
        (worker,) = [n["id"] for n in nodes if n["id"] != head["id"]]
        yield Cluster(address, head["id"], worker, procs[1], env, root)
    finally:
        for proc in reversed(procs):
            stop(proc)


@dataclass
class Search:
    proc: subprocess.CompletedProcess
    client: MlflowClient
    parents: list
    children: list
    work: Path
    rows: dict[str, list[dict]]  # Tune's rows by trial id
    victim: str  # the trial that was running on the worker node when it was lost
    killed: list[int]


def _lose_the_worker_node_mid_trial(cluster: Cluster, exp_dir: Path, driver: subprocess.Popen,
                                    log: Path) -> tuple[str, list[int]]:
    """Wait until a trial on the worker node has reported (and checkpointed) an epoch but not
    its last, then SIGKILL every process of that node at once."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the search ended before the node loss:\n{tail(log)}"
        for trial, rows in tune_rows(exp_dir).items():
            last = rows[-1]
            if last.get("node_id") == cluster.worker_id and 1 <= last["epoch"] < EPOCHS - 1:
                killed = kill_tree(cluster.worker.pid)
                with contextlib.suppress(ProcessLookupError):  # and its whole session
                    os.killpg(cluster.worker.pid, signal.SIGKILL)
                return trial, killed
        time.sleep(0.1)
    pytest.fail(f"no trial reached the worker node:\n{tail(log)}")


@pytest.fixture(scope="module")
def search(mlflow_server, cluster) -> Search:
    uri = mlflow_server.wait()
    work = cluster.root / "work"
    work.mkdir()
    storage = cluster.root / "ray_results"
    # FIFO: every trial runs all its epochs, so the one on the worker is still running when
    # the node goes (ASHA's early stops are tested elsewhere).
    cmd = [sys.executable, "-m", "search.run", "--space", "smoke",
           "--num-samples", str(NUM_SAMPLES), "--max-epochs", str(EPOCHS), "--concurrency", "2",
           "--cpus-per-trial", "1", "--scheduler", "none", "--address", cluster.address,
           "--tracking-uri", uri, "--storage", str(storage), "--experiment", EXPERIMENT]
    log = work / "search.log"
    started = time.monotonic()
    with log.open("w") as out:
        driver = subprocess.Popen(cmd, cwd=work, env=cluster.env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        victim, killed = _lose_the_worker_node_mid_trial(cluster, storage / EXPERIMENT, driver,
                                                         log)
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            kill_tree(driver.pid)
    print(f"two-node search with a node lost: {time.monotonic() - started:.0f} s")
    output = log.read_text()
    proc = subprocess.CompletedProcess(cmd, driver.returncode, output, "")
    assert driver.returncode == 0, output[-5000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH]
    children = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_TRIAL]
    return Search(proc, client, parents, children, work, tune_rows(storage / EXPERIMENT),
                  victim, killed)


def test_search_on_a_two_node_cluster_finishes_and_reports(search, mlflow_server):
    assert "Best trials:" in search.proc.stdout
    assert f"Compare the runs: {mlflow_server.uri}/#/experiments/" in search.proc.stdout


def test_one_parent_run_with_every_trial_nested_under_it(search, cluster):
    assert len(search.parents) == 1
    parent = search.parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[schema.RAY_ADDRESS].endswith(f":{cluster.address.rsplit(':')[1]}")
    assert parent.data.metrics["trials_total"] == NUM_SAMPLES
    assert len(search.children) == NUM_SAMPLES
    assert {c.data.tags[schema.PARENT_RUN_ID] for c in search.children} == \
        {parent.info.run_id}
    assert len({c.data.tags[schema.TRIAL_ID] for c in search.children}) == NUM_SAMPLES


def test_the_lost_node_took_every_process_of_it(search, cluster):
    """Nothing of the worker node survived: no process names its folder (raylet, workers,
    agents all do), and none of those killed is still running."""
    assert len(search.killed) >= 3  # ray start, its raylet, the trial's worker process at least
    mine = str(cluster.root / "worker").encode()
    survivors = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            status = (entry / "status").read_text()
            if "zombie" not in status and (mine in (entry / "cmdline").read_bytes()
                                           or int(entry.name) in search.killed):
                survivors.append(int(entry.name))
    assert survivors == []


def test_trials_of_the_lost_node_resume_from_their_checkpoint_on_the_head(search, cluster):
    rows = search.rows[search.victim]
    before = [r["epoch"] for r in rows if r["node_id"] == cluster.worker_id]
    after = [r["epoch"] for r in rows if r["node_id"] == cluster.head_id]
    assert before and after, rows
    print(f"trial {search.victim}: epochs {before} on the lost node, {after} on the head")
    # From the epoch after its last checkpoint, not from scratch, and then to the end.
    assert 2 <= min(after) <= max(before) + 1, (before, after)
    assert max(after) == EPOCHS
    assert sorted(set(before) | set(after)) == list(range(1, EPOCHS + 1))
    victim = next(c for c in search.children
                  if c.data.tags[schema.TRIAL_ID] == search.victim)
    assert victim.data.tags[schema.STATUS] == schema.STATUS_COMPLETED
    assert victim.data.tags[schema.NODE_ID] == cluster.head_id  # where its last epoch ran


def test_trials_ran_on_both_nodes_and_say_which(search, cluster):
    ran_on = {r["node_id"] for rows in search.rows.values() for r in rows}
    assert ran_on == cluster.node_ids
    for child in search.children:  # the node tag is where the trial's last epoch ran
        rows = search.rows[child.data.tags[schema.TRIAL_ID]]
        assert child.data.tags[schema.NODE_ID] == rows[-1]["node_id"]
        assert child.data.tags.get(schema.NODE_IP)


def test_every_epoch_is_in_mlflow_exactly_once(search):
    for child in search.children:
        history = search.client.get_metric_history(child.info.run_id, "val_ppl")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, EPOCHS + 1)), (child.data.tags[schema.TRIAL_ID], steps)
        assert child.data.tags[schema.STATUS] == schema.STATUS_COMPLETED
        assert "final_test_ppl" in child.data.metrics
    # the values are the ones Tune kept, epoch by epoch (the victim's first from the lost node)
    victim = next(c for c in search.children if c.data.tags[schema.TRIAL_ID] == search.victim)
    logged = {m.step: m.value for m in search.client.get_metric_history(victim.info.run_id,
                                                                         "val_ppl")}
    kept = {r["epoch"]: r["val_ppl"] for r in search.rows[search.victim]}
    assert logged == pytest.approx(kept)


def test_parent_holds_the_best_config_and_names_the_registered_model(search):
    client, parent, work = search.client, search.parents[0], search.work
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "config.json" in names and "checkpoint" not in names
    local = Path(client.download_artifacts(parent.info.run_id, "config.json", str(work)))
    assert json.loads(local.read_text()) == \
        json.loads((work / f"best_config_{EXPERIMENT}.json").read_text())
    best = parent.data.tags[schema.BEST_TRIAL_ID]
    assert best in {c.data.tags[schema.TRIAL_ID] for c in search.children}
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
