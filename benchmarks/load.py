"""A search of many trials, and whether the driver's memory grows with them:
``python -m benchmarks.load``.

For each trial count N (default 50 and 200), one real search of N one-epoch trials of the smoke
space at concurrency 2 on a local Ray started by the driver, in a fresh temporary folder with
its own SQLite MLflow store. While it runs, the driver's RSS (the ``python -m search.run``
process itself; Ray's raylet, GCS and workers are its descendants and are summed apart, as
context) is sampled every 0.5 s together with the trials finished so far (Ray's ``result.json``
files). Then MLflow is audited: one parent, exactly N child runs, each closed with a final
status, a ``val_ppl`` history of exactly ``epochs_run`` distinct steps, the final perplexities
(completed trials) and every config key as a param; the parent's ``trials_total`` is N and the
registered model version exists.

The bound: Ray Tune's driver keeps every finished trial (its Trial object, the default JSON and
CSV loggers' per-trial state: ray-project/ray#64231, about 0.3 MiB a trial), so the driver grows
linearly with N by design of Tune, not of this project. The slope of RSS against trials finished
(least squares, from 10 % of the trials finished to the last) must stay under ``--slope-mib``
per 100 trials (default 40: 0.4 MiB a trial), and the peak at the largest N may exceed the peak
at the smallest by at most ``--bound-mib`` (default 64: 150 more trials at that slope).

Prints a summary and writes ``benchmarks/results/load-cpu-<date>.json`` (after each N).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import torch

from benchmarks.machine import RESULTS_DIR, load_snapshot, machine_info

MIB = 2**20
INTERVAL_S = 0.5


def search_command(n: int | str, seed: int) -> list[str]:
    return [sys.executable, "-m", "search.run", "--space", "smoke", "--num-samples", str(n),
            "--max-epochs", "1", "--concurrency", "2", "--seed", str(seed),
            "--storage", "ray_results", "--experiment", f"load-{n}"]


@dataclass
class Sample:
    t_s: float
    finished: int  # trials with a result in Ray's result.json
    driver_mib: float
    ray_mib: float  # the driver's descendants: raylet, GCS, dashboard, workers


@dataclass
class Sampler:
    """Samples the driver's RSS and its descendants' every INTERVAL_S in a thread."""

    proc: psutil.Process
    exp_dir: Path
    samples: list[Sample] = field(default_factory=list)
    began: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event)

    def finished(self) -> int:
        done = 0
        for f in self.exp_dir.glob("*/result.json"):
            try:
                done += f.stat().st_size > 0
            except OSError:
                continue
        return done

    def run(self) -> None:
        progress, last_progress = 0, 0.0
        while not self.stop.is_set():
            try:
                driver = self.proc.memory_info().rss
                kids = 0
                for child in self.proc.children(recursive=True):
                    try:
                        kids += child.memory_info().rss
                    except psutil.Error:
                        continue
            except psutil.Error:
                return
            now = time.time()
            if now - last_progress >= 2.0:  # reading every result.json costs more than RSS
                progress, last_progress = self.finished(), now
            self.samples.append(Sample(round(now - self.began, 2), progress,
                                       round(driver / MIB, 1), round(kids / MIB, 1)))
            self.stop.wait(INTERVAL_S)


def trial_phase(samples: list[Sample], n: int) -> list[Sample]:
    """The samples while trials run: from 10 % of N finished (imports, Ray start and the first
    trials behind) until the last finishes (then the driver registers the best model)."""
    return [s for s in samples if max(1, n // 10) <= s.finished < n]


def slope_mib_per_100(samples: list[Sample], n: int) -> float | None:
    """Least-squares slope of driver RSS against trials finished, in the trial phase; None
    below 10 distinct counts (a quick run: start-up noise, not growth)."""
    pts = [(s.finished, s.driver_mib) for s in trial_phase(samples, n)]
    if len({x for x, _ in pts}) < 10:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    return round(100 * sxy / sxx, 2)


def at_deciles(samples: list[Sample], n: int) -> list[dict[str, float]]:
    """Driver RSS when each further 10 % of the trials had finished (first sample there)."""
    out = []
    for k in range(1, 11):
        target = -(-k * n // 10)
        hit = next((s for s in samples if s.finished >= target), None)
        if hit is not None:
            out.append({"finished": hit.finished, "t_s": hit.t_s, "driver_mib": hit.driver_mib})
    return out


@dataclass
class Audit:
    parents: int = 0
    children: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    still_running: int = 0  # child runs whose MLflow status is not a final one
    bad_history: list[str] = field(default_factory=list)  # val_ppl steps != epochs_run
    duplicate_steps: int = 0
    missing_final: list[str] = field(default_factory=list)  # completed, no final perplexities
    missing_params: list[str] = field(default_factory=list)  # a config key not logged
    trials_total: float | None = None
    model_version: str | None = None

    def problems(self, n: int) -> list[str]:
        out = []
        if self.parents != 1:
            out.append(f"{self.parents} parent runs")
        if self.children != n:
            out.append(f"{self.children} child runs, expected {n}")
        if self.still_running:
            out.append(f"{self.still_running} child runs not closed")
        for name in ("bad_history", "missing_final", "missing_params"):
            if getattr(self, name):
                out.append(f"{name}: {len(getattr(self, name))}")
        if self.duplicate_steps:
            out.append(f"{self.duplicate_steps} duplicate steps")
        if self.trials_total != n:
            out.append(f"trials_total {self.trials_total}")
        if self.model_version is None:
            out.append("no registered model version")
        unknown = set(self.by_status) - {"completed", "stopped_early", "failed"}
        if unknown:
            out.append(f"statuses {sorted(unknown)}")
        return out


def ray_configs(exp_dir: Path) -> dict[str, dict[str, Any]]:
    """Each trial's config, as Ray recorded it in its result.json."""
    out: dict[str, dict[str, Any]] = {}
    for f in exp_dir.glob("*/result.json"):
        for line in f.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            out[str(row["trial_id"])] = row.get("config", {})
            break
    return out


