"""What to decide with: per search, the hyperparameters it searched, its winners (the search's
best trial and each model's best) with their values, and every trial ranked, each linked to its
MLflow run page when the store is an MLflow server.

Searched parameters are read from the trial runs, not from a space module: the params whose
value differs between the runs of one model (so a mixed search does not list what differs only
because the models' presets do), plus those its Optuna study sampled with more than one possible
value that the runs log. Both work for any space, one declared in a file included. They are kept
per model: a trial's value of a param not searched for its model is a fixed one, left blank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from reports.load import ReportData
from reports.render import Cell, Link, Section, Table, fmt_int, fmt_num, fmt_value
from reports.tables import best_trial, ranked, search_best
from search import schema
from search.results import objective, parse_param
from search.tracking.conventions import without_credentials
from search.uris import is_server

NOT_HYPERPARAMETERS = ("model", "gpus_per_trial")  # model has its own column
TRIALS_CSV = "trials.csv"
FRAME_COLUMNS = ("search", "rank", "trial_id", "run_id", "experiment_id", "model", "status",
                 schema.EPOCHS_RUN, "objective", schema.BEST_VAL_PPL, schema.FINAL_VAL_PPL,
                 schema.FINAL_TEST_PPL, "url")


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page on an MLflow server; None for a store with no web page (SQLite, files)."""
    if not is_server(tracking_uri):
        return None
    server = without_credentials(tracking_uri).rstrip("/")
    return f"{server}/#/experiments/{experiment_id}/runs/{run_id}"


@dataclass(frozen=True)
class Searched:
    """A search's hyperparameters: all of them in column order, and those of each model."""

    names: list[str]
    by_model: dict[str, frozenset[str]]

    def of(self, model: str) -> frozenset[str]:
        return self.by_model.get(model, frozenset())


def searched_params(data: ReportData, search: pd.Series) -> Searched:
    """The search's hyperparameters (see the module docstring): the study's sampling order
    first, then the others by name."""
    trials = data.trials(search["search_key"])
    by_model: dict[str, set[str]] = {}
    for model, group in trials.groupby("model"):
        parsed = [{k: repr(parse_param(v)) for k, v in p.items()} for p in group["params"]]
        logged = set().union(*parsed)
        by_model[str(model)] = {n for n in logged if len({p.get(n) for p in parsed}) > 1}
    sampled: dict[str, None] = {}
    record = data.studies.get(search["search_key"])
    logged_by = {str(m): set().union(*g["params"]) for m, g in trials.groupby("model")}
    for trial in record.trials if record is not None and not record.error else ():
        model = str(trial.params.get("model") or search["model"])
        names = [n for n, d in trial.distributions.items() if not d.single()
                 and n in logged_by.get(model, ())]
        sampled.update(dict.fromkeys(names))
        by_model.get(model, set()).update(names)
    every = set().union(*by_model.values()) - set(sampled)
    return Searched([n for n in [*sampled, *sorted(every)] if n not in NOT_HYPERPARAMETERS],
                    {m: frozenset(n) for m, n in by_model.items()})


def _params(trial: pd.Series, searched: Searched) -> dict[str, Any]:
    """The trial's value of each searched param: NaN where its run has no such param, "" where
    it has one that was not searched for its model (a fixed value)."""
    mine = searched.of(trial["model"])
    return {n: "" if n in trial["params"] and n not in mine
            else parse_param(trial["params"][n]) if n in trial["params"] else math.nan
            for n in searched.names}


def _row(data: ReportData, label: str, trial: pd.Series, searched: Searched) -> dict[str, Any]:
    return {"search": label, "trial_id": trial["trial_id"] or trial["run_name"],
            "run_id": trial["run_id"], "experiment_id": trial["experiment_id"],
            "model": trial["model"], "status": trial["status"],
            schema.EPOCHS_RUN: trial[schema.EPOCHS_RUN], "objective": objective(trial),
            **{m: trial[m] for m in (schema.BEST_VAL_PPL, schema.FINAL_VAL_PPL,
                                     schema.FINAL_TEST_PPL)},
            "url": run_url(data.tracking_uri, trial["experiment_id"], trial["run_id"]) or "",
            **_params(trial, searched)}


def trial_frame(data: ReportData, search: pd.Series) -> pd.DataFrame:
    """Every trial of the search, best first (the search's ranking; failed ones last, rank 0),
    with its searched params (parsed) as columns."""
    searched = searched_params(data, search)
    rows = [{**_row(data, search["label"], t, searched), "rank": t["rank"]}
            for _, t in ranked(data.trials(search["search_key"])).iterrows()]
    return pd.DataFrame(rows, columns=[*FRAME_COLUMNS, *searched.names])


