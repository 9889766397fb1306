"""The paper's ablation of a search's winner: ``--ablate [ROW,...] --seeds S``.

After the search (and its confirmation, if asked for), the winner is re-trained once per row of
the AWD-LSTM paper's Table 4 that applies to it (`awd.ablation`: what each row changes), S seeds
each, the full epoch budget, no early stopping. The seeds are the confirmation's (``--confirm-top``
re-trains the winner with them: those runs are the "full" row, shared); without a confirmation,
the same seeds are drawn the same way and the winner itself is re-trained with them (row
``full``). A row the winner does not use (``wdrop`` already 0) is left out, with a warning.

The runs are a Tune run of their own, ``<experiment>-ablate`` beside the search's
(`search.stages.retrain`): child runs of the search's parent with role ``ablation``, resumable
after a kill, their GPU-hours counted apart (``ablation_gpu_hours``).

A row's effect is beyond seed noise when the one-sided Welch's t-test ``--confirm-top`` uses,
Holm-adjusted over the rows tested together (`holm`), gives p < `search.stages.confirm.ALPHA`,
in either direction: the removal hurts (the winner's
final validation perplexity is lower) or helps (the row's is; at small scale regularisers often
cost more than they give). Ray-free at import: `reports` shares the statistics.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from awd.ablation import ROWS, ablated, paper_change, rows_of
from awd.config import from_flat
from awd.data.registry import canonical_dataset
from awd.errors import ConfigError, first_line
from search import schema
from search.options import SearchOptions
from search.results import TrialSummary, gpu_hours
from search.stages import retrain
from search.stages.confirm import (
    ALPHA,
    Confirmation,
    mean_std,
    new_seeds,
    seeds_of,
    tally,
    welch_p,
)

log = logging.getLogger(__name__)

KEY = "ablation"  # an ablation run's Tune config: {KEY: entry}
SUFFIX = "-ablate"
STATE_FILE = "awdsearch_ablate.json"
ARTIFACT = "ablation.json"
FULL = "full"  # the row of the winner unchanged


def plan(winner: TrialSummary, rows: Sequence[str], seeds: Sequence[int],
         with_full: bool) -> list[dict[str, Any]]:
    """One entry per (row, seed); the winner unchanged first when no confirmation gives it."""
    names = ([FULL] if with_full else []) + list(rows)
    return [{"run": {**(winner.config if name == FULL else ablated(winner.config, name)),
                     "seed": seed},
             "row": name, "ablation_of": winner.trial_id, "seed": seed}
            for name in names for seed in seeds]


def unwrap(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    entry = config[KEY]
    return dict(entry["run"]), {schema.ABLATION: str(entry["row"]),
                                schema.ABLATION_OF: str(entry["ablation_of"]),
                                schema.SEED: str(entry["seed"])}


def train_ablation(config: dict[str, Any]) -> None:
    """The Tune trainable: the entry's run config, trained as a search trial is."""
    from search.tune.trainable import train_trial  # torch and Ray: not at import

    train_trial(dict(config[KEY]["run"]))


def _trial_name(trial: Any) -> str:
    entry = trial.config[KEY]
    return f"ablate_{entry.get('row', 'row')}_s{entry.get('seed', '?')}_{trial.trial_id}"


STAGE = retrain.Stage("the ablation", KEY, SUFFIX, STATE_FILE, schema.ROLE_ABLATION,
                      train_ablation, unwrap, _trial_name)


def resumable(opts: SearchOptions, parent_run_id: str) -> bool:
    return retrain.resumable(opts, STAGE, parent_run_id)


