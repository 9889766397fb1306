"""Model averaging after a search: ``--ensemble K`` (`awd.ensemble`).

The candidates are the search's completed trials and its ``--confirm-top`` re-trainings (their
best weights, exported from their checkpoints by the driver). Each is run once over validation
(sequential, batch 1); greedy ensemble selection with replacement (Caruana et al. 2004) picks up
to K members on validation from those stored probabilities alone. The members alone are then run
over test, and test is evaluated once. The first pick of greedy selection is the best single
candidate on validation, so the best single model's numbers come with the ensemble's.

With ``--cache-trials N`` the ensemble gets a cache of its own, tuned like the winner's
(`search.stages.cache.tune_cache`, study ``<study name>-ensemble-cache``) over the last-layer
outputs of its heaviest member: kept only where it lowers validation perplexity.

MLflow: a child run with role ``ensemble`` (`schema`: members and weights, the selection's
validation perplexity at each step, val/test with and without the cache, costs), and the
ensemble's file (`awd.ensemble.write_ensemble`) registered as a version of
``awdsearch-<space>-ensemble``, which ``python -m search.evaluate --model-uri`` reads back to
the same numbers. Ray-free.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.entities import Metric, Run, RunTag
from mlflow.tracking import MlflowClient

from awd.cache import CacheParams, SplitOutputs, cached_loss
from awd.data import load_corpus
from awd.ensemble import Ensemble, check_compatible, greedy_selection, write_ensemble
from awd.posthoc import ensemble_outputs, model_outputs
from awd.trainer import load_exported, perplexity
from search import schema
from search.stages.cache import StudyPlace, tune_cache
from search.tracking.registry import publish_ensemble
from search.tracking.store import finished_stage_run, stage_run

log = logging.getLogger(__name__)

STUDY_SUFFIX = "-ensemble-cache"
ENSEMBLE_FILE = "ensemble.pt"


@dataclass(frozen=True)
class Candidate:
    """A trained model the ensemble may take: its name, its search trial, its export."""

    name: str
    trial_id: str
    export_file: Path


@dataclass
class EnsembleReport:
    members: list[str]
    weights: list[float]
    candidates: int
    selection_val_ppl: list[float]  # after each greedy step
    val_ppl: float
    test_ppl: float
    best_single: str
    best_single_val_ppl: float
    best_single_test_ppl: float
    cache: CacheParams | None  # the ensemble's own, where it helped on validation
    cache_val_ppl: float
    cache_test_ppl: float
    seconds: float
    model_uri: str | None = None
    run_id: str = ""
    member_trials: list[str] | None = None  # each member's search trial

    def summary(self) -> dict[str, float]:
        return {"members": float(len(self.members)), "candidates": float(self.candidates),
                "val_ppl": self.val_ppl, "test_ppl": self.test_ppl,
                schema.CACHE_VAL_PPL: self.cache_val_ppl,
                schema.CACHE_TEST_PPL: self.cache_test_ppl,
                "best_single_val_ppl": self.best_single_val_ppl,
                "best_single_test_ppl": self.best_single_test_ppl, "seconds": self.seconds}

    def member_rows(self) -> list[dict[str, object]]:
        trials = self.member_trials or self.members
        return [{"name": n, "trial_id": t, "weight": w}
                for n, t, w in zip(self.members, trials, self.weights, strict=True)]

    @classmethod
    def from_run(cls, client: MlflowClient, run: Run) -> EnsembleReport:
        """The report a finished stage logged (a resumed search does not run it again)."""
        m, tags = run.data.metrics, run.data.tags
        rows = json.loads(tags[schema.ENSEMBLE_MEMBERS])
        history = sorted(client.get_metric_history(run.info.run_id, "selection_val_ppl"),
                         key=lambda h: h.step)
        cache = tags.get(schema.CACHE_VALUES)
        return cls(
            members=[r["name"] for r in rows], weights=[float(r["weight"]) for r in rows],
            candidates=int(m["candidates"]), selection_val_ppl=[h.value for h in history],
            val_ppl=m["val_ppl"], test_ppl=m["test_ppl"],
            best_single=tags.get(schema.ENSEMBLE_BEST_SINGLE, ""),
            best_single_val_ppl=m["best_single_val_ppl"],
            best_single_test_ppl=m["best_single_test_ppl"],
            cache=CacheParams.parse(cache) if cache else None,
            cache_val_ppl=m.get(schema.CACHE_VAL_PPL, math.nan),
            cache_test_ppl=m.get(schema.CACHE_TEST_PPL, math.nan),
            seconds=m.get("seconds", math.nan), model_uri=tags.get(schema.MODEL_URI),
            run_id=run.info.run_id, member_trials=[str(r["trial_id"]) for r in rows])


def _light(outputs: SplitOutputs) -> SplitOutputs:
    """Only what selection and averaging read: the hidden states of every candidate would not
    fit (the pointer member's alone are kept)."""
    return SplitOutputs(torch.empty(0), outputs.targets, outputs.logprob)


def ensemble_stage(client: MlflowClient, candidates: list[Candidate], size: int, *,
                   experiment_id: str, parent_run_id: str, space: str, study: StudyPlace,
                   cache_trials: int, workdir: Path,
                   device: str = "auto") -> EnsembleReport | None:
    """Select, evaluate, log and register the ensemble of up to ``size`` members; a stage a
    driver finished is reused as it was (a resumed search does not build another)."""
    done = finished_stage_run(client, experiment_id, parent_run_id, schema.ROLE_ENSEMBLE)
    if done is not None:
        if done.data.tags.get(schema.ENSEMBLE_SIZE) != str(size):
            log.warning("--ensemble %d: the search's ensemble was built with K = %s already; "
                        "it is kept as it is", size, done.data.tags.get(schema.ENSEMBLE_SIZE))
        return EnsembleReport.from_run(client, done)
    if not candidates:
        log.warning("--ensemble: no completed trial to average; no ensemble")
        return None
    start = time.perf_counter()
    names = [c.name for c in candidates]
    first = load_exported(candidates[0].export_file)
    corpus = load_corpus(first.run.dataset)
    valid = []
    for c in candidates:  # one model in memory at a time
        model = load_exported(c.export_file)
        check_compatible([first, model], [names[0], c.name])
        valid.append(_light(model_outputs(model, corpus, ["valid"], device)["valid"]))
    selection = greedy_selection(torch.stack([v.logprob for v in valid]), size)
    chosen = selection.members
    members = [load_exported(candidates[i].export_file) for i in chosen]
    ensemble = Ensemble(members, [selection.weights[i] for i in chosen],
                        [names[i] for i in chosen])
    pointer = ensemble.pointer_member  # among the members
    # the members over test (the pointer's states kept); its validation states again
    test = []
    for k, model in enumerate(members):
        out = model_outputs(model, corpus, ["test"], device)["test"]
        test.append(out if k == pointer else _light(out))
    member_valid = [valid[i] for i in chosen]
    if cache_trials:
        member_valid[pointer] = model_outputs(members[pointer], corpus, ["valid"],
                                              device)["valid"]
    ens_valid = ensemble_outputs(member_valid, ensemble.weights, pointer, ensemble.names)
    ens_test = ensemble_outputs(test, ensemble.weights, pointer, ensemble.names)
    single = chosen.index(selection.picks[0])  # the best single candidate is a member
    cache, cache_val, cache_test = None, math.nan, math.nan
    val_ppl = perplexity(ens_valid.loss())
    if cache_trials:
        tuning = tune_cache(ens_valid, study.open(STUDY_SUFFIX), cache_trials,
                            CacheParams.paper(first.run.dataset))
        if tuning.cache_val_ppl < val_ppl:  # it helps on validation: keep it
            cache, cache_val = tuning.chosen, tuning.cache_val_ppl
            cache_test = perplexity(cached_loss(ens_test, cache))  # test: once
        else:
            log.info("the ensemble's cache does not help on validation (%.2f vs %.2f): left "
                     "out", tuning.cache_val_ppl, val_ppl)
    ensemble = Ensemble(ensemble.members, ensemble.weights, ensemble.names, cache)
    report = EnsembleReport(
        members=ensemble.names, weights=ensemble.weights, candidates=len(candidates),
        selection_val_ppl=[perplexity(x) for x in selection.losses], val_ppl=val_ppl,
        test_ppl=perplexity(ens_test.loss()), best_single=ensemble.names[single],
        best_single_val_ppl=perplexity(member_valid[single].loss()),
        best_single_test_ppl=perplexity(test[single].loss()), cache=cache,
        cache_val_ppl=cache_val, cache_test_ppl=cache_test,
        seconds=time.perf_counter() - start,
        member_trials=[candidates[i].trial_id for i in chosen])
    path = write_ensemble(ensemble, workdir / ENSEMBLE_FILE)
    run_id = stage_run(client, experiment_id, parent_run_id, schema.ROLE_ENSEMBLE, "ensemble")
    tags = {schema.MODEL_PARENT_RUN_ID: parent_run_id, schema.DATASET: ensemble.dataset,
            schema.SPACE: space, schema.MODEL_VAL_PPL: repr(report.val_ppl),
            schema.MODEL_TEST_PPL: repr(report.test_ppl),
            schema.ENSEMBLE_MEMBERS: json.dumps(report.member_rows())}
    if cache is not None:
        tags[schema.CACHE_VALUES] = cache.as_text()
    report.model_uri = publish_ensemble(
        client, run_id, space, path, ensemble, tags,
        f"ensemble of {len(chosen)} of search run {parent_run_id}: val ppl "
        f"{report.val_ppl:.2f}, test ppl {report.test_ppl:.2f}")
    report.run_id = _log(client, run_id, parent_run_id, report, size)
    return report


def _log(client: MlflowClient, run_id: str, parent_run_id: str, report: EnsembleReport,
         size: int) -> str:
    """The stage's run (its selection curve, summary, members; FINISHED last: what a resumed
    search reuses) and the parent's metrics."""
    now = int(time.time() * 1000)
    logged = len(client.get_metric_history(run_id, "selection_val_ppl"))
    metrics = [Metric("selection_val_ppl", v, now, step)
               for step, v in enumerate(report.selection_val_ppl) if step >= logged]
    metrics += [Metric(k, v, now, 0) for k, v in report.summary().items() if math.isfinite(v)]
    tags = [RunTag(schema.ENSEMBLE_MEMBERS, json.dumps(report.member_rows())),
            RunTag(schema.ENSEMBLE_SIZE, str(size)),
            RunTag(schema.ENSEMBLE_BEST_SINGLE, report.best_single)]
    if report.cache is not None:
        tags.append(RunTag(schema.CACHE_VALUES, report.cache.as_text()))
    if report.model_uri:
        tags.append(RunTag(schema.MODEL_URI, report.model_uri))
    client.log_batch(run_id, metrics=metrics, tags=tags)
    parent = {schema.ENSEMBLE_VAL_PPL: report.val_ppl, schema.ENSEMBLE_TEST_PPL: report.test_ppl,
              schema.ENSEMBLE_CACHE_VAL_PPL: report.cache_val_ppl,
              schema.ENSEMBLE_CACHE_TEST_PPL: report.cache_test_ppl}
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in parent.items()
                                             if math.isfinite(v)])
    client.set_terminated(run_id, "FINISHED")
    return run_id
