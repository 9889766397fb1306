"""What Ray Tune alone costs a search of `search_overhead`'s shape: the floor under its figures.

A bare Tune search on a new local Ray (``ray.init`` to ``ray.shutdown``, as a search's driver
does, and like it without Ray's idle workers): ``--trials`` function trials, ``--concurrency`` at
a time with 1 CPU each, actors reused as a search reuses them, and no searcher, scheduler, MLflow
or checkpoints. Each trial imports torch (any PyTorch trainable does), then "trains" by sleeping
``--trial-seconds`` in ``--epochs`` reports: every trial lasts the same, and nothing trains on the
cores while Ray starts or stops. Its capacity is split by `benchmarks.capacity.split_capacity`,
so that start-up (before the first trial's first step) and end (after the last trial's last
result, ``ray.shutdown`` included) are measured exactly as `search_overhead` measures a real
search: a lower bound for them here.

    python -m benchmarks.tune_floor --trials 8 --concurrency 2 --trial-seconds 30
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch  # the trial workers import this module, and torch with it, as a search's do
from ray import tune

from benchmarks.capacity import split_capacity, trial_row
from benchmarks.machine import RESULTS_DIR, machine_info
from search.tune.session import without_idle_workers

TRAINED = "slept_s"


def sleeping_trial(config: dict[str, Any]) -> None:
    """A trial whose epochs sleep; it reports the seconds they took, as awd's timer would."""
    slept = 0.0
    for epoch in range(1, config["epochs"] + 1):
        begun = time.perf_counter()
        time.sleep(config["seconds"] / config["epochs"])
        slept += time.perf_counter() - begun
        tune.report({"epoch": epoch, TRAINED: slept})


def run_bare(trials: int, concurrency: int, seconds: float, epochs: int, workdir: Path
             ) -> tuple[list[dict[str, Any]], float, float]:
    """The bare search; its trials' rows (`trial_row`) and its start and end times."""
    # By reference, as Tune sends a search's trainable: the workers import this module (and
    # torch), where a function of ``__main__`` would be sent by value and import nothing.
    from benchmarks.tune_floor import sleeping_trial as trial

    started = time.time()
    with without_idle_workers():  # Ray started as a search starts it
        ray.init(include_dashboard=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trial, {"cpu": 1}),
            param_space={"seconds": seconds, "epochs": epochs,
                         "index": tune.grid_search(list(range(trials)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency,
                                        reuse_actors=True),  # as a search's Tuner
            run_config=tune.RunConfig(storage_path=str(workdir), name="floor", verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    ended = time.time()
    rows = []
    for result in grid:
        if result.error is not None:
            raise RuntimeError(f"a bare trial failed: {result.error}")
        path = Path(result.path) / "result.json"
        last = json.loads(path.read_text().splitlines()[-1])
        rows.append(trial_row(last["trial_id"], last, last[TRAINED]))
    return rows, started, ended


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tune_floor",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--trial-seconds", type=float, default=30.0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if min(args.trials, args.concurrency, args.epochs) < 1 or not args.trial_seconds > 0:
        p.error("--trials, --concurrency and --epochs must be >= 1, --trial-seconds > 0")
    if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):
        p.error(f"--out {args.out}: a file in an existing folder, written after the run")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the bare search, print its split and write the JSON."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        rows, started, ended = run_bare(args.trials, args.concurrency, args.trial_seconds,
                                        args.epochs, Path(d))
    result = split_capacity(rows, started, ended, args.concurrency)
    record = {
        "benchmark": "tune_floor",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(torch.device("cpu")),
        "settings": vars(args) | {"out": None},
        "result": result,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    out = args.out or RESULTS_DIR / f"tune_floor-cpu-{dt.date.today()}.json"
    out.write_text(json.dumps(record, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "trials"}, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
