"""How much of a search's wall time goes to training, and how much to orchestration.

Runs a real search (local Ray, Optuna, ASHA off, MLflow SQLite) of the ``smoke`` space with a
bigger training slice fixed for every trial (``SearchOptions.fixed``, the CLI's
``--set train_tokens=N``), sized by one speed (``--tokens-per-second``) to train about
``--trial-seconds``: the smoke models' kinds and sizes spread that (18-38 s for 30). Then it
splits the capacity it used (wall time x trial slots) into:
  training       sum over trials of their ``train_seconds`` (the epochs' train + validation
                 seconds, awd's own timer)
  in-trial       the rest of each trial's Ray time: start-up, data load, checkpoint writes,
                 reports, the final test evaluation
  driver         capacity not inside any trial: Ray start, scheduling, idle slots, MLflow
                 logging and the end-of-search summary
Target: orchestration (in-trial + driver) under 10% on CPU for 30-second trials.

    python -m benchmarks.search_overhead --trials 4 --concurrency 2 --trial-seconds 30

GPU mode (``--gpu``), when one is at hand: run `zaremba_ptb` trials packed 4 per GPU
(``--gpus-per-trial 0.25``) versus 1 per GPU and report trials per GPU-hour and each trial's
slowdown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

from benchmarks.capacity import split_capacity, trial_row
from benchmarks.machine import RESULTS_DIR, machine_info
from search import schema
from search.driver import SearchOutcome, run_search
from search.options import SearchOptions


def breakdown(outcome: SearchOutcome, started: float, ended: float, slots: int) -> dict[str, Any]:
    """`split_capacity` of a search's trials, read from Ray's result files."""
    rows = []
    for t in outcome.trials:
        path = Path(outcome.experiment_dir) / _dir(outcome, t.trial_id) / "result.json"
        last = json.loads(path.read_text().splitlines()[-1])
        rows.append(trial_row(t.trial_id, last, last[schema.TRAIN_SECONDS]))  # resumes included
        rows[-1]["model"] = t.config["model"]
    return split_capacity(rows, started, ended, slots)


def _dir(outcome: SearchOutcome, trial_id: str) -> str:
    """The name of a trial's folder in the experiment folder (it ends with the trial id)."""
    return next(d.name for d in Path(outcome.experiment_dir).iterdir() if d.name.endswith(trial_id))


def run_once(
    space: str,
    trials: int,
    concurrency: int,
    epochs: int,
    gpus: float,
    workdir: Path,
    fixed: tuple[str, ...] = (),
) -> tuple[SearchOutcome, float, float]:
    """One search without ASHA in ``workdir``; its outcome and its start and end times."""
    opts = SearchOptions(
        space=space,
        num_samples=trials,
        concurrency=concurrency,
        max_epochs=epochs,
        scheduler="none",
        storage=str(workdir / "rr"),
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        gpus_per_trial=gpus,
        best_config=str(workdir / "best.json"),
        experiment=f"{space}-{gpus}",
        fixed=fixed,
    )
    start = time.time()
    try:
        outcome = run_search(opts)
    finally:
        ray.shutdown()
    return outcome, start, time.time()


def cpu_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """The smoke space with a training slice fixed for every trial, sized to last
    ``--trial-seconds``; the split of its capacity into training and orchestration."""
    # ~8k tokens/s per trial for the smoke models, 2 trials on 2 cores (measured): size the slice.
    train_tokens = int(args.tokens_per_second * args.trial_seconds / args.epochs)
    with tempfile.TemporaryDirectory() as d:
        outcome, started, ended = run_once(
            "smoke",
            args.trials,
            args.concurrency,
            args.epochs,
            0.0,
            Path(d),
            fixed=(f"train_tokens={train_tokens}",),
        )
        result = breakdown(outcome, started, ended, args.concurrency)
    result["train_tokens_per_trial_epoch"] = train_tokens
    result["target"] = "orchestration_share < 0.10 for ~30 s trials on CPU"
    result["meets_target"] = result["orchestration_share"] < 0.10
    return result


def gpu_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """`zaremba_ptb` trials packed 4 per GPU against 1 per GPU: throughput and slowdown."""
    out: dict[str, Any] = {}
    for per_gpu in (1, 4):
        with tempfile.TemporaryDirectory() as d:
            outcome, started, ended = run_once(
                "zaremba_ptb",
                per_gpu * args.gpu_rounds,
                per_gpu,
                args.epochs,
                1.0 / per_gpu,
                Path(d),
            )
            wall = ended - started
            # Each trial's mean epoch: its cumulative train seconds over the epochs it ran.
            rows = [
                float(t.metrics[schema.TRAIN_SECONDS]) / int(t.metrics[schema.EPOCHS_RUN])
                for t in outcome.trials
                if t.metrics.get(schema.EPOCHS_RUN)
            ]
            out[f"{per_gpu}_per_gpu"] = {
                "wall_s": wall,
                "trials": len(outcome.trials),
                "trials_per_gpu_hour": len(outcome.trials) / (wall / 3600),
                "mean_epoch_seconds": sum(rows) / len(rows),
            }
    out["slowdown_per_trial"] = (
        out["4_per_gpu"]["mean_epoch_seconds"] / out["1_per_gpu"]["mean_epoch_seconds"]
    )
    out["throughput_gain"] = (
        out["4_per_gpu"]["trials_per_gpu_hour"] / out["1_per_gpu"]["trials_per_gpu_hour"]
    )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.search_overhead", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument(
        "--trial-seconds", type=float, default=30.0, help="training seconds per trial to aim for"
    )
    p.add_argument(
        "--tokens-per-second",
        type=float,
        default=8000.0,
        help="per-trial training speed used to size the slice",
    )
    p.add_argument("--gpu", action="store_true", help="the GPU packing benchmark instead")
    p.add_argument("--gpu-rounds", type=int, default=1, help="GPU: trials per slot")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the CPU (or ``--gpu``) benchmark, print its result and write the JSON."""
    args = parse_args(argv)
    if "AWD_DATA_DIR" not in os.environ:
        os.environ["AWD_DATA_DIR"] = str(Path(__file__).resolve().parents[2] / "shared" / "data")
    device = torch.device("cuda" if args.gpu and torch.cuda.is_available() else "cpu")
    result = gpu_benchmark(args) if args.gpu else cpu_benchmark(args)
    record = {
        "benchmark": "search_overhead",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "settings": vars(args) | {"out": None},
        "result": result,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    out = args.out or RESULTS_DIR / f"search_overhead-{device.type}-{dt.date.today()}.json"
    out.write_text(json.dumps(record, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
