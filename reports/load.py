"""MLflow -> pandas: the searches, their trial runs and the trials' validation curves; and each
search's own Optuna study, read-only, from where its parent run's tags say it is.

Reads exactly what `search.schema` says a search writes. Every number in a report comes from
the frames and studies read here (and ``references.json``).
"""

from __future__ import annotations

import json
import logging
import math
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial

from awd.errors import first_line
from reports.errors import ReportError
from search import schema
from search.results import parse_param, status_counts
from search.uris import HEALTH_TIMEOUT_S, is_server, server_problem, sqlite_path, sqlite_uri

FINISHED = (schema.STATUS_COMPLETED, schema.STATUS_STOPPED)
REQUIRED = {  # metrics a trial of each status must have (schema: "metrics once")
    schema.STATUS_COMPLETED: ("final_val_ppl", "final_test_ppl", "num_params", "epochs_run",
                              "train_seconds"),
    schema.STATUS_STOPPED: ("epochs_run", "train_seconds"),
}
RUN_COLUMNS = ("run_id", "run_name", "experiment", "search_key", "role", "trial_id", "model",
               "dataset", "preset", "status", "failure", "ablation", "ablation_of", "seed",
               "device", "pareto", "start_time", "end_time",
               *schema.TRIAL_SUMMARY_METRICS, "gpus_per_trial", "finetuned", "train_tokens",
               "eval_tokens", schema.BEST_VAL_PPL, "params", "experiment_id")
# A search's row: its parent run's tags and params, and its summary metrics (NaN where the
# parent has none: a search still running or killed before its summary). study_storage and
# study_name are "" for a search without an Optuna study; fixed: the config keys --set fixed.
SEARCH_COLUMNS = ("search_key", "label", "experiment", "run_id", "run_name", "space", "model",
                  "dataset", "start_time", "end_time", "gpus_per_trial", "best_trial_id",
                  "study_storage", "study_name", "max_epochs", "fixed",
                  *schema.SEARCH_SUMMARY_METRICS, "experiment_id")
# train perplexity per epoch: one of schema.EPOCH_METRICS that schema names no constant for
TRAIN_PPL = schema.TRAIN_PPL
HISTORY_COLUMNS = ("run_id", "epoch", schema.VAL_PPL, "timestamp", TRAIN_PPL)


@dataclass(frozen=True)
class StudyRecord:
    """A search's own Optuna study as stored: its trials, or why they could not be read."""

    storage: str
    name: str
    trials: tuple[FrozenTrial, ...] = ()
    error: str = ""
    directions: tuple[str, ...] = ("minimize",)  # the study's, one per objective


@dataclass
class ReportData:
    """Everything a report shows, as read from MLflow.

    searches: one row per search (parent run; trials without one are grouped per experiment).
    runs: one row per non-search run (trials, confirmation and ablation runs), params kept as
    a dict of strings.
    history: val_ppl per epoch (step) of every run, with the wall-clock timestamp (ms) and the
    train_ppl of the same epoch (NaN where the run logged none).
    studies: the Optuna study of each search whose parent run names one, by search key.
    problems: what makes the input bad (the CLI exits 2); notes: gaps worth a line in the report.
    data_quality: runs whose per-epoch metrics miss epochs (or repeat one): numbers from a
    tracking outage that were never backfilled, named so that nobody trusts their curves.
    """

    tracking_uri: str
    experiments: list[str]
    searches: pd.DataFrame
    runs: pd.DataFrame
    history: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data_quality: list[str] = field(default_factory=list)
    studies: dict[str, StudyRecord] = field(default_factory=dict)

    def trials(self, search_key: str | None = None) -> pd.DataFrame:
        """Trial runs of one search (all searches if None)."""
        runs = self.runs[self.runs["role"] == schema.ROLE_TRIAL]
        return runs if search_key is None else runs[runs["search_key"] == search_key]

    def finished(self, search_key: str | None = None) -> pd.DataFrame:
        trials = self.trials(search_key)
        return trials[trials["status"].isin(FINISHED)]


