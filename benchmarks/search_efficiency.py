"""Search efficiency against random search: the best validation perplexity each search strategy
finds within the same budget of trial-epochs, and how many trial-epochs it needs to reach a
stated target.

Arms (each a real search of the ``smoke`` space, or with ``--space bench_ptb`` of the replay
benchmark's space to check `benchmarks.replay` against real training: local Ray, Optuna, MLflow
SQLite, tiny models really trained on a Penn Treebank slice):
  tpe-asha-iv    (a) TPE + ASHA, every epoch's objective reported to Optuna as an intermediate
                 value: TPE learns from the trials ASHA stops through their last value
  tpe-asha       (b) TPE + ASHA without intermediate values (``report_intermediate=False``, the
                 behaviour before they were added): a stopped trial reaches Optuna as PRUNED
                 with no value, which TPE ranks below every scored trial
  random-asha    (c) random search + ASHA
  random         (d) random search, no early stopping: every trial runs ``--max-epochs``
Every arm enqueues the space's paper configuration as its first trial (the search always does).
The sampler's seed varies over ``--seeds``; the training seed is the config's own, fixed, so
that two runs differ only by what the search chose and when. Optuna's TPE samples from a
``RandomSampler`` of the same seed until 10 trials (``n_startup_trials``, the paper
configuration included) have finished, so for one seed the four arms start from the same
configurations (common random numbers: the comparison per seed is paired) and TPE can only
differ from random search after that, from about the 11th trial.

Each run also records its Optuna study's trial states and how many PRUNED (ASHA-stopped) trials
carry intermediate values; a warning is logged when an arm that reports them has none (then arm
(a) is arm (b) for TPE). Tune does not call the searcher's ``on_trial_result`` for the result on
which the scheduler stops a trial, so a trial stopped at the first rung reports nothing unless the
searcher's ``on_trial_complete`` reports that last value itself.

Budget accounting. The budget is ``--budget`` trial-epochs (one epoch of one trial, the unit of
cost all arms share). ASHA stops trials early, so a fixed number of trials would give the arms
different budgets: each arm is given enough trials (``num_samples``, from ASHA's expected epochs
per trial times ``--oversample``) to spend at least the budget, and then its epochs are put in
completion order across trials (the time each epoch's result was reported, from the trial's
``result.json``: Tune's whole-second ``timestamp`` refined with the trial's float
``time_total_s``) and cut after the first ``--budget`` of them. Within that prefix:
  best      the lowest ``best_val_ppl`` (the search's objective) of any trial
  to target the number of trial-epochs after which the best so far first reached the target
            (None: not within the budget)
Epochs past the cut (trials still running, trials started to be sure of the budget) are run
but not counted. A run that spent fewer than ``--budget`` epochs is marked
``budget_reached: false`` and counted over what it spent.

Target: ``--target`` if given, else the median over seeds of arm (d)'s best within the budget
(over all runs if (d) is not among the arms): "how soon does each arm get as good as plain
random search typically gets with the whole budget". The value and how it was chosen are in the
JSON.

Output: a table on stdout (per arm: median best within the budget, interquartile range and
min-max over seeds, median trial-epochs to the target, how many seeds reached it), progress on
stderr, and ``benchmarks/results/search_efficiency-cpu-<date>.json`` (machine, load, command,
settings, every run's raw data: its epochs in completion order, its trials, its Optuna study's
trial states), rewritten after every run. ``--resume`` continues an interrupted run from that
file, skipping the (arm, seed) pairs it already holds.

    python -m benchmarks.search_efficiency                       # the default run
    python -m benchmarks.search_efficiency --seeds 1 --budget 6 --max-epochs 2   # smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
import torch

from benchmarks.machine import RESULTS_DIR, load_snapshot, machine_info
from search import schema
from search.driver import SearchOutcome, run_search
from search.options import SearchOptions
from search.tune.session import ASHA_REDUCTION_FACTOR
from spaces import get_space

SPACES = ("smoke", "bench_ptb")  # --space: the pipeline demo, or the replay benchmark's space
# What the JSON keeps of each trial's config: the smoke space's searched parameters.
SEARCHED = ("model", "emsize", "nhid", "dropout", "dropouth", "dropouti", "dropoute", "wdrop",
            "lr")
# Settings that must match for --resume to add runs to an earlier file.
RESUME_KEYS = ("space", "budget", "max_epochs", "grace_period", "concurrency", "train_tokens",
               "oversample")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Arm:
    name: str
    letter: str
    sampler: str
    scheduler: str
    report_intermediate: bool
    description: str


ARMS = {a.name: a for a in (
    Arm("tpe-asha-iv", "a", "tpe", "asha", True,
        "TPE + ASHA, per-epoch intermediate values reported to Optuna"),
    Arm("tpe-asha", "b", "tpe", "asha", False,
        "TPE + ASHA, no intermediate values (stopped trials reach Optuna as PRUNED, no value)"),
    Arm("random-asha", "c", "random", "asha", True, "random search + ASHA"),
    Arm("random", "d", "random", "none", True,
        "random search, no early stopping (every trial runs max_epochs)"),
    Arm("tpe", "e", "tpe", "none", True, "TPE, no early stopping (every trial runs max_epochs)"),
)}
DEFAULT_ARMS = ["tpe-asha-iv", "tpe-asha", "random-asha", "random"]


# --- how many trials give an arm its budget ----------------------------------------------
def expected_epochs_per_trial(arm: Arm, max_epochs: int, grace: int) -> float:
    """Epochs a trial runs on average: ``max_epochs`` without ASHA; with it, the first rung
    (``grace``) plus each later stretch times the share 1/rf^k that ASHA lets through."""
    if arm.scheduler == "none":
        return float(max_epochs)
    rf = ASHA_REDUCTION_FACTOR
    milestones = [grace * rf**k for k in range(64) if grace * rf**k < max_epochs]
    expected, share, previous = float(grace), 1.0, grace
    for m in [*milestones[1:], max_epochs]:
        share /= rf
        expected += share * (m - previous)
        previous = m
    return expected


def num_samples(arm: Arm, budget: int, max_epochs: int, grace: int, concurrency: int,
                oversample: float) -> int:
    """Trials to start so that the arm very likely spends at least ``budget`` trial-epochs
    (the early trials pass ASHA's first rung more often than 1/rf, which adds to the margin)."""
    per_trial = expected_epochs_per_trial(arm, max_epochs, grace)
    if arm.scheduler == "none":
        return math.ceil(budget / per_trial) + (1 if oversample > 1 else 0)  # margin: divergence
    return max(concurrency, math.ceil(budget / per_trial * oversample))


# --- one search -------------------------------------------------------------------------------
def trial_epochs(outcome: SearchOutcome) -> list[dict[str, Any]]:
    """Every epoch every trial reported, in completion order: one row per ``result.json``
    line (a diverged epoch and an epoch re-run after a restore count: they were paid for)."""
    rows: list[dict[str, Any]] = []
    for folder in sorted(Path(outcome.experiment_dir).iterdir()):
        path = folder / "result.json"
        if not folder.is_dir() or not path.exists():
            continue
        results = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        for result, t in zip(results, report_times(results), strict=True):
            rows.append({
                "t": t,
                "trial": str(result.get("trial_id", folder.name.rsplit("_", 1)[-1])),
                "epoch": int(result[schema.EPOCH]),
                "val_ppl": result.get(schema.VAL_PPL),
                "best_val_ppl": float(result[schema.BEST_VAL_PPL]),
                "diverged": bool(result.get(schema.DIVERGED)),
            })
    rows.sort(key=lambda r: (r["t"], r["trial"], r["epoch"]))
    start = rows[0]["t"] if rows else 0.0
    for r in rows:
        r["t"] = round(r["t"] - start, 3)  # seconds after the first epoch of the search
    return rows


def report_times(results: list[dict[str, Any]]) -> list[float]:
    """When each result of one trial was reported. Tune's ``timestamp`` is whole seconds;
    ``time_total_s`` is float seconds since the trial started, on the same worker clock. Each
    result bounds the start to [timestamp - total, timestamp + 1 - total); the intersection over
    the trial's results gives the start to well under a second, and start + total each time."""
    if not results:
        return []
    totals = [float(r.get("time_total_s", 0.0)) for r in results]
    stamps = [float(r.get("timestamp", 0.0)) for r in results]
    low = max(s - t for s, t in zip(stamps, totals, strict=True))
    high = min(s + 1 - t for s, t in zip(stamps, totals, strict=True))
    if high < low:  # inconsistent (a restored trial's timer): keep the whole seconds
        return [s + 0.5 for s in stamps]
    start = (low + high) / 2
    return [start + t for t in totals]


def study_states(study_storage: str) -> dict[str, int]:
    """The Optuna study's trial states, and how many trials (and how many of the PRUNED ones,
    those ASHA stopped) carry intermediate values: arm (b) must have none, and arm (a)'s
    pruned trials must have some, or (a) is (b) where it matters."""
    # each run has its own study storage (its temporary folder), holding this search's study
    # alone; the study's name carries a random suffix (`awdsearch.study_name` on the parent run)
    names = optuna.get_all_study_names(study_storage)
    if len(names) != 1:
        raise RuntimeError(f"expected one study in {study_storage}, found {names}")
    study = optuna.load_study(study_name=names[0], storage=study_storage)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    counts["with_intermediate_values"] = sum(1 for t in trials if t.intermediate_values)
    counts["pruned_with_intermediate_values"] = sum(
        1 for t in trials if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values)
    return counts


def run_arm(arm: Arm, seed: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One search of ``arm`` with sampler seed ``seed`` in ``workdir``; its raw record."""
    samples = num_samples(arm, args.budget, args.max_epochs, args.grace_period,
                          args.concurrency, args.oversample)
    experiment = f"{arm.name}-s{seed}"
    study_storage = f"sqlite:///{workdir / 'optuna.db'}"
    opts = SearchOptions(
        space=args.space, num_samples=samples, max_epochs=args.max_epochs,
        grace_period=args.grace_period, concurrency=args.concurrency, cpus_per_trial=1.0,
        gpus_per_trial=0.0, scheduler=arm.scheduler, sampler=arm.sampler, seed=seed,
        report_intermediate=arm.report_intermediate, storage=str(workdir / "rr"),
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}", experiment=experiment,
        study_storage=study_storage, best_config=str(workdir / "best.json"),
        fixed=(f"train_tokens={args.train_tokens}",) if args.train_tokens else (),
    )
    started = time.time()
    try:
        outcome = run_search(opts)
    finally:
        ray.shutdown()
    wall = time.time() - started
    epochs = trial_epochs(outcome)
    counted = epochs[:args.budget]
    curve: list[float] = []
    for row in counted:
        curve.append(min(row["best_val_ppl"], curve[-1]) if curve else row["best_val_ppl"])
    trials = [{
        "trial": t.trial_id, "status": t.status,
        "epochs_run": t.metrics.get(schema.EPOCHS_RUN),
        "best_val_ppl": t.metrics.get(schema.BEST_VAL_PPL),
        "final_val_ppl": t.metrics.get(schema.FINAL_VAL_PPL),
        "train_seconds": t.metrics.get(schema.TRAIN_SECONDS),
        "config": {k: t.config[k] for k in SEARCHED if k in t.config},
    } for t in outcome.trials]
    counted_trials = {r["trial"] for r in counted}
    return {
        "arm": arm.name, "letter": arm.letter, "seed": seed, "sampler": arm.sampler,
        "scheduler": arm.scheduler, "report_intermediate": arm.report_intermediate,
        "num_samples": samples, "wall_s": round(wall, 1),
        "trials_run": len(outcome.trials), "trials_within_budget": len(counted_trials),
        "epochs_run": len(epochs), "budget_reached": len(epochs) >= args.budget,
        "best_within_budget": curve[-1] if curve else None,
        "best_so_far": curve,  # the best objective after each counted trial-epoch
        "best_overall": min((r["best_val_ppl"] for r in epochs), default=None),
        "optuna": study_states(study_storage),
        "epochs": epochs, "trials": trials,
    }


# --- summary -----------------------------------------------------------------------------
def epochs_to(curve: list[float], target: float) -> int | None:
    """Trial-epochs after which the best so far was first at or below ``target``."""
    return next((i + 1 for i, v in enumerate(curve) if v <= target), None)


def choose_target(runs: list[dict[str, Any]], given: float | None) -> dict[str, Any]:
    """``--target``, else the median of arm (d)'s best within the budget (else of all runs)."""
    if given is not None:
        return {"value": given, "how": "--target"}
    pool = [r["best_within_budget"] for r in runs
            if r["arm"] == "random" and r["best_within_budget"] is not None]
    how = "median over seeds of arm (d) random's best val ppl within the budget"
    if not pool:
        pool = [r["best_within_budget"] for r in runs if r["best_within_budget"] is not None]
        how = "median over all runs' best val ppl within the budget (arm (d) not run)"
    return {"value": statistics.median(pool) if pool else None, "how": how}


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def summarize(runs: list[dict[str, Any]], target: float | None,
              arms: list[str]) -> dict[str, Any]:
    """Per arm: the best within the budget (median, quartiles, range), trial-epochs to the
    target (median with 'not reached' as infinitely many), and how many seeds reached it."""
    out: dict[str, Any] = {}
    for name in arms:
        mine = [r for r in runs if r["arm"] == name and r["best_within_budget"] is not None]
        if not mine:
            continue
        best = [float(r["best_within_budget"]) for r in mine]
        to_target = [epochs_to(r["best_so_far"], target) if target is not None else None
                     for r in mine]
        reached = sorted(x for x in to_target if x is not None)
        ranked = [float(x) if x is not None else math.inf for x in to_target]
        median_to = statistics.median(ranked)
        q1, q3 = quartiles(best)
        out[name] = {
            "letter": ARMS[name].letter, "runs": len(mine), "seeds": [r["seed"] for r in mine],
            "best_median": statistics.median(best), "best_q1": q1, "best_q3": q3,
            "best_min": min(best), "best_max": max(best), "best_per_seed": best,
            "epochs_to_target_per_seed": to_target,
            "epochs_to_target_median": None if math.isinf(median_to) else median_to,
            "reached_target": len(reached),
            "trials_within_budget_median": statistics.median(
                r["trials_within_budget"] for r in mine),
            "budget_not_reached": sum(1 for r in mine if not r["budget_reached"]),
            "wall_s_median": statistics.median(r["wall_s"] for r in mine),
        }
    a, c = out.get("tpe-asha-iv"), out.get("random-asha")
    if a and c:
        by_seed_c = dict(zip(c["seeds"], c["best_per_seed"], strict=True))
        pairs = [(x, by_seed_c[s]) for s, x in zip(a["seeds"], a["best_per_seed"], strict=True)
                 if s in by_seed_c]
        out["a_vs_c"] = {
            "seeds_compared": len(pairs),
            "a_better": sum(1 for x, y in pairs if x < y),
            "median_a_minus_median_c": a["best_median"] - c["best_median"],
            "a_beats_c": a["best_median"] < c["best_median"],
        }
    return out


def print_table(summary: dict[str, Any], target: dict[str, Any], budget: int) -> None:
    value = target["value"]
    print(f"\nbudget {budget} trial-epochs; target val ppl "
          f"{'n/a' if value is None else f'{value:.2f}'} ({target['how']})")
    head = (f"{'arm':<17} {'runs':>4} {'best ppl (median)':>17} {'IQR':>17} {'min-max':>17} "
            f"{'epochs to target':>16} {'reached':>7} {'trials':>6}")
    print(head)
    print("-" * len(head))
    for name, s in summary.items():
        if name not in ARMS:
            continue
        to = s["epochs_to_target_median"]
        iqr = f"{s['best_q1']:.2f}-{s['best_q3']:.2f}"
        span = f"{s['best_min']:.2f}-{s['best_max']:.2f}"
        print(f"({s['letter']}) {name:<13} {s['runs']:>4} {s['best_median']:>17.2f} "
              f"{iqr:>17} {span:>17} "
              f"{f'>{budget}' if to is None else f'{to:g}':>16} "
              f"{s['reached_target']:>3}/{s['runs']:<3} {s['trials_within_budget_median']:>6g}")
    if "a_vs_c" in summary:
        v = summary["a_vs_c"]
        print(f"(a) vs (c): (a) lower in {v['a_better']} of {v['seeds_compared']} seeds; "
              f"median (a) - median (c) = {v['median_a_minus_median_c']:+.2f} ppl "
              f"({'a beats c' if v['a_beats_c'] else 'a does NOT beat c'})")


# --- the command line ------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.search_efficiency", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--space", choices=SPACES, default="smoke",
                   help="smoke (the pipeline demo) or bench_ptb (checks benchmarks.replay)")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=DEFAULT_ARMS,
                   help="search strategies to compare")
    p.add_argument("--seeds", type=int, default=5, help="sampler seeds per arm")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first..first+seeds-1")
    p.add_argument("--budget", type=int, default=36, help="trial-epochs per run")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="epochs of a trial not stopped (default: the space's)")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA's first rung")
    p.add_argument("--concurrency", type=int, default=2, help="trials at once (1 CPU each)")
    p.add_argument("--train-tokens", type=int, default=0,
                   help="training tokens per epoch (0: the space's own slice)")
    p.add_argument("--oversample", type=float, default=1.1,
                   help="trials started per trial the budget needs, with ASHA (and > 1: one "
                   "spare trial without it)")
    p.add_argument("--target", type=float, default=None,
                   help="val ppl target; none: the median of arm (d)'s best within the budget")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default benchmarks/results/search_efficiency-cpu-<date>"
                   ".json)")
    p.add_argument("--resume", action="store_true",
                   help="add to --out's runs, skipping the (arm, seed) pairs it holds")
    args = p.parse_args(argv)
    if args.max_epochs is None:
        args.max_epochs = get_space(args.space).max_epochs
    if min(args.seeds, args.budget, args.max_epochs, args.grace_period, args.concurrency,
           ) < 1 or args.train_tokens < 0 or args.oversample < 1:
        p.error("counts must be >= 1, --train-tokens >= 0 and --oversample >= 1")
    if args.grace_period > args.max_epochs:
        p.error("--grace-period must be <= --max-epochs")
    return args


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "space": args.space, "arms": args.arms,
        "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
        "budget": args.budget, "max_epochs": args.max_epochs,
        "grace_period": args.grace_period, "concurrency": args.concurrency,
        "cpus_per_trial": 1, "train_tokens": args.train_tokens, "oversample": args.oversample,
        "target": args.target, "asha_reduction_factor": ASHA_REDUCTION_FACTOR,
        "num_samples": {a: num_samples(ARMS[a], args.budget, args.max_epochs, args.grace_period,
                                       args.concurrency, args.oversample) for a in args.arms},
        "training_seed": "the config's own (fixed per model preset), not varied",
        "paper_config_first": get_space(args.space).warm_start,
    }


