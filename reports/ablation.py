"""The paper-style ablation table: the best config against runs with one regulariser removed.

A run is an ablation of a best trial when it is tagged ``awdsearch.ablation=<name>`` (same model
and dataset), or when its params equal the best trial's except exactly one regulariser that is
0 in the run and non-zero in the best config.
"""

from __future__ import annotations

import pandas as pd

from reports.load import ReportData
from reports.params import REGULARISERS, is_zero, same_value
from reports.tables import GROUP, best_trial
from search import schema

IGNORED = ("gpus_per_trial",)  # resources, not configuration
COLUMNS = ("search", "model", "variant", "removed", "run_id", "trial_id", "val_ppl", "test_ppl",
           "delta_val", "delta_test")


def removed_regulariser(best: dict[str, str], run: dict[str, str]) -> str | None:
    """The one regulariser ``run`` sets to 0 where ``best`` does not, all else equal."""
    keys = (set(best) | set(run)) - set(IGNORED)
    differ = [k for k in keys if k not in best or k not in run or not same_value(best[k], run[k])]
    if len(differ) != 1:
        return None
    key = differ[0]
    if key in REGULARISERS and key in best and key in run and is_zero(run[key]) \
            and not is_zero(best[key]):
        return key
    return None


def _describe(best: dict[str, str], run: dict[str, str]) -> str:
    """For a tagged run: which regularisers it zeroes relative to the best config."""
    zeroed = [k for k in REGULARISERS
              if k in best and k in run and is_zero(run[k]) and not is_zero(best[k])]
    return ", ".join(zeroed)


def table(data: ReportData) -> pd.DataFrame:
    """Rows of (best config, its ablations) for every best trial that has ablations."""
    rows = []
    runs = data.runs[data.runs["final_val_ppl"].notna()]
    for (key, model, dataset, _preset), group in data.trials().groupby(GROUP, sort=False):
        best = best_trial(group)
        if best is None or best["status"] != schema.STATUS_COMPLETED:
            continue
        label = data.searches.loc[data.searches["search_key"] == key, "label"]
        search = str(label.iloc[0]) if not label.empty else key
        same_exp = runs[(runs["experiment"] == best["experiment"])
                        & (runs["run_id"] != best["run_id"])]
        variants = []
        for _, run in same_exp.iterrows():
            if run["ablation"]:
                if run["model"] != model or run["dataset"] != dataset:
                    continue
                name, removed = run["ablation"], _describe(best["params"], run["params"])
            else:
                found = removed_regulariser(best["params"], run["params"])
                if found is None:
                    continue
                removed = found
                name = f"no {removed}"
            variants.append((name, removed, run))
        if not variants:
            continue
        rows.append(_row(search, model, "best config", "", best, best))
        variants.sort(key=lambda v: v[2]["final_val_ppl"])
        rows.extend(_row(search, model, name, removed, run, best)
                    for name, removed, run in variants)
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(search: str, model: str, variant: str, removed: str, run: pd.Series,
         best: pd.Series) -> dict:
    return {"search": search, "model": model, "variant": variant, "removed": removed,
            "run_id": run["run_id"], "trial_id": run["trial_id"],
            "val_ppl": run["final_val_ppl"], "test_ppl": run["final_test_ppl"],
            "delta_val": run["final_val_ppl"] - best["final_val_ppl"],
            "delta_test": run["final_test_ppl"] - best["final_test_ppl"]}
