"""Confidence for the winners: ``--confirm-top K --seeds S``.

After the search, the K best configurations (distinct configs, in the order of
`search.results.ranking`) and the paper configuration (the trial whose config is the space's
warm start, if it is not among them) are re-trained with S new seeds each: the full epoch budget,
no early stopping. The re-trainings are a second Tune run in the same Ray session, in their own
experiment folder ``<experiment>-confirm`` beside the search's, logged as child runs of the
search's parent run with role ``confirm`` (`search.schema`).

Resume: a search killed during its confirmation continues it on ``--resume``: the search's own
Tune run is restored (finished: nothing re-runs), then the confirmation's (`tune.Tuner.restore`:
finished re-trainings are kept, unfinished ones continue from their last checkpoint, into the
same MLflow runs). A search stopped by Ctrl-C is not confirmed (its winners are not known yet)
until ``--resume`` has finished it. ``--resume --confirm-top K`` on a finished search without
one confirms it after the fact. The confirmation has no time budget (``--time-budget`` is the
search's).

The statistics use the re-trainings only, not the original trials: the best trial was picked
for its low perplexity, so its own run is biased low (the winner's curse); it is shown beside.
Rule: the best configuration is better than the paper configuration beyond seed noise when a
one-sided Welch's t-test on their re-trainings' final validation perplexities gives p < 0.05
(`ALPHA`); at least 2 completed re-trainings of each are needed. Test perplexity is reported,
never used to decide.

Ray-free at import, like `search.tracking.store`, so that `reports` shares the statistics: only
`confirm_search` and `resumable` import Ray, when called.
"""

from __future__ import annotations

import json
import logging
import math
import random
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from awd.config import from_flat
from awd.errors import ConfigError
from search import schema
from search.options import SearchOptions
from search.results import TrialSummary, gpu_hours, ranking
from search.stages import retrain

log = logging.getLogger(__name__)

ALPHA = 0.05  # significance level of the one-sided Welch's t-test
KEY = "confirmation"  # a confirmation trial's Tune config: {KEY: entry}, see `plan`
SUFFIX = "-confirm"  # the confirmation's Tune experiment: "<experiment>-confirm"
STATE_FILE = "awdsearch_confirm.json"  # in that folder: whose confirmation it is
ARTIFACT = "confirmation.json"  # on the parent run: every confirmed configuration's numbers


# --- what to confirm ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A configuration to re-train: the search trial that ran it and its place there."""

    trial_id: str
    rank: int  # 1-based place of the trial in `ranking` (1: the search's best); 0: unranked
    paper: bool  # the paper configuration
    config: dict[str, Any]  # the trial's flat config


def _config_key(config: Mapping[str, Any]) -> str:
    """Configs compared as the runs they describe (preset values filled in, types coerced)."""
    try:
        flat = from_flat(dict(config)).to_flat()
    except ConfigError:
        flat = dict(config)
    return json.dumps(flat, sort_keys=True, default=str)


def choose(trials: Sequence[TrialSummary], paper_config: Mapping[str, Any],
           top: int) -> list[Candidate]:
    """The ``top`` best distinct configurations by `ranking`, best first, then the paper
    configuration if it is not among them (the trial that ran it: the best-ranked if several
    did; left out if no trial ran it)."""
    order = ranking([t.record() for t in trials])
    rank = {i: r for r, i in enumerate(order, 1)}
    paper_key = _config_key(paper_config)
    chosen: list[Candidate] = []
    seen: set[str] = set()
    for i in order:
        key = _config_key(trials[i].config)
        if key in seen:
            continue
        if len(chosen) == top:
            break
        seen.add(key)
        chosen.append(Candidate(trials[i].trial_id, rank[i], key == paper_key,
                                dict(trials[i].config)))
    if paper_key not in seen:
        runs = [i for i, t in enumerate(trials) if _config_key(t.config) == paper_key]
        if runs:
            i = min(runs, key=lambda j: rank.get(j, len(trials) + 1))
            chosen.append(Candidate(trials[i].trial_id, rank.get(i, 0), True,
                                    dict(trials[i].config)))
    return chosen


