"""Faults against real searches, and what they cost: ``python -m benchmarks.faults``.

Each fault is injected into a small real search (the smoke space on a PTB slice, real local Ray,
a real MLflow store: SQLite, or a real ``mlflow server`` on 127.0.0.1 for the outage), the
search is recovered the way a user would (``--resume``, or nothing at all), and then audited
against Ray's own records (every trial's ``result.json``), the source of truth:

- **lost**: epochs Ray has that MLflow lacks, plus trials Ray knows without a run;
- **duplicated**: metric entries for an epoch already logged, plus second runs of a trial and
  runs of trials Ray does not know (phantoms);
- **survived**: the search reached its end (exit 0, parent FINISHED, every trial run closed),
  or, for faults that must be refused, was refused with one line and nothing written;
- **recovery**: seconds from the end of the fault until the store was whole again.

Prints one table and writes ``benchmarks/results/faults-<device>-<date>.json``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.machine import RESULTS_DIR, load_snapshot, machine_info

EXPERIMENT = "faults"
BASE = ["--space", "smoke", "--num-samples", "2", "--max-epochs", "3", "--concurrency", "2",
        "--scheduler", "none", "--storage", "rr", "--experiment", EXPERIMENT]


@dataclass
class Attempt:
    survived: bool
    lost: int
    duplicated: int
    recovery_s: float
    note: str = ""
    code_ran: bool = False  # a crafted file in the search's folder ran its command


@dataclass
class FaultResult:
    fault: str
    expected: str
    attempts: list[Attempt] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        done = self.attempts
        return {"fault": self.fault, "runs_tried": len(done),
                "runs_survived": sum(a.survived for a in done),
                "results_lost": sum(a.lost for a in done),
                "duplicated": sum(a.duplicated for a in done),
                "code_executed": sum(a.code_ran for a in done),
                "recovery_s": round(statistics.median(a.recovery_s for a in done), 1)
                if done else None,
                "expected": self.expected}


# --- running and auditing a search ------------------------------------------------------------
class Workdir:
    """One search's folder: its MLflow store, its Ray results, its logs."""

    def __init__(self, root: Path, tracking_uri: str | None = None,
                 experiment: str = EXPERIMENT) -> None:
        self.root = root
        self.experiment = experiment
        self.extra: list[str] = []  # flags of this fault's search, on every command
        if experiment != EXPERIMENT:
            self.extra = ["--experiment", experiment]
        self.uri = tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.exp_dir = root / "rr" / experiment
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": self.uri,
                    "XDG_CACHE_HOME": str(root / "cache"),
                    "XDG_CONFIG_HOME": str(root / "config")}  # its own state key

    def start(self, *extra: str, log: str = "run.log") -> subprocess.Popen:
        out = open(self.root / log, "a")  # noqa: SIM115 (the child keeps it)
        return subprocess.Popen([sys.executable, "-m", "search.run", *BASE, *self.extra, *extra],
                                cwd=self.root, env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def run(self, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "search.run", *BASE, *self.extra, *extra],
                              cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def ray_epochs(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for f in self.exp_dir.glob("*/result.json"):
            rows = []
            for line in f.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
            if rows:
                out[str(rows[0]["trial_id"])] = {int(r["epoch"]) for r in rows if "val_ppl" in r}
        return out

    def wait(self, condition: Callable[[], bool], proc: subprocess.Popen,
             timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not condition():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"search ended or stalled before the fault: "
                                   f"{(self.root / 'run.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def epochs_done(self) -> int:
        return sum(len(e) for e in self.ray_epochs().values())

    def tracking_at(self, uri: str) -> None:
        self.uri = uri
        self.env["MLFLOW_TRACKING_URI"] = uri

    def parent_status(self) -> str | None:
        from mlflow.tracking import MlflowClient

        from search import schema

        client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        runs = [] if exp is None else client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`{schema.ROLE}` = '{schema.ROLE_SEARCH}'")
        return runs[0].info.status if runs else None


def audit(work: Workdir) -> tuple[int, int, bool]:
    """(lost, duplicated, whole): MLflow against Ray's records; whole = parent FINISHED and
    every trial run closed with a final status."""
    from mlflow.tracking import MlflowClient

    from search import schema

    client = MlflowClient(work.uri)
    exp = client.get_experiment_by_name(work.experiment)
    if exp is None:
        return sum(len(e) for e in work.ray_epochs().values()), 0, False
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH]
    trials: dict[str, list[Any]] = {}
    for r in runs:
        if r.data.tags.get(schema.ROLE) == schema.ROLE_TRIAL:
            trials.setdefault(r.data.tags[schema.TRIAL_ID], []).append(r)
    ray = work.ray_epochs()
    lost = duplicated = 0
    for trial_id, epochs in ray.items():
        found = trials.get(trial_id, [])
        if not found:
            lost += len(epochs) or 1
            continue
        duplicated += len(found) - 1
        steps = [m.step for m in client.get_metric_history(found[0].info.run_id,
                                                           schema.VAL_PPL)]
        lost += len(epochs - set(steps))
        duplicated += len(steps) - len(set(steps))
    duplicated += sum(len(v) for k, v in trials.items() if k not in ray)  # phantoms
    whole = (len(parents) == 1 and parents[0].info.status == "FINISHED"
             and all(r.info.status != "RUNNING" for v in trials.values() for r in v))
    return lost, duplicated, whole


def finished(work: Workdir, code: int, began: float, note: str = "") -> Attempt:
    lost, duplicated, whole = audit(work)
    return Attempt(code == 0 and whole, lost, duplicated, time.time() - began, note)


# --- the faults ---------------------------------------------------------------------------------
def driver_signal(work: Workdir, signum: int, expected_code: int | None) -> Attempt:
    """The driver gets ``signum`` after the first epochs (SIGKILL: with its local Ray, no
    chance to save anything), then ``--resume``."""
    proc = work.start()
    work.wait(lambda: work.epochs_done() >= 2, proc)
    if signum == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signum)
    code = proc.wait(timeout=180)
    note = f"exit {code}"
    if expected_code is not None and code != expected_code:
        return Attempt(False, 0, 0, 0.0, f"exit {code}, expected {expected_code}")
    began = time.time()
    resumed = work.run("--resume")
    return finished(work, resumed.returncode, began, note)


class _Crafted:
    """A pickle that runs a command when read: it touches ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def tampered_state(work: Workdir, pattern: str, how: str) -> Attempt:
    """Ctrl-C the search after its first epochs, then replace (``crafted``: a pickle that runs
    a command) or cut in half (``truncated``) the newest of Tune's state files matching
    ``pattern``, then ``--resume``: nothing runs, the search continues from the file's last
    signed version (`search.trust`) and finishes, no result lost."""
    import pickle

    proc = work.start()
    work.wait(lambda: work.epochs_done() >= 2, proc)
    os.kill(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=180)
    victim = sorted(work.exp_dir.glob(pattern))[-1]
    marker = work.root / "crafted_pickle_ran"
    data = victim.read_bytes()
    victim.write_bytes(pickle.dumps(_Crafted(marker)) if how == "crafted"
                       else data[: len(data) // 2])
    began = time.time()
    resumed = work.run("--resume")
    attempt = finished(work, resumed.returncode, began, f"exit {code}; {victim.name} {how}")
    attempt.code_ran = marker.exists()
    attempt.survived = attempt.survived and not attempt.code_ran and \
        "its last signed version is used" in resumed.stdout + resumed.stderr
    return attempt


def signal_during_restore(work: Workdir) -> Attempt:
    """Ctrl-C the search, then signal two ``--resume`` commands as they restore it: SIGINT a
    second in (before Ray), SIGTERM once the parent is RUNNING again (its state being verified
    and restored). Each ends within seconds with 130 / 143 and one line; a last ``--resume``
    finishes the search."""
    proc = work.start()
    work.wait(lambda: work.epochs_done() >= 2, proc)
    os.kill(proc.pid, signal.SIGINT)
    notes = [f"exit {proc.wait(timeout=180)}"]
    ok = notes[0] == "exit 130"
    for signum, ready in [(signal.SIGINT, lambda p: time.time() - p > 1.0),
                          (signal.SIGTERM, lambda p: work.parent_status() == "RUNNING")]:
        began = time.time()
        proc = work.start("--resume", log="restore.log")
        work.wait(lambda ready=ready, began=began: ready(began), proc)  # type: ignore[misc]
        sent = time.time()
        os.kill(proc.pid, signum)
        code = proc.wait(timeout=60)
        took = time.time() - sent
        notes.append(f"{signal.Signals(signum).name}: exit {code} in {took:.1f} s")
        ok = ok and code == 128 + signum and took < 15
    printed = (work.root / "restore.log").read_text()
    ok = ok and "Traceback" not in printed and printed.count("Search stopped by") == 2
    began = time.time()
    attempt = finished(work, work.run("--resume").returncode, began, "; ".join(notes))
    attempt.survived = attempt.survived and ok
    return attempt


DISK_MB = 96  # the small file system of the full-disk faults
KEEP_FREE_MB = 32  # AWDSEARCH_MIN_FREE_MB of their searches


def full_disk(work: Workdir, which: str) -> Attempt:
    """The search's storage (``which="storage"``) or the MLflow store's folder (``"store"``) is
    a 96 MB tmpfs that another process fills to the last byte after the first epoch: the search
    stops with exit 74 and one line naming the folder; once the space is freed, ``--resume``
    finishes it. Needs root (``mount``)."""
    disk = work.root / ("rr" if which == "storage" else "store")
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs",
                              str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        raise RuntimeError(f"a small file system needs mount (root): {mounted.stderr[:200]}")
    try:
        if which == "store":
            work.tracking_at(f"sqlite:///{disk / 'mlflow.db'}")
        work.env["AWDSEARCH_MIN_FREE_MB"] = str(KEEP_FREE_MB)
        proc = work.start()
        work.wait(lambda: work.epochs_done() >= 1, proc)
        ballast = fill(disk)
        code = proc.wait(timeout=300)
        printed = (work.root / "run.log").read_text()
        errors = [line for line in printed.splitlines() if line.startswith("error: ")]
        honest = (code == 74 and "Traceback" not in printed and len(errors) == 1
                  and str(disk) in errors[0] and "--resume" in printed)
        ballast.unlink()
        began = time.time()
        resumed = work.run("--resume")
        attempt = finished(work, resumed.returncode, began,
                           f"exit {code}: {errors[0][:140] if errors else 'no error line'}")
        if not attempt.survived:  # why, in the note
            attempt.note += (f"; resume exit {resumed.returncode}: "
                             f"{(resumed.stderr.strip().splitlines() or [''])[-1][:300]}")
        if not honest:
            attempt.note += f"; not one honest line: {printed[-600:]}"
        attempt.survived = attempt.survived and honest
        return attempt
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Another process's file that takes the disk's last byte (written until ENOSPC: the
    search writes meanwhile)."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))  # unbuffered: the last write is a short one
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return ballast


def two_starts_new_store(work: Workdir) -> Attempt:
    """Two searches (two experiments) started at the same instant on a new SQLite store: both
    create its tables under the store's lock (`search.lock.creation_lock`) and finish."""
    other = Workdir(work.root, experiment=f"{EXPERIMENT}-b")
    began = time.time()
    procs = [w.start(log=f"run-{w.experiment}.log") for w in (work, other)]
    codes = [p.wait(timeout=900) for p in procs]
    attempts = [finished(w, c, began) for w, c in zip((work, other), codes, strict=True)]
    return Attempt(all(a.survived for a in attempts), sum(a.lost for a in attempts),
                   sum(a.duplicated for a in attempts), time.time() - began,
                   f"exits {codes}")


def worker_kill(work: Workdir) -> Attempt:
    """A trial's worker process is SIGKILLed mid-trial: Ray restarts it from its checkpoint."""
    proc = work.start()
    work.wait(lambda: work.epochs_done() >= 1, proc)
    pids = subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "ray::ImplicitFunc"],
                          capture_output=True, text=True).stdout.split()
    for pid in pids[:1]:
        os.kill(int(pid), signal.SIGKILL)
    began = time.time()
    return finished(work, proc.wait(timeout=600), began, f"{len(pids[:1])} worker killed")


