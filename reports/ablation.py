"""The ablation section: per search, its winner re-trained with each of the AWD-LSTM paper's
Table 4 removals (``--ablate``, `search.stages.ablate`), mean ± std over the seeds, the change
against the winner, Table 4's change beside it, and whether it is beyond seed noise.

The runs are the ablation runs (role ``ablation``) as `reports.load` read them; the winner's own
row is the ablation's ``full`` row, or the confirmation's re-trainings of the winner when the
search had ``--confirm-top`` (same seeds). The statistics are `search.stages.ablate.summarize`:
the rule the search itself applied. When several models were ablated (an LSTM and a GRU search),
a second table sets their changes side by side.
"""

from __future__ import annotations

import math

from awd.ablation import ROWS, paper_change
from reports.confirmation import confirmations
from reports.load import ReportData
from reports.render import Section, Table, fmt_num
from search import schema
from search.stages.ablate import FULL, Ablation, full_from_confirmation, summarize
from search.stages.confirm import ALPHA


def ablations(data: ReportData) -> list[tuple[str, Ablation]]:
    """(search label, its winner's ablation) per search that has ablation runs."""
    runs = data.runs[data.runs["role"] == schema.ROLE_ABLATION]
    if runs.empty:
        return []
    confirmed = {label: c for label, c, _ in confirmations(data)}
    out = []
    for key, group in runs.groupby("search_key", sort=False):
        records = [{**r, "row": r["ablation"], "seed": int(float(r["seed"] or 0))}
                   for r in group.to_dict("records") if r["ablation"] in (FULL, *ROWS)]
        if not records:
            continue
        label = data.searches.loc[data.searches["search_key"] == key, "label"]
        name = str(label.iloc[0]) if not label.empty else str(key)
        winner = str(records[0]["ablation_of"])
        full = None
        if not any(r["row"] == FULL for r in records):
            full = full_from_confirmation(confirmed.get(name), winner)
        first = records[0]
        out.append((name, summarize(records, winner=winner, model=str(first["model"]),
                                    dataset=str(first["dataset"]), full=full)))
    return out


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return fmt_num(mean) + ("" if math.isnan(std) else f" ± {fmt_num(std)}")


def _signed(value: float | None, digits: int = 2) -> str:
    return "" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def _noise(row: dict) -> str:
    return row["verdict"] or "—"


def section(data: ReportData) -> Section | None:
    found = ablations(data)
    if not found:
        return None
    blocks: list = [
        "Each search's winner re-trained with one technique removed (the AWD-LSTM paper's "
        "Table 4; what each row changes: `awd/ablation.py`), on new seeds, the full epoch "
        "budget. Δ: the row's mean minus the winner's; the paper's Δ is Table 4's (against its "
        "fine-tuned model, at its own scale). Beyond noise: a one-sided Welch's t-test on the "
        f"validation perplexities, Holm-adjusted over the rows, p < {ALPHA}, either way: "
        "worse (the removal hurts) or better (it helps)."]
    rows = []
    for name, a in found:
        for r in a.rows_dicts():
            full = r["row"] == FULL
            rows.append([a.model, name, r["label"], r["change"] or "—",
                         _pm(r["val_ppl_mean"], r["val_ppl_std"]),
                         _pm(r["test_ppl_mean"], r["test_ppl_std"]),
                         "" if full else _signed(r["delta_val"]),
                         "" if full else _signed(r["paper_delta_val"], 1),
                         "" if full else _signed(r["delta_test"]),
                         "" if full else _signed(r["paper_delta_test"], 1),
                         "" if full else _noise(r), f"{r['completed']}/{r['runs']}"])
    blocks.append(Table(["Model", "Search", "Removed", "Change", "Val ppl", "Test ppl", "Δ val",
                         "Paper Δ val", "Δ test", "Paper Δ test", "Beyond noise", "Seeds"],
                        rows, {"Model", "Search", "Removed", "Change", "Beyond noise", "Seeds"}))
    blocks.append("A row is missing where the winner does not use the technique (the "
                  "search's log and `ablation.json` on its parent run say which).")
    if len({a.model for _, a in found}) > 1:
        blocks += ["The models side by side (Δ val; * beyond seed noise):", _side_by_side(found)]
    return Section("Ablation of the winners", blocks)


def _side_by_side(found: list[tuple[str, Ablation]]) -> Table:
    """Δ val per row, one column per ablated search (LSTM beside GRU), the paper's last."""
    names = [f"{a.model} ({name})" for name, a in found]
    by_row: dict[str, list[str]] = {}
    for i, (_, a) in enumerate(found):
        for r in a.rows_dicts()[1:]:
            cells = by_row.setdefault(r["row"], [""] * len(found))
            star = "*" if r["beyond_noise"] else ""
            cells[i] = _signed(r["delta_val"]) + star
    dataset = found[0][1].dataset
    rows = []
    for row in ROWS:
        if row in by_row:
            change = paper_change(row, dataset)
            rows.append([f"– {ROWS[row].label}", *by_row[row],
                         _signed(change[0], 1) if change else ""])
    return Table(["Removed", *[f"Δ val {n}" for n in names], "Paper Δ val"], rows,
                 {"Removed"})