def new_seeds(search_seed: int, count: int, taken: set[int]) -> list[int]:
    """``count`` distinct training seeds, drawn from ``search_seed`` (the same search seed gives
    the same seeds), none of them in ``taken`` (the configurations' own seeds)."""
    rng = random.Random(f"awdsearch-confirm-{search_seed}")
    seeds: list[int] = []
    while len(seeds) < count:
        seed = rng.randrange(1, 2**31)
        if seed not in taken and seed not in seeds:
            seeds.append(seed)
    return seeds


def plan(candidates: Sequence[Candidate], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """One Tune config entry per (configuration, seed): every configuration gets the same
    seeds."""
    return [{"run": {**c.config, "seed": s}, "confirm_of": c.trial_id, "rank": c.rank,
             "paper": c.paper, "seed": s} for c in candidates for s in seeds]


def unwrap(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A confirmation trial's run config and tags (`search.tune.callback.Unwrap`)."""
    entry = config[KEY]
    return dict(entry["run"]), {schema.CONFIRM_OF: str(entry["confirm_of"]),
                                schema.SEED: str(entry["seed"]),
                                schema.CONFIRM_RANK: str(entry["rank"]),
                                schema.CONFIRM_PAPER: str(bool(entry["paper"])).lower()}


def train_confirmation(config: dict[str, Any]) -> None:
    """The Tune trainable: the entry's run config, trained as a search trial is."""
    from search.tune.trainable import train_trial  # torch and Ray: not at import

    train_trial(dict(config[KEY]["run"]))


# --- statistics ----------------------------------------------------------------------------
def welch_p(lower: Sequence[float], higher: Sequence[float]) -> float:
    """One-sided p-value of Welch's t-test for mean(lower) < mean(higher); NaN with fewer than
    2 values on either side."""
    if len(lower) < 2 or len(higher) < 2:
        return math.nan
    va, vb = statistics.variance(lower) / len(lower), statistics.variance(higher) / len(higher)
    diff = statistics.fmean(higher) - statistics.fmean(lower)
    if va + vb == 0:
        return 0.0 if diff > 0 else 1.0
    from scipy.stats import ttest_ind  # scipy.stats: 0.8 s to import, used here only

    return float(ttest_ind(lower, higher, equal_var=False, alternative="less").pvalue)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN where undefined)."""
    mean = statistics.fmean(values) if values else math.nan
    return mean, statistics.stdev(values) if len(values) >= 2 else math.nan


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def tally(stats: ConfigStats | Any, record: Mapping[str, Any]) -> None:
    """One re-training into ``stats`` (its ``runs``, ``seeds``, ``val``, ``test``): started
    runs all count; the perplexities of completed ones only. The ablation's rows share it."""
    stats.runs += 1
    stats.seeds.append(int(record["seed"]))
    val = _finite(record.get(schema.FINAL_VAL_PPL))
    test = _finite(record.get(schema.FINAL_TEST_PPL))
    if record.get("status") == schema.STATUS_COMPLETED and not math.isnan(val):
        stats.val.append(val)
        if not math.isnan(test):
            stats.test.append(test)


@dataclass
class ConfigStats:
    """One confirmed configuration: its original trial and its re-trainings."""

    trial_id: str
    rank: int
    paper: bool
    original_val: float  # the original trial's final_val_ppl (NaN: it did not complete)
    original_test: float
    runs: int = 0  # re-trainings started
    seeds: list[int] = field(default_factory=list)
    val: list[float] = field(default_factory=list)  # final_val_ppl of completed re-trainings
    test: list[float] = field(default_factory=list)
    p_vs_paper: float = math.nan  # one-sided Welch: this configuration's val < the paper's

    @property
    def val_mean_std(self) -> tuple[float, float]:
        return mean_std(self.val)

    @property
    def test_mean_std(self) -> tuple[float, float]:
        return mean_std(self.test)

    def row(self) -> dict[str, Any]:
        """The configuration's numbers, by name (JSON artifact, tables)."""
        (vm, vs), (tm, ts) = self.val_mean_std, self.test_mean_std
        return {"trial_id": self.trial_id, "rank": self.rank, "paper": self.paper,
                "original_val_ppl": self.original_val, "original_test_ppl": self.original_test,
                "runs": self.runs, "completed": len(self.val), "seeds": sorted(self.seeds),
                "val_ppl_mean": vm, "val_ppl_std": vs, "test_ppl_mean": tm, "test_ppl_std": ts,
                "p_vs_paper": self.p_vs_paper}


@dataclass(frozen=True)
class Verdict:
    better: bool | None  # the best beats the paper configuration beyond seed noise (None: n/a)
    p_value: float
    text: str


@dataclass
class Confirmation:
    """Every confirmed configuration (best first, the paper configuration last when unranked),
    the verdict and the re-trainings' cost."""

    configs: list[ConfigStats]
    verdict: Verdict
    runs: int
    completed: int
    gpu_hours: float
    # the re-trainings themselves (their checkpoints: `search.stages.ensemble`'s candidates)
    retrainings: list[TrialSummary] = field(default_factory=list, repr=False)

    @property
    def best(self) -> ConfigStats | None:
        ranked = [c for c in self.configs if c.rank > 0]
        return min(ranked, key=lambda c: c.rank) if ranked else None

    @property
    def paper(self) -> ConfigStats | None:
        return next((c for c in self.configs if c.paper), None)


def decide(best: ConfigStats | None, paper: ConfigStats | None,
           alpha: float = ALPHA) -> Verdict:
    """Is the search's best configuration better than the paper configuration beyond seed noise
    (module docstring: the rule)?"""
    if best is None:
        return Verdict(None, math.nan, "no configuration was confirmed")
    if paper is None:
        return Verdict(None, math.nan, "the paper configuration is not among the search's "
                       "trials: nothing to compare the best with")
    if best is paper or best.paper:
        return Verdict(False, math.nan, "the search's best configuration is the paper "
                       "configuration: nothing better was found")
    if len(best.val) < 2 or len(paper.val) < 2:
        return Verdict(None, math.nan, "undecided: needs 2 completed re-trainings of each "
                       f"(best: {len(best.val)}, paper: {len(paper.val)})")
    p = welch_p(best.val, paper.val)
    (bm, bs), (pm, ps) = best.val_mean_std, paper.val_mean_std
    numbers = (f"validation perplexity {bm:.2f} ± {bs:.2f} (trial {best.trial_id}, "
               f"{len(best.val)} seeds) against the paper configuration's {pm:.2f} ± {ps:.2f} "
               f"({len(paper.val)} seeds)")
    if p < alpha:
        return Verdict(True, p, f"yes: the best configuration is better beyond seed noise: "
                       f"{numbers}; one-sided Welch's t-test p = {p:.3g} < {alpha}")
    return Verdict(False, p, f"no: the difference is within seed noise: {numbers}; "
                   f"one-sided Welch's t-test p = {p:.3g} >= {alpha}")


def summarize_runs(runs: Sequence[Mapping[str, Any]],
                   originals: Mapping[str, Mapping[str, Any]]) -> Confirmation:
    """The statistics and verdict from the re-trainings' records (keys: confirm_of, rank,
    paper, seed, status, final_val_ppl, final_test_ppl, train_seconds, gpus_per_trial) and the
    original trials' records by trial id (final_val_ppl, final_test_ppl, status)."""
    configs: dict[str, ConfigStats] = {}
    for r in runs:
        tid = str(r["confirm_of"])
        if tid not in configs:
            original = originals.get(tid, {})
            done = original.get("status") == schema.STATUS_COMPLETED
            configs[tid] = ConfigStats(
                tid, int(r["rank"]), bool(r["paper"]),
                _finite(original.get(schema.FINAL_VAL_PPL)) if done else math.nan,
                _finite(original.get(schema.FINAL_TEST_PPL)) if done else math.nan)
        tally(configs[tid], r)
    ordered = sorted(configs.values(), key=lambda c: (c.rank == 0, c.rank))
    paper = next((c for c in ordered if c.paper), None)
    for c in ordered:
        if paper is not None and c is not paper:
            c.p_vs_paper = welch_p(c.val, paper.val)
    result = Confirmation(ordered, Verdict(None, math.nan, ""), len(runs),
                          sum(len(c.val) for c in ordered), gpu_hours(runs))
    result.verdict = decide(result.best, result.paper)
    return result


def summary_metrics(c: Confirmation) -> dict[str, float]:
    """The parent run's confirmation metrics (`schema.CONFIRM_SUMMARY_METRICS`); undefined
    ones are left out."""
    out = {schema.CONFIRM_RUNS: float(c.runs), schema.CONFIRM_COMPLETED: float(c.completed),
           schema.CONFIRM_GPU_HOURS: c.gpu_hours, schema.CONFIRM_P_VALUE: c.verdict.p_value}
    named = ((c.best, schema.CONFIRM_BEST_VAL_MEAN, schema.CONFIRM_BEST_VAL_STD,
              schema.CONFIRM_BEST_TEST_MEAN, schema.CONFIRM_BEST_TEST_STD),
             (c.paper, schema.CONFIRM_PAPER_VAL_MEAN, schema.CONFIRM_PAPER_VAL_STD,
              schema.CONFIRM_PAPER_TEST_MEAN, schema.CONFIRM_PAPER_TEST_STD))
    for stats, val_mean, val_std, test_mean, test_std in named:
        if stats is not None:
            (vm, vs), (tm, ts) = stats.val_mean_std, stats.test_mean_std
            out.update({val_mean: vm, val_std: vs, test_mean: tm, test_std: ts})
    if c.verdict.better is not None:
        out[schema.CONFIRM_BETTER] = float(c.verdict.better)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def log_confirmation(client: MlflowClient, parent_run_id: str, c: Confirmation) -> None:
    """The summary metrics, the verdict tag and ``confirmation.json`` on the parent run."""
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0)
                                             for k, v in summary_metrics(c).items()])
    client.set_tag(parent_run_id, schema.CONFIRM_VERDICT, c.verdict.text)
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in s.row().items()} for s in c.configs]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ARTIFACT
        path.write_text(json.dumps({"alpha": ALPHA, "verdict": c.verdict.text,
                                    "configurations": rows}, indent=2))
        client.log_artifact(parent_run_id, str(path))