# --- statistics ----------------------------------------------------------------------------
@dataclass
class RowStats:
    """One row: its completed runs' final perplexities, and its change against the winner."""

    row: str
    seeds: list[int] = field(default_factory=list)
    runs: int = 0
    val: list[float] = field(default_factory=list)
    test: list[float] = field(default_factory=list)
    delta_val: float = math.nan  # mean(row) - mean(full)
    delta_test: float = math.nan
    p_value: float = math.nan  # one-sided Welch: the winner's val < this row's (removal hurts)
    p_better: float = math.nan  # the other side: this row's val < the winner's (removal helps)
    identical: bool = False  # the same perplexities as the winner: the technique never acted
    p_holm: float = math.nan  # min(p_value, p_better), Holm-adjusted over the ablation's rows

    @property
    def label(self) -> str:
        return "winner (nothing removed)" if self.row == FULL else f"– {ROWS[self.row].label}"

    @property
    def beyond_noise(self) -> bool | None:
        """Whether the change, either way, is beyond seed noise after Holm's correction for
        the number of rows tested (None: undecided)."""
        if math.isnan(self.p_holm):
            return None
        return self.p_holm < ALPHA

    @property
    def verdict(self) -> str:
        """"worse" or "better" (beyond noise, the row against the winner), "no", or "" when
        undecided (fewer than 2 completed runs on a side)."""
        if self.beyond_noise is None:
            return ""
        if self.identical:
            return "no (identical runs: the technique never acted)"
        if not self.beyond_noise:
            return f"no (Holm p = {self.p_holm:.3g})"
        side = "worse" if self.p_value < self.p_better else "better"
        return f"{side} (Holm p = {self.p_holm:.3g})"

    def row_dict(self, dataset: str) -> dict[str, Any]:
        (vm, vs), (tm, ts) = mean_std(self.val), mean_std(self.test)
        paper = paper_change(self.row, dataset) if self.row != FULL else None
        return {"row": self.row, "label": self.label,
                "change": ROWS[self.row].change if self.row != FULL else "",
                "runs": self.runs, "completed": len(self.val), "seeds": sorted(self.seeds),
                "val_ppl_mean": vm, "val_ppl_std": vs, "test_ppl_mean": tm, "test_ppl_std": ts,
                "delta_val": self.delta_val, "delta_test": self.delta_test,
                "p_value": self.p_value, "p_better": self.p_better, "p_holm": self.p_holm,
                "beyond_noise": self.beyond_noise, "verdict": self.verdict,
                "paper_delta_val": paper[0] if paper else None,
                "paper_delta_test": paper[1] if paper else None}


@dataclass
class Ablation:
    """The winner's ablation: the full row first, then each removal in the paper's order."""

    winner: str  # trial id
    model: str
    dataset: str
    rows: list[RowStats]
    runs: int
    completed: int
    gpu_hours: float
    skipped: dict[str, str] = field(default_factory=dict)  # row -> why it was not trained

    def rows_dicts(self) -> list[dict[str, Any]]:
        return [r.row_dict(self.dataset) for r in self.rows]


def summarize(records: Sequence[Mapping[str, Any]], *, winner: str, model: str, dataset: str,
              full: RowStats | None = None, skipped: Mapping[str, str] | None = None
              ) -> Ablation:
    """The rows' statistics from the ablation runs' records (keys: row, seed, status,
    final_val_ppl, final_test_ppl, train_seconds, gpus_per_trial); ``full``: the winner's
    re-trainings when they come from the confirmation, not from these records."""
    by_row: dict[str, RowStats] = {}
    for r in records:
        tally(by_row.setdefault(str(r["row"]), RowStats(str(r["row"]))), r)
    base = by_row.pop(FULL, None) or full or RowStats(FULL)
    order = [name for name in ROWS if name in by_row]
    rows = [base] + [by_row[name] for name in order]
    for stats in rows[1:]:
        stats.delta_val = mean_std(stats.val)[0] - mean_std(base.val)[0]
        stats.delta_test = mean_std(stats.test)[0] - mean_std(base.test)[0]
        stats.p_value = welch_p(base.val, stats.val)
        stats.p_better = welch_p(stats.val, base.val)
        stats.identical = bool(stats.val) and sorted(stats.val) == sorted(base.val)
    holm(rows[1:])
    return Ablation(winner, model, dataset, rows, len(records),
                    sum(len(r.val) for r in rows if r is not full),
                    gpu_hours(records), dict(skipped or {}))


