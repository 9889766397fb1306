"""The continuous cache after a search: ``--cache-trials N`` (`awd.cache`).

The winner's export is run once over validation and test (sequential, batch 1:
`awd.posthoc.model_outputs`); then an Optuna study tries N cache values (W, θ, λ) on
**validation only**, each computed from the stored outputs without running the model again:
the first trial is the paper's values (`awd.cache.PAPER_VALUES`), the rest TPE's, seeded by the
search's seed. The study lives in the search's study storage as ``<study name>-cache``, so
``--resume`` of a search killed during this stage continues it (its finished trials kept). Test
is evaluated once, with the chosen values. A stage a driver finished is not run again by
``--resume`` (unless more trials are asked for: the study then goes on, and the new choice is
logged with its own test evaluation).

MLflow: a child run of the search with role ``cache`` (`schema.ROLE_CACHE`): every trial's
values and validation perplexity as metrics (step: the trial's place among the study's finished
trials, 0 = the paper's values), the chosen values and the
val/test perplexities with and without the cache, and the costs (seconds of the outputs pass,
per trial, of the cached test evaluation). The chosen values are also the tag
``awdsearch.cache`` ("W,θ,λ") of the parent run, the best trial's run and the registered version:
what ``python -m search.evaluate --model-uri ... --cache tuned`` reads.

Ray-free; `tune_cache` is also what the ensemble stage tunes its cache with.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow.entities import Metric, Run, RunTag
from mlflow.tracking import MlflowClient

from awd.cache import CacheParams, SplitOutputs, cached_loss
from awd.data import load_corpus
from awd.posthoc import model_outputs
from awd.trainer import load_exported, perplexity
from search import schema
from search.study_storage import open_storage
from search.tracking.store import finished_stage_run, stage_run

log = logging.getLogger(__name__)

WINDOW = (50, 5000)  # positions (log scale)
THETA = (0.0, 2.0)
LAMBDA = (0.0, 0.6)
STUDY_SUFFIX = "-cache"



def optimize(study: optuna.Study, objective: Callable[[optuna.Trial], float], n: int) -> None:
    """``study.optimize`` for ``n`` trials. A Ctrl-C (or a SIGTERM, `search.errors.Terminated`)
    that lands while Optuna records a trial comes out of Optuna 4 as an UnboundLocalError (its
    ``_run_trial`` reads a name the interrupt left unset), which would pass for the stage's own
    failure: the interrupt is raised again, and the search stops as the signal says."""
    try:
        study.optimize(objective, n_trials=n)
    except UnboundLocalError as e:
        if isinstance(e.__context__, KeyboardInterrupt):
            raise e.__context__ from None
        raise

def suggest(trial: optuna.Trial) -> CacheParams:
    return CacheParams(trial.suggest_int("window", *WINDOW, log=True),
                       trial.suggest_float("theta", *THETA),
                       trial.suggest_float("lambda", *LAMBDA))


def _params_of(trial: optuna.trial.FrozenTrial) -> CacheParams:
    p = trial.params
    return CacheParams(int(p["window"]), float(p["theta"]), float(p["lambda"]))


@dataclass(frozen=True)
class CacheTuning:
    """A tuning's trials in order (values, validation perplexity), the chosen values, the
    validation perplexity without and with them, and the seconds one trial took (median)."""

    trials: list[tuple[CacheParams, float]]
    chosen: CacheParams
    val_ppl: float
    cache_val_ppl: float
    seconds_per_trial: float


@dataclass(frozen=True)
class StudyPlace:
    """Where a stage's study lives: the search's study storage, a name derived from the
    search's study, and the search's seed."""

    storage: str
    search_study: str
    seed: int

    def open(self, suffix: str) -> optuna.Study:
        """The study ``<search study><suffix>``: created, or the one a killed stage left."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.create_study(study_name=self.search_study + suffix,
                                   storage=open_storage(self.storage),
                                   direction="minimize",
                                   sampler=optuna.samplers.TPESampler(seed=self.seed),
                                   load_if_exists=True)


