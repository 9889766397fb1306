"""Cost against perplexity, per dataset: does a model reach the same perplexity with fewer
parameters, or sooner? (issue 18: "expecting faster training time and a compact model size").

Every trial is a point: its validation perplexity (a completed trial's ``final_val_ppl``, the
best weights evaluated again; a trial ASHA stopped, the lowest it reached, ``best_val_ppl``),
its parameters, and the training seconds it took to get there (its seconds per epoch times the
epoch of its lowest validation perplexity). The Pareto front of
each pair holds the trials no other trial beats on both. At matched perplexity: the level both
models reached (the higher of their best perplexities), and for each model the fewest
parameters and the least time among its trials that reached it; the ratio GRU / LSTM.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports.load import ReportData
from reports.render import Section, Table, fmt_int, fmt_num
from search import schema

SECONDS_TO_BEST = "seconds_to_best"
POINT_COLUMNS = ("search", "model", "dataset", "trial_id", "run_id", "status", "device", "pareto",
                 "val_ppl", schema.NUM_PARAMS, SECONDS_TO_BEST, schema.TRAIN_TOKENS_PER_S,
                 schema.PEAK_MEMORY_MB)
PAIRS = ((schema.NUM_PARAMS, "parameters"), (SECONDS_TO_BEST, "training seconds to reach it"))
COLORS = {"awd_lstm": "#1f77b4", "awd_gru": "#d62728", "zaremba": "#2ca02c"}


def pareto_front(values: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """A mask of the points no other point beats: lower or equal on both, lower on one (both
    minimised); NaN points are never on it."""
    ok = ~(np.isnan(values) | np.isnan(costs))
    front = np.zeros(len(values), dtype=bool)
    for i in np.flatnonzero(ok):
        le = ok & (values <= values[i]) & (costs <= costs[i])
        lt = (values < values[i]) | (costs < costs[i])
        front[i] = not np.any(le & lt)
    return front


def _seconds_to_best(data: ReportData, run: pd.Series) -> float:
    """Training seconds until the epoch of the run's lowest validation perplexity."""
    curve = data.history[data.history["run_id"] == run["run_id"]]
    epochs = run[schema.EPOCHS_RUN]
    per_epoch = run.get(schema.SECONDS_PER_EPOCH, math.nan)
    if (per_epoch is None or math.isnan(per_epoch)) and epochs and not math.isnan(epochs):
        per_epoch = run[schema.TRAIN_SECONDS] / epochs
    if curve.empty or per_epoch is None or math.isnan(per_epoch):
        return math.nan
    best_epoch = int(curve.loc[curve[schema.VAL_PPL].idxmin(), "epoch"])
    return float(per_epoch) * best_epoch


def points(data: ReportData) -> pd.DataFrame:
    """One row per trial with a validation perplexity: what it reached and what it cost."""
    labels = dict(zip(data.searches["search_key"], data.searches["label"], strict=True))
    rows = []
    for _, run in data.trials().iterrows():
        val = run[schema.BEST_VAL_PPL]
        if run["status"] == schema.STATUS_COMPLETED and not math.isnan(run["final_val_ppl"]):
            val = run["final_val_ppl"]
        if val is None or math.isnan(val):
            continue
        rows.append({"search": labels.get(run["search_key"], run["search_key"]),
                     "model": run["model"],
                     "dataset": run["dataset"], "trial_id": run["trial_id"],
                     "run_id": run["run_id"], "status": run["status"],
                     "device": run.get("device", ""), "pareto": bool(run.get("pareto", False)),
                     "val_ppl": float(val),
                     schema.NUM_PARAMS: run[schema.NUM_PARAMS],
                     SECONDS_TO_BEST: _seconds_to_best(data, run),
                     schema.TRAIN_TOKENS_PER_S: run.get(schema.TRAIN_TOKENS_PER_S, math.nan),
                     schema.PEAK_MEMORY_MB: run.get(schema.PEAK_MEMORY_MB, math.nan)})
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def matched(frame: pd.DataFrame, model: str = "awd_gru", base: str = "awd_lstm") -> str:
    """The sentence: at matched perplexity, ``model``'s parameters and time relative to
    ``base``'s, or why there is no match."""
    a, b = frame[frame["model"] == model], frame[frame["model"] == base]
    if a.empty or b.empty:
        missing = model if a.empty else base
        return f"No match: this dataset has no {missing} trial with a validation perplexity."
    level = max(a["val_ppl"].min(), b["val_ppl"].min())
    a, b = a[a["val_ppl"] <= level], b[b["val_ppl"] <= level]
    parts = []
    for col, what in ((schema.NUM_PARAMS, "parameters"), (SECONDS_TO_BEST, "training time")):
        ca, cb = a[col].min(), b[col].min()
        if math.isnan(ca) or math.isnan(cb) or cb <= 0:
            parts.append(f"{what}: not measured")
        else:
            fmt = fmt_int if col == schema.NUM_PARAMS else (lambda v: f"{fmt_num(v)} s")
            parts.append(f"{ca / cb:.2f}x the {what} ({fmt(ca)} against {fmt(cb)})")
    sentence = (f"At matched validation perplexity ({fmt_num(level)}, the level both reached), "
                f"{model} needs {parts[0]} and {parts[1]} of {base}.")
    devices = (set(a["device"]) | set(b["device"])) - {""}
    if "cpu" in devices:
        sentence += (" The times were measured on CPU: they do not answer the GRU question "
                     "for GPUs, where both run through cuDNN's fused kernels at other ratios; "
                     "a GPU search does.")
    elif len(devices) > 1:
        sentence += f" The trials ran on different devices ({', '.join(sorted(devices))})."
    return sentence