def audit(uri: str, experiment: str, exp_dir: Path) -> Audit:
    from mlflow.tracking import MlflowClient

    from search import schema
    from search.tracking.registry import registered_model_name

    client = MlflowClient(uri)
    result = Audit()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return result
    runs = client.search_runs([exp.experiment_id], max_results=50_000)
    parents = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH]
    result.parents = len(parents)
    if len(parents) != 1:
        return result
    parent = parents[0]
    result.trials_total = parent.data.metrics.get("trials_total")
    configs = ray_configs(exp_dir)
    for run in runs:
        tags = run.data.tags
        if tags.get(schema.ROLE) != schema.ROLE_TRIAL or \
                tags.get(schema.PARENT_RUN_ID) != parent.info.run_id:
            continue
        result.children += 1
        status = tags.get(schema.STATUS, "none")
        result.by_status[status] = result.by_status.get(status, 0) + 1
        if run.info.status not in ("FINISHED", "FAILED", "KILLED"):
            result.still_running += 1
        name = run.info.run_name or run.info.run_id
        steps = [m.step for m in client.get_metric_history(run.info.run_id, schema.VAL_PPL)]
        result.duplicate_steps += len(steps) - len(set(steps))
        if len(set(steps)) != run.data.metrics.get(schema.EPOCHS_RUN, -1):
            result.bad_history.append(name)
        if status == schema.STATUS_COMPLETED and not {
                schema.FINAL_VAL_PPL, schema.FINAL_TEST_PPL} <= set(run.data.metrics):
            result.missing_final.append(name)
        config = configs.get(tags.get(schema.TRIAL_ID, ""))
        if config is None or not set(config) <= set(run.data.params):
            result.missing_params.append(name)
    for version in client.search_model_versions(f"name='{registered_model_name('smoke')}'"):
        if version.tags.get(schema.MODEL_PARENT_RUN_ID) == parent.info.run_id:
            result.model_version = version.version
    return result


