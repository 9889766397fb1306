"""The report's figures as PNG files (matplotlib, Agg backend, no pyplot global state)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, Locator, MaxNLocator, NullFormatter
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from reports.importance import EVALUATOR, OBJECTIVE, SOURCE_MLFLOW, Analysis
from reports.load import TRAIN_PPL, ReportData
from reports.tables import ranked, search_best
from search import schema

DPI = 110
TOP_CURVES = 8  # trials per model in a learning-curve panel: one colour each
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


def _round_ticks(axis: Axis) -> None:
    """Plain, round tick labels (100, 150, 200 ...) on a log-scale axis, no minor labels."""
    axis.set_major_locator(_PplLocator())
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_ppl(ax: Axes, label: str) -> None:
    """A log-scale perplexity y axis with plain, round tick labels."""
    ax.set_yscale("log")
    _round_ticks(ax.yaxis)
    ax.set_ylabel(label)
    ax.grid(True, which="major", alpha=0.3)


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


def learning_curves(data: ReportData, out: Path, top: int = TOP_CURVES) -> list[Plot]:
    """Per search, one panel per model: train (dashed) and validation (solid) perplexity per
    epoch of the model's best ``top`` trials, one colour per trial; its best trial drawn thick,
    the NT-ASGD trigger epoch marked."""
    plots = []
    for _, search in data.searches.iterrows():
        trials = data.trials(search["search_key"])
        trials = ranked(trials[trials["run_id"].isin(data.history["run_id"])])
        if trials.empty:
            continue
        best = search_best(data, search)
        models = sorted(trials["model"].unique())
        fig = _figure(6.0 * len(models), 4.6)
        axes = fig.subplots(1, len(models), squeeze=False)[0]
        for ax, model in zip(axes, models, strict=True):
            mine = trials[trials["model"] == model]
            for i, (c, (_, trial)) in enumerate(zip(COLORS, mine.head(top).iterrows(),
                                                    strict=False)):
                star = best is not None and trial["run_id"] == best["run_id"]
                _trial_curves(ax, data, trial, c, thick=i == 0 and trial["rank"] > 0,
                              star=star)
            _log_ppl(ax, "perplexity")
            shown = min(top, len(mine))
            ax.set_title(f"{model}: best {shown} of {len(mine)} trials", fontsize=10)
            ax.set_xlabel("epoch")
            last = data.history[data.history["run_id"].isin(mine["run_id"])]["epoch"].max()
            ax.set_xlim(0.5, max(float(last), 1.0) + 0.5)  # whole epochs even when only one
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            handles, labels = ax.get_legend_handles_labels()
            handles += [Line2D([], [], color="gray", lw=1.6, marker="."),
                        Line2D([], [], color="gray", ls="--", lw=1.2, marker="x", ms=4),
                        Line2D([], [], color="gray", ls="", marker="v", mec="black")]
            labels += ["validation", "train", "NT-ASGD trigger epoch"]
            ax.legend(handles, labels, fontsize=7)
        fig.suptitle(f"Learning curves: {search['label']}")
        plots.append(Plot(_save(fig, out / f"learning_curves_{slug(search['label'])}.png"),
                          f"Learning curves: {search['label']}",
                          f"Train (dashed) and validation (solid) perplexity per epoch of the "
                          f"best {top} trials of each model (log scale), one colour per trial; "
                          "thick: the model's best trial (★: the search's best). Triangle: the "
                          "epoch NT-ASGD switched to averaging."))
    return plots


def _trial_curves(ax: Axes, data: ReportData, trial: pd.Series, color: str, thick: bool,
                  star: bool) -> None:
    """One trial's validation and train perplexity per epoch, in one colour."""
    curve = data.history[data.history["run_id"] == trial["run_id"]].sort_values("epoch")
    name = f"{'★ ' if star else ''}{trial['trial_id'] or trial['run_name']} ({trial['status']})"
    width = 2.8 if thick else 1.3
    ax.plot(curve["epoch"], curve[schema.VAL_PPL], color=color, lw=width, marker=".",
            label=name, zorder=3 if thick else 2)
    train = curve[curve[TRAIN_PPL].notna()]
    ax.plot(train["epoch"], train[TRAIN_PPL], color=color, lw=width * 0.7, ls="--", marker="x",
            ms=4, zorder=3 if thick else 2)
    trigger = trial[schema.NTASGD_TRIGGER_EPOCH]
    at = curve[curve["epoch"] == trigger][schema.VAL_PPL]
    if not math.isnan(trigger) and not at.empty:
        ax.plot([trigger], [at.iloc[0]], marker="v", ms=9, color=color, mec="black", zorder=4)


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


