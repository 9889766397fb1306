"""The autoscaler for real, with cluster.yaml's node types: Ray's fake multi-node provider starts
and stops Ray nodes on this machine where AWS would start and stop instances.

The head is `RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...` (token authentication
on, as on the cluster), run by this test in its own temporary folder: never `ray stop` and never
`ray.cluster_utils.AutoscalingCluster`, whose start runs `ray stop --force` on the machine. The
config is derived from cluster.yaml (`derive_fake_config`): the same node types with the same
resources (a head with no CPU and no GPU, worker types that advertise GPUs), with `min_workers`
0 so that the cluster starts empty, at most 2 workers of a type and a 6 s idle timeout so that
the test ends in minutes. Then `python -m search.run --address auto --gpus-per-trial 1
--concurrency 2`, as documented: the autoscaler adds GPU workers for the waiting trials, the
trials run there (their fake GPUs are invisible to torch, so they train on the CPU), and the
idle workers go away after the search.

This is autoscaler v1, what `ray start --autoscaling-config` runs. `ray up` on AWS starts v2
(since Ray 2.50); the same test with `RAY_enable_autoscaler_v2=1` and the fake provider's v2
settings (`launch_multiple`, `head_node_id`) did not get as far as a driver connecting in 2.60,
so v2's scaling decisions are not covered here.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import DATA_DIR, REPO, real_data
from mlflow.tracking import MlflowClient
from processes import (
    alive_nodes,
    executable,
    free_port,
    kill_leftovers,
    start,
    stop,
    tail,
    wait_for,
)

from search import schema

pytestmark = pytest.mark.slow

FAKE_HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's type
TRIALS = 2


def derive_fake_config(shipped: dict, *, gcs_address: str, max_per_type: int = 2,
                       idle_minutes: float = 0.1) -> dict:
    """cluster.yaml's node types under Ray's fake multi-node provider."""
    types = copy.deepcopy(shipped["available_node_types"])
    head = types.pop(shipped["head_node_type"])
    workers = {name: {"resources": spec["resources"], "node_config": {}, "min_workers": 0,
                      "max_workers": min(spec["max_workers"], max_per_type)}
               for name, spec in types.items()}
    return {
        "cluster_name": "awdsearch-fake",
        "max_workers": min(shipped["max_workers"], max_per_type * len(workers)),
        "upscaling_speed": shipped["upscaling_speed"],
        "idle_timeout_minutes": idle_minutes,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": gcs_address},
        "available_node_types": {
            FAKE_HEAD_TYPE: {"resources": head["resources"], "node_config": {},
                             "max_workers": 0},
            **workers},
        "head_node_type": FAKE_HEAD_TYPE,
        "auth": {"ssh_user": "ubuntu"}, "docker": {}, "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict]:
    real_data("ptb")
    root = Path(tempfile.mkdtemp(prefix="awdas", dir="/tmp"))
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    shipped = yaml.safe_load((REPO / "cluster.yaml").read_text())
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = derive_fake_config(shipped, gcs_address=address)
    (root / "autoscaling.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(AWD_DATA_DIR=str(DATA_DIR), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    head_resources = config["available_node_types"][FAKE_HEAD_TYPE]["resources"]
    log = root / "head.log"
    head = start(
        [executable("ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--num-cpus={head_resources['CPU']}", f"--num-gpus={head_resources['GPU']}",
         f"--autoscaling-config={root / 'autoscaling.yaml'}", "--include-dashboard=false",
         f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={root / 'ray'}",
         "--block", "--disable-usage-stats"],
        log, {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    try:
        wait_for("the Ray head", lambda: "Ray runtime started" in tail(log), 120, [head], log)
        yield {"root": root, "address": address, "env": env, "config": config, "log": log}
    finally:
        stop(head)
        kill_leftovers(root)
        shutil.rmtree(root, ignore_errors=True)


def _monitor_log(root: Path) -> str:
    logs = sorted((root / "ray").glob("session_2*/logs"))
    return "\n".join(tail(f, 2000) for f in (logs[-1] / "monitor.log",
                                             logs[-1] / "monitor.out")) if logs else ""


def test_the_cluster_starts_with_the_head_alone_and_no_cpu_for_trials(cluster):
    (head,) = alive_nodes(cluster["address"], cluster["env"], expected=1, timeout=30)
    assert head["resources"].get("CPU", 0) == 0 and head["resources"].get("GPU", 0) == 0


WATCH = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
while True:
    nodes = [{"id": n["NodeID"], "resources": n["Resources"]} for n in ray.nodes() if n["Alive"]]
    print(json.dumps(nodes), flush=True)
    time.sleep(0.5)
"""