def _front_table(frame: pd.DataFrame, cost: str) -> Table:
    front = frame[pareto_front(frame["val_ppl"].to_numpy(float), frame[cost].to_numpy(float))]
    return _table(front.sort_values("val_ppl"))


def _table(front: pd.DataFrame) -> Table:
    rows = [[r["model"], r["search"], r["trial_id"], fmt_num(r["val_ppl"]),
             fmt_int(r[schema.NUM_PARAMS]), fmt_num(r[SECONDS_TO_BEST]),
             fmt_num(r[schema.TRAIN_TOKENS_PER_S]), fmt_num(r[schema.PEAK_MEMORY_MB]),
             r["device"] or "—"] for _, r in front.iterrows()]
    return Table(["Model", "Search", "Trial", "Val ppl", "Params", "Seconds to reach",
                  "Tokens/s", "Peak MB", "Device"], rows,
                 {"Model", "Search", "Trial", "Device"})


def _plot(frame: pd.DataFrame, dataset: str, out: Path) -> Path:
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, (col, label) in zip(fig.subplots(1, 2), PAIRS, strict=True):
        for model, group in frame.groupby("model"):
            ax.scatter(group[col], group["val_ppl"], s=18, alpha=0.7,
                       color=COLORS.get(str(model), "#7f7f7f"), label=str(model))
        mask = pareto_front(frame["val_ppl"].to_numpy(float), frame[col].to_numpy(float))
        front = frame[mask].sort_values(col)
        ax.step(front[col], front["val_ppl"], where="post", color="black", lw=1,
                label="Pareto front")
        own = frame[frame["pareto"]]
        if not own.empty:
            ax.scatter(own[col], own["val_ppl"], s=80, facecolors="none", edgecolors="black",
                       label="the search's front (--objectives)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation perplexity")
        ax.legend(fontsize=8)
    fig.suptitle(f"{dataset}: validation perplexity against cost")
    path = out / f"cost_{dataset}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
    return path


def section(data: ReportData, out: Path) -> Section | None:
    from reports.plots import Plot

    frame = points(data)
    if frame.empty:
        return None
    blocks: list = [
        "Each trial: its validation perplexity (a completed trial's final one; a stopped "
        "trial's lowest), its parameters and the training seconds it took to reach its lowest "
        "(seconds per epoch × that epoch). Pareto front: "
        "the trials no other trial beats on both (lower perplexity and lower cost). Tokens/s: "
        "mean training speed; Peak MB: the CUDA allocator's peak on a GPU, the process's peak "
        "resident memory on CPU."]
    for dataset, group in frame.groupby("dataset", sort=True):
        blocks.append(f"**{dataset}**: {len(group)} trials. "
                      + matched(group.reset_index(drop=True)))
        for col, label in PAIRS:
            blocks += [f"Pareto front of (validation perplexity, {label}):",
                       _front_table(group.reset_index(drop=True), col)]
        own = group[group["pareto"]]
        if not own.empty:
            blocks += ["The searches' own Pareto fronts (`--objectives`: Optuna's best_trials "
                       "over completed trials, tagged `awdsearch.pareto`; circled in the plot):",
                       _table(own.sort_values(["search", "val_ppl"]))]
        path = _plot(group.reset_index(drop=True), str(dataset), out)
        blocks.append(Plot(path, f"{dataset}: cost against perplexity",
                           "Every trial; the black steps are the Pareto fronts."))
    return Section("Cost against perplexity", blocks)