def tune_cache(valid: SplitOutputs, study: optuna.Study, trials: int,
               first: CacheParams) -> CacheTuning:
    """Run the study until it has ``trials`` finished trials (``first`` is the first of them),
    each scored on ``valid`` alone."""
    state = optuna.trial.TrialState
    for t in study.trials:  # a killed driver's trial in progress (one driver per search)
        if t.state == state.RUNNING:
            study.tell(t.number, state=state.FAIL)
    if not any(t.state in (state.COMPLETE, state.WAITING) for t in study.trials):
        study.enqueue_trial({"window": first.window, "theta": first.theta,
                             "lambda": first.lam})
    seconds: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        start = time.perf_counter()
        value = perplexity(cached_loss(valid, suggest(trial)))
        seconds.append(time.perf_counter() - start)
        return value if math.isfinite(value) else math.inf

    done = [t for t in study.trials if t.state == state.COMPLETE]
    if len(done) < trials:
        optimize(study, objective, trials - len(done))
    done = [t for t in study.trials if t.state == state.COMPLETE]
    done.sort(key=lambda t: t.number)
    best = min(done, key=lambda t: (float(t.value), t.number))  # type: ignore[arg-type]
    seconds.sort()
    return CacheTuning([(_params_of(t), float(t.value)) for t in done],  # type: ignore[arg-type]
                       _params_of(best), perplexity(valid.loss()), float(best.value),  # type: ignore[arg-type]
                       seconds[len(seconds) // 2] if seconds else math.nan)


@dataclass
class CacheReport:
    """What the stage measured; ``metrics`` are its child run's summary."""

    tuning: CacheTuning
    test_ppl: float
    cache_test_ppl: float
    outputs_seconds: float  # the one pass over validation and test
    cached_test_seconds: float  # the test evaluation with the chosen values
    run_id: str = ""

    def summary(self) -> dict[str, float]:
        t = self.tuning
        return {**t.chosen.as_dict(), "trials": float(len(t.trials)), "val_ppl": t.val_ppl,
                "test_ppl": self.test_ppl, schema.CACHE_VAL_PPL: t.cache_val_ppl,
                schema.CACHE_TEST_PPL: self.cache_test_ppl,
                "outputs_seconds": self.outputs_seconds,
                "seconds_per_trial": t.seconds_per_trial,
                "cached_test_seconds": self.cached_test_seconds}


    @classmethod
    def from_run(cls, client: MlflowClient, run: Run) -> CacheReport:
        """The report a finished stage logged (a resumed search does not run it again)."""
        m, run_id = run.data.metrics, run.info.run_id
        history = {k: [h.value for h in sorted(client.get_metric_history(run_id, k),
                                                 key=lambda h: h.step)]
                   for k in ("trial_window", "trial_theta", "trial_lambda", "trial_val_ppl")}
        trials = [(CacheParams(int(w), t, lam), v) for w, t, lam, v in zip(
            history["trial_window"], history["trial_theta"], history["trial_lambda"],
            history["trial_val_ppl"], strict=True)]
        tuning = CacheTuning(trials, CacheParams.parse(run.data.tags[schema.CACHE_VALUES]),
                             m["val_ppl"], m[schema.CACHE_VAL_PPL],
                             m.get("seconds_per_trial", math.nan))
        return cls(tuning, m["test_ppl"], m[schema.CACHE_TEST_PPL],
                   m.get("outputs_seconds", math.nan), m.get("cached_test_seconds", math.nan),
                   run_id)


def cache_stage(client: MlflowClient, export_file: Path, *, experiment_id: str,
                parent_run_id: str, study: StudyPlace, trials: int,
                model_run_id: str | None, model_uri: str | None,
                device: str = "auto") -> CacheReport:
    """Tune the cache of the model in ``export_file`` (the search's winner) and log it; a
    stage a driver finished with at least ``trials`` trials is reused as it was."""
    done = finished_stage_run(client, experiment_id, parent_run_id, schema.ROLE_CACHE)
    if done is not None and done.data.metrics.get("trials", 0) >= trials:
        return CacheReport.from_run(client, done)
    exported = load_exported(export_file)
    corpus = load_corpus(exported.run.dataset)
    start = time.perf_counter()
    outputs = model_outputs(exported, corpus, device=device)
    outputs_seconds = time.perf_counter() - start
    tuning = tune_cache(outputs["valid"], study.open(STUDY_SUFFIX), trials,
                        CacheParams.paper(exported.run.dataset))
    start = time.perf_counter()
    cache_test = perplexity(cached_loss(outputs["test"], tuning.chosen))  # test: once
    report = CacheReport(tuning, perplexity(outputs["test"].loss()), cache_test,
                         outputs_seconds, time.perf_counter() - start)
    report.run_id = log_tuning(client, experiment_id, parent_run_id, schema.ROLE_CACHE,
                               "cache", tuning, report.summary())
    tag_chosen(client, tuning.chosen, [parent_run_id, model_run_id], model_uri)
    client.log_batch(parent_run_id, metrics=[
        Metric(schema.CACHE_VAL_PPL, tuning.cache_val_ppl, _now(), 0),
        Metric(schema.CACHE_TEST_PPL, cache_test, _now(), 0)])
    return report


def _now() -> int:
    return int(time.time() * 1000)


def log_tuning(client: MlflowClient, experiment_id: str, parent_run_id: str, role: str,
               name: str, tuning: CacheTuning, summary: Mapping[str, float]) -> str:
    """The stage's child run: each trial at its step (only those not logged by an earlier,
    killed driver), the summary, the chosen values as a tag; returns its id."""
    run_id = stage_run(client, experiment_id, parent_run_id, role, name)
    logged = len(client.get_metric_history(run_id, "trial_val_ppl"))
    now = _now()
    metrics = []
    for step, (params, ppl) in enumerate(tuning.trials):
        if step < logged:
            continue
        metrics += [Metric("trial_window", params.window, now, step),
                    Metric("trial_theta", params.theta, now, step),
                    Metric("trial_lambda", params.lam, now, step),
                    Metric("trial_val_ppl", ppl, now, step)]
    metrics += [Metric(k, float(v), now, 0) for k, v in summary.items() if math.isfinite(v)]
    for i in range(0, len(metrics), 900):  # MLflow takes 1,000 metrics per batch
        client.log_batch(run_id, metrics=metrics[i:i + 900])
    client.log_batch(run_id, tags=[RunTag(schema.CACHE_VALUES, tuning.chosen.as_text())])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def tag_chosen(client: MlflowClient, chosen: CacheParams, run_ids: list[str | None],
               model_uri: str | None) -> None:
    """The chosen values on the runs and on the registered version, for ``--cache tuned``."""
    for run_id in run_ids:
        if run_id:
            client.set_tag(run_id, schema.CACHE_VALUES, chosen.as_text())
    if model_uri and model_uri.startswith("models:/") and model_uri.count("/") == 2:
        name, version = model_uri[len("models:/"):].split("/")
        if version.isdigit():
            client.set_model_version_tag(name, version, schema.CACHE_VALUES, chosen.as_text())
