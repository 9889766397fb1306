"""Build a report: MLflow -> frames -> tables and figures -> report.md / report.html, and log
them on each search's parent run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from awd.errors import first_line
from reports import ablation, importance, plots, references, tables, trials
from reports.after import section as after_section
from reports.confirmation import section as confirmation_section
from reports.cost import section as cost_section
from reports.load import ReportData, load
from reports.render import (
    Block,
    Cell,
    Document,
    Link,
    Section,
    Table,
    fmt_gap,
    fmt_int,
    fmt_num,
    fmt_params,
    to_html,
    to_markdown,
)
from search.tracking.conventions import without_credentials

ARTIFACT_PATH = "report"
SUMMARY_CSV = "summary.csv"


@dataclass
class Result:
    """What was written, where it was logged, and the input problems found (exit 2 if any)."""

    out_dir: Path
    files: list[Path]
    logged_to: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def searches_table(data: ReportData) -> Table:
    frame = tables.searches(data)
    cols = ["Search", "Space", "Dataset", "Models", "Started (UTC)", "Wall h", "Trials",
            "Completed", "Stopped early", "Failed", "Running", "Interrupted", "GPU-h", "Best val",
            "Best test",
            "Best model", "Parent run"]
    rows = [[r["search"], r["space"] or "—", r["dataset"] or "—", r["models"],
             r["started"].strftime("%Y-%m-%d %H:%M"), fmt_num(r["wall_hours"]),
             fmt_int(r["trials"]), fmt_int(r["completed"]), fmt_int(r["stopped_early"]),
             fmt_int(r["failed"]), fmt_int(r["running"]), fmt_int(r["interrupted"]),
             fmt_num(r["gpu_hours"], 3), fmt_num(r["best_val_ppl"]),
             fmt_num(r["best_test_ppl"]), r["best_model"] or "—",
             _run_cell(data, r["experiment_id"], r["parent_run_id"])]
            for _, r in frame.iterrows()]
    return Table(cols, rows, {"Search", "Space", "Dataset", "Models", "Started (UTC)",
                              "Best model", "Parent run"})


def _run_cell(data: ReportData, experiment_id: str, run_id: str) -> Cell:
    """A run id, short, linked to its page (`reports.trials.run_url`)."""
    if not run_id:
        return "—"
    return Link(run_id[:12], trials.run_url(data.tracking_uri, experiment_id, run_id))


def _best_tables(summary: pd.DataFrame) -> tuple[Table, Table, list[str]]:
    """Best trial vs published, trials and cost, and the numbered citations."""
    citations: list[str] = []
    best_rows, cost_rows = [], []
    for _, r in summary.iterrows():
        ref = ""
        if r["reference"]:
            if r["reference"] not in citations:
                citations.append(r["reference"])
            ref = f"[{citations.index(r['reference']) + 1}]"
        model = r["model"] + (f" ({r['preset']})" if r["preset"] else "")
        best_rows.append([
            model, r["dataset"], r["search"], fmt_num(r["best_final_val_ppl"]),
            fmt_num(r["best_final_test_ppl"]), fmt_num(r["ref_val_ppl"], 1),
            fmt_num(r["ref_test_ppl"], 1), fmt_gap(r["gap_val_ppl"], r["ref_val_ppl"]),
            fmt_gap(r["gap_test_ppl"], r["ref_test_ppl"]), fmt_params(r["best_num_params"]),
            fmt_int(r["best_epochs_run"]), fmt_int(r["best_ntasgd_trigger_epoch"]),
            r["best_trial_id"] or "—", ref or "—", r["note"]])
        cost_rows.append([
            model, r["dataset"], r["search"], fmt_int(r["trials"]), fmt_int(r["completed"]),
            fmt_int(r["stopped_early"]), fmt_int(r["failed"]), fmt_int(r["running"]),
            fmt_int(r["interrupted"]), fmt_num(r["gpu_hours"], 3), fmt_num(r["train_hours"], 3)])
    best = Table(["Model", "Dataset", "Search", "Val ppl", "Test ppl", "Published val",
                  "Published test", "Gap val", "Gap test", "Params", "Epochs run",
                  "NT-ASGD trigger", "Best trial", "Ref", "Note"], best_rows,
                 {"Model", "Dataset", "Search", "Best trial", "Ref", "Note"})
    cost = Table(["Model", "Dataset", "Search", "Trials", "Completed", "Stopped early", "Failed",
                  "Running", "Interrupted", "GPU-h", "Train h"], cost_rows,
                 {"Model", "Dataset", "Search"})
    return best, cost, [f"[{i}] {c}" for i, c in enumerate(citations, 1)]


def _importance_section(analyses: list[importance.Analysis], out: Path) -> Section:
    section = Section("Hyperparameter importance", [
        f"Optuna's {importance.EVALUATOR} evaluator, per search and per model: each model's "
        "finished trials on its own searched parameters, with the distributions of the "
        "search's Optuna study; a search of several models also pooled, over the parameters "
        "every trial has with the same distribution, plus model. Trials are compared at one "
        f"budget per group (objective: {importance.OBJECTIVE}); each column header gives that "
        f"epoch and how many trials reached it. At least {importance.MIN_TRIALS} finished "
        "trials per group."])
    if not analyses:
        section.blocks.append("No finished trials: nothing to evaluate.")
    for analysis in analyses:
        section.blocks.append(f"{analysis.search}: {analysis.origin}.")
        ranked = [g for g in analysis.groups if g.importances]
        theirs = analysis.optuna_default
        if ranked or theirs:
            names = list(dict.fromkeys(n for g in ranked for n in g.importances))
            names += [n for n in theirs if n not in names and theirs[n] > 0]
            rows = [[n, *[fmt_num(g.importances[n], 3) if n in g.importances else "—"
                          for g in ranked],
                     *([fmt_num(theirs[n], 3) if n in theirs else "—"] if theirs else [])]
                    for n in names]
            own = [f"{importance.OPTUNA_DEFAULT}: Optuna's default (completed trials)"]
            section.blocks.append(Table(["Parameter", *[g.label for g in ranked],
                                         *(own if theirs else [])], rows, {"Parameter"}))
        lines = [f"{analysis.search}: {note}" for note in analysis.notes]
        lines += [f"{analysis.search}: {text}" for text in (
            analysis.comparison, analysis.reliability(), analysis.left_out_line()) if text]
        lines += [f"{analysis.search} · {g.model}: {g.message}" for g in analysis.groups
                  if g.message]
        if lines:
            section.blocks.append(lines)
    section.blocks.extend(plots.importance_bars(analyses, out))
    return section


def data_quality_section(data: ReportData) -> Section | None:
    """Runs whose per-epoch metrics have gaps, named where nobody can miss them."""
    if not data.data_quality:
        return None
    return Section("Data quality", [
        "These runs miss per-epoch metrics in MLflow (a tracking outage not written "
        "afterwards): their curves and per-epoch comparisons are incomplete. `python -m "
        "search.run --resume` writes the missing epochs from Ray's results.",
        data.data_quality], "problems")


def _failures_section(data: ReportData) -> Section | None:
    frame = tables.failures(data)
    if frame.empty:
        return None
    rows = [[r["search"], r["trial_id"], r["model"], fmt_int(r["epochs_run"]), r["failure"]]
            for _, r in frame.iterrows()]
    return Section("Failed trials", [Table(["Search", "Trial", "Model", "Epochs run", "Reason"],
                                           rows, {"Search", "Trial", "Model", "Reason"})])


def document(data: ReportData, out: Path) -> tuple[Document, pd.DataFrame]:
    """The whole report; also returns the raw summary frame (written as summary.csv)."""
    summary = tables.summary(data)
    sections: list[Section] = []
    if data.problems:
        sections.append(Section("Missing or bad input", [data.problems], "problems"))
    sections.extend(s for s in [data_quality_section(data)] if s is not None)
    if data.notes:
        sections.append(Section("Notes", [data.notes], "notes"))
    sections.append(Section("Searches", [searches_table(data)]))
    best, cost, citations = _best_tables(summary)
    no_refs = sorted({m for m in summary["model"]} & set(references.load()[1]))
    sections.append(Section("Best trial per model vs published", [
        "Best trial = the completed trial with the lowest final validation perplexity; its "
        "final_val_ppl / final_test_ppl. Gap = ours minus published (negative is better); "
        "— where the two numbers do not measure the same thing (the note says why).",
        best, *([citations] if citations else []),
        *[f"{m}: {references.load()[1][m]}." for m in no_refs]]))
    sections.append(trials.winners_section(data))
    sections.append(Section("Trials and cost", [
        "GPU-h = sum over trials of train_seconds × gpus_per_trial / 3600; Train h = sum of "
        "train_seconds / 3600.", cost]))
    sections.extend(s for s in [cost_section(data, out), confirmation_section(data),
                                after_section(data)] if s is not None)
    curves: list[Block] = [*plots.learning_curves(data, out)]
    sections.append(Section("Learning curves", curves or
                            ["No validation perplexity was recorded per epoch."]))
    prog = plots.progress(data, out)
    sections.append(Section("Search progress", [prog] if prog else ["No trials."]))
    analyses = importance.analyse(data)
    sections.append(_importance_section(analyses, out))
    slice_plots: list[Block] = [*plots.slices(analyses, out)]
    sections.append(Section("Slices: every searched parameter", slice_plots or [
        "No finished trial with a validation perplexity per epoch."]))
    parallel: list[Block] = [*plots.parallel_coordinates(analyses, out)]
    sections.append(Section("Parallel coordinates", parallel or [
        "No model has two finished trials at a common budget."]))
    sections.extend(trials.trials_sections(data))
    for extra in (ablation.section(data), _failures_section(data)):
        if extra is not None:
            sections.append(extra)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = [f"Experiments: {', '.join(data.experiments)}",
            f"Tracking URI: {without_credentials(data.tracking_uri)}",
            f"Generated: {now}"]
    return Document("Hyperparameter search report", meta, sections), summary


def log_report(data: ReportData, files: list[Path]) -> tuple[list[str], list[str]]:
    """Log the report files on every search's parent run (artifact path ``report/``)."""
    client = MlflowClient(data.tracking_uri)
    logged, failed = [], []
    for run_id in data.searches["run_id"].dropna():
        try:
            for path in files:
                client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_PATH)
            logged.append(run_id)
        except Exception as e:
            failed.append(f"could not log the report on run {run_id}: "
                          f"{first_line(e)}")
    return logged, failed


def build(tracking_uri: str, experiments: list[str], out_dir: Path,
          log_artifacts: bool = True) -> Result:
    """Write report.html, report.md, summary.csv, trials.csv and the PNGs into ``out_dir``."""
    data = load(tracking_uri, experiments)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc, summary = document(data, out_dir)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(to_markdown(doc))
    page.write_text(to_html(doc))
    csv = out_dir / SUMMARY_CSV
    summary.to_csv(csv, index=False)
    every_trial = out_dir / trials.TRIALS_CSV
    trials.all_trials(data).to_csv(every_trial, index=False)
    figures = [b.path for s in doc.sections for b in s.blocks if isinstance(b, plots.Plot)]
    files = [page, md, csv, every_trial, *figures]
    result = Result(out_dir, files, problems=list(data.problems),
                    warnings=[f"data quality: {gap}" for gap in data.data_quality])
    if log_artifacts:
        result.logged_to, failed = log_report(data, files)
        result.warnings += failed
    return result
