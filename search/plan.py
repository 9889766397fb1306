"""What a search will cost, before it starts: ``python -m search.run ... --dry-run``.

The plan: trials, epochs per trial, the trial-epochs ASHA is expected to run (each rung keeps the
top 1/3 of the trials that reach it), the model's size (the space's first trial, the paper
configuration), and, with ``measure``, the seconds of one epoch on this machine's device from
a few timed training windows, hence the search's wall time at its concurrency and its
GPU-hours. Printed by ``--dry-run`` (which starts nothing and writes nothing) and, without the
timing, as the first lines of every search. Ray-free.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from search.options import SearchOptions

ASHA_REDUCTION_FACTOR = 3  # `search.tune.session` schedules with this one
TIMED_WINDOWS = 3


def asha_rungs(grace: int, max_epochs: int, factor: int = ASHA_REDUCTION_FACTOR) -> list[int]:
    """ASHA's milestones: grace, grace·factor, ... below the epoch budget."""
    rungs, r = [], grace
    while r < max_epochs:
        rungs.append(r)
        r *= factor
    return rungs


def expected_epochs(grace: int, max_epochs: int, asha: bool,
                    factor: int = ASHA_REDUCTION_FACTOR) -> float:
    """Epochs one trial runs on average: every epoch without ASHA; with it, each rung lets the
    top 1/factor of its trials go on to the next milestone (the budget after the last)."""
    if not asha:
        return float(max_epochs)
    rungs = asha_rungs(grace, max_epochs, factor)
    if not rungs:
        return float(max_epochs)
    total, share = float(rungs[0]), 1.0
    for here, nxt in zip(rungs, [*rungs[1:], max_epochs], strict=True):
        share /= factor
        total += (nxt - here) * share
    return total


@dataclass(frozen=True)
class Plan:
    space: str
    model: str
    dataset: str
    trials: int
    max_epochs: int
    grace: int
    asha: bool
    trial_epochs: float  # expected, all trials
    params: int | None  # the paper configuration's parameter count
    train_tokens: int | None  # per epoch
    concurrency: int
    gpus_per_trial: float
    device: str = ""
    epoch_seconds: float | None = None  # measured here, for the paper configuration
    retrainings: tuple[tuple[str, int], ...] = ()  # (what, runs) after the search, full budget
    objectives: tuple[str, ...] = ()  # several: a multi-objective search

    @property
    def wall_hours(self) -> float | None:
        if self.epoch_seconds is None:
            return None
        return self.trial_epochs * self.epoch_seconds / max(self.concurrency, 1) / 3600

    @property
    def gpu_hours(self) -> float | None:
        if self.epoch_seconds is None:
            return None
        return self.trial_epochs * self.epoch_seconds * self.gpus_per_trial / 3600

    def lines(self) -> list[str]:
        sched = (f"ASHA (grace {self.grace}, rungs at "
                 f"{', '.join(map(str, asha_rungs(self.grace, self.max_epochs)))})"
                 if self.asha else "no early stopping")
        out = [f"Plan: {self.trials} trials of {self.space} ({self.model} on {self.dataset}), "
               f"up to {self.max_epochs} epochs each, {sched}: about "
               f"{self.trial_epochs:,.0f} trial-epochs"]
        if len(self.objectives) > 1:
            out.append(f"  objectives: {', '.join(self.objectives)}, all minimised (Optuna's "
                       "multi-objective TPE; the Pareto front is tagged in MLflow"
                       + ("; ASHA stops on the first alone)" if self.asha else ")"))
        if self.params is not None:
            tokens = f", {self.train_tokens:,} training tokens an epoch" \
                if self.train_tokens else ""
            out.append(f"  the first trial (the paper configuration): {self.params:,} "
                       f"parameters{tokens}")
        if self.epoch_seconds is not None and self.wall_hours is not None:
            gpu = f", {self.gpu_hours:,.2f} GPU-hours" if self.gpus_per_trial else ""
            out.append(f"  on this machine ({self.device}): {self.epoch_seconds:,.1f} s an "
                       f"epoch, so about {_duration(self.wall_hours)} at {self.concurrency} "
                       f"trial{'s' if self.concurrency != 1 else ''} at once{gpu} (larger "
                       "trials of the space take longer)")
        if self.retrainings:
            runs = sum(n for _, n in self.retrainings)
            parts = "; ".join(f"{what}: {n}" for what, n in self.retrainings)
            out.append(f"  then {runs} re-trainings of {self.max_epochs} epochs each, no early "
                       f"stopping ({parts}): {runs * self.max_epochs:,} trial-epochs more")
        return out


