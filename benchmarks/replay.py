"""Search strategies compared on replayed learning curves: ``python -m benchmarks.replay``.

The curves are the real ones of `benchmarks.curves` (``spaces.bench_ptb``). A replayed trial
does not train: a **surrogate** fitted to the table gives its configuration's validation
perplexity at every epoch and its seconds per epoch, and the measured **seed noise** is added
(one log-normal offset per trial, the sd the table's re-runs measured). The surrogate is an
extra-trees forest (scikit-learn) from the configuration (each parameter on its unit scale, log
where the space searches it on a log scale) to the log perplexity of each epoch and the log
seconds per epoch; `fidelity` says how faithful it is, on configurations it was not fitted to.

A replayed search goes through the search's own code: the searcher is
`search.tune.searcher.searcher_for` (TPE multivariate with constant liar and its start-up
trials, or random; intermediate values; the paper configuration enqueued first) and the
scheduler is `search.tune.session.scheduler` (PersistentASHA, or FIFO), both built from
`SearchOptions` as the driver builds them. What Ray Tune's controller does between them is done
here in simulated time, in Tune's order (``TuneController._process_trial_result`` and
``stop_trial``, read in Ray 2.60): a result goes to the scheduler first; on CONTINUE to the
searcher's ``on_trial_result``; on STOP (ASHA's cut, or the last epoch) to the scheduler's and
then the searcher's ``on_trial_complete`` with that result; a freed slot asks the searcher for
the next trial at once. ``--concurrency`` trials run at a time; each epoch ends after the
surrogate's seconds for it, so fast (small) configurations report sooner, as on a cluster.

Budgets are in trial-epochs (one epoch of one trial; a full trial is ``max_epochs`` of them).
Each search runs until ``--budget`` full-trial equivalents are spent, and its anytime record is
read at every budget asked. What a search has found after k trial-epochs is its incumbent (the
trial with the lowest objective it has seen, noise included), scored by the surrogate's
noise-free objective of that trial over the epochs it ran (what re-training it would give on
average). Regret = that score minus the space's optimum, and the top 1 % / 5 % targets are the
1st / 5th percentiles of the noise-free objective over ``--space-sample`` uniform random
configurations (the optimum: the best of them and of the table's configurations).

    python -m benchmarks.replay                          # every arm, 20 seeds, ~1 h on 2 cores
    python -m benchmarks.replay --fidelity-only          # how faithful the surrogate is
    python -m benchmarks.replay --arms tpe-asha random --seeds 2 --budget 10 --budgets 5 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.curves import DEFAULT_OUT as DEFAULT_TABLE
from benchmarks.curves import RESULTS_DIR, curve, design_params, load_table
from spaces.spec import ParamSpec, SpaceSpec

SPACE_NAME = "bench_ptb"


# --- the surrogate ---------------------------------------------------------------------------
def unit(p: ParamSpec, value: Any) -> float:
    """``value`` on ``p``'s unit scale (the inverse of `benchmarks.curves.value_at`)."""
    if p.type == "categorical":
        return p.choices.index(value) / max(len(p.choices) - 1, 1)
    assert p.low is not None and p.high is not None
    if p.log:
        return (math.log(value) - math.log(p.low)) / (math.log(p.high) - math.log(p.low))
    return (float(value) - p.low) / (p.high - p.low)


