"""The report's figures as PNG files (matplotlib, Agg backend, no pyplot global state)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, Locator, MaxNLocator, NullFormatter

from reports.importance import OBJECTIVE, Importance
from reports.load import ReportData
from reports.params import DROPOUT_AND_SIZE, parse_value
from search import schema

DPI = 110
TOP_CURVES = 3
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
          "#17becf", "#7f7f7f", "#bcbd22")


@dataclass(frozen=True)
class Plot:
    """A written PNG and what it shows."""

    path: Path
    title: str
    caption: str


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "search"


class _PplLocator(Locator):
    """Log-axis ticks at round perplexities (100, 150, 200, ...): the coarsest set of mantissas
    that puts at least 4 ticks in view; linear round ticks where even the finest set cannot
    (short ranges such as 1050 to 1500)."""

    SUBS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0),
            (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))

    def __call__(self) -> list[float]:
        assert self.axis is not None, "a locator is used on an axis"
        vmin, vmax = self.axis.get_view_interval()
        return self.tick_values(vmin, vmax)

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        vmin, vmax = sorted((max(vmin, 1e-9), max(vmax, 1e-9)))
        decades = range(math.floor(math.log10(vmin)), math.ceil(math.log10(vmax)) + 1)
        ticks: list[float] = []
        for subs in self.SUBS:
            ticks = [m * 10.0**d for d in decades for m in subs if vmin <= m * 10.0**d <= vmax]
            if len(ticks) >= 4:
                return ticks
        return [t for t in MaxNLocator(5).tick_values(vmin, vmax) if vmin <= t <= vmax]


def _log_ppl(ax: Axes, label: str) -> None:
    """A log-scale perplexity y axis with plain, round tick labels."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(_PplLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(label)
    ax.grid(True, which="major", alpha=0.3)


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


