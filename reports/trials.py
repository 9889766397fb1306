"""What to decide with: per search, the hyperparameters it searched, its winners (the search's
best trial and each model's best) with their values, and every trial ranked, each linked to its
MLflow run page (for a local store, where ``mlflow ui`` serves it).

Searched parameters come from the search's Optuna study when it is readable: the params it
sampled with more than one possible value, in sampling order, and for each trial the ones its
study trial sampled (paired by Tune trial id), so a parameter of another model or another
condition shows — and a value fixed inside a condition (decay_start of a schedule) is not
listed. Without a study (older searches, runs without a search run) they are reconstructed from
the runs: the params whose value differs between the runs of one model (so a mixed search does
not list what differs only because the models' presets do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from reports.load import ReportData
from reports.params import column_kind
from reports.render import Cell, Link, Section, Table, fmt_int, fmt_num, fmt_value, is_missing
from reports.tables import best_trial, ranked, search_best
from search import schema
from search.results import objective, parse_param
from search.tracking.conventions import run_page_url
from search.uris import is_server

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

NOT_HYPERPARAMETERS = ("model", "gpus_per_trial")  # model has its own column
TRIALS_CSV = "trials.csv"
FRAME_COLUMNS = ("search", "rank", "trial_id", "run_id", "experiment_id", "model", "status",
                 schema.EPOCHS_RUN, "objective", schema.BEST_VAL_PPL, schema.FINAL_VAL_PPL,
                 schema.FINAL_TEST_PPL, "url")


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page (Model training, not GenAI): on the MLflow server, or for a local store
    (SQLite, files) where ``mlflow ui`` serves it by default (`how_to_open` says how)."""
    server = tracking_uri if is_server(tracking_uri) else schema.LOCAL_UI
    return run_page_url(server, experiment_id, run_id)


@dataclass(frozen=True)
class Searched:
    """A search's hyperparameters: all of them in column order, those of each model, and, when
    its Optuna study is readable, what each trial sampled (by Tune trial id)."""

    names: list[str]
    by_model: dict[str, frozenset[str]]
    by_trial: dict[str, frozenset[str]] = field(default_factory=dict)

    def of(self, model: str) -> frozenset[str]:
        return self.by_model.get(model, frozenset())


def _study_trials(data: ReportData, search: pd.Series) -> tuple[FrozenTrial, ...] | None:
    record = data.studies.get(search["search_key"])
    return record.trials if record is not None and not record.error else None


def searched_params(data: ReportData, search: pd.Series) -> Searched:
    """The search's hyperparameters (see the module docstring), in the study's sampling order;
    without a readable study paired with the runs, those that differ between one model's runs,
    by name. A field --set fixed for every trial is none of them."""
    trials = data.trials(search["search_key"])
    logged_by = {str(m): set().union(*g["params"]) for m, g in trials.groupby("model")}
    study = _study_trials(data, search)
    paired = {str(t.user_attrs.get(schema.OPTUNA_TUNE_TRIAL_ID, "")) for t in study or ()}
    fixed = set(search["fixed"])  # the keys --set fixed: not what was sampled
    if study is not None and paired & set(trials["trial_id"].astype(str)):
        sampled: dict[str, None] = {}
        by_model: dict[str, set[str]] = {m: set() for m in logged_by}
        by_trial: dict[str, frozenset[str]] = {}
        for trial in study:
            model = str(trial.params.get("model") or search["model"])
            names = [n for n, d in trial.distributions.items()
                     if not d.single() and n in logged_by.get(model, ())]
            sampled.update(dict.fromkeys(names))
            by_model.setdefault(model, set()).update(names)
            tune_id = trial.user_attrs.get(schema.OPTUNA_TUNE_TRIAL_ID)
            if tune_id:
                by_trial[str(tune_id)] = frozenset(trial.params)
        return Searched([n for n in sampled if n not in NOT_HYPERPARAMETERS and n not in fixed],
                        {m: frozenset(n) for m, n in by_model.items()}, by_trial)
    differs: dict[str, set[str]] = {}
    for model, group in trials.groupby("model"):
        parsed = [{k: repr(parse_param(v)) for k, v in p.items()} for p in group["params"]]
        differs[str(model)] = {n for n in set().union(*parsed)
                               if len({p.get(n) for p in parsed}) > 1}
    every = set().union(*differs.values())
    return Searched([n for n in sorted(every) if n not in NOT_HYPERPARAMETERS and n not in fixed],
                    {m: frozenset(n) for m, n in differs.items()})


def _params(trial: pd.Series, searched: Searched) -> dict[str, Any]:
    """The trial's value of each searched param, NaN (shown —) where it does not apply: one
    its study trial did not sample (another model's, another condition's), or, without a
    study, one its run does not log; "" for one its run logs that was not searched for its
    model (a fixed value)."""
    sampled = searched.by_trial.get(str(trial["trial_id"]))
    if sampled is not None:
        return {n: parse_param(trial["params"][n]) if n in sampled and n in trial["params"]
                else math.nan for n in searched.names}
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
            "url": run_url(data.tracking_uri, trial["experiment_id"], trial["run_id"]),
            **_params(trial, searched)}


def trial_frame(data: ReportData, search: pd.Series) -> pd.DataFrame:
    """Every trial of the search, best first (the search's ranking; failed ones last, rank 0),
    with its searched params (parsed) as columns."""
    searched = searched_params(data, search)
    rows = [{**_row(data, search["label"], t, searched), "rank": t["rank"]}
            for _, t in ranked(data.trials(search["search_key"])).iterrows()]
    return _typed(pd.DataFrame(rows, columns=[*FRAME_COLUMNS, *searched.names], dtype=object),
                  searched.names)


def _typed(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Integer params as integers (pandas' nullable Int64: a blank, not 64.0, where a trial has
    none), numbers as floats, the rest as they are."""
    for name in names:
        kind = column_kind(v for v in frame[name] if v != "" and not is_missing(v))
        if kind == "int" and "" not in set(frame[name]):
            frame[name] = frame[name].astype("Int64")
        elif kind == "float" and "" not in set(frame[name]):
            frame[name] = frame[name].astype(float)
    for name in ("rank", schema.EPOCHS_RUN):
        frame[name] = pd.to_numeric(frame[name]).astype("Int64")
    for name in ("objective", schema.BEST_VAL_PPL, schema.FINAL_VAL_PPL, schema.FINAL_TEST_PPL):
        frame[name] = pd.to_numeric(frame[name])
    return frame


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
    return Link(row["trial_id"], row["url"])


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
    """Where the trial ids lead; for a store without web pages, the command that serves them."""
    if is_server(data.tracking_uri):
        return "Each trial id links to its run page on the MLflow server."
    return (f"Each trial id links to its run page at {schema.LOCAL_UI}: start `mlflow ui "
            f"--backend-store-uri {data.tracking_uri}` first (the tracking store is a local "
            f"database, which the links open through MLflow's own UI; run ids are in "
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
        "model. Searched parameters: those the search's Optuna study sampled (without a "
        "readable study: the params that differ between the trial runs of one model); —: "
        "the trial did not sample it (another model's or another condition's parameter); a "
        "blank cell (no study only): a param not searched for that trial's model, its value "
        "fixed. " + OBJECTIVE])
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