@dataclass
class LoadRun:
    n: int
    exit_code: int
    wall_s: float
    trials_per_min: float
    driver_peak_mib: float  # the whole search
    driver_trial_phase_peak_mib: float  # from 10 % of the trials finished to the last
    driver_end_peak_mib: float  # after the last trial: best model export and registration
    ray_peak_mib: float
    driver_slope_mib_per_100: float | None
    driver_at_deciles: list[dict[str, float]]
    audit: Audit
    problems: list[str]
    log_tail: str = ""


def run_one(n: int, seed: int, keep: bool) -> tuple[LoadRun, list[Sample]]:
    root = Path(tempfile.mkdtemp(prefix=f"load-{n}-"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "XDG_CACHE_HOME": str(root / "cache")}
    exp_dir = root / "ray_results" / f"load-{n}"
    began = time.time()
    with open(root / "run.log", "w") as log:
        proc = subprocess.Popen(search_command(n, seed), cwd=root, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        sampler = Sampler(psutil.Process(proc.pid), exp_dir)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        code = proc.wait()
        sampler.stop.set()
        thread.join()
    wall = time.time() - began
    found = audit(uri, f"load-{n}", exp_dir)
    problems = found.problems(n) + ([f"exit {code}"] if code else [])
    samples = sampler.samples
    result = LoadRun(
        n=n, exit_code=code, wall_s=round(wall, 1), trials_per_min=round(60 * n / wall, 2),
        driver_peak_mib=max((s.driver_mib for s in samples), default=0.0),
        driver_trial_phase_peak_mib=max((s.driver_mib for s in trial_phase(samples, n)),
                                        default=0.0),
        driver_end_peak_mib=max((s.driver_mib for s in samples if s.finished >= n),
                                default=0.0),
        ray_peak_mib=max((s.ray_mib for s in samples), default=0.0),
        driver_slope_mib_per_100=slope_mib_per_100(samples, n),
        driver_at_deciles=at_deciles(samples, n), audit=found, problems=problems,
        log_tail=(root / "run.log").read_text()[-1500:] if problems else "")
    if keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return result, samples


def bounds(runs: list[LoadRun], bound_mib: float, slope_mib: float) -> dict[str, Any]:
    """The checks, pass or fail each."""
    checks: dict[str, Any] = {}
    for r in runs:
        checks[f"n{r.n}_complete"] = {"pass": not r.problems, "problems": r.problems}
        if r.driver_slope_mib_per_100 is not None:
            checks[f"n{r.n}_slope"] = {
                "pass": r.driver_slope_mib_per_100 <= slope_mib,
                "value_mib_per_100_trials": r.driver_slope_mib_per_100, "bound": slope_mib}
    if len(runs) >= 2:
        small, large = min(runs, key=lambda r: r.n), max(runs, key=lambda r: r.n)
        checks["peak_growth"] = {
            "pass": large.driver_peak_mib <= small.driver_peak_mib + bound_mib,
            "statement": f"peak driver RSS at {large.n} trials <= peak at {small.n} + "
                         f"{bound_mib:g} MiB",
            "small_peak_mib": small.driver_peak_mib, "large_peak_mib": large.driver_peak_mib,
            "growth_mib": round(large.driver_peak_mib - small.driver_peak_mib, 1)}
        checks["trial_phase_peak_growth"] = {
            "pass": large.driver_trial_phase_peak_mib
            <= small.driver_trial_phase_peak_mib + bound_mib,
            "statement": f"peak driver RSS while trials run, at {large.n} trials <= at "
                         f"{small.n} + {bound_mib:g} MiB",
            "small_peak_mib": small.driver_trial_phase_peak_mib,
            "large_peak_mib": large.driver_trial_phase_peak_mib,
            "growth_mib": round(large.driver_trial_phase_peak_mib
                                - small.driver_trial_phase_peak_mib, 1)}
    return checks


def summary(runs: list[LoadRun], checks: dict[str, Any]) -> str:
    head = ("trials", "exit", "wall s", "trials/min", "driver peak MiB",
            "trial-phase peak", "end peak", "slope MiB/100",
            "Ray peak MiB", "child runs", "statuses")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        lines.append(f"| {r.n} | {r.exit_code} | {r.wall_s} | {r.trials_per_min} | "
                     f"{r.driver_peak_mib} | {r.driver_trial_phase_peak_mib} | "
                     f"{r.driver_end_peak_mib} | {r.driver_slope_mib_per_100} | {r.ray_peak_mib} | "
                     f"{r.audit.children} | {r.audit.by_status} |")
    lines += [f"{name}: {'PASS' if c['pass'] else 'FAIL'} "
              f"{ {k: v for k, v in c.items() if k != 'pass'} }" for name, c in checks.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", default="50,200",
                   help="comma-separated trial counts, one search each (default 50,200)")
    p.add_argument("--seed", type=int, default=0, help="the searches' sampler seed (default 0)")
    p.add_argument("--bound-mib", type=float, default=64.0,
                   help="allowed growth of the driver's peak RSS from the smallest to the "
                   "largest N (default 64)")
    p.add_argument("--slope-mib", type=float, default=40.0,
                   help="allowed driver RSS slope, MiB per 100 trials finished (default 40)")
    p.add_argument("--keep", action="store_true", help="keep each search's temporary folder")
    p.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/...)")
    p.add_argument("--recheck", type=Path, metavar="JSON",
                   help="no search: check this result file's runs against the bounds given")
    args = p.parse_args(argv)
    if args.recheck:
        return recheck(args.recheck, args.bound_mib, args.slope_mib)
    if "AWD_DATA_DIR" not in os.environ:
        p.error("set AWD_DATA_DIR to the folder holding ptb/")
    try:
        counts = [int(x) for x in args.trials.split(",") if x.strip()]
    except ValueError:
        p.error(f"--trials: comma-separated integers, not {args.trials!r}")
    out = args.out or RESULTS_DIR / f"load-cpu-{time.strftime('%Y-%m-%d')}.json"
    runs: list[LoadRun] = []
    series: dict[str, list[list[float]]] = {}
    for n in counts:
        print(f"search of {n} trials ...", flush=True)
        result, samples = run_one(n, args.seed, args.keep)
        runs.append(result)
        series[str(n)] = [[s.t_s, s.finished, s.driver_mib, s.ray_mib] for s in samples[::4]]
        checks = bounds(runs, args.bound_mib, args.slope_mib)
        out.write_text(json.dumps({
            "machine": machine_info(torch.device("cpu")), "load": load_snapshot(),
            "search": search_command("N", args.seed)[1:], "sample_interval_s": INTERVAL_S,
            "bound_mib": args.bound_mib, "slope_bound_mib_per_100_trials": args.slope_mib,
            "runs": [asdict(r) for r in runs], "checks": checks,
            "series_columns": ["t_s", "finished", "driver_mib", "ray_mib"],
            "series_every_2s": series}, indent=2))
        print(summary(runs, checks), flush=True)
        print(f"wrote {out}", flush=True)
    checks = bounds(runs, args.bound_mib, args.slope_mib)
    return 0 if all(c["pass"] for c in checks.values()) else 1


def recheck(path: Path, bound_mib: float, slope_mib: float) -> int:
    """The checks again on recorded runs, with other bounds: the file is rewritten."""
    data = json.loads(path.read_text())
    runs = [LoadRun(**{**r, "audit": Audit(**r["audit"])}) for r in data["runs"]]
    checks = bounds(runs, bound_mib, slope_mib)
    data.update(bound_mib=bound_mib, slope_bound_mib_per_100_trials=slope_mib, checks=checks)
    path.write_text(json.dumps(data, indent=2))
    print(summary(runs, checks))
    return 0 if all(c["pass"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
