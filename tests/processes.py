"""Process helpers for the tests that start real clusters and servers: start a process in its
own session, wait for it to be ready, stop it by its id, and find what it left behind.

Nothing here runs `ray stop`, which would kill every Ray process on the machine, another
test's or another search's included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executable(name: str) -> str:
    """A console script of this environment (ray, mlflow), else the one on PATH."""
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen, grace: float = 45.0) -> None:
    """SIGTERM to our process (a blocking `ray start` drains and stops its node), then SIGKILL
    to its process group if it is still there."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created with start_new_session
    proc.wait(10)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children first, from /proc (no psutil needed)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and everything below it, at once, as a machine that loses power would
    stop them; returns the ids killed."""
    victims = [pid, *descendants(pid)]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    return victims


def kill_leftovers(root: Path) -> None:
    """Processes that outlived their test: those whose command line names our folder."""
    mine = str(root).encode()
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if int(entry.name) != os.getpid() and mine in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path} missing)"


def wait_for(what: str, ok: Callable[[], bool], timeout: float, procs: list[subprocess.Popen],
             log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        dead = [p.args[:3] for p in procs if p.poll() is not None]
        if dead:
            pytest.fail(f"{dead} exited while waiting for {what}:\n{tail(log)}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{tail(log)}")


def alive_nodes(address: str, env: dict[str, str], expected: int, timeout: float,
                exactly: bool = False) -> list[dict]:
    """The cluster's live nodes (id, ip, resources), once at least ``expected`` of them have
    joined (or, with ``exactly``, once exactly that many are left)."""
    code = (
        "import json, time, ray\n"
        f"ray.init(address={address!r}, include_dashboard=False, log_to_driver=False)\n"
        f"deadline = time.monotonic() + {timeout}\n"
        "while True:\n"
        "    nodes = [{'id': n['NodeID'], 'ip': n['NodeManagerAddress'],\n"
        "              'resources': n['Resources']} for n in ray.nodes() if n['Alive']]\n"
        f"    done = len(nodes) == {expected} if {exactly} else len(nodes) >= {expected}\n"
        "    if done or time.monotonic() > deadline:\n"
        "        break\n"
        "    time.sleep(0.5)\n"
        "print(json.dumps(sorted(nodes, key=lambda n: n['id'])))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout + 60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [ln for ln in proc.stdout.splitlines() if ln.startswith(("[{", "[]"))]
    assert printed, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(printed[-1])


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
        wait_for("the MLflow server", self.healthy, timeout, [self.proc], self.log)
        return self.uri


def start_mlflow_server(folder: Path, store: str | None = None) -> MlflowServer:
    """A real `mlflow server` on loopback with a SQLite store (``store``, or a new one in
    ``folder``); not waited for (see wait)."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "server.log"
    proc = start([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                  "--port", str(port), "--workers", "1",
                  "--backend-store-uri", store or f"sqlite:///{folder / 'mlflow.db'}",
                  "--artifacts-destination", str(folder / "artifacts")], log, dict(os.environ))
    return MlflowServer(f"http://127.0.0.1:{port}", proc, log)