def _duration(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def make_plan(opts: SearchOptions, concurrency: int, gpus_per_trial: float,
              measure: bool = False, device: str = "auto") -> Plan:
    """The plan of ``opts``; ``measure`` times a few training windows of the first trial here."""
    from awd.config import from_flat

    space = opts.space_spec
    config = space.paper_config(**{**opts.fixed_values, "epochs": opts.epochs})
    run = from_flat(config)
    params, tokens, seconds, used = None, None, None, ""
    try:
        from awd.data import load_corpus

        corpus = load_corpus(run.dataset)
        params = run.arch.estimated_params(corpus.ntokens)
        tokens = min(run.train.train_tokens or len(corpus.train), len(corpus.train))
        if measure:
            seconds, used = _epoch_seconds(config, corpus, tokens, device)
    except Exception:  # no data yet: the plan without sizes (the search itself says why)
        pass
    asha = opts.scheduler == "asha"
    return Plan(space.name, space.model, space.dataset, opts.num_samples, opts.epochs,
                opts.grace, asha,
                opts.num_samples * expected_epochs(opts.grace, opts.epochs, asha), params,
                tokens, concurrency, gpus_per_trial, used, seconds, retrainings(opts),
                opts.objective_metrics)


def retrainings(opts: SearchOptions) -> tuple[tuple[str, int], ...]:
    """The runs --confirm-top and --ablate add (at most: an ablation row the winner does not
    use is left out; the confirmation's re-trainings of the winner serve the ablation too)."""
    out = []
    if opts.confirm_top:
        out.append((f"--confirm-top {opts.confirm_top}: up to {opts.confirm_top + 1} "
                    f"configurations x {opts.seeds} seeds", (opts.confirm_top + 1) * opts.seeds))
    if opts.ablate:
        from awd.ablation import rows_of

        model = opts.space_spec.model
        rows = max(len(rows_of(opts.ablate, m)[0]) for m in
                   ((model,) if model != "mixed" else ("awd_lstm", "awd_gru", "zaremba")))
        rows += 0 if opts.confirm_top else 1  # the winner itself
        out.append((f"--ablate: up to {rows} rows x {opts.seeds} seeds", rows * opts.seeds))
    return tuple(out)


def _epoch_seconds(config: dict, corpus: object, tokens: int, device: str) -> tuple[float, str]:
    """Seconds of one training epoch of ``tokens`` plus its validation, from `TIMED_WINDOWS`
    windows timed after one of warm-up."""
    from awd.trainer import Trainer

    run = dict(config)
    batch, bptt = int(run.get("batch_size", 20)), int(run.get("bptt", 70))
    slice_tokens = batch * (bptt + 1) * (TIMED_WINDOWS + 1) + batch
    trainer = Trainer({**run, "train_tokens": slice_tokens, "variable_bptt": False,
                       "device": device}, corpus)  # type: ignore[arg-type]
    trainer.train_epoch()  # warm-up (first allocations, kernels)
    start = time.perf_counter()
    _, done = trainer.train_epoch()
    if trainer.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    per_token = (time.perf_counter() - start) / max(done, 1)
    validation = 0.15  # an epoch's validation: a forward pass over a split ~10 % of training
    return per_token * tokens * (1 + validation), str(trainer.device)


def concurrency_here(opts: SearchOptions, gpus: float) -> int:
    """Trials at once on this machine (a local search), as the search itself would size it."""
    import os

    if opts.concurrency:
        return opts.concurrency
    cpus = os.cpu_count() or 1
    by_cpu = max(1, int(cpus // opts.cpus_per_trial))
    if gpus:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        by_cpu = min(by_cpu, max(1, math.floor(count / gpus)) if count else 1)
    return max(1, min(by_cpu, opts.num_samples))