@pytest.fixture(scope="module")
def searched(cluster):
    """The documented search, with a watcher that records every node alive during it (as `ray
    status` would show them): a node the autoscaler removes is gone from Ray's list after."""
    work = cluster["root"] / "work"
    work.mkdir()
    uri = f"sqlite:///{work / 'mlflow.db'}"
    watched = work / "nodes.jsonl"
    watcher = start([sys.executable, "-c", WATCH, cluster["address"]], watched, cluster["env"])
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "search.run", "--space", "smoke", "--address", "auto",
             "--gpus-per-trial", "1", "--concurrency", str(TRIALS), "--num-samples",
             str(TRIALS), "--max-epochs", "1", "--cpus-per-trial", "1", "--tracking-uri", uri,
             "--storage", str(cluster["root"] / "ray_results"), "--experiment", "autoscaled"],
            cwd=work, env={**cluster["env"], "RAY_ADDRESS": cluster["address"]},
            capture_output=True, text=True, timeout=600)
    finally:
        stop(watcher, grace=5)
    print(f"autoscaled search: {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + \
        _monitor_log(cluster["root"])
    seen: dict[str, dict] = {}
    for line in watched.read_text().splitlines():
        if line.startswith("[{") or line == "[]":
            seen.update({n["id"]: n["resources"] for n in json.loads(line)})
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("autoscaled")
    runs = client.search_runs([exp.experiment_id])
    return seen, [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_TRIAL]


def test_waiting_gpu_trials_make_the_autoscaler_add_gpu_workers_and_run_there(cluster,
                                                                            searched):
    seen, trials = searched
    assert len(trials) == TRIALS
    assert all(t.data.tags[schema.STATUS] == schema.STATUS_COMPLETED for t in trials)
    workers = {i: r for i, r in seen.items() if r.get("GPU", 0) >= 1}
    assert workers, f"no GPU worker was ever added: {seen}\n{_monitor_log(cluster['root'])}"
    types = cluster["config"]["available_node_types"]
    shipped = [{"CPU": spec["resources"]["CPU"], "GPU": spec["resources"]["GPU"]}
               for name, spec in types.items() if name != FAKE_HEAD_TYPE]
    for resources in workers.values():  # each added node is one of cluster.yaml's worker types
        assert {k: resources.get(k) for k in ("CPU", "GPU")} in shipped, resources
    ran_on = {t.data.tags[schema.NODE_ID] for t in trials}
    assert ran_on <= set(workers), (ran_on, seen)
    print(f"workers added: {[(r['CPU'], r['GPU']) for r in workers.values()]} (CPU, GPU); "
          f"trials ran on {len(ran_on)} of them")


def test_idle_workers_go_away_after_the_search(cluster, searched):
    seen, _ = searched
    added = {i for i, r in seen.items() if r.get("GPU", 0) >= 1}
    assert added, "no worker was added, so none could go away"
    left = alive_nodes(cluster["address"], cluster["env"], expected=1, timeout=120, exactly=True)
    assert len(left) == 1 and left[0]["resources"].get("GPU", 0) == 0, \
        f"{left}\n{_monitor_log(cluster['root'])}"
    assert not added & {n["id"] for n in left}