# --- the re-trainings, as a second Tune run (`search.stages.retrain`) ---------------------------
def _trial_name(trial: Any) -> str:
    """``confirm_<original trial>_s<seed>_<id>``: which trial it re-trains, with which seed."""
    entry = trial.config[KEY]
    return f"confirm_{entry.get('confirm_of', 'trial')}_s{entry.get('seed', '?')}_{trial.trial_id}"


STAGE = retrain.Stage("the confirmation", KEY, SUFFIX, STATE_FILE, schema.ROLE_CONFIRM,
                      train_confirmation, unwrap, _trial_name)


def experiment_dir(opts: SearchOptions) -> str:
    return retrain.experiment_dir(opts, STAGE)


def resumable(opts: SearchOptions, parent_run_id: str) -> bool:
    """Whether this search's confirmation was started and can be continued."""
    return retrain.resumable(opts, STAGE, parent_run_id)


def seeds_of(opts: SearchOptions) -> list[int]:
    """The seeds this search's confirmation uses (empty: none was started)."""
    saved = retrain.saved_plan(opts, STAGE) or {}
    return [int(s) for s in saved.get("seeds", [])]


def confirm_search(opts: SearchOptions, trials: Sequence[TrialSummary], client: MlflowClient, *,
                   tracking_uri: str, experiment_id: str, parent_run_id: str, cpus: float,
                   gpus: float, concurrency: int) -> Confirmation | None:
    """Re-train the search's best configurations and the paper configuration (or continue the
    confirmation saved for this search), log the summary on the parent run; None if there is
    nothing to confirm. Call it in the search's Ray session, before the parent is closed."""

    def make_plan() -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        space = opts.space_spec
        paper = space.paper_config(**{**opts.fixed_values, "epochs": opts.epochs})
        candidates = choose(trials, paper, opts.confirm_top)
        if not candidates:
            log.warning("--confirm-top: no trial has a result; nothing to confirm")
            return None
        taken = {from_flat(c.config).train.seed for c in candidates}
        seeds = new_seeds(opts.seed, opts.seeds, taken)
        return plan(candidates, seeds), {"confirm_top": opts.confirm_top, "seeds": seeds,
                                         "configurations": [c.trial_id for c in candidates]}

    done = retrain.retrain(STAGE, opts, client, make_plan, tracking_uri=tracking_uri,
                           experiment_id=experiment_id, parent_run_id=parent_run_id, cpus=cpus,
                           gpus=gpus, concurrency=concurrency)
    if done is None:
        return None
    summaries, entries = done
    result = summarize_runs(retrain.records(summaries, entries, gpus),
                            {t.trial_id: t.record() for t in trials})
    result.retrainings = summaries
    log_confirmation(client, parent_run_id, result)
    return result
