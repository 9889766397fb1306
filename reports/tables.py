"""The report's tables as pandas frames of raw numbers (formatting is `render`'s job)."""

from __future__ import annotations

import math

import pandas as pd

from reports import references
from reports.load import ReportData
from search import schema
from search.results import best_index, objective, ranking, status_counts
from search.results import gpu_hours as _gpu_hours

GROUP = ["search_key", "model", "dataset", "preset"]


def gpu_hours(trials: pd.DataFrame) -> float:
    """The trials' GPU-hours by the search's own rule (`search.results.gpu_hours`)."""
    return _gpu_hours(trials.to_dict("records"))


# The parent run's summary metric of each status it counts (`search.tracking.store`).
SUMMARY_COUNTS = {"trials": "trials_total", schema.STATUS_COMPLETED: "trials_completed",
                  schema.STATUS_STOPPED: "trials_stopped_early",
                  schema.STATUS_FAILED: "trials_failed",
                  schema.STATUS_INTERRUPTED: "trials_interrupted"}


def _counts(trials: pd.DataFrame) -> dict[str, int]:
    """``trials`` and one count per status of `schema.TRIAL_STATUSES`, keyed by the status."""
    counts = status_counts(trials["status"])
    return {"trials": len(trials), **{s: counts[s] for s in schema.TRIAL_STATUSES}}


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The best of ``trials`` by the search's own rule (`search.results.best_index`)."""
    i = best_index(trials.to_dict("records"))
    return None if i is None else trials.iloc[i]


def _summary_or(value: float, derived: float) -> float:
    """A parent run's summary metric when it has one, else the value derived from trials."""
    return derived if value is None or math.isnan(value) else float(value)


def _label(data: ReportData, search_key: str) -> str:
    row = data.searches[data.searches["search_key"] == search_key]
    return str(row["label"].iloc[0]) if not row.empty else search_key


def summary(data: ReportData) -> pd.DataFrame:
    """One row per (search, model, dataset, preset): best trial, cost, counts, published."""
    trials = data.trials()
    rows = []
    for (key, model, dataset, preset), group in trials.groupby(GROUP, sort=False, dropna=False):
        best = best_trial(group)
        row = {"search": _label(data, key), "search_key": key, "model": model,
               "dataset": dataset, "preset": preset, **_counts(group),
               "gpu_hours": gpu_hours(group),
               "train_hours": float(group["train_seconds"].fillna(0).sum() / 3600)}
        for name in ("run_id", "trial_id", "final_val_ppl", "final_test_ppl", "num_params",
                     "epochs_run", "ntasgd_trigger_epoch", "train_tokens"):
            row[f"best_{name}"] = best[name] if best is not None else math.nan
        row["best_run_id"] = row["best_run_id"] if best is not None else ""
        row["best_trial_id"] = row["best_trial_id"] if best is not None else ""
        finetuned = bool(best["finetuned"]) if best is not None else False
        found = references.match(model, dataset, preset, finetuned,
                                 best["train_tokens"] if best is not None else 0,
                                 best["eval_tokens"] if best is not None else 0)
        ref = found.reference
        row["ref_val_ppl"] = ref.val_ppl if ref else math.nan
        row["ref_test_ppl"] = ref.test_ppl if ref else math.nan
        # a gap only where the two numbers measure the same thing: never a slice's
        row["comparable"] = found.comparable
        row["gap_val_ppl"] = (row["best_final_val_ppl"] - row["ref_val_ppl"]
                              if found.comparable else math.nan)
        row["gap_test_ppl"] = (row["best_final_test_ppl"] - row["ref_test_ppl"]
                               if found.comparable else math.nan)
        row["reference"] = ref.citation if ref else ""
        notes = [n for n in (found.note, found.not_comparable) if n]
        if best is None:
            notes.append("no trial with a result")
        elif best["status"] != schema.STATUS_COMPLETED:
            notes.append(f"no completed trial; the best stopped early at val ppl "
                         f"{best[schema.BEST_VAL_PPL]:.2f}")
        row["note"] = "; ".join(notes)
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.sort_values(["model", "dataset", "preset", "search"], kind="stable",
                             ignore_index=True) if not frame.empty else frame