def winner_frame(data: ReportData, search: pd.Series) -> pd.DataFrame:
    """The search's best trial, then the best of each other model it searched."""
    trials = data.trials(search["search_key"])
    searched = searched_params(data, search)
    best = search_best(data, search)
    picks = [("search best", best)] if best is not None else []
    for model, group in trials.groupby("model", sort=True):
        mine = best_trial(group)
        if mine is not None and (best is None or mine["run_id"] != best["run_id"]):
            picks.append((f"best {model}", mine))
    rows = [{"pick": pick, **_row(data, search["label"], t, searched)} for pick, t in picks]
    return pd.DataFrame(rows, columns=["pick", *FRAME_COLUMNS, *searched.names])


def all_trials(data: ReportData) -> pd.DataFrame:
    """Every search's trial frame, one after the other (written as trials.csv)."""
    frames = [trial_frame(data, s) for _, s in data.searches.iterrows()]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FRAME_COLUMNS)


# --- sections -------------------------------------------------------------------------------
def _trial_cell(row: pd.Series) -> Cell:
    return Link(row["trial_id"], row["url"]) if row["url"] else row["trial_id"]


def _common(row: pd.Series) -> list[Cell]:
    return [_trial_cell(row), row["model"], row["status"] or "—", fmt_int(row["epochs_run"]),
            fmt_num(row["objective"]), fmt_num(row[schema.BEST_VAL_PPL]),
            fmt_num(row[schema.FINAL_VAL_PPL]), fmt_num(row[schema.FINAL_TEST_PPL])]


COMMON = ["Trial", "Model", "Status", "Epochs", "Objective", "Best val", "Final val", "Test"]
TEXT = {"Pick", "Trial", "Model", "Status"}


def _table(frame: pd.DataFrame, first: str, firsts: list[str], names: list[str]) -> Table:
    rows = [[cell, *_common(r), *[fmt_value(r[n]) for n in names]]
            for cell, (_, r) in zip(firsts, frame.iterrows(), strict=True)]
    return Table([first, *COMMON, *names], rows, TEXT)


def how_to_open(data: ReportData) -> str:
    """Where the trial ids lead, or how to open the runs of a store without web pages."""
    if run_url(data.tracking_uri, "0", "0") is not None:
        return "Each trial id links to its run page on the MLflow server."
    return ("Trial ids are plain text: the tracking store is not an MLflow server. To see a "
            f"run, start `mlflow ui --backend-store-uri {data.tracking_uri}` and open "
            "http://127.0.0.1:5000/#/experiments/EXPERIMENT_ID/runs/RUN_ID (both ids are in "
            f"{TRIALS_CSV}).")


OBJECTIVE = ("Objective: the validation perplexity the search ranks by: final_val_ppl (the "
             "best weights at the end) for a completed trial, else best_val_ppl (the lowest "
             "reached before it stopped). Best val = best_val_ppl; Final val, Test = "
             "final_val_ppl, final_test_ppl (completed trials only).")


def winners_section(data: ReportData) -> Section:
    """Per search, the values of every searched parameter of its winners."""
    section = Section("Best configuration per search", [
        "The search's best trial (by its own rule: the completed trial with the lowest final "
        "validation perplexity, else the lowest reached), then the best trial of each other "
        "model. Searched parameters: the params that differ between the trial runs of one "
        "model, and those the search's Optuna study sampled; a blank cell: a param not "
        "searched for that trial's model (its value was fixed), —: the model has no such "
        "param. " + OBJECTIVE])
    for _, search in data.searches.iterrows():
        frame = winner_frame(data, search)
        names = searched_params(data, search).names
        if frame.empty:
            section.blocks.append(f"{search['label']}: no trial with a result.")
            continue
        section.blocks.append(f"{search['label']}: searched {', '.join(names) or 'nothing'}.")
        section.blocks.append(_table(frame, "Pick", list(frame["pick"]), names))
    section.blocks.append(how_to_open(data))
    return section


def trials_sections(data: ReportData) -> list[Section]:
    """One section per search: every trial, best first, with its searched params."""
    out = []
    for _, search in data.searches.iterrows():
        frame = trial_frame(data, search)
        if frame.empty:
            continue
        names = searched_params(data, search).names
        ranks = [str(r) if r else "—" for r in frame["rank"]]
        out.append(Section(f"Trials: {search['label']}", [
            f"All {len(frame)} trials, best first (#: the search's ranking; failed and "
            "unscored trials last, unranked). Columns as in Best configuration per search.",
            _table(frame, "#", ranks, names)]))
    return out