def _ranked(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials best first: by final val ppl where there is one, else lowest val ppl reached."""
    key = trials["final_val_ppl"].fillna(trials["best_val_ppl"])
    return trials.assign(_rank=key).dropna(subset=["_rank"]).sort_values("_rank")


def learning_curves(data: ReportData, out: Path, top: int = TOP_CURVES) -> Plot | None:
    """val_ppl per epoch of the best ``top`` trials of each model (per search), with the
    NT-ASGD trigger epoch marked."""
    trials = data.trials()
    trials = trials[trials["run_id"].isin(data.history["run_id"])]
    if trials.empty:
        return None
    models = sorted(trials["model"].unique())
    fig = _figure(6.0 * len(models), 4.4)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    several = data.searches["search_key"].nunique() > 1
    for ax, model in zip(axes, models, strict=True):
        color = iter(COLORS * 4)
        for key, group in trials[trials["model"] == model].groupby("search_key", sort=False):
            label = data.searches.loc[data.searches["search_key"] == key, "label"]
            for _, trial in _ranked(group).head(top).iterrows():
                c = next(color)
                curve = data.history[data.history["run_id"] == trial["run_id"]]
                curve = curve.sort_values("epoch")
                name = f"{trial['trial_id'] or trial['run_name']} ({trial['status']})"
                if several and not label.empty:
                    name = f"{label.iloc[0]}: {name}"
                ax.plot(curve["epoch"], curve["val_ppl"], color=c, lw=1.6, marker=".",
                        label=name)
                trigger = trial["ntasgd_trigger_epoch"]
                if not math.isnan(trigger):
                    ax.axvline(trigger, color=c, ls="--", lw=1, alpha=0.8)
                    at = curve[curve["epoch"] == trigger]["val_ppl"]
                    if not at.empty:
                        ax.plot([trigger], [at.iloc[0]], marker="v", ms=10, color=c, mec="black")
        _log_ppl(ax, "validation perplexity")
        ax.set_title(model)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="gray", ls="--", marker="v", mec="black"))
        labels.append("NT-ASGD trigger epoch")
        ax.legend(handles, labels, fontsize=8)
    fig.suptitle(f"Learning curves: best {top} trials per model")
    return Plot(_save(fig, out / "learning_curves.png"), "Learning curves",
                f"Validation perplexity per epoch of the best {top} trials of each model "
                "(log scale). Dashed line and triangle: the epoch NT-ASGD switched to averaging.")


def _time_axis(hours: float) -> tuple[float, str]:
    if hours >= 2:
        return 1.0, "hours"
    if hours * 60 >= 2:
        return 60.0, "minutes"
    return 3600.0, "seconds"


def progress(data: ReportData, out: Path) -> Plot | None:
    """Best-so-far validation perplexity against trial index and against wall-clock time."""
    if data.trials().empty:
        return None
    fig = _figure(12, 4.4)
    by_index, by_time = fig.subplots(1, 2)
    spans = []
    for _, search in data.searches.iterrows():
        ids = data.trials(search["search_key"])["run_id"]
        stamps = data.history[data.history["run_id"].isin(ids)]["timestamp"]
        if not stamps.empty:
            spans.append((stamps.max() - search["start_time"]) / 3.6e6)
    scale, unit = _time_axis(max(spans, default=0.0))
    for c, (_, search) in zip(COLORS * 4, data.searches.iterrows(), strict=False):
        trials = data.trials(search["search_key"]).sort_values(["start_time", "trial_id"])
        if trials.empty:
            continue
        index = np.arange(1, len(trials) + 1)
        values = trials["best_val_ppl"].to_numpy(dtype=float)
        best = pd.Series(values).cummin().ffill().to_numpy()
        by_index.scatter(index, values, color=c, alpha=0.35, s=18)
        by_index.step(index, best, where="post", color=c, lw=2, label=search["label"])
        curve = data.history[data.history["run_id"].isin(trials["run_id"])]
        curve = curve.sort_values("timestamp")
        if curve.empty:
            continue
        t = (curve["timestamp"].to_numpy() - search["start_time"]) / 3.6e6 * scale
        by_time.step(np.r_[0.0, t], np.r_[np.nan, curve["val_ppl"].cummin().to_numpy()],
                     where="post", color=c, lw=2, label=search["label"])
    for ax in (by_index, by_time):
        _log_ppl(ax, "best validation perplexity so far")
        ax.legend(fontsize=8)
    by_index.set_xlabel("trial (order of start)")
    by_index.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_index.set_title("Best so far by trial (dots: each trial's lowest val ppl)")
    by_time.set_xlabel(f"wall-clock {unit} since search start")
    by_time.set_title("Best so far by wall-clock time")
    return Plot(_save(fig, out / "progress.png"), "Search progress",
                "Best validation perplexity so far, by trial in order of start (left) and by "
                "wall-clock time since the search started, over every epoch reported (right).")


def importance_bars(results: list[Importance], out: Path) -> list[Plot]:
    """One bar chart per search: the importance of each varying param, per group."""
    plots = []
    for search in dict.fromkeys(r.search for r in results):
        groups = [r for r in results if r.search == search and r.importances]
        if not groups:
            continue
        fig = _figure(5.0 * len(groups), 1.2 + 0.35 * max(len(g.importances) for g in groups))
        axes = fig.subplots(1, len(groups), squeeze=False)[0]
        for ax, group in zip(axes, groups, strict=True):
            names = list(group.importances)[::-1]
            ax.barh(names, [group.importances[n] for n in names], color=COLORS[0])
            ax.set_title(f"{group.model} ({group.n_trials} trials)")
            ax.set_xlabel("importance (PED-ANOVA, normalised)")
            ax.grid(True, axis="x", alpha=0.3)
        fig.suptitle(f"Hyperparameter importance: {search}")
        name = f"importance_{slug(search)}.png"
        plots.append(Plot(_save(fig, out / name), f"Importance: {search}",
                          f"Optuna PED-ANOVA importances; objective: {OBJECTIVE}."))
    return plots


def slices(data: ReportData, out: Path) -> list[Plot]:
    """Per search: each dropout rate and the embedding size against perplexity."""
    plots = []
    markers = {schema.STATUS_COMPLETED: "o", schema.STATUS_STOPPED: "x"}
    for _, search in data.searches.iterrows():
        finished = data.finished(search["search_key"])
        finished = finished[finished["best_val_ppl"].notna()]
        names = [n for n in DROPOUT_AND_SIZE if any(n in p for p in finished["params"])]
        if finished.empty or not names:
            continue
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig = _figure(max(4.2 * cols, 7.0), 3.3 * rows + 0.6)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        models = sorted(finished["model"].unique())
        colors = dict(zip(models, COLORS, strict=False))
        best = finished.loc[finished["best_val_ppl"].idxmin()]
        for i, (ax, name) in enumerate(zip(axes, names, strict=False)):
            for _, trial in finished.iterrows():
                if name not in trial["params"]:
                    continue
                x = parse_value(trial["params"][name])
                ax.scatter([x], [trial["best_val_ppl"]], color=colors[trial["model"]],
                           marker=markers.get(trial["status"], "o"), s=30)
            if name in best["params"]:
                ax.scatter([parse_value(best["params"][name])], [best["best_val_ppl"]], marker="*",
                           s=220, facecolor="none", edgecolor="black", lw=1.2)
            _log_ppl(ax, "lowest val ppl" if i % cols == 0 else "")
            ax.set_xlabel(name)
        for ax in axes[len(names):]:
            ax.set_visible(False)
        handles = [Line2D([], [], color=colors[m], marker="o", ls="", label=m) for m in models]
        handles += [Line2D([], [], color="gray", marker="x", ls="", label="stopped early"),
                    Line2D([], [], marker="*", ms=12, mfc="none", mec="black", ls="",
                           label="best")]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
        fig.suptitle(f"Regularisation and embedding size vs perplexity: {search['label']}")
        name = f"slice_{slug(search['label'])}.png"
        plots.append(Plot(_save(fig, out / name), f"Slice plot: {search['label']}",
                          "Each finished trial's lowest validation perplexity against each "
                          "dropout rate and the embedding size (o completed, x stopped early, "
                          "star: best)."))
    return plots
