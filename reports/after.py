"""The "After training" section: per search, its best single trial, + the continuous cache, the
ensemble of K, ensemble + cache (val and test, all sequential at batch 1), the chosen cache
values and members, and the papers' rows beside (`references.json`, ``after_training``).

The numbers are those the search's stage runs logged (roles ``cache`` and ``ensemble``:
`search.stages.cache`, `search.stages.ensemble`), read here from MLflow.
"""

from __future__ import annotations

import json
import math
from typing import Any

from mlflow.tracking import MlflowClient

from reports import references
from reports.load import ReportData
from reports.render import Section, Table, fmt_num
from search import schema

ROLES = (schema.ROLE_CACHE, schema.ROLE_ENSEMBLE)


def _stage_runs(data: ReportData) -> dict[str, dict[str, Any]]:
    """Per search key, its cache and ensemble runs (metrics and tags), by role."""
    rows = data.runs[data.runs["role"].isin(ROLES)]
    if rows.empty:
        return {}
    client = MlflowClient(data.tracking_uri)
    found: dict[str, dict[str, Any]] = {}
    for row in rows.to_dict("records"):
        run = client.get_run(row["run_id"])
        found.setdefault(str(row["search_key"]), {})[row["role"]] = run.data
    return found


def _members(tags: dict[str, str]) -> str:
    try:
        rows = json.loads(tags.get(schema.ENSEMBLE_MEMBERS, "[]"))
        return ", ".join(f"{r['name']} ({float(r['weight']):.2f})" for r in rows)
    except (ValueError, TypeError, KeyError):
        return "?"


def _cache_values(tags: dict[str, str]) -> str:
    from awd.cache import CacheParams
    from awd.errors import ConfigError

    text = tags.get(schema.CACHE_VALUES)
    if not text:
        return ""
    try:
        return CacheParams.parse(text).shown()
    except ConfigError:
        return text


def _rows(label: str, stages: dict[str, Any]) -> list[list[str]]:
    rows = []
    cache, ens = stages.get(schema.ROLE_CACHE), stages.get(schema.ROLE_ENSEMBLE)
    if cache is not None:
        m = cache.metrics
        rows += [[label, "best trial", fmt_num(m.get("val_ppl")), fmt_num(m.get("test_ppl")),
                  ""],
                 [label, "best trial + cache", fmt_num(m.get(schema.CACHE_VAL_PPL)),
                  fmt_num(m.get(schema.CACHE_TEST_PPL)),
                  f"{_cache_values(cache.tags)} ({int(m.get('trials', 0))} trials)"]]
    if ens is not None:
        m = ens.metrics
        if cache is None:
            rows.append([label, "best single", fmt_num(m.get("best_single_val_ppl")),
                         fmt_num(m.get("best_single_test_ppl")), ""])
        rows.append([label, f"ensemble of {int(m.get('members', 0))} "
                     f"(of {int(m.get('candidates', 0))})", fmt_num(m.get("val_ppl")),
                     fmt_num(m.get("test_ppl")), _members(ens.tags)])
        if not math.isnan(m.get(schema.CACHE_VAL_PPL, math.nan)):
            rows.append([label, "ensemble + cache", fmt_num(m.get(schema.CACHE_VAL_PPL)),
                         fmt_num(m.get(schema.CACHE_TEST_PPL)), _cache_values(ens.tags)])
        else:
            rows.append([label, "ensemble + cache", "—", "—",
                         "no cache lowered the ensemble's validation perplexity"
                         if schema.CACHE_VALUES not in ens.tags else ""])
    return rows


def section(data: ReportData) -> Section | None:
    """The section, or None when no search ran a stage after training."""
    stages = _stage_runs(data)
    if not stages:
        return None
    rows: list[list[str]] = []
    models, datasets = set(), set()
    for search in data.searches.to_dict("records"):
        own = stages.get(str(search["search_key"]))
        if own:
            rows += _rows(str(search["label"]), own)
            models |= set(str(search.get("model", "")).split(","))
            datasets.add(references.normalize_dataset(str(search.get("dataset", ""))))
    papers = [r for r in references.after_training()
              if r.dataset in datasets and (r.model in models or "mixed" in models)]
    blocks: list[Any] = [
        "What the papers do after training, on each search's models: the continuous cache "
        "pointer (Grave et al. 2017; window W, flatness θ, weight λ) tuned on validation for "
        "the best trial (--cache-trials), and greedy ensemble selection with replacement "
        "(Caruana et al. 2004) over the completed trials and re-trainings (--ensemble), with "
        "a cache of its own where it lowers validation perplexity. Every number here is "
        "sequential at batch 1 (so the best trial's validation perplexity may differ a little "
        "from its final_val_ppl, measured at eval_batch_size); cache values and members were "
        "chosen on validation, and test was evaluated once.",
        Table(["Search", "Model", "Val ppl", "Test ppl", "Chosen"], rows,
              {"Search", "Model", "Chosen"})]
    if papers:
        blocks += ["Published:", Table(
            ["Model", "Dataset", "Val ppl", "Test ppl", "Source"],
            [[p.what, p.dataset, fmt_num(p.val_ppl), fmt_num(p.test_ppl), p.citation]
             for p in papers], {"Model", "Dataset", "Source"})]
    return Section("After training: cache and ensembles", blocks)