def importance_bars(analyses: list[Analysis], out: Path) -> list[Plot]:
    """One bar chart per search: the importance of each evaluated param, per group."""
    plots = []
    for analysis in analyses:
        groups = [g for g in analysis.groups if g.importances]
        if not groups:
            continue
        fig = _figure(5.0 * len(groups), 1.4 + 0.35 * max(len(g.importances) for g in groups))
        axes = fig.subplots(1, len(groups), squeeze=False)[0]
        for ax, group in zip(axes, groups, strict=True):
            names = list(group.importances)[::-1]
            ax.barh(names, [group.importances[n] for n in names], color=COLORS[0])
            ax.set_title(group.label, fontsize=10)
            ax.set_xlabel(f"importance ({EVALUATOR}, normalised)")
            ax.grid(True, axis="x", alpha=0.3)
        fig.suptitle(f"Hyperparameter importance: {analysis.search}{_source(analysis)}")
        name = f"importance_{slug(analysis.search)}.png"
        plots.append(Plot(_save(fig, out / name), f"Importance: {analysis.search}",
                          f"Optuna {EVALUATOR} importances per model (and pooled over the params "
                          f"every model shares, plus model); objective: {OBJECTIVE}. "
                          f"Source: {analysis.origin}."))
    return plots


def _source(analysis: Analysis) -> str:
    return " (reconstructed from MLflow params)" if analysis.source == SOURCE_MLFLOW else ""


def _categories(dist: BaseDistribution) -> list[str] | None:
    if isinstance(dist, CategoricalDistribution):
        return [str(c) for c in dist.choices]
    return None


def _is_log(dist: BaseDistribution) -> bool:
    return isinstance(dist, (FloatDistribution, IntDistribution)) and dist.log


def slice_params(analysis: Analysis) -> dict[str, BaseDistribution]:
    """Every param any model of the search sampled, in the order the space samples them."""
    params: dict[str, BaseDistribution] = {}
    for group in analysis.models:
        for name, dist in group.searched.items():
            params.setdefault(name, dist)
    return params


