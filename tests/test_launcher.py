"""`ray up` / `ray exec` / `ray down` for real, with cluster.yaml's own setup and start commands,
on two hosts made on this machine.

Each host is a network namespace with its own address (the head .1, the worker .2 of a private
/24, bridged to this machine), its own PID namespace (so cluster.yaml's `ray stop` stops only
that host's Ray, and `ray down` is seen to stop it), its own overlay layer over the SSH user's
home and its own /tmp/ray, with an OpenSSH server on port 22 that accepts a throwaway key. Ray's
launcher reaches them over SSH exactly as it reaches EC2 instances, with Ray's `local` provider
(`head_ip`, `worker_ips`).

The tested config is derived from cluster.yaml at test time (`launcher_config`, checked in
tests/test_cluster.py), so the two cannot drift apart: the provider, SSH and node types change,
paths move (the home, the bucket, the token, the repository the hosts clone: this one), and the
software installs are left out because the hosts' image has them (`~/venv` is this test's
environment); the datasets are fetched `--from` the shared copy. Every other command runs as
shipped: the `git clone`, the environment block of ~/.bashrc, `ray stop`, `ray start --head` with
token authentication and the autoscaler config, the MLflow server on the head's loopback and
the wait for it, the workers' `ray start --address=$RAY_HEAD_IP:6379`.

Needs root (namespaces, mounts), OpenSSH's server, rsync and iproute2: `.ci/run` installs them.
Without them the test is skipped, except on CI (`$CI` set, as `.ci/run` does), where it fails.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import DATA_DIR, REPO, real_data
from launcher_config import BUCKET, derive_launcher_config
from mlflow.tracking import MlflowClient
from processes import descendants, executable, kill_tree, tail

pytestmark = pytest.mark.slow

SSHD = "/usr/sbin/sshd"
RAY_PROCESS = re.compile(r"raylet|gcs_server|ray::|default_worker\.py|monitor\.py|log_monitor"
                         r"|runtime_env/agent|dashboard")
EXPERIMENT = "launcher"


def _missing_tools() -> list[str]:
    missing = [tool for tool in (SSHD, "rsync", "ip", "unshare", "ssh", "ssh-keygen")
               if not shutil.which(tool)]
    if os.geteuid() != 0:
        missing.append("root (network and PID namespaces)")
    return missing


@pytest.fixture(scope="module", autouse=True)
def _tools():
    missing = _missing_tools()
    if missing:
        message = f"the launcher test needs {', '.join(missing)} (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Host:
    """One machine: sshd as PID 1 of its own PID namespace, in its own network namespace."""

    name: str
    ip: str
    home: Path  # what this host wrote in its home, seen from here
    proc: subprocess.Popen  # `unshare`; its one child is the namespace's PID 1
    log: Path

    def namespace(self) -> str:
        return os.readlink(f"/proc/{descendants(self.proc.pid)[0]}/ns/pid")

    def processes(self) -> dict[int, str]:
        """Every process running on this host, by id, with its command line."""
        ns, found = self.namespace(), {}
        for entry in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "pid") == ns:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes() \
                        .replace(b"\0", b" ").decode(errors="replace").strip()
        return found

    def ray_processes(self) -> dict[int, str]:
        return {pid: cmd for pid, cmd in self.processes().items() if RAY_PROCESS.search(cmd)}

    def environ(self, pid: int) -> dict[str, str]:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)

    def power_off(self) -> None:
        """Kill the namespace's PID 1: the kernel kills every process on the host with it."""
        with contextlib.suppress(IndexError, ProcessLookupError):
            os.kill(descendants(self.proc.pid)[0], signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def _run(*cmd: str, timeout: float = 60) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)


def _monitor_log(m: Machines) -> str:
    """The head's autoscaler log, for a failure message."""
    sessions = sorted((m.root / "head" / "tmp_ray").glob("session_2*"))
    return tail(sessions[-1] / "logs" / "monitor.log") if sessions else "(no session)"


def _free_subnet() -> int:
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout + \
        subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout + \
        subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for third in [*range(20 + os.getpid() % 200, 250), *range(20, 250)]:
        if f"10.231.{third}." not in used and f"awd{third}" not in used:
            return third
    raise RuntimeError("no free 10.231.x.0/24 subnet")


@dataclass
class Machines:
    root: Path
    head: Host
    worker: Host
    key: Path
    token: Path
    home: Path  # the SSH user's home on every host (each host writes to its own layer)
    shared: Path  # seen by every host, as NFS would be