def corrupt_checkpoint(work: Workdir) -> Attempt:
    """Every trial checkpoint is truncated to 0 bytes, then a worker dies: the trial starts
    afresh with a warning (documented fallback)."""
    proc = work.start()
    # a checkpoint on disk that Tune has registered (its result is in result.json): else the
    # restarted trial has no checkpoint to fall back from, and simply starts over
    work.wait(lambda: work.epochs_done() >= 1
              and any(work.exp_dir.glob("*/checkpoint_*/trainer.pt")), proc)
    pids = subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "ray::ImplicitFunc"],
                          capture_output=True, text=True).stdout.split()
    for pid in pids:  # first the workers (no checkpoint written after this), then the files
        os.kill(int(pid), signal.SIGKILL)
    for f in work.exp_dir.glob("*/checkpoint_*/trainer.pt"):
        f.write_bytes(b"")
    began = time.time()
    code = proc.wait(timeout=600)
    afresh = "starts afresh" in (work.root / "run.log").read_text()
    return finished(work, code if afresh else 1, began, "fresh start" if afresh else
                    "no fresh-start warning")


def kills_at_run_creation(work: Workdir) -> Attempt:
    """SIGKILL the driver twice, each time just after a new trial run appears in MLflow (before
    Tune saves the trial), then resume: phantom runs must not survive."""
    from mlflow.tracking import MlflowClient

    def trial_runs() -> int:
        exp = MlflowClient(work.uri).get_experiment_by_name(EXPERIMENT)
        return 0 if exp is None else len(MlflowClient(work.uri).search_runs(
            [exp.experiment_id], filter_string="tags.`awdsearch.role` = 'trial'"))

    work.extra = ["--num-samples", "4", "--concurrency", "1", "--max-epochs", "2"]
    seen = 1  # the first kill waits for the second trial's run: Tune has saved the search
    for attempt in range(2):
        proc = work.start(*(["--resume"] if attempt else []))
        target = seen + 1
        work.wait(lambda target=target: trial_runs() >= target, proc)  # type: ignore[misc]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        seen = trial_runs()
    began = time.time()
    resumed = work.run("--resume")
    return finished(work, resumed.returncode, began, "2 kills")