def open_client(uri: str) -> MlflowClient:
    """A client for ``uri``; a missing SQLite file is an error, not a new empty store."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise ReportError(f"no MLflow database at {path} (pass --tracking-uri or set "
                          "MLFLOW_TRACKING_URI)")
    problem = server_problem(uri, timeout=HEALTH_TIMEOUT_S) if is_server(uri) else None
    if problem is not None:  # in seconds, not after MLflow's retries
        raise ReportError(f"cannot reach the MLflow tracking server at {uri} ({problem})")
    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    except Exception as e:
        raise ReportError(f"cannot read the MLflow tracking store {uri}: "
                          f"{first_line(e)}") from None
    return client


def _all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _metric(run: Run, name: str) -> float:
    value = run.data.metrics.get(name)
    return float(value) if value is not None else math.nan


def _fixed_keys(text: str | None) -> tuple[str, ...]:
    """The keys of the search's ``fixed`` param (a JSON list of "KEY=VALUE",
    `search.options.SearchOptions.as_params`)."""
    try:
        items = json.loads(text) if text else ()
    except ValueError:
        return ()
    if not isinstance(items, (tuple, list)):
        return ()
    return tuple(str(i).split("=", 1)[0] for i in items if "=" in str(i))


def _search_row(run: Run, experiment: str, label: str) -> dict[str, Any]:
    tags, params = run.data.tags, run.data.params
    return {
        "search_key": run.info.run_id, "label": label, "experiment": experiment,
        "run_id": run.info.run_id, "run_name": run.info.run_name or "",
        "space": tags.get(schema.SPACE, ""), "model": tags.get(schema.MODEL, ""),
        "dataset": tags.get(schema.DATASET, ""), "start_time": run.info.start_time,
        "end_time": run.info.end_time, "gpus_per_trial": _number(params.get("gpus_per_trial")),
        "best_trial_id": tags.get(schema.BEST_TRIAL_ID, ""),
        "study_storage": tags.get(schema.STUDY_STORAGE, ""),
        "study_name": tags.get(schema.STUDY_NAME, ""),
        "max_epochs": _number(params.get("max_epochs")), "fixed": _fixed_keys(params.get("fixed")),
        **{name: _metric(run, name) for name in schema.SEARCH_SUMMARY_METRICS},
        "experiment_id": run.info.experiment_id,
    }


def _number(text: Any) -> float:
    value = parse_param(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _run_row(run: Run, experiment: str, search_key: str, search_gpus: float) -> dict[str, Any]:
    tags, params = run.data.tags, run.data.params
    role = tags.get(schema.ROLE, "")
    if not role and tags.get(schema.PARENT_RUN_ID):
        role = schema.ROLE_TRIAL
    gpus = _number(params.get("gpus_per_trial"))
    row = {
        "run_id": run.info.run_id, "run_name": run.info.run_name or "", "experiment": experiment,
        "search_key": search_key, "role": role, "trial_id": tags.get(schema.TRIAL_ID, ""),
        "model": tags.get(schema.MODEL) or params.get("model", ""),
        "dataset": tags.get(schema.DATASET) or params.get("dataset", ""),
        "preset": params.get("preset", ""), "status": tags.get(schema.STATUS, ""),
        "failure": tags.get(schema.FAILURE, ""), "ablation": tags.get(schema.ABLATION, ""),
        "ablation_of": tags.get(schema.ABLATION_OF, ""), "device": tags.get(schema.DEVICE, ""),
        "pareto": tags.get(schema.PARETO) == "true",
        "seed": tags.get(schema.SEED) or params.get("seed", ""),
        "start_time": run.info.start_time, "end_time": run.info.end_time,
        "gpus_per_trial": gpus if not math.isnan(gpus) else search_gpus,
        "finetuned": _number(params.get("finetune_epochs")) > 0,
        "train_tokens": _number(params.get("train_tokens")),
        "eval_tokens": _number(params.get("eval_tokens")),
        "params": dict(params), "experiment_id": run.info.experiment_id,
    }
    row.update({name: _metric(run, name) for name in schema.TRIAL_SUMMARY_METRICS})
    row[schema.BEST_VAL_PPL] = _metric(run, schema.BEST_VAL_PPL)  # its latest value: the lowest
    return row


def _history(client: MlflowClient, run_id: str) -> list[dict[str, Any]]:
    """One row per val_ppl record, with the train_ppl logged at the same step."""
    train = {m.step: m.value for m in client.get_metric_history(run_id, TRAIN_PPL)}
    return [{"run_id": run_id, "epoch": m.step, schema.VAL_PPL: m.value,
             "timestamp": m.timestamp, TRAIN_PPL: train.get(m.step, math.nan)}
            for m in client.get_metric_history(run_id, schema.VAL_PPL)]


def _epoch_gaps(row: dict[str, Any], curve: list[dict[str, Any]]) -> str | None:
    """What a trial run's val_ppl history lacks against its epochs_run (else its last epoch):
    each epoch 1..N once. None when whole."""
    if row["role"] not in (schema.ROLE_TRIAL, schema.ROLE_CONFIRM, schema.ROLE_ABLATION):
        return None
    steps = [int(c["epoch"]) for c in curve]
    run = row[schema.EPOCHS_RUN]
    last = int(run) if not math.isnan(run) else max(steps, default=0)
    missing = sorted(set(range(1, last + 1)) - set(steps))
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    if not (missing or repeated):
        return None
    what = [f"lacks epoch(s) {_ranges(missing)} of {last}"] if missing else []
    what += [f"has epoch(s) {_ranges(repeated)} more than once"] if repeated else []
    return (f"run {row['run_name'] or row['run_id']} ({row['run_id'][:12]}, experiment "
            f"{row['experiment']!r}): its {schema.VAL_PPL} history {' and '.join(what)}")


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _load_experiment(client: MlflowClient, name: str,
                     data: ReportData) -> tuple[list[dict], list[dict], list[dict]]:
    """Search rows, run rows and val_ppl history rows of one experiment."""
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        data.problems.append(f"unknown MLflow experiment {name!r}")
        return [], [], []
    data.experiments.append(name)
    runs = _all_runs(client, exp.experiment_id)
    parents = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH]
    searches = {}
    for run in parents:
        label = name if len(parents) == 1 else f"{name}/{run.info.run_name or run.info.run_id[:8]}"
        searches[run.info.run_id] = _search_row(run, name, label)
    orphan_key = f"orphans:{name}"
    rows, history = [], []
    for run in runs:
        if run.info.run_id in searches:
            continue
        parent = run.data.tags.get(schema.PARENT_RUN_ID, "")
        key = parent if parent in searches else orphan_key
        row = _run_row(run, name, key, searches.get(parent, {}).get("gpus_per_trial", math.nan))
        rows.append(row)
        curve = _history(client, run.info.run_id)
        history.extend(curve)
        gap = _epoch_gaps(row, curve)
        if gap:
            data.data_quality.append(gap)
        if math.isnan(row[schema.BEST_VAL_PPL]):  # a run that logged no best_val_ppl
            row[schema.BEST_VAL_PPL] = min((c["val_ppl"] for c in curve), default=math.nan)
    orphans = [r for r in rows if r["search_key"] == orphan_key
               and r["role"] == schema.ROLE_TRIAL]
    if orphans:
        data.notes.append(f"{len(orphans)} trial run(s) of experiment {name!r} have no parent "
                          "search run; they are reported as a search of their own")
        start = min(r["start_time"] for r in orphans)
        searches[orphan_key] = {
            "search_key": orphan_key, "label": f"{name} (no search run)", "experiment": name,
            "run_id": None, "run_name": "", "space": "", "model": "", "dataset": "",
            "start_time": start, "end_time": None, "gpus_per_trial": math.nan,
            "best_trial_id": "", "study_storage": "", "study_name": "", "max_epochs": math.nan,
            "fixed": (), **{name: math.nan for name in schema.SEARCH_SUMMARY_METRICS},
            "experiment_id": exp.experiment_id}
    _check(name, rows, data)
    return list(searches.values()), rows, history


def _check(experiment: str, rows: list[dict[str, Any]], data: ReportData) -> None:
    """Record bad input: no finished trial, trials lacking the metrics of their status."""
    trials = [r for r in rows if r["role"] == schema.ROLE_TRIAL]
    counts = status_counts(r["status"] or "no status tag" for r in trials)
    if not any(r["status"] in FINISHED for r in trials):
        what = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no trial runs"
        data.problems.append(f"experiment {experiment!r} has no finished trial runs ({what})")
    for r in trials:
        if not r["status"]:
            data.problems.append(f"trial run {r['run_id']} ({r['run_name']}) has no "
                                 f"{schema.STATUS} tag")
            continue
        missing = [m for m in REQUIRED.get(r["status"], ()) if math.isnan(r[m])]
        if r["status"] == schema.STATUS_COMPLETED and math.isnan(r["best_val_ppl"]):
            missing.append("val_ppl history")
        if missing:
            data.problems.append(f"{r['status']} trial run {r['run_id']} ({r['run_name']}) lacks "
                                 f"{', '.join(missing)}")
    if counts[schema.STATUS_RUNNING]:
        data.notes.append(f"experiment {experiment!r}: {counts[schema.STATUS_RUNNING]} trial(s) "
                          "still running; their numbers are partial")
    if any(math.isnan(r["gpus_per_trial"]) for r in trials):
        data.notes.append(f"experiment {experiment!r}: some trials have no gpus_per_trial param; "
                          "they count as 0 GPU-hours")


def read_study(storage: str, name: str) -> StudyRecord:
    """The study ``name`` in the Optuna storage URL ``storage``, opened read-only: a SQLite
    file through a ``mode=ro`` URI (nothing is created or written, even for a missing file);
    another RDB URL as it is, without creating tables."""
    url = storage
    path = sqlite_path(storage)
    if path is not None:
        path = path.expanduser()
        if not path.is_file():
            return StudyRecord(storage, name, error=f"no Optuna database at {path}")
        url = sqlite_uri(f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro&uri=true")
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        rdb = optuna.storages.RDBStorage(url, skip_table_creation=True)
        try:
            study = optuna.load_study(study_name=name, storage=rdb)
            return StudyRecord(storage, name, tuple(study.get_trials(deepcopy=False)),
                               directions=tuple(d.name.lower() for d in study.directions))
        finally:
            rdb.engine.dispose()
    except KeyError:
        return StudyRecord(storage, name, error=f"no study named {name!r} in {storage}")
    except Exception as e:
        text = first_line(e)
        return StudyRecord(storage, name, error=f"cannot read {storage}: {text}")


def _read_studies(data: ReportData) -> None:
    """The study of every search whose parent names one; a note for each that cannot be read."""
    for _, search in data.searches.iterrows():
        if not (search["study_storage"] and search["study_name"]):
            continue
        record = read_study(search["study_storage"], search["study_name"])
        data.studies[search["search_key"]] = record
        if record.error:
            data.notes.append(f"search {search['label']!r}: its Optuna study "
                              f"{record.name!r} cannot be read ({record.error}); its importance "
                              "and slices are reconstructed from the MLflow params instead")


def load(tracking_uri: str, experiments: list[str]) -> ReportData:
    """Read the named experiments; raise `ReportError` if none of them can be reported."""
    client = open_client(tracking_uri)
    data = ReportData(tracking_uri, [], pd.DataFrame(columns=SEARCH_COLUMNS),
                      pd.DataFrame(columns=RUN_COLUMNS), pd.DataFrame(columns=HISTORY_COLUMNS))
    searches, runs, history = [], [], []
    for name in dict.fromkeys(experiments):
        try:
            s, r, h = _load_experiment(client, name, data)
        except ReportError:
            raise
        except Exception as e:
            raise ReportError(f"cannot read experiment {name!r} from {tracking_uri}: "
                              f"{first_line(e)}") from None
        searches += s
        runs += r
        history += h
    if not data.experiments:
        raise ReportError("; ".join(data.problems))
    if searches:
        data.searches = pd.DataFrame(searches, columns=SEARCH_COLUMNS)
        _read_studies(data)
    if runs:
        data.runs = pd.DataFrame(runs, columns=RUN_COLUMNS)
    if history:
        data.history = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    if data.trials().empty:
        raise ReportError("; ".join(data.problems) or "no trial runs in "
                          + ", ".join(repr(e) for e in data.experiments))
    return data