@pytest.fixture(scope="module")
def machines() -> Iterator[Machines]:
    real_data("ptb")
    real_data("wikitext-2")
    root = Path(tempfile.mkdtemp(prefix="awdlaunch", dir="/tmp"))
    subnet = _free_subnet()
    tag = f"awd{subnet}"
    bridge = f"{tag}br"
    hosts: list[Host] = []
    namespaces: list[str] = []
    try:
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "key"))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key"))
        shutil.copy(root / "key.pub", root / "authorized_keys")
        token = root / "auth_token"
        token.write_text(os.urandom(32).hex())
        token.chmod(0o600)
        home = Path(pwd.getpwnam(getpass.getuser()).pw_dir)  # where ssh puts us, and `~`
        shared = root / "shared"
        for folder in (shared, Path("/tmp/ray"), Path("/run/sshd")):
            folder.mkdir(parents=True, exist_ok=True)
        _run("ip", "link", "add", bridge, "type", "bridge")
        _run("ip", "addr", "add", f"10.231.{subnet}.254/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        for index, name in ((1, "head"), (2, "worker")):
            netns, ip = f"{tag}{name}", f"10.231.{subnet}.{index}"
            _run("ip", "netns", "add", netns)
            namespaces.append(netns)
            veth = f"{tag}{name[0]}"
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _run("ip", "link", "set", veth, "master", bridge, "up")
            _run("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _run("ip", "-n", netns, "link", "set", "eth0", "up")
            _run("ip", "-n", netns, "link", "set", "lo", "up")
            _run("ip", "-n", netns, "route", "add", "default", "via", f"10.231.{subnet}.254")
            hosts.append(_boot(root, name, ip, netns, home))
        for host in hosts:
            _wait_for_ssh(host, root / "key")
        yield Machines(root, hosts[0], hosts[1], root / "key", token, home, shared)
    finally:
        for host in hosts:
            host.power_off()
        for netns in namespaces:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _boot(root: Path, name: str, ip: str, netns: str, home: Path) -> Host:
    """A host's image: the SSH user's real home as its read-only lower layer (the Python
    installation may live there) under a private upper layer, so that whatever the host writes
    in its home stays its own; ~/venv is this test's Python environment (everything setup would
    install), as an AMI would have it."""
    own = root / name
    for folder in ("upper", "work", "tmp_ray"):
        (own / folder).mkdir(parents=True)
    config = own / "sshd_config"
    config.write_text("\n".join([
        "Port 22", "ListenAddress 0.0.0.0", f"HostKey {root / 'host_key'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "StrictModes no", "PidFile none", "MaxStartups 100", "MaxSessions 100", ""]))
    boot = (f"mount -t overlay overlay -o lowerdir={home},upperdir={own / 'upper'},"
            f"workdir={own / 'work'} {home} && ln -sfn {sys.prefix} {home}/venv "
            f"&& mount --bind {own / 'tmp_ray'} /tmp/ray && exec {SSHD} -D -e -f {config}")
    log = own / "sshd.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--pid", "--fork", "--mount-proc",
             "sh", "-c", boot], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    return Host(name, ip, own / "upper", proc, log)


def _wait_for_ssh(host: Host, key: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host.ip, 22), timeout=1):
            return
        if host.proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"sshd of {host.name} did not come up:\n{tail(host.log)}")


@dataclass
class Launched:
    machines: Machines
    config_file: Path
    config: dict
    left_out: list[str]
    env: dict[str, str]
    up: subprocess.CompletedProcess

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([executable("ray"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, cwd=self.machines.root)

    def exec(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.ray("exec", str(self.config_file), command, timeout=timeout)

    def python_on_head(self, code: str, timeout: float = 120) -> object:
        """Run Python on the head (as `ray exec` does) and return the JSON it prints last."""
        script = self.machines.shared / "snippet.py"
        script.write_text(code)
        proc = self.exec(f"python {script}", timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        assert lines, proc.stdout[-3000:]
        return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def launched(machines) -> Iterator[Launched]:
    shipped = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config, left_out = derive_launcher_config(
        shipped, name=f"awdtest{machines.head.ip.split('.')[2]}", head_ip=machines.head.ip,
        worker_ip=machines.worker.ip, key=machines.key, token=machines.token,
        home=machines.home, shared=machines.shared, repo=REPO, data=DATA_DIR)
    config_file = machines.root / "cluster.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    # The launcher's own state (the local provider's node file, its config cache) stays here.
    launcher = machines.root / "launcher"
    launcher.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=str(launcher), TMPDIR=str(launcher),
               # Ray's autoscaler v2, the default of `ray up` since Ray 2.50, has no local
               # provider yet (ray-project/ray#57153, open): it never starts a worker.
               RAY_UP_enable_autoscaler_v2="0")
    started = time.monotonic()
    up = subprocess.run([executable("ray"), "up", "-y", "--no-config-cache", str(config_file)],
                        env=env, capture_output=True, text=True, timeout=600,
                        cwd=machines.root)
    print(f"ray up: {time.monotonic() - started:.0f} s")
    assert up.returncode == 0, up.stdout[-6000:] + up.stderr[-3000:]
    yield Launched(machines, config_file, config, left_out, env, up)


def test_ray_up_starts_the_head_and_the_autoscaler_starts_the_worker(launched):
    code = (
        "import json, time, ray\n"
        "ray.init(address='auto', log_to_driver=False)\n"
        "deadline = time.monotonic() + 180\n"
        "while time.monotonic() < deadline:\n"
        "    ips = sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])\n"
        "    if len(ips) >= 2:\n"
        "        break\n"
        "    time.sleep(1)\n"
        "print('RESULT ' + json.dumps(ips))\n")
    ips = launched.python_on_head(code, timeout=300)
    m = launched.machines
    assert ips == sorted([m.head.ip, m.worker.ip]), f"{ips}\n{_monitor_log(m)}"


def test_token_authentication_is_on_with_the_users_token_on_both_hosts(launched):
    m = launched.machines
    for host in (m.head, m.worker):
        assert (host.home / ".ray" / "auth_token").read_text() == m.token.read_text()
        raylets = [pid for pid, cmd in host.ray_processes().items() if "raylet" in cmd.split()[0]]
        assert raylets, host.ray_processes()
        assert host.environ(raylets[0]).get("RAY_AUTH_MODE") == "token"


def test_both_hosts_fetched_the_data_and_checked_it(launched):
    for host in (launched.machines.head, launched.machines.worker):
        for name in ("ptb", "wikitext-2"):
            for split in ("train", "valid", "test"):
                assert (host.home / "awd_data" / name / f"{split}.txt").read_bytes() == \
                    (DATA_DIR / name / f"{split}.txt").read_bytes()


def test_both_hosts_cloned_the_repository_and_installed_nothing_else(launched):
    for host in (launched.machines.head, launched.machines.worker):
        clone = host.home / "awdsearch"
        assert (clone / "pyproject.toml").read_bytes() == (REPO / "pyproject.toml").read_bytes()
        assert (clone / ".git").is_dir() and not (clone / ".venv").exists()


def test_mlflow_listens_on_the_heads_loopback_only(launched):
    """`ray up` returned once MLflow answered on the head's localhost; from this machine,
    through the bridge, the head's address refuses the connection."""
    health = launched.python_on_head(
        "import json, urllib.request\n"
        "r = urllib.request.urlopen('http://localhost:5000/health', timeout=5)\n"
        "print('RESULT ' + json.dumps(r.status))\n")
    assert health == 200
    with pytest.raises(ConnectionRefusedError, match="Connection refused"):
        socket.create_connection((launched.machines.head.ip, 5000), timeout=5).close()


@pytest.fixture(scope="module")
def searched(launched) -> subprocess.CompletedProcess:
    """The documented `ray exec` search, on the smoke space and the hosts' CPUs."""
    documented = next(line for line in (REPO / "cluster.yaml").read_text().splitlines()
                      if line.startswith("#   ray exec cluster.yaml '"))
    command = documented.split("'", 2)[1]
    command = (command.replace("--space awd_ptb", "--space smoke")
               .replace("--gpus-per-trial 1", "--cpus-per-trial 1")
               .replace("--concurrency 8", "--concurrency 2")
               .replace(BUCKET, str(launched.machines.shared))
               + f" --num-samples 2 --max-epochs 1 --experiment {EXPERIMENT}")
    assert "--address auto" in command and "--tracking-uri http://localhost:5000" in command
    started = time.monotonic()
    proc = launched.exec(command, timeout=400)
    print(f"ray exec search: {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    return proc


def test_a_search_by_ray_exec_lands_in_the_heads_mlflow(launched, searched):
    assert "Best trials:" in searched.stdout
    runs = launched.python_on_head(
        "import json\n"
        "from mlflow.tracking import MlflowClient\n"
        "client = MlflowClient('http://localhost:5000')\n"
        f"exp = client.get_experiment_by_name({EXPERIMENT!r})\n"
        "runs = client.search_runs([exp.experiment_id])\n"
        "print('RESULT ' + json.dumps([{'role': r.data.tags.get('awdsearch.role'),\n"
        "    'status': r.info.status, 'node_ip': r.data.tags.get('awdsearch.node_ip'),\n"
        "    'val_ppl': r.data.metrics.get('val_ppl')} for r in runs]))\n")
    roles = sorted(r["role"] for r in runs)
    assert roles == ["search", "trial", "trial"], runs
    trials = [r for r in runs if r["role"] == "trial"]
    assert all(r["status"] == "FINISHED" and r["val_ppl"] for r in trials), trials
    m = launched.machines
    assert {r["node_ip"] for r in trials} <= {m.head.ip, m.worker.ip}


def test_mlflow_is_reached_from_here_through_the_documented_tunnel(launched, searched,
                                                                   monkeypatch):
    """`ray attach cluster.yaml -p 5000` (interactive) and `ray exec --port-forward=5000` open
    the same SSH tunnel: this machine's localhost:5000 is the head's MLflow."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 5000)) == 0:
            pytest.skip("port 5000 is taken on this machine (an MLflow UI?)")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # until the tunnel is up
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    tunnel = subprocess.Popen(
        [executable("ray"), "exec", str(launched.config_file), "--port-forward=5000",
         "sleep 120"], env=launched.env, cwd=launched.machines.root,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        client = MlflowClient("http://127.0.0.1:5000")
        deadline = time.monotonic() + 60
        while True:
            try:
                exp = client.get_experiment_by_name(EXPERIMENT)
                break
            except Exception:
                assert time.monotonic() < deadline and tunnel.poll() is None, "no tunnel"
                time.sleep(1)
        assert exp is not None
        assert len(client.search_runs([exp.experiment_id])) == 3  # the parent, two trials
    finally:
        kill_tree(tunnel.pid)
        tunnel.wait(10)


def test_ray_down_stops_ray_and_terminates_both_nodes(launched, searched):
    """Runs last. `ray down` runs `ray stop` on the head and has the provider terminate every
    node. Ray's local provider only marks a node terminated (on AWS the instance ends, and with
    it the MLflow server on the head and whatever of Ray is left on a worker), so after `ray
    down` this test does what the cloud does, powers both hosts off, and then checks that
    nothing of the cluster runs anywhere on this machine, the launcher's side included."""
    m = launched.machines
    down = launched.ray("down", "-y", str(launched.config_file))
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    assert m.head.ray_processes() == {}
    (state_file,) = (m.root / "launcher").rglob("cluster-*.state")
    states = {ip: node["state"] for ip, node in json.loads(state_file.read_text()).items()}
    assert states == {m.head.ip: "terminated", m.worker.ip: "terminated"}
    left = {h.name: sorted({_program(cmd) for cmd in h.processes().values()
                            if not cmd.startswith("sshd")}) for h in (m.head, m.worker)}
    print(f"left after ray down, until the nodes are powered off: {left}")
    for host in (m.head, m.worker):
        host.power_off()
    deadline = time.monotonic() + 30  # the launcher's SSH connections persist 10 s
    while time.monotonic() < deadline and (leftover := _cluster_processes(m)):
        time.sleep(1)
    assert not _cluster_processes(m), leftover


def _program(cmd: str) -> str:
    """What a process runs: a Python module or script by its name, else the executable's."""
    words = cmd.split()
    if words and "python" in Path(words[0]).name:
        rest = [w for w in words[1:] if w not in ("-u", "-Wignore")]
        if rest[:1] == ["-m"] and len(rest) > 1:
            return rest[1]
        if rest and not rest[0].startswith("-"):
            return Path(rest[0]).name
    return Path(words[0]).name if words else cmd


def _cluster_processes(m: Machines) -> list[str]:
    """Processes of this machine that belong to the test's cluster: started from its folder, or
    connected to its hosts."""
    marks = [str(m.root).encode(), m.head.ip.encode(), m.worker.ip.encode()]
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes()
            if int(entry.name) != os.getpid() and any(mark in cmd for mark in marks):
                found.append(cmd.replace(b"\0", b" ").decode(errors="replace")[:200])
    return found
