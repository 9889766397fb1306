"""The confirmation section: per search, its best configurations and the paper configuration
re-trained with new seeds (``--confirm-top K --seeds S``), mean ± std, and the verdict.

The numbers are the confirmation runs' (role ``confirm``) as `reports.load` read them; their
tags (which trial each re-trains, its rank, the paper flag) are read here. The statistics and
the verdict come from `search.stages.confirm.summarize_runs`: the rule the search itself applied.
Confirmation runs are not trials: the other tables leave them out.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from reports.load import ReportData
from reports.render import Section, Table, fmt_int, fmt_num
from reports.tables import gpu_hours
from search import schema
from search.stages.confirm import ALPHA, Confirmation, summarize_runs


def _confirm_tags(data: ReportData) -> dict[str, dict[str, str]]:
    """The tags of every confirmation run of the report's experiments, by run id."""
    client = MlflowClient(data.tracking_uri)
    tags: dict[str, dict[str, str]] = {}
    for name in data.experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            continue
        runs = client.search_runs(
            [exp.experiment_id], max_results=50_000,
            filter_string=f"tags.`{schema.ROLE}` = '{schema.ROLE_CONFIRM}'")
        tags.update({r.info.run_id: dict(r.data.tags) for r in runs})
    return tags


def _int(text: Any, default: int = 0) -> int:
    try:
        return int(str(text))
    except ValueError:
        return default


def confirmations(data: ReportData) -> list[tuple[str, Confirmation, pd.DataFrame]]:
    """(search label, its confirmation, its confirmation runs' rows) per search that has
    confirmation runs."""
    runs = data.runs[data.runs["role"] == schema.ROLE_CONFIRM]
    if runs.empty:
        return []
    tags = _confirm_tags(data)
    out = []
    for key, group in runs.groupby("search_key", sort=False):
        records = []
        for row in group.to_dict("records"):
            own = tags.get(row["run_id"], {})
            if schema.CONFIRM_OF not in own:
                continue
            seed = own.get(schema.SEED) or row["params"].get("seed", "0")
            records.append({**row, "confirm_of": own[schema.CONFIRM_OF],
                            "rank": _int(own.get(schema.CONFIRM_RANK)),
                            "paper": own.get(schema.CONFIRM_PAPER) == "true",
                            "seed": _int(seed)})
        if not records:
            continue
        originals = {r["trial_id"]: r for r in data.trials(str(key)).to_dict("records")}
        label = data.searches.loc[data.searches["search_key"] == key, "label"]
        out.append((str(label.iloc[0]) if not label.empty else str(key),
                    summarize_runs(records, originals), group))
    return out


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return fmt_num(mean) + ("" if math.isnan(std) else f" ± {fmt_num(std)}")


def section(data: ReportData) -> Section | None:
    """The section, or None when no search was confirmed."""
    found = confirmations(data)
    if not found:
        return None
    rows, verdicts, cost = [], [], []
    for label, c, runs in found:
        for s in c.configs:
            r = s.row()
            rows.append([label, s.trial_id, fmt_int(s.rank) if s.rank else "—",
                         "yes" if s.paper else "", fmt_num(s.original_val),
                         _pm(r["val_ppl_mean"], r["val_ppl_std"]),
                         _pm(r["test_ppl_mean"], r["test_ppl_std"]),
                         f"{r['completed']}/{r['runs']}",
                         "—" if math.isnan(s.p_vs_paper) else f"{s.p_vs_paper:.3g}"])
        verdicts.append(f"{label}: {c.verdict.text}")
        train_hours = float(runs["train_seconds"].fillna(0).sum()) / 3600
        cost.append(f"{label}: {c.runs} confirmation runs, {fmt_num(gpu_hours(runs), 3)} GPU-h, "
                    f"{fmt_num(train_hours, 3)} train h")
    return Section("Confirmation of the winners", [
        "The best configurations of a search (by its ranking) and the paper configuration, "
        "re-trained with new seeds for the full epoch budget without early stopping. Mean ± "
        "sample standard deviation of the final perplexities over the re-trainings; the "
        "original trial's own value is shown beside, not pooled (it was picked for being low). "
        "p vs paper: one-sided Welch's t-test that the configuration's validation perplexity "
        f"is lower than the paper configuration's; better beyond seed noise when p < {ALPHA}.",
        Table(["Search", "Trial", "Rank", "Paper", "Original val", "Val mean ± std",
               "Test mean ± std", "Seeds done", "p vs paper"], rows,
              {"Search", "Trial", "Paper"}),
        verdicts,
        "Confirmation runs are not trials: the searches, best-trial and cost tables leave them "
        "out. Their cost:", cost])