def load_previous(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The record of an interrupted run of the same settings, if ``out`` holds one."""
    if not out.exists():
        return None
    old: dict[str, Any] = json.loads(out.read_text())
    differ = [k for k in RESUME_KEYS if old["settings"].get(k) != settings[k]]
    if differ:
        raise SystemExit(f"--resume: {out} was run with other settings ({', '.join(differ)})")
    return old


def main(argv: list[str] | None = None) -> int:
    """Run every (seed, arm) search, write the JSON after each, print the table."""
    args = parse_args(argv)
    os.environ.setdefault("AWD_DATA_DIR",
                          str(Path(__file__).resolve().parents[2] / "shared" / "data"))

    def log(msg: str) -> None:
        print(f"[search_efficiency] {msg}", file=sys.stderr, flush=True)

    settings = settings_of(args)
    out = args.out or RESULTS_DIR / f"search_efficiency-cpu-{dt.date.today()}.json"
    previous = load_previous(out, settings) if args.resume else None
    runs: list[dict[str, Any]] = list(previous["runs"]) if previous else []
    done = {(r["arm"], r["seed"]) for r in runs}
    command = " ".join(["python", "-m", "benchmarks.search_efficiency", *sys.argv[1:]])
    record: dict[str, Any] = {
        "benchmark": "search_efficiency",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(torch.device("cpu")),
        "load": {"before": load_snapshot()},
        "settings": settings,
        "arms": {a: ARMS[a].description for a in args.arms},
        "accounting": (
            "each run's trial-epochs (result.json rows of all its trials) in completion order, "
            "cut after the first `budget`; best = lowest best_val_ppl within them; epochs to "
            "target = first trial-epoch after which the best so far <= target"),
        "runs": runs,
    }
    earlier_wall = 0.0
    if previous:  # keep where and how it started; say when it was resumed
        for key in ("created_utc", "command", "machine", "load"):
            record[key] = previous[key]
        record["resumed"] = [*previous.get("resumed", []), {
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "load_before": load_snapshot(),
            "machine": machine_info(torch.device("cpu"))}]
        earlier_wall = float(previous.get("wall_s", 0.0))

    def write() -> None:
        target = choose_target(runs, args.target)
        record["target"] = target
        record["summary"] = summarize(runs, target["value"], args.arms)
        record["load"]["after"] = load_snapshot()
        record["wall_s"] = round(earlier_wall + time.perf_counter() - started, 1)
        record["runs_planned"] = len(settings["seeds"]) * len(args.arms)
        record["complete"] = all((a, seed) in {(r["arm"], r["seed"]) for r in runs}
                                 for seed in settings["seeds"] for a in args.arms)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")

    started = time.perf_counter()
    # Seeds outer, arms inner: drifting machine load hits every arm alike, and an interrupted run
    # holds every arm for its first seeds.
    todo = [(seed, a) for seed in settings["seeds"] for a in args.arms if (a, seed) not in done]
    log(f"{len(todo)} searches ({len(done)} already in {out}); budget {args.budget} trial-epochs, "
        f"max {args.max_epochs} epochs, grace {args.grace_period}, concurrency "
        f"{args.concurrency}, train_tokens {args.train_tokens}; num_samples "
        f"{settings['num_samples']}")
    for i, (seed, name) in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] arm {name} seed {seed}")
        with tempfile.TemporaryDirectory(prefix="search_efficiency-") as d:
            run = run_arm(ARMS[name], seed, args, Path(d))
        runs.append(run)
        write()
        log(f"[{i}/{len(todo)}] arm {name} seed {seed}: best {run['best_within_budget']} within "
            f"{min(args.budget, run['epochs_run'])} of {run['epochs_run']} trial-epochs, "
            f"{run['trials_run']} trials, {run['wall_s']} s "
            f"(elapsed {time.perf_counter() - started:.0f} s)")
        log(f"  optuna: {run['optuna']}")
        if (run["report_intermediate"] and run["sampler"] == "tpe"
                and run["optuna"].get("PRUNED", 0)
                and not run["optuna"]["pruned_with_intermediate_values"]):
            log("  WARNING: no stopped (PRUNED) trial reached Optuna with an intermediate value: "
                "this arm is arm (b) as far as TPE can tell")
        if not run["budget_reached"]:
            log(f"  budget not reached: raise --oversample (only {run['epochs_run']} epochs)")
    write()
    print_table(record["summary"], record["target"], args.budget)
    print(f"wrote {out} ({record['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