def slices(analyses: list[Analysis], out: Path) -> list[Plot]:
    """Per search, one panel per searched param: each trial's best val ppl at its model's common
    budget against the param's value, one colour per model."""
    plots = []
    markers = {schema.STATUS_COMPLETED: "o", schema.STATUS_STOPPED: "x"}
    for analysis in analyses:
        params = slice_params(analysis)
        groups = [g for g in analysis.models if g.compared]
        if not params or not groups:
            continue
        cols = min(4, len(params))
        rows = math.ceil(len(params) / cols)
        fig = _figure(max(3.6 * cols, 7.0), 3.0 * rows + 0.8)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        colors = dict(zip([g.model for g in analysis.models], COLORS, strict=False))
        for i, (ax, (name, dist)) in enumerate(zip(axes, params.items(), strict=False)):
            choices = _categories(dist)
            for group in groups:
                shown = [p for p in group.compared if name in p.params]
                for status, marker in markers.items():
                    these = [p for p in shown if p.status == status]
                    xs = [choices.index(str(p.params[name])) if choices
                          and str(p.params[name]) in choices else p.params[name] for p in these]
                    ax.scatter(xs, [group.value(p) for p in these], color=colors[group.model],
                               marker=marker, s=30)
            if choices:
                ax.set_xticks(range(len(choices)), choices, rotation=30, ha="right", fontsize=8)
                ax.set_xlim(-0.5, len(choices) - 0.5)
            elif _is_log(dist):
                ax.set_xscale("log")
                _round_ticks(ax.xaxis)
            _log_ppl(ax, "best val ppl at budget" if i % cols == 0 else "")
            ax.set_xlabel(name)
        for ax in axes[len(params):]:
            ax.set_visible(False)
        handles = [Line2D([], [], color=colors[g.model], marker="o", ls="",
                          label=f"{g.model} ({g.budget})") for g in groups]
        handles.append(Line2D([], [], color="gray", marker="x", ls="", label="stopped early"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
                   fontsize=8)
        fig.suptitle(f"Slices: every searched parameter vs perplexity: "
                     f"{analysis.search}{_source(analysis)}")
        name = f"slice_{slug(analysis.search)}.png"
        plots.append(Plot(_save(fig, out / name), f"Slice plot: {analysis.search}",
                          "One panel per searched parameter: each finished trial's best "
                          "validation perplexity up to its model's common budget (the epoch in "
                          "the legend) against the parameter's value (o completed, x stopped "
                          f"early by ASHA, at that epoch or later). Source: {analysis.origin}."))
    return plots


def _unit(dist: BaseDistribution, value: Any) -> float:
    """A param value placed on [0, 1] along its distribution (log where it is sampled so)."""
    choices = _categories(dist)
    if choices is not None:
        return choices.index(str(value)) / (len(choices) - 1) if len(choices) > 1 else 0.5
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    low, high, v = float(dist.low), float(dist.high), float(value)
    if dist.log:
        low, high, v = math.log(low), math.log(high), math.log(v)
    return min(1.0, max(0.0, (v - low) / (high - low))) if high > low else 0.5


def _ends(dist: BaseDistribution) -> list[tuple[float, str]]:
    """Tick positions and labels of one parallel axis."""
    choices = _categories(dist)
    if choices is not None:
        return [(_unit(dist, c), c) for c in choices]
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    return [(0.0, f"{dist.low:g}"), (1.0, f"{dist.high:g}")]


def parallel_coordinates(analyses: list[Analysis], out: Path) -> list[Plot]:
    """Per search, one row per model: each finished trial as a line across its searched params
    and the objective at the model's common budget (colour: the objective, dark is best)."""
    plots = []
    # viridis without its pale yellow end: every line stays visible on white; dark is best
    cmap = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, 256)))
    for analysis in analyses:
        groups = [g for g in analysis.models if len(g.compared) >= 2 and g.params]
        if not groups:
            continue
        width = max(8.0, 1.5 * (1 + max(len(g.params) for g in groups)) + 2.0)
        fig = _figure(width, 3.4 * len(groups) + 0.6)
        axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
        for ax, group in zip(axes, groups, strict=True):
            names = list(group.params)
            values = [group.value(p) for p in group.compared]
            low, high = min(values), max(values)
            norm = LogNorm(low, high if high > low else low * 1.001)
            x = np.arange(len(names) + 1)
            reached = {p.number for p in group.compared}
            for p in group.points:
                if p.number in reached:
                    continue
                ax.plot(x[:-1], [_unit(group.params[n], p.params[n]) for n in names],
                        color="0.75", lw=1, ls="--", zorder=1)
            order = sorted(group.compared, key=group.value, reverse=True)
            for rank, p in enumerate(order):
                value = group.value(p)
                ys = [_unit(group.params[n], p.params[n]) for n in names]
                ys.append(float(norm(value)) if high > low else 0.5)
                best = rank == len(order) - 1
                ax.plot(x, ys, color=cmap(float(norm(value))), lw=2.6 if best else 1.4,
                        alpha=0.95, zorder=3 if best else 2, marker="o", ms=3)
            for i, name in enumerate(names):
                ax.axvline(i, color="black", lw=0.8, zorder=0)
                for y, text in _ends(group.params[name]):
                    ax.text(i + 0.04, y, text, fontsize=7, va="center", ha="left")
            ax.axvline(len(names), color="black", lw=0.8, zorder=0)
            ax.text(len(names) + 0.04, 0.0, f"{low:.1f}", fontsize=7, va="center")
            ax.text(len(names) + 0.04, 1.0, f"{high:.1f}", fontsize=7, va="center")
            ax.set_xticks(x, [*names, f"val ppl @ epoch {group.step}"], fontsize=9)
            ax.set_yticks([])
            ax.set_ylim(-0.08, 1.08)
            ax.set_xlim(-0.2, len(names) + 0.5)
            for side in ("top", "right", "left"):
                ax.spines[side].set_visible(False)
            stopped = (f" (grey dashed: stopped before epoch {group.step})"
                       if len(reached) < len(group.points) else "")
            ax.set_title(f"{group.model}: {group.budget}{stopped}", fontsize=10)
            bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01,
                               label=f"best val ppl at epoch {group.step}")
            _round_ticks(bar.ax.yaxis)
        fig.suptitle(f"Parallel coordinates of the finished trials: "
                     f"{analysis.search}{_source(analysis)}")
        name = f"parallel_{slug(analysis.search)}.png"
        plots.append(Plot(_save(fig, out / name), f"Parallel coordinates: {analysis.search}",
                          "Each finished trial of a model as a line across its searched "
                          "parameters (log axes where sampled on a log scale) and its best "
                          "validation perplexity at the model's common budget; colour: that "
                          "perplexity (darkest best, thick: the best trial); grey dashed: trials "
                          f"stopped before that epoch. Source: {analysis.origin}."))
    return plots