def search_best(data: ReportData, search: pd.Series) -> pd.Series | None:
    """The trial a search names as its best (its parent's tag), else, for a search without a
    summary, the best of its trial runs by the same rule; None for a summarized search that
    named none (no trial with a result)."""
    trials = data.trials(search["search_key"])
    if search["best_trial_id"]:
        chosen = trials[trials["trial_id"] == search["best_trial_id"]]
        if not chosen.empty:
            return chosen.iloc[0]
    return best_trial(trials) if math.isnan(search["trials_total"]) else None


def wall_seconds(data: ReportData, search: pd.Series) -> float:
    """The search's wall time: its wall_seconds metric, else run end minus start, else the
    last val_ppl record minus the start."""
    if not math.isnan(search["wall_seconds"]):
        return float(search["wall_seconds"])
    start = search["start_time"]
    end = search["end_time"]
    if end is None or (isinstance(end, float) and math.isnan(end)):
        ids = data.trials(search["search_key"])["run_id"]
        stamps = data.history[data.history["run_id"].isin(ids)]["timestamp"]
        end = stamps.max() if not stamps.empty else start
    return float(end - start) / 1000.0


def searches(data: ReportData) -> pd.DataFrame:
    """One row per search: space, models, wall time, GPU-hours, counts, best val/test.

    The numbers are the parent run's summary (what the search itself wrote); they are derived
    from the trial runs only for a search that has none (still running, killed, or trials
    without a parent run)."""
    rows = []
    for _, search in data.searches.iterrows():
        trials = data.trials(search["search_key"])
        summarized = not math.isnan(search["trials_total"])
        best = search_best(data, search)
        counts = _counts(trials)
        if summarized:  # what the search counted (trials_interrupted: not before it existed)
            counts.update({key: int(search[metric]) for key, metric in SUMMARY_COUNTS.items()
                           if not math.isnan(search[metric])})
        models = sorted(trials["model"].dropna().unique())
        rows.append({
            "search": search["label"], "experiment": search["experiment"],
            "space": search["space"], "dataset": search["dataset"] or ", ".join(
                sorted(trials["dataset"].unique())),
            "models": ", ".join(models), "parent_run_id": search["run_id"] or "",
            "experiment_id": search["experiment_id"],
            "started": pd.to_datetime(search["start_time"], unit="ms", utc=True),
            "wall_hours": wall_seconds(data, search) / 3600, **counts,
            "gpu_hours": _summary_or(search["gpu_hours"], gpu_hours(trials)),
            "best_val_ppl": _summary_or(search[schema.BEST_VAL_PPL], objective(best)),
            "best_test_ppl": _summary_or(search[schema.BEST_TEST_PPL],
                                         best[schema.FINAL_TEST_PPL] if best is not None
                                         else math.nan),
            "best_model": best["model"] if best is not None else "",
            "best_trial_id": best["trial_id"] if best is not None else "",
        })
    return pd.DataFrame(rows)


def ranked(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` best first by the search's own rule (`search.results.ranking`), with a
    ``rank`` column (1 = best); trials it leaves out (failed, unscored) last, rank 0."""
    order = ranking(trials.to_dict("records"))
    rest = [i for i in range(len(trials)) if i not in set(order)]
    ranks = [*range(1, len(order) + 1), *[0] * len(rest)]
    return trials.iloc[order + rest].assign(rank=ranks)


def failures(data: ReportData) -> pd.DataFrame:
    """Failed trials and the reason recorded for each."""
    trials = data.trials()
    failed = trials[trials["status"] == schema.STATUS_FAILED]
    return pd.DataFrame({
        "search": [_label(data, k) for k in failed["search_key"]],
        "trial_id": failed["trial_id"].to_numpy(), "model": failed["model"].to_numpy(),
        "epochs_run": failed["epochs_run"].to_numpy(),
        "failure": failed["failure"].replace("", "(no reason recorded)").to_numpy(),
    })