def features(params: Sequence[ParamSpec], configs: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([[unit(p, c[p.name]) for p in params] for c in configs], dtype=float)


def targets(rows: Sequence[dict[str, Any]], epochs: int) -> np.ndarray:
    """Per row: the log validation perplexity of each epoch."""
    return np.log(np.array([curve(r, epochs) for r in rows]))


def log_epoch_seconds(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.log([statistics.mean([e["seconds"] for e in r["epochs"]] or [1.0]) for r in rows])


def timed_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows trained on the table's most common device: seconds from two machines (a table
    finished on another one) do not mix."""
    devices = [r.get("device") for r in rows]
    main = max(set(devices), key=devices.count)
    return [r for r in rows if r.get("device") == main]


def _forest(seed: int) -> Any:
    from sklearn.ensemble import ExtraTreesRegressor

    return ExtraTreesRegressor(n_estimators=200, min_samples_leaf=2, random_state=seed,
                               n_jobs=1)


@dataclass
class Surrogate:
    """Noise-free curves and epoch seconds of any configuration of the space."""

    params: list[ParamSpec]
    epochs: int
    seed_sd_log: float
    model: Any = field(repr=False)  # log val ppl per epoch
    seconds_model: Any = field(repr=False)  # log seconds per epoch

    def predict(self, configs: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """(validation perplexity per epoch [n, epochs], seconds per epoch [n])."""
        # The forest's mean over its trees, without scikit-learn's per-call checks and joblib
        # dispatch (60 ms a call; this is well under 1 ms): a search asks once per trial.
        x = features(self.params, configs).astype(np.float32)
        y = np.mean([t.tree_.predict(x)[:, :, 0] for t in self.model.estimators_], axis=0)
        s = np.mean([t.tree_.predict(x).reshape(len(x), -1)[:, 0]
                     for t in self.seconds_model.estimators_],
                    axis=0)
        return np.exp(y), np.exp(s)


def fit_surrogate(table: dict[str, Any], spec: SpaceSpec, seed: int = 0) -> Surrogate:
    """The forest fitted to every configuration of the table at the space's training seed."""
    epochs = int(table["settings"]["epochs"])
    rows = base_rows(table, spec)
    params = design_params(spec)
    model = _forest(seed).fit(features(params, [r["params"] for r in rows]),
                              targets(rows, epochs))
    timed = timed_rows(rows)
    seconds = _forest(seed).fit(features(params, [r["params"] for r in timed]),
                                log_epoch_seconds(timed))
    noise = table["summary"].get("seed_noise", {})
    return Surrogate(params, epochs, float(noise.get("sd_log_median", 0.0)), model, seconds)


def base_rows(table: dict[str, Any], spec: SpaceSpec) -> list[dict[str, Any]]:
    seed = int(spec.fixed.get("seed", 0))
    return [r for r in table["rows"] if "error" not in r and r["seed"] == seed]


DIVERGED_CUT = 5_000.0  # a recorded objective above this is a run that failed to learn


def fidelity(table: dict[str, Any], spec: SpaceSpec, folds: int = 5) -> dict[str, Any]:
    """The surrogate on configurations it was not fitted to (k-fold): error of the log curve
    and of the log objective (the best epoch), and rank correlations of predicted against
    recorded, beside the seed noise the table measured (a perfect surrogate cannot beat it)."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold

    epochs = int(table["settings"]["epochs"])
    rows = base_rows(table, spec)
    params = design_params(spec)
    x, y = features(params, [r["params"] for r in rows]), targets(rows, epochs)
    pred = np.zeros_like(y)
    for train, test in KFold(folds, shuffle=True, random_state=0).split(x):
        pred[test] = _forest(0).fit(x[train], y[train]).predict(x[test])
    timed = timed_rows(rows)
    xt, st = features(params, [r["params"] for r in timed]), log_epoch_seconds(timed)
    pst = np.zeros_like(st)
    for train, test in KFold(folds, shuffle=True, random_state=0).split(xt):
        pst[test] = _forest(0).fit(xt[train], st[train]).predict(xt[test])
    best, pbest = (np.minimum.accumulate(a, axis=1)[:, -1] for a in (y, pred))
    sane = best < math.log(DIVERGED_CUT)
    q10 = np.quantile(best, 0.1)
    top = best <= q10
    ptop = pbest <= np.quantile(pbest, 0.1)
    noise = table["summary"].get("seed_noise", {})
    return {
        "method": f"{folds}-fold cross-validation over {len(rows)} configurations",
        "rmse_log_curve": float(np.sqrt(((pred - y) ** 2).mean())),
        "rmse_log_objective": float(np.sqrt(((pbest - best) ** 2).mean())),
        "rmse_log_objective_not_diverged": float(np.sqrt(((pbest - best)[sane] ** 2).mean())),
        "median_abs_error_log_objective": float(np.median(np.abs(pbest - best))),
        "spearman_objective": float(spearmanr(pbest, best)[0]),
        "spearman_by_epoch": [float(spearmanr(pred[:, e], y[:, e])[0]) for e in range(epochs)],
        "top10pct_recall": float((top & ptop).sum() / max(top.sum(), 1)),
        "rmse_log_epoch_seconds": float(np.sqrt(((pst - st) ** 2).mean())),
        "epoch_seconds_from": f"{len(timed)} configurations trained on {timed[0].get('device')}",
        "seed_noise_sd_log_median": noise.get("sd_log_median"),
        "seed_noise_sd_log_mean": noise.get("sd_log_mean"),
    }



# --- the arms --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    name: str
    sampler: str  # "tpe" | "random"
    scheduler: str  # "asha" | "none"
    grace_period: int | None = None  # None: the space's
    report_intermediate: bool = True
    description: str = ""


ARMS = {a.name: a for a in (
    Arm("tpe-asha", "tpe", "asha", description="the default: TPE + ASHA, every epoch's "
        "objective an intermediate value"),
    Arm("random-asha", "random", "asha", description="random search + ASHA"),
    Arm("random", "random", "none", description="random search, every trial to max_epochs"),
    Arm("tpe", "tpe", "none", description="TPE, every trial to max_epochs"),
    Arm("tpe-asha-g3", "tpe", "asha", grace_period=3,
        description="TPE + ASHA with ASHA's first rung at epoch 3 instead of 1"),
    Arm("tpe-asha-noiv", "tpe", "asha", report_intermediate=False,
        description="TPE + ASHA, no intermediate values (a stopped trial reaches TPE as "
        "PRUNED without a value)"),
)}


# The comparison's arms; tpe-asha-noiv (the intermediate values' ablation) on request.
DEFAULT_ARMS = ["tpe-asha", "random-asha", "random", "tpe", "tpe-asha-g3"]


# --- one replayed search -------------------------------------------------------------------
@dataclass
class _Live:
    trial: Any
    curve: np.ndarray  # noise-free
    seconds: float
    offset: float  # this trial's seed noise, a factor on the perplexity
    epoch: int = 0
    best_seen: float = math.inf
    best_true: float = math.inf


def replay_search(arm: Arm, seed: int, surrogate: Surrogate, budget_epochs: int,
                  concurrency: int, workdir: Path) -> dict[str, Any]:
    """One search of ``arm`` (sampler seed ``seed``) until ``budget_epochs`` trial-epochs are
    spent; its anytime record: after each trial-epoch, the incumbent's noise-free objective."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from search import schema
    from search.options import SearchOptions
    from search.tune.searcher import searcher_for
    from search.tune.session import scheduler as scheduler_for

    opts = SearchOptions(space=SPACE_NAME, sampler=arm.sampler, scheduler=arm.scheduler,
                         seed=seed, concurrency=concurrency, grace_period=arm.grace_period,
                         report_intermediate=arm.report_intermediate, storage=str(workdir),
                         experiment=f"{arm.name}-s{seed}", num_samples=10**6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = searcher_for(opts, None, f"{arm.name}-s{seed}", concurrency)
    sched = scheduler_for(opts)
    rng = np.random.default_rng([seed, 7919])
    live: dict[str, _Live] = {}
    events: list[tuple[float, int, str]] = []
    now, spent, started, seq = 0.0, 0, 0, 0
    incumbent_seen, incumbent_true = math.inf, math.inf
    anytime: list[float] = []  # after each trial-epoch: the incumbent's noise-free objective
    tried: list[float] = []  # ... and the best noise-free objective of any trial so far
    times: list[float] = []  # ... and the simulated seconds since the search started
    best_tried = math.inf
    finished_trials = 0

    def start_trials() -> None:
        nonlocal started, seq
        while len(live) < concurrency:
            trial_id = f"replay{seed:04d}_{started:05d}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = searcher.suggest(trial_id)
            if config is None:
                return
            started += 1
            trial = Trial("replay", config=config, trial_id=trial_id, stub=True)
            sched.on_trial_add(None, trial)
            curves, seconds = surrogate.predict([config])
            offset = math.exp(rng.normal(0.0, surrogate.seed_sd_log))
            live[trial_id] = _Live(trial, curves[0], float(seconds[0]), offset)
            seq += 1
            heapq.heappush(events, (now + float(seconds[0]), seq, trial_id))

    start_trials()
    while events and spent < budget_epochs:
        now, _, trial_id = heapq.heappop(events)
        t = live[trial_id]
        t.epoch += 1
        spent += 1
        true = float(t.curve[t.epoch - 1])
        seen = true * t.offset
        t.best_seen, t.best_true = min(t.best_seen, seen), min(t.best_true, true)
        if t.best_seen < incumbent_seen:
            incumbent_seen, incumbent_true = t.best_seen, t.best_true
        elif t.best_seen == incumbent_seen:
            incumbent_true = t.best_true
        anytime.append(incumbent_true)
        best_tried = min(best_tried, t.best_true)
        tried.append(best_tried)
        times.append(now)
        last = t.epoch >= surrogate.epochs
        result = {schema.EPOCH: t.epoch, schema.VAL_PPL: seen, schema.BEST_VAL_PPL: t.best_seen,
                  schema.EPOCHS_RUN: t.epoch, schema.EPOCH_SECONDS: t.seconds,
                  schema.FINISHED: last, "training_iteration": t.epoch,
                  "trial_id": trial_id, "done": last}
        decision = sched.on_trial_result(None, t.trial, result)
        if decision != TrialScheduler.STOP and not last:
            searcher.on_trial_result(trial_id, result)
            seq += 1
            heapq.heappush(events, (now + t.seconds, seq, trial_id))
            continue
        if decision != TrialScheduler.STOP:  # FIFO's last epoch: the searcher saw the result
            searcher.on_trial_result(trial_id, result)
        sched.on_trial_complete(None, t.trial, result)
        searcher.on_trial_complete(trial_id, result)
        del live[trial_id]
        finished_trials += 1
        start_trials()
    study = searcher.searcher.study()
    states: dict[str, int] = {}
    for ot in study.get_trials(deepcopy=False):
        states[ot.state.name] = states.get(ot.state.name, 0) + 1
    states["pruned_with_values"] = sum(1 for ot in study.get_trials(deepcopy=False)
                                       if ot.state.name == "PRUNED" and ot.intermediate_values)
    return {"arm": arm.name, "seed": seed, "trials_started": started, "study": states,
            "trials_finished": finished_trials, "trial_epochs": spent,
            "simulated_seconds": round(now, 1), "steps": steps_of(anytime, tried, times)}


STEP_COLUMNS = ("trial_epoch", "incumbent", "best tried", "seconds")


def steps_of(incumbent: Sequence[float], tried: Sequence[float],
             times: Sequence[float | None]) -> list[list[Any]]:
    """The anytime record, kept where it changes: one ``STEP_COLUMNS`` row at the first
    trial-epoch and at each one after which the incumbent's or the best tried trial's
    noise-free objective changed, and at the last one (both series are steps in between)."""
    out: list[list[Any]] = []
    last: tuple[float, float] | None = None
    for k, (a, b, t) in enumerate(zip(incumbent, tried, times, strict=True), 1):
        if (a, b) != last or k == len(incumbent):
            out.append([k, round(a, 2), round(b, 2), None if t is None else round(t, 1)])
            last = (a, b)
    return out


def series(run: dict[str, Any], column: str) -> np.ndarray:
    """One column of a run's steps after every trial-epoch (1 .. the run's trial-epochs)."""
    i = STEP_COLUMNS.index(column)
    steps = run["steps"]
    out = np.empty(steps[-1][0])
    for row, nxt in zip(steps, [*steps[1:], [steps[-1][0] + 1]], strict=True):
        out[row[0] - 1:nxt[0] - 1] = row[i]
    return out


# --- the space's reference values ------------------------------------------------------------
def space_reference(surrogate: Surrogate, spec: SpaceSpec, table: dict[str, Any], n: int,
                    seed: int = 0) -> dict[str, Any]:
    """The noise-free objective over ``n`` uniform random configurations: its 1st and 5th
    percentiles (the targets) and the optimum (the best of those and of the table's)."""
    import optuna

    from spaces.bench_ptb import SPACE

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(SPACE.define(trial))
        study.tell(trial, 0.0)
    table_configs = [r["params"] for r in base_rows(table, spec)]
    curves, _ = surrogate.predict(configs + table_configs)
    objective = curves.min(axis=1)
    sampled = objective[:n]
    recorded = np.array([min(curve(r, surrogate.epochs)) for r in base_rows(table, spec)])
    return {"space_sample": n, "optimum": float(objective.min()),
            "top1": float(np.quantile(sampled, 0.01)), "top5": float(np.quantile(sampled, 0.05)),
            "median": float(np.median(sampled)),
            "table_recorded": {"best": float(recorded.min()),
                               "top1": float(np.quantile(recorded, 0.01)),
                               "top5": float(np.quantile(recorded, 0.05))}}


# --- the comparison --------------------------------------------------------------------------
def epochs_to(values: Sequence[float], target: float) -> float:
    return next((float(i + 1) for i, v in enumerate(values) if v <= target), math.inf)


def seconds_to(run: dict[str, Any], column: str, target: float) -> float:
    """Simulated seconds until ``column`` first reached ``target`` (inf: never)."""
    i = STEP_COLUMNS.index(column)
    return next((float(r[3]) for r in run["steps"] if r[i] <= target and r[3] is not None),
                math.inf)


def bootstrap_median(values: Sequence[float], reps: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """The median and its 95 % percentile-bootstrap interval (over seeds)."""
    a = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    meds = np.median(a[rng.integers(0, len(a), size=(reps, len(a)))], axis=1)
    # "nearest": no interpolation between a finite median and inf (a target never reached)
    lo, hi = np.quantile(meds, [0.025, 0.975], method="nearest")
    return float(np.median(a)), float(lo), float(hi)


SERIES = ("incumbent", "best tried")


def summarize(runs: list[dict[str, Any]], ref: dict[str, Any], budgets: Sequence[int],
              epochs: int) -> dict[str, Any]:
    """Per arm, for the incumbent (the trial the search would pick, by what it saw) and for the
    best trial it tried (noise-free: what confirming its top trials over seeds can find):
    regret per budget (full-trial equivalents) with median, IQR and bootstrap CI, and
    trial-epochs to the top 1 % and top 5 % (median and CI; inf = not reached)."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == name]
        arm: dict[str, Any] = {"seeds": len(mine), "trials_started_median": statistics.median(
            r["trials_started"] for r in mine)}
        for label in SERIES:
            curves = [series(r, label) for r in mine]
            per_budget = {}
            for b in budgets:
                regret = [c[min(b * epochs, len(c)) - 1] - ref["optimum"] for c in curves]
                med, lo, hi = bootstrap_median(regret)
                q1, q3 = np.quantile(regret, [0.25, 0.75])
                per_budget[str(b)] = {"regret_median": med, "ci95": [lo, hi],
                                      "iqr": [float(q1), float(q3)]}
            reach, seconds = {}, {}
            for target in ("top1", "top5"):
                to = [epochs_to(c, ref[target]) for c in curves]
                med, lo, hi = bootstrap_median(to)
                reach[target] = {"median": med, "ci95": [lo, hi],
                                 "reached": sum(1 for x in to if math.isfinite(x)),
                                 "of": len(to)}
                secs = [seconds_to(r, label, ref[target]) for r in mine]
                med, lo, hi = bootstrap_median(secs)
                seconds[target] = {"median": med, "ci95": [lo, hi]}
            arm[label] = {"regret": per_budget, "trial_epochs_to": reach,
                          "simulated_seconds_to": seconds}
        out[name] = arm
    return out


def _fmt(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.0f}"


def print_table(summary: dict[str, Any], budgets: Sequence[int], epochs: int) -> None:
    for label in SERIES:
        print(f"\n{label}: regret (val ppl above the space's optimum), median [95% CI] over "
              f"seeds, at a budget of N full trials ({epochs} trial-epochs each)")
        print(f"{'arm':<15}" + "".join(f"{f'N={b}':>22}" for b in budgets))
        for name, arm in summary.items():
            s = arm[label]["regret"]
            cells = [f"{s[str(b)]['regret_median']:.1f} "
                     f"[{s[str(b)]['ci95'][0]:.1f}, {s[str(b)]['ci95'][1]:.1f}]" for b in budgets]
            print(f"{name:<15}" + "".join(f"{c:>22}" for c in cells))
        print(f"{label}: trial-epochs to the space's top 1 % / top 5 %: median [95% CI] "
              "(seeds reaching it)")
        for name, arm in summary.items():
            cells = []
            for t in ("top1", "top5"):
                r = arm[label]["trial_epochs_to"][t]
                cells.append(f"{_fmt(r['median'])} [{_fmt(r['ci95'][0])}, "
                             f"{_fmt(r['ci95'][1])}] ({r['reached']}/{r['of']})")
            sec = arm[label]["simulated_seconds_to"]["top1"]["median"]
            print(f"{name:<15}{cells[0]:>30}{cells[1]:>30}   simulated s to top 1 %: "
                  f"{_fmt(sec)}")


def plot(runs: list[dict[str, Any]], ref: dict[str, Any], epochs: int, path: Path) -> None:
    """Median regret (and its IQR) against trial-epochs, one line per arm, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, label in zip(axes, SERIES, strict=True):
        for name in dict.fromkeys(r["arm"] for r in runs):
            curves = [series(r, label) for r in runs if r["arm"] == name]
            n = min(len(c) for c in curves)
            a = np.maximum(np.array([c[:n] for c in curves]) - ref["optimum"], 1e-3)
            x = np.arange(1, n + 1) / epochs
            ax.plot(x, np.median(a, axis=0), label=name)
            ax.fill_between(x, *np.quantile(a, [0.25, 0.75], axis=0), alpha=0.15)
        for t in ("top1", "top5"):
            ax.axhline(ref[t] - ref["optimum"], ls=":", c="grey")
            ax.text(1, ref[t] - ref["optimum"], f" {t}", va="bottom", fontsize=8, c="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("budget: full-trial equivalents")
        ax.set_title(f"{label} ({SPACE_NAME}, replayed)")
    axes[0].set_ylabel("regret: val ppl above the optimum (median, IQR over seeds)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_SURROGATE: Surrogate | None = None


def _init_worker(surrogate: Surrogate) -> None:
    global _SURROGATE
    _SURROGATE = surrogate


def _replay_job(job: tuple[Arm, int, int, int]) -> dict[str, Any]:
    arm, seed, budget_epochs, concurrency = job
    assert _SURROGATE is not None
    with tempfile.TemporaryDirectory(prefix="replay-") as d:
        t0 = time.perf_counter()
        run = replay_search(arm, seed, _SURROGATE, budget_epochs, concurrency, Path(d))
    run["wall_s"] = round(time.perf_counter() - t0, 1)
    return run


# --- the command line ------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replay",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="benchmarks.curves' table")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=DEFAULT_ARMS)
    p.add_argument("--seeds", type=int, default=20, help="sampler seeds per arm")
    p.add_argument("--budget", type=int, default=300,
                   help="full-trial equivalents each search spends")
    p.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200, 300],
                   help="budgets (full-trial equivalents) the summary reads")
    p.add_argument("--concurrency", type=int, default=4, help="trials at once")
    p.add_argument("--space-sample", type=int, default=20_000,
                   help="random configurations that give the top 1 %% / 5 %% and optimum")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="searches replayed at once (processes)")
    p.add_argument("--fidelity-only", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"replay-{dt.date.today()}.json")
    p.add_argument("--resume", action="store_true", help="keep --out's runs, add the missing")
    args = p.parse_args(argv)
    if max(args.budgets) > args.budget:
        p.error("--budgets must not exceed --budget")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from benchmarks.machine import load_snapshot
    from spaces import spec_of
    from spaces.bench_ptb import SPACE

    spec = spec_of(SPACE)
    assert spec is not None
    table = load_table(args.table)
    log = lambda msg: print(f"[replay] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    fid = fidelity(table, spec)
    log(f"surrogate fidelity: {json.dumps(fid)}")
    if args.fidelity_only:
        print(json.dumps(fid, indent=1))
        return 0
    surrogate = fit_surrogate(table, spec)
    ref = space_reference(surrogate, spec, table, args.space_sample)
    log(f"space reference: {json.dumps(ref)}")
    previous = json.loads(args.out.read_text()) if args.resume and args.out.exists() else None
    runs: list[dict[str, Any]] = list(previous["runs"]) if previous else []
    done = {(r["arm"], r["seed"]) for r in runs}
    settings = {"table": str(args.table.name),
                "table_built_by": [{"command": h["command"], "runs_added": h["runs_added"],
                                    "device": h["machine"].get("gpu") or "cpu"}
                                   for h in table.get("history", [])],
                "arms": {a: asdict(ARMS[a]) for a in args.arms}, "seeds": args.seeds,
                "budget": args.budget, "budgets": args.budgets,
                "concurrency": args.concurrency, "epochs": surrogate.epochs,
                "seed_noise_sd_log": surrogate.seed_sd_log}
    record: dict[str, Any] = {
        "benchmark": "replay", "space": SPACE_NAME,
        "command": " ".join(["python", "-m", "benchmarks.replay", *sys.argv[1:]]),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_before": load_snapshot(), "settings": settings, "fidelity": fid,
        "reference": ref, "runs": runs}

    def write() -> None:
        record["summary"] = summarize(runs, ref, args.budgets, surrogate.epochs)
        record["wall_s"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record) + "\n")

    todo = [(ARMS[a], s, args.budget * surrogate.epochs, args.concurrency)
            for s in range(args.seeds) for a in args.arms if (a, s) not in done]
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=(surrogate,)) as pool:
        for i, run in enumerate(pool.imap_unordered(_replay_job, todo), 1):
            runs.append(run)
            log(f"[{i}/{len(todo)}] {run['arm']} seed {run['seed']}: {run['trials_started']} "
                f"trials, regret {run['steps'][-1][1] - ref['optimum']:.1f}, {run['wall_s']} s")
            if i % len(args.arms) == 0 or i == len(todo):
                write()
    runs.sort(key=lambda r: (list(ARMS).index(r["arm"]), r["seed"]))
    write()
    plot(runs, ref, surrogate.epochs, args.out.with_suffix(".png"))
    print_table(record["summary"], args.budgets, surrogate.epochs)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