def second_driver(work: Workdir) -> Attempt:
    """A second driver on the same search while the first runs: refused in one line."""
    work.extra = ["--max-epochs", "8"]  # the first is still running when the second starts
    proc = work.start()
    work.wait(lambda: work.epochs_done() >= 1, proc)
    began = time.time()
    other = work.run("--resume", timeout=120)
    refused = other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1 \
        and "another driver" in other.stderr
    attempt = finished(work, proc.wait(timeout=600), began)
    attempt.survived = attempt.survived and refused
    attempt.note = "refused in one line" if refused else other.stderr[-300:]
    return attempt


def mlflow_outage(work: Workdir, outage_s: float) -> Attempt:
    """The MLflow server is down for ``outage_s`` in the middle of the search."""
    server = MlflowServer(work.root)
    server.start()
    work.uri = server.uri
    work.env.update({"MLFLOW_TRACKING_URI": server.uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    try:
        work.extra = ["--max-epochs", "6"]
        proc = work.start()
        work.wait(lambda: work.epochs_done() >= 1, proc)
        server.stop()
        time.sleep(outage_s)
        server.start()
        began = time.time()
        code = proc.wait(timeout=900)
        log = (work.root / "run.log").read_text()
        note = (f"{log.count('unreachable since')} outage line, "
                f"{log.count('MLflow caught up')} caught-up line")
        return finished(work, code, began, note)
    finally:
        server.stop()


def data_changed(work: Workdir) -> Attempt:
    """A registered dataset's file is edited after its token cache was built: refused with one
    line, nothing trained on it."""
    data = work.root / "data"
    shutil.copytree(Path(os.environ["AWD_DATA_DIR"]) / "ptb", data / "ptb")
    work.env["AWD_DATA_DIR"] = str(data)
    subprocess.run([sys.executable, "-c", "from awd.data import load_corpus; "
                    "load_corpus('ptb')"], env=work.env, check=True)  # the cache
    valid = data / "ptb" / "valid.txt"
    valid.write_text(valid.read_text().replace(" the ", " a ", 50))
    began = time.time()
    run = work.run(timeout=300)
    refused = run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 \
        and "valid.txt" in run.stderr
    trained = work.epochs_done()
    return Attempt(refused and trained == 0, 0, 0, time.time() - began,
                   run.stderr.strip()[:160])


def fatal_trials(work: Workdir) -> Attempt:
    """Trials that can never succeed (missing data, a model beyond the size bound, a diverging
    learning rate): failed once each with the reason, not retried; the others finish."""
    script = work.root / "fatal_space.py"
    script.write_text(FATAL_SPACE)
    began = time.time()
    run = subprocess.run([sys.executable, str(script)], cwd=work.root, env=work.env,
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        return Attempt(False, 0, 0, time.time() - began, run.stderr[-300:])
    report = json.loads(run.stdout.strip().splitlines()[-1])
    lost, duplicated, whole = audit(work)
    ok = whole and report["failed"] == 3 and report["retried"] == 0 and report["completed"] >= 1
    return Attempt(ok, lost, duplicated, time.time() - began,
                   f"{report['failed']} failed, {report['retried']} retried")


FATAL_SPACE = '''
import json, ray
from search.driver import run_search
from search.options import SearchOptions
from search import schema
from spaces import SPACES, Space, smoke

def define(trial):
    config = smoke.define(trial)
    if trial.number == 1:
        config["dataset"] = "/nonexistent/corpus"
    if trial.number == 2:
        config["nhid"] = 400_000
    if trial.number == 0:  # the paper's AWD configuration: NaN within the first epoch
        config["lr"] = 1e8
    return config

SPACES["fatal"] = Space(name="fatal", description="", model="mixed", dataset="ptb",
                        define=define, warm_start=smoke.SPACE.warm_start, max_epochs=2,
                        grace_period=1)
out = run_search(SearchOptions(space="fatal", experiment="faults", num_samples=4,
                               concurrency=2, storage="rr", scheduler="none", max_failures=2))
rows = {}
import glob
for f in glob.glob("rr/faults/*/result.json"):
    lines = [json.loads(x) for x in open(f).read().splitlines() if x.strip()]
    rows[lines[-1]["trial_id"]] = lines
failed = [t for t in out.trials if t.status == schema.STATUS_FAILED]
retried = sum(1 for t in failed if len(rows.get(t.trial_id, [])) > 1)
ray.shutdown()
print(json.dumps({"failed": len(failed), "retried": retried,
                  "completed": sum(t.status == schema.STATUS_COMPLETED for t in out.trials)}))
'''


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1, stopped and started at will."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder = folder
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.folder / "server.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(self.port), "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--default-artifact-root", (self.folder / "artifacts").as_uri(), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


FAULTS: dict[str, tuple[str, Callable[[Workdir], Attempt]]] = {
    "mlflow_outage_20s": ("search goes on; written once when back",
                          lambda w: mlflow_outage(w, 20)),
    "driver_sigkill": ("--resume finishes", lambda w: driver_signal(w, signal.SIGKILL, None)),
    "driver_sigint": ("exit 130, --resume finishes",
                      lambda w: driver_signal(w, signal.SIGINT, 130)),
    "driver_sigterm": ("exit 143, --resume finishes",
                       lambda w: driver_signal(w, signal.SIGTERM, 143)),
    "driver_kills_at_run_creation": ("no phantom runs after --resume", kills_at_run_creation),
    "second_driver": ("refused in one line; first finishes", second_driver),
    "trial_worker_sigkill": ("trial resumes from its checkpoint", worker_kill),
    "corrupt_checkpoint": ("trial starts afresh with a warning", corrupt_checkpoint),
    "fatal_trials": ("failed once with the reason; others finish", fatal_trials),
    "data_changed_after_cache": ("refused in one line", data_changed),
    "crafted_tuner_pkl": ("nothing runs; resumes from the signed copy",
                          lambda w: tampered_state(w, "tuner.pkl", "crafted")),
    "crafted_searcher_state": ("nothing runs; resumes from the signed copy",
                               lambda w: tampered_state(w, "searcher-state-*.pkl", "crafted")),
    "truncated_searcher_state": ("resumes from the signed copy, never from zero",
                                 lambda w: tampered_state(w, "searcher-state-*.pkl",
                                                          "truncated")),
    "signal_during_restore": ("exit 130 / 143 within seconds, one line; --resume finishes",
                              signal_during_restore),
    "full_storage_disk": ("exit 74 in one line; --resume finishes once freed",
                          lambda w: full_disk(w, "storage")),
    "full_tracking_store_disk": ("exit 74 in one line; --resume finishes once freed",
                                 lambda w: full_disk(w, "store")),
    "two_starts_on_a_new_store": ("both finish", two_starts_new_store),
    "truncated_experiment_state": ("resumes from the signed copy; completed trials kept",
                                   lambda w: tampered_state(w, "experiment_state-*.json",
                                                            "truncated")),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1, help="runs per fault (default 1)")
    p.add_argument("--only", nargs="+", choices=sorted(FAULTS), help="these faults only")
    p.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/...)")
    args = p.parse_args(argv)
    if "AWD_DATA_DIR" not in os.environ:
        p.error("set AWD_DATA_DIR to the folder holding ptb/")
    results = []
    for name in args.only or FAULTS:
        expected, inject = FAULTS[name]
        result = FaultResult(name, expected)
        for _ in range(args.repeats):
            root = Path(tempfile.mkdtemp(prefix=f"fault-{name}-"))
            try:
                attempt = inject(Workdir(root))
            except Exception as e:  # a harness failure is a run that did not survive
                attempt = Attempt(False, 0, 0, 0.0, f"{type(e).__name__}: {e}"[:300])
            result.attempts.append(attempt)
            print(f"{name}: {asdict(attempt)}", flush=True)
            shutil.rmtree(root, ignore_errors=True)
        results.append(result)
    rows = [r.row() for r in results]
    print(table(rows))
    out = args.out or RESULTS_DIR / f"faults-cpu-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps({"machine": machine_info(torch.device("cpu")),
                               "load": load_snapshot(), "search": BASE,
                               "faults": rows,
                               "attempts": {r.fault: [asdict(a) for a in r.attempts]
                                            for r in results}}, indent=2))
    print(f"wrote {out}")
    return 0 if all(r["results_lost"] == r["duplicated"] == r["code_executed"] == 0
                    and r["runs_survived"] == r["runs_tried"] for r in rows) else 1


def table(rows: list[dict[str, Any]]) -> str:
    head = ("fault", "runs tried", "survived", "results lost", "duplicated", "code executed",
            "recovery s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['fault']} | {r['runs_tried']} | {r['runs_survived']} | "
                     f"{r['results_lost']} | {r['duplicated']} | {r.get('code_executed', 0)} | "
                     f"{r['recovery_s']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