def holm(rows: Sequence[RowStats]) -> None:
    """Holm's step-down adjustment of each row's p-value (the smaller of its two sides; twice
    as many tests as rows would be stricter still) for the rows tested together: eight rows
    at 0.05 each would call one of them beyond noise a third of the time by chance."""
    tested = sorted((r for r in rows if not math.isnan(r.p_value)),
                    key=lambda r: min(r.p_value, r.p_better))
    running = 0.0
    for k, r in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - k) * min(r.p_value, r.p_better)))
        r.p_holm = running


def full_from_confirmation(c: Confirmation | None, winner: str) -> RowStats | None:
    """The winner's re-trainings from the confirmation, as the full row (None: not there)."""
    stats = next((s for s in (c.configs if c else []) if s.trial_id == winner), None)
    if stats is None:
        return None
    return RowStats(FULL, list(stats.seeds), stats.runs, list(stats.val), list(stats.test))


def summary_metrics(a: Ablation) -> dict[str, float]:
    return {schema.ABLATION_RUNS: float(a.runs), schema.ABLATION_COMPLETED: float(a.completed),
            schema.ABLATION_GPU_HOURS: a.gpu_hours}


def log_ablation(client: MlflowClient, parent_run_id: str, a: Ablation) -> None:
    """The summary metrics and ``ablation.json`` on the parent run."""
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0)
                                             for k, v in summary_metrics(a).items()])
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in a.rows_dicts()]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ARTIFACT
        path.write_text(json.dumps({"alpha": ALPHA, "winner": a.winner, "model": a.model,
                                    "dataset": a.dataset, "skipped": a.skipped, "rows": rows},
                                   indent=2))
        client.log_artifact(parent_run_id, str(path))


# --- the stage -------------------------------------------------------------------------------
def ablate_search(opts: SearchOptions, winner: TrialSummary, confirmation: Confirmation | None,
                  client: MlflowClient, *, tracking_uri: str, experiment_id: str,
                  parent_run_id: str, cpus: float, gpus: float, concurrency: int
                  ) -> Ablation | None:
    """Re-train the winner with each row removed (or continue the ablation saved for this
    search) and log the summary on the parent run; None if there is nothing to train."""
    run = from_flat(dict(winner.config))
    wanted, foreign = rows_of(opts.ablate or "all", run.model)
    skipped = {n: f"does not apply to {run.model}" for n in foreign}
    rows = []
    for name in wanted:
        try:
            ablated(winner.config, name)
            rows.append(name)
        except ConfigError as e:
            skipped[name] = first_line(e)
    for name, why in skipped.items():
        if opts.ablate != "all" or not why.startswith("does not apply"):
            log.warning("--ablate: row %s left out: %s", name, why)
    full = full_from_confirmation(confirmation, winner.trial_id)

    def make_plan() -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        if not rows:
            log.warning("--ablate: the winner uses none of the rows asked for; nothing to train")
            return None
        seeds = (seeds_of(opts) if full is not None else []) \
            or new_seeds(opts.seed, opts.seeds, {run.train.seed})
        return plan(winner, rows, seeds, with_full=full is None), {
            "winner": winner.trial_id, "rows": rows, "seeds": seeds, "skipped": skipped,
            "full_from_confirmation": full is not None}

    done = retrain.retrain(STAGE, opts, client, make_plan, tracking_uri=tracking_uri,
                           experiment_id=experiment_id, parent_run_id=parent_run_id, cpus=cpus,
                           gpus=gpus, concurrency=concurrency)
    if done is None:
        return None
    summaries, entries = done
    saved = retrain.saved_plan(opts, STAGE) or {}
    result = summarize(retrain.records(summaries, entries, gpus), winner=winner.trial_id,
                       model=run.model, dataset=canonical_dataset(run.dataset),
                       full=full if saved.get("full_from_confirmation") else None,
                       skipped=saved.get("skipped", skipped))
    log_ablation(client, parent_run_id, result)
    return result
