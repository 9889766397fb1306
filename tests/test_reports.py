"""Reports read from a real MLflow SQLite store written exactly as `search.schema` describes.

The `reported` fixture is the swap point: the generic tests run on a report of two fake
searches written by `write_search` (fast, in-process) and, in the slow tier, on a report of the
real smoke search of conftest written by ``python -m reports``. Tests that check fake-specific
content (ablations, published gaps) use `fake_report`; bad input runs `main` in-process.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from fake_searches import (
    T0,
    close_search,
    close_trial,
    last_result,
    log_metrics,
    start_search,
    start_trial,
)
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from awd.config import preset
from reports import importance, references, tables, trials
from reports.__main__ import main
from reports.build import ARTIFACT_PATH, SUMMARY_CSV, build, searches_table
from reports.load import TRAIN_PPL, load
from reports.plots import slug
from reports.render import Document, Section, Table, fmt_value, to_html, to_markdown
from search import schema
from search.results import TrialSummary
from search.stages.ablate import FULL

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- a fake search, written with search/tracking/store.py's own writers (tests/fake_searches) --
def _curve(epochs: int, floor: float, trigger: int | None) -> list[float]:
    """A plausible val_ppl curve: decays towards ``floor``; drops again after the trigger."""
    out = []
    for e in range(1, epochs + 1):
        ppl = floor * 1.08 + 600 * math.exp(-0.55 * e)
        if trigger and e >= trigger:
            ppl = floor + (ppl - floor) * 0.5 ** (e - trigger + 1)
        out.append(ppl)
    return out


def _trial(spec: dict, i: int) -> TrialSummary:
    """A fake trial as Tune ends it (its last result): what closes its run and the search."""
    config = {**preset(spec["model"], "ptb", spec.get("size", "")).to_flat(),
              **spec.get("params", {})}
    result = last_result(spec["epochs"], spec["epochs"] * (40.0 + i), spec.get("trigger"),
                         spec.get("final") if spec["status"] == schema.STATUS_COMPLETED else None)
    result[schema.BEST_VAL_PPL] = min(_curve(spec["epochs"], spec.get("floor", 70.0),
                                             spec.get("trigger")))
    failure = ("RuntimeError: CUDA out of memory" if spec["status"] == schema.STATUS_FAILED
               else None)
    return TrialSummary(f"t{i:04d}", spec["status"], config, result, None, failure)


def write_search(client: MlflowClient, name: str, artifacts: Path, trials: list[dict],
                 space: str, model_tag: str, gpus: float = 0.5, summarize: bool = True,
                 lost: tuple[int, ...] = ()) -> str:
    """One experiment, one parent run and one nested child run per trial; the parent id.

    The parent's summary is what `search.tracking.store.write_summary` writes (from every trial,
    those in ``lost`` included: trials whose run MLflow never received); ``summarize=False`` is
    a search killed before its summary."""
    search_params = {"num_samples": len(trials), "max_epochs": 12, "scheduler": "asha",
                     "concurrency": 2, "grace_period": 3, "cpus_per_trial": 4,
                     "gpus_per_trial": gpus, "seed": 0, "metric": "val_ppl",
                     "time_budget_s": 0}
    exp_id, parent = start_search(client, name, {
        schema.SPACE: space, schema.MODEL: model_tag, schema.DATASET: "ptb",
        schema.GIT_COMMIT: "0" * 40, schema.RAY_ADDRESS: "local", schema.SEED: "0",
        schema.STORAGE: str(artifacts / "ray")}, search_params, f"{space}-search",
        artifacts=artifacts)
    start, end, runs = T0 + 5_000, T0, {}
    for i, spec in enumerate(trials):
        if i not in lost:
            runs[f"t{i:04d}"], t = _write_trial(client, exp_id, parent, space, i, spec, start,
                                                gpus)
            end = max(end, t)
        start += 200_000 * (i % 2)  # two at a time
    if summarize:
        close_search(client, parent, [_trial(spec, i) for i, spec in enumerate(trials)
                                      if not spec.get("ablation")], runs, gpus, end)
    return parent


def _write_trial(client: MlflowClient, exp_id: str, parent: str | None, space: str, i: int,
                 spec: dict, start: int, gpus: float) -> tuple[str, int]:
    """A trial's run with its epochs, closed at its last one: (run id, end time)."""
    trial = _trial(spec, i)
    tags = {schema.MODEL: spec["model"], schema.DATASET: "ptb", schema.SPACE: space,
            schema.DEVICE: "NVIDIA H100", schema.NODE_IP: "10.0.0.1"}
    if spec.get("ablation"):  # a run of the search's --ablate stage
        tags.update({schema.ROLE: schema.ROLE_ABLATION, schema.ABLATION: spec["ablation"],
                     schema.ABLATION_OF: spec["ablation_of"], schema.SEED: str(spec["seed"])})
    rid = start_trial(client, exp_id, parent, trial.trial_id, f"{space}-{trial.trial_id}",
                      start, tags, {**trial.config, "gpus_per_trial": gpus})
    trigger, epochs = spec.get("trigger"), spec["epochs"]
    curve = _curve(epochs, spec.get("floor", 70.0), trigger)
    metrics, t = [], start
    for e, val in enumerate(curve, 1):
        t += 40_000 + 1_000 * i
        epoch = {"train_loss": math.log(val) + 0.1, "train_ppl": val * 1.1,
                 "val_loss": math.log(val), "val_ppl": val, "best_val_ppl": min(curve[:e]),
                 "lr": 30.0, "epoch_seconds": 40.0 + i, "tokens_per_s": 23_000.0,
                 "averaging": float(bool(trigger and e >= trigger))}
        if not spec.get("log_best", True):  # a run that logged no best_val_ppl
            del epoch["best_val_ppl"]
        metrics += [Metric(k, v, t, e) for k, v in epoch.items()]
    metrics.append(Metric("num_params", spec.get("num_params", 24_221_600), start, 0))
    log_metrics(client, rid, metrics)
    close_trial(client, rid, trial.metrics, trial.status, trial.error, t,
                drop=spec.get("drop_metrics", ()))
    return rid, t


LSTM, GRU = "awd_lstm", "awd_gru"
AWD_TRIALS = [
    dict(model=LSTM, status="completed", epochs=14, trigger=9, floor=60.0, final=(61.93, 59.41)),
    dict(model=LSTM, status="completed", epochs=14, floor=66.0, final=(67.20, 64.85),
         params={"dropout": 0.3, "wdrop": 0.4, "emsize": 300, "dropouti": 0.5}),
    # no GRU trial completed: the GRU's best is the stopped one that went lowest
    dict(model=GRU, status="stopped_early", epochs=11, trigger=10, floor=71.0,
         num_params=19_170_000, params={"dropouth": 0.2}),
    dict(model=LSTM, status="stopped_early", epochs=4, floor=80.0,
         params={"dropouti": 0.65, "emsize": 500, "dropoute": 0.0}),
    dict(model=GRU, status="stopped_early", epochs=3, floor=90.0, num_params=19_170_000,
         params={"dropout": 0.5, "wdrop": 0.3}),
    dict(model=LSTM, status="failed", epochs=2, floor=70.0, params={"nhid": 1500}),
    # the best LSTM config without weight drop: a trial like any other
    dict(model=LSTM, status="completed", epochs=14, trigger=10, floor=64.0, final=(65.70, 63.02),
         params={"wdrop": 0.0}),
]
ZAREMBA_TRIALS = [
    dict(model="zaremba", size="medium", status=s, epochs=e, floor=f, final=fin,
         num_params=19_775_200, params=p)
    for s, e, f, fin, p in [
        ("completed", 12, 85.0, (86.9, 83.6), {}),
        ("completed", 12, 88.0, (89.5, 85.9), {"dropout": 0.4}),
        ("stopped_early", 4, 95.0, None, {"dropout": 0.6, "lr": 1.5}),
        ("stopped_early", 4, 99.0, None, {"dropout": 0.3, "lr": 0.7}),
        ("completed", 12, 87.0, (88.1, 84.4), {"dropout": 0.55, "lr": 1.2}),
    ]
]


# (row, the two seeds' final (val, test), what it changes): the LSTM winner's --ablate runs
ABLATION_RUNS = [(FULL, ((61.0, 59.0), (62.0, 60.0)), {}),
                 ("weight_drop", ((66.0, 64.0), (67.0, 65.0)), {"wdrop": 0.0}),
                 ("ar_tar", ((61.4, 59.5), (62.2, 60.1)), {"alpha": 0.0, "beta": 0.0})]


def parent_of(client: MlflowClient, exp: str) -> str:
    return next(r.info.run_id for r in client.search_runs([exp])
                if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH)


GOOD = ["awd-mixed", "zaremba-medium"]
# Its summary counts three trials, but the failed one's run never reached MLflow.
LOST_RUN_TRIALS = [
    dict(model=LSTM, status="completed", epochs=3, floor=68.0, final=(70.0, 68.0)),
    dict(model=LSTM, status="completed", epochs=3, floor=69.0, final=(72.0, 69.0)),
    dict(model=LSTM, status="failed", epochs=1),
]
# Killed before its summary: a stopped trial went lower than the completed one; one trial is
# still running; one stopped trial logged no best_val_ppl (its val_ppl history stands in).
KILLED_TRIALS = [
    dict(model=LSTM, status="stopped_early", epochs=8, floor=40.0),
    dict(model=LSTM, status="completed", epochs=12, floor=70.0, final=(75.0, 73.0)),
    dict(model=LSTM, status="running", epochs=2, floor=80.0),
    dict(model=LSTM, status="stopped_early", epochs=3, floor=90.0, log_best=False),
]


@pytest.fixture(scope="module")
def fake_store(tmp_path_factory, new_mlflow_store) -> tuple[str, list[str]]:
    """Two fake searches (AWD-LSTM/GRU with ablations; Zaremba) in one SQLite store, and two
    bad ones: "nothing-finished" (its one trial failed), "missing-metrics" (a completed trial
    without final_test_ppl)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri, arts = new_mlflow_store(root), root / "mlartifacts"
    client = MlflowClient(uri)
    write_search(client, "awd-mixed", arts, AWD_TRIALS, "compare_ptb", "mixed")
    exp = client.get_experiment_by_name("awd-mixed").experiment_id
    # its --ablate stage: the LSTM winner unchanged, without weight drop, without AR/TAR
    for row, finals, change in ABLATION_RUNS:
        for k, (final, seed) in enumerate(zip(finals, (11, 12), strict=True)):
            spec = dict(AWD_TRIALS[0], final=final, ablation=row, ablation_of="t0000", seed=seed,
                        params={**change, "seed": seed})
            _write_trial(client, exp, parent_of(client, exp), "compare_ptb", 90 + 2 * len(change)
                         + k, spec, T0 + 3_600_000, 1.0)
    write_search(client, "zaremba-medium", arts, ZAREMBA_TRIALS, "zaremba_ptb", "zaremba",
                 gpus=1.0)
    zexp = client.get_experiment_by_name("zaremba-medium").experiment_id
    for row, finals in ((FULL, ((86.0, 83.0), (87.0, 84.0))),
                        ("variable_bptt", ((86.4, 83.3), (87.2, 84.1)))):
        for k, (final, seed) in enumerate(zip(finals, (11, 12), strict=True)):
            spec = dict(ZAREMBA_TRIALS[0], final=final, ablation=row, ablation_of="t0000",
                        seed=seed, params={"seed": seed})
            _write_trial(client, zexp, parent_of(client, zexp), "zaremba_ptb", 80 + k
                         + (2 if row != FULL else 0), spec, T0 + 3_600_000, 1.0)
    write_search(client, "nothing-finished", arts, [
        dict(model=LSTM, status="failed", epochs=3)], "awd_ptb", LSTM)
    write_search(client, "missing-metrics", arts, [
        dict(model=LSTM, status="completed", epochs=3, final=(70.0, 68.0)),
        dict(model=LSTM, status="completed", epochs=3, final=(71.0, 69.0),
             drop_metrics=("final_test_ppl",)),
    ], "awd_ptb", LSTM)
    write_search(client, "lost-run", arts, LOST_RUN_TRIALS, "awd_ptb", LSTM, lost=(2,))
    write_search(client, "killed", arts, KILLED_TRIALS, "awd_ptb", LSTM, summarize=False)
    return uri, GOOD


@dataclass
class Cli:
    returncode: int
    stdout: str
    stderr: str
    out: Path


def run_in_process(argv: list[str], out: Path) -> Cli:
    """``python -m reports`` as `main(argv)` in this process, with what it printed."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*argv, "--out", str(out)])
    return Cli(code, stdout.getvalue(), stderr.getvalue(), out)


def run_as_process(argv: list[str], cwd: Path) -> Cli:
    proc = subprocess.run([sys.executable, "-m", "reports", *argv, "--out", str(cwd / "r")],
                          cwd=cwd, text=True, capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return Cli(proc.returncode, proc.stdout, proc.stderr, cwd / "r")


@dataclass
class Reported:
    """A report written by the CLI on some searches, logged on their parent runs."""

    uri: str
    names: list[str]
    cli: Cli

    @property
    def out(self) -> Path:
        return self.cli.out


@pytest.fixture(scope="module")
def fake_cli(fake_store, tmp_path_factory) -> Cli:
    """The report on the two good fake searches, written by `main` in-process."""
    uri, names = fake_store
    cwd = tmp_path_factory.mktemp("cli_fake")
    return run_in_process(["--experiment", *names, "--tracking-uri", uri], cwd / "r")


@pytest.fixture(scope="module", params=[
    "fake", pytest.param("smoke", marks=pytest.mark.slow)])
def reported(request, fake_store, tmp_path_factory) -> Reported:
    """The generic report tests run on both sources: the fake searches (in-process, fast) and
    the real smoke search of conftest (through ``python -m reports``: the one subprocess test
    of the reports command)."""
    if request.param == "fake":
        return Reported(*fake_store, request.getfixturevalue("fake_cli"))
    uri = request.getfixturevalue("smoke_search")[2]
    cwd = tmp_path_factory.mktemp("cli_smoke")
    return Reported(uri, ["smoke"], run_as_process(["--experiment", "smoke", "--tracking-uri",
                                                     uri], cwd))


@pytest.fixture(scope="module")
def report(reported) -> Path:
    """The folder of the report on `reported`, written by the CLI."""
    assert reported.cli.returncode == 0, reported.cli.stderr
    return reported.out


@pytest.fixture(scope="module")
def fake_report(fake_cli) -> Path:
    """The report on the two good fake searches (for checks of their known content)."""
    assert fake_cli.returncode == 0, fake_cli.stderr
    return fake_cli.out


def bad_input(fake_store, tmp_path, *names: str) -> Cli:
    return run_in_process(["--experiment", *names, "--tracking-uri", fake_store[0]],
                          tmp_path / "r")


def _assert_one_error_line(run: Cli, *needles: str) -> None:
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, run.stderr
    for needle in needles:
        assert needle in errors[0]


# --- what the report says equals what MLflow holds ------------------------------------------
def _independent_summary(uri: str, names: list[str]) -> list[dict]:
    """Per (parent run, model, dataset, preset): the numbers the summary must show, read back
    with MlflowClient without any of the reports code."""
    client = MlflowClient(uri)
    out = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id], max_results=5000)
        parents = {r.info.run_id for r in runs if r.data.tags.get(schema.ROLE) == "search"}
        trials = [r for r in runs if r.data.tags.get(schema.PARENT_RUN_ID) in parents
                  and r.data.tags.get(schema.ROLE) == schema.ROLE_TRIAL
                  and not r.data.tags.get(schema.ABLATION)]
        groups: dict[tuple, list] = {}
        for r in trials:
            key = (r.data.tags[schema.PARENT_RUN_ID], r.data.tags[schema.MODEL],
                   r.data.tags[schema.DATASET], r.data.params.get("preset", ""))
            groups.setdefault(key, []).append(r)
        for (parent, model, dataset, preset_), group in groups.items():
            done = [r for r in group if r.data.tags[schema.STATUS] == "completed"
                    and math.isfinite(r.data.metrics.get("final_val_ppl", math.nan))]
            # the search's rule: the completed trial with the lowest final val ppl, else the
            # unfailed one with the lowest val ppl reached
            unfailed = [r for r in group if r.data.tags[schema.STATUS] != "failed"
                        and math.isfinite(r.data.metrics.get("best_val_ppl", math.nan))]
            if done:
                best = min(done, key=lambda r: r.data.metrics["final_val_ppl"])
            else:
                best = min(unfailed, key=lambda r: r.data.metrics["best_val_ppl"], default=None)
            status = [r.data.tags[schema.STATUS] for r in group]
            out.append({
                "search_key": parent, "model": model, "dataset": dataset, "preset": preset_,
                "trials": len(group), "completed": status.count("completed"),
                "stopped_early": status.count("stopped_early"),
                "failed": status.count("failed"),
                "gpu_hours": sum(r.data.metrics.get("train_seconds", 0)
                                 * float(r.data.params["gpus_per_trial"]) for r in group) / 3600,
                "best_run_id": best.info.run_id if best else None,
                "best_val_reached": best.data.metrics["best_val_ppl"] if best else math.nan,
                "best": {k: (best.data.metrics.get(k, math.nan) if best else math.nan)
                         for k in ("final_val_ppl", "final_test_ppl", "num_params", "epochs_run",
                                   "ntasgd_trigger_epoch")},
            })
    return out


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12)


def test_summary_numbers_equal_mlflow(reported, report):
    out = report
    csv = pd.read_csv(out / SUMMARY_CSV, keep_default_na=False, na_values=[""])
    csv["preset"] = csv["preset"].fillna("").astype(str)
    expected = _independent_summary(reported.uri, reported.names)
    assert len(csv) == len(expected)
    md = (out / "report.md").read_text()
    for exp in expected:
        row = csv[(csv["search_key"] == exp["search_key"]) & (csv["model"] == exp["model"])
                  & (csv["dataset"] == exp["dataset"]) & (csv["preset"] == exp["preset"])]
        assert len(row) == 1, exp
        row = row.iloc[0]
        for k in ("trials", "completed", "stopped_early", "failed"):
            assert row[k] == exp[k], k
        assert row["gpu_hours"] == pytest.approx(exp["gpu_hours"])
        assert (row["best_run_id"] if isinstance(row["best_run_id"], str) else None) \
            == exp["best_run_id"]
        for k, v in exp["best"].items():
            assert _same(float(row[f"best_{k}"]), v), k
        if exp["best_run_id"] and not math.isnan(exp["best"]["final_val_ppl"]):
            assert f"{exp['best']['final_val_ppl']:,.2f}" in md
            assert f"{exp['best']['final_test_ppl']:,.2f}" in md
        elif exp["best_run_id"]:  # only stopped trials: the best is the lowest val ppl reached
            assert f"the best stopped early at val ppl {exp['best_val_reached']:.2f}" in md


def test_published_numbers_and_gaps(fake_report):
    out = fake_report
    csv = pd.read_csv(out / SUMMARY_CSV, keep_default_na=False, na_values=[""])
    refs = json.loads((ROOT / "reports" / "references.json").read_text())["references"]
    by = {(r["model"], r["dataset"], r["preset"], r["finetuned"]): r for r in refs}
    readme = by[(LSTM, "ptb", "", False)]  # the trials are not fine-tuned
    lstm = csv[csv["model"] == LSTM].iloc[0]
    assert lstm["ref_val_ppl"] == readme["val_ppl"]
    assert lstm["gap_test_ppl"] == pytest.approx(59.41 - readme["test_ppl"])
    zaremba = csv[csv["model"] == "zaremba"].iloc[0]
    assert zaremba["ref_test_ppl"] == by[("zaremba", "ptb", "medium", False)]["test_ppl"]
    gru = csv[csv["model"] == GRU].iloc[0]
    assert math.isnan(gru["ref_val_ppl"]) and "no published" in gru["note"]
    # no GRU trial completed: the best is the stopped one that went lowest, and says so
    assert gru["best_trial_id"] == "t0002" and math.isnan(gru["best_final_val_ppl"])
    assert "no completed trial; the best stopped early at val ppl" in gru["note"]
    md = (out / "report.md").read_text()
    assert "awd_gru: no published" in md and "Zaremba, Sutskever & Vinyals 2014" in md
    assert "Missing or bad input" not in md


def test_ablation_section_compares_each_row_with_the_winner_and_the_paper(fake_report):
    md = (fake_report / "report.md").read_text()
    section = md.split("## Ablation of the winners", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| awd_lstm")]
    cells = [[c.strip() for c in ln.split("|")[1:-1]] for ln in lines]
    assert [c[2] for c in cells] == ["winner (nothing removed)", "– AR/TAR", "– weight-dropping"]
    assert cells[0][4] == "61.50 ± 0.71"
    assert cells[2][6:8] == ["+5.00", "+11.1"]  # 66.5 - 61.5; Table 4: 71.1 - 60.0
    assert cells[2][10].startswith("worse (Holm p = ") and cells[1][10].startswith("no (Holm p = ")
    z = [ln for ln in section.splitlines() if ln.startswith("| zaremba")]
    assert [c.split("|")[3].strip() for c in z] == ["winner (nothing removed)",
                                                   "– variable sequence lengths"]
    side = section.split("The models side by side", 1)[1]  # two models: their Δ side by side
    assert "Δ val awd_lstm (awd-mixed)" in side and "Δ val zaremba (zaremba-medium)" in side
    assert "| – weight-dropping | +5.00* |  | +11.1 |" in side


def test_every_figure_is_a_real_png(reported, report):
    from PIL import Image

    out = report
    pngs = sorted(out.glob("*.png"))
    names = {p.name for p in pngs}
    assert "progress.png" in names
    for label in reported.names:  # one learning-curve figure per search (label: experiment)
        assert f"learning_curves_{slug(label)}.png" in names
    assert any(n.startswith("slice_") for n in names)
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC, png
        with Image.open(png) as image:
            image.load()  # decodes every row: a truncated file fails here
            assert image.width >= 300 and image.height >= 150, (png, image.size)
            gray = image.convert("L")
        low, high = gray.getextrema()
        assert high - low > 100, png  # drawn on: dark lines and text on a light background
        inked = sum(gray.histogram()[:128]) / (gray.width * gray.height)
        assert 0.001 < inked < 0.5, (png, inked)
    md = (out / "report.md").read_text()
    for name in names:
        assert f"]({name})" in md


def test_html_is_self_contained(report):
    out = report
    page = (out / "report.html").read_text()
    lowered = page.lower()
    assert "<script" not in lowered
    for chunk in lowered.split("src=")[1:]:
        assert not chunk.lstrip("\"' ").startswith(("http:", "https:", "//")), chunk[:80]
    # the only hrefs: links out to run pages, for a SQLite store where `mlflow ui` serves them
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert hrefs and lowered.count("href=") == lowered.count("<a href=") == len(hrefs)
    assert all(h.startswith(f"{schema.LOCAL_UI}/#/experiments/") for h in hrefs), hrefs[:3]
    assert "<link" not in lowered
    n_png = len(list(out.glob("*.png")))
    assert page.count('src="data:image/png;base64,') == n_png
    assert page.count("<table>") >= 3


def test_report_logged_on_each_parent_run(reported, report):
    uri, names = reported.uri, reported.names
    client = MlflowClient(uri)
    parents = [r.info.run_id for n in names
               for r in client.search_runs([client.get_experiment_by_name(n).experiment_id],
                                           f"tags.`{schema.ROLE}` = 'search'")]
    assert parents
    local = {p.name for p in report.iterdir()}
    for run_id in parents:
        logged = {Path(a.path).name for a in client.list_artifacts(run_id, ARTIFACT_PATH)}
        assert {"report.html", "report.md"} <= logged and logged == local


def test_importance_needs_enough_trials(fake_report):
    md = (fake_report / "report.md").read_text()
    section = md.split("## Hyperparameter importance", 1)[1].split("\n## ", 1)[0]
    assert "awd-mixed · awd_lstm: needs >= 5 finished trials, has 4" in section
    # per search, each group at its common budget: the epoch 5 of its trials reached
    assert "| Parameter | all models (epoch 4, 5 of 6 trials) |" in section
    assert "| Parameter | zaremba (epoch 4, 5 of 5 trials) |" in section
    # the fake searches name no Optuna study: what is shown says it is a reconstruction
    for name in GOOD:
        assert f"\n{name}: {importance.FALLBACK} (the search run names none).\n" in section
    assert (fake_report / "importance_awd-mixed.png").is_file()


# --- a search's own summary first; derived only where the parent has none ------------------
def test_search_frame_holds_the_parents_summary_and_best_trial(fake_store):
    uri = fake_store[0]
    data = load(uri, ["zaremba-medium", "killed"])
    client = MlflowClient(uri)
    rows = {r["experiment"]: r for _, r in data.searches.iterrows()}
    zaremba = rows["zaremba-medium"]
    parent = client.get_run(zaremba["run_id"])
    assert set(schema.SEARCH_SUMMARY_METRICS) <= set(parent.data.metrics)
    for name in schema.SEARCH_SUMMARY_METRICS:
        assert zaremba[name] == parent.data.metrics[name], name
    assert zaremba["best_trial_id"] == parent.data.tags[schema.BEST_TRIAL_ID] == "t0000"
    killed = rows["killed"]
    assert all(math.isnan(killed[name]) for name in schema.SEARCH_SUMMARY_METRICS)
    assert killed["best_trial_id"] == ""


def test_searches_table_shows_the_parents_summary(fake_store):
    """The parent counted a trial whose run never reached MLflow: the table says what the
    search said, not what the surviving runs would add up to."""
    data = load(fake_store[0], ["lost-run"])
    parent = MlflowClient(fake_store[0]).get_run(data.searches.iloc[0]["run_id"]).data
    assert len(data.trials()) == 2
    (row,) = tables.searches(data).to_dict("records")
    assert (row["trials"], row["completed"], row["stopped_early"], row["failed"]) == (3, 2, 0, 1)
    assert row["gpu_hours"] == parent.metrics["gpu_hours"] != tables.gpu_hours(data.trials())
    assert row["wall_hours"] == parent.metrics["wall_seconds"] / 3600
    assert (row["best_val_ppl"], row["best_test_ppl"], row["best_trial_id"]) == (70.0, 68.0,
                                                                                 "t0000")


def test_searches_table_derives_a_summary_only_for_a_search_without_one(fake_store):
    data = load(fake_store[0], ["killed"])
    trials = data.trials()
    (row,) = tables.searches(data).to_dict("records")
    assert (row["trials"], row["completed"], row["stopped_early"], row["failed"],
            row["running"]) == (4, 1, 2, 0, 1)
    assert row["gpu_hours"] == pytest.approx(tables.gpu_hours(trials))
    # the one rule: the completed trial, though a stopped one went lower
    assert trials[schema.BEST_VAL_PPL].min() < 75.0
    assert (row["best_trial_id"], row["best_val_ppl"], row["best_test_ppl"]) == ("t0001", 75.0,
                                                                                 73.0)
    assert "still running" in " ".join(data.notes)


def test_run_best_val_ppl_is_its_metric_else_the_lowest_val_ppl_logged(fake_store):
    data = load(fake_store[0], ["killed"])
    client = MlflowClient(fake_store[0])
    runs = data.runs.set_index("trial_id")
    for trial_id, row in runs.iterrows():
        metrics = client.get_run(row["run_id"]).data.metrics
        history = [m.value for m in client.get_metric_history(row["run_id"], "val_ppl")]
        if trial_id == "t0003":  # logged no best_val_ppl
            assert schema.BEST_VAL_PPL not in metrics
            assert row[schema.BEST_VAL_PPL] == min(history)
        else:
            assert row[schema.BEST_VAL_PPL] == metrics[schema.BEST_VAL_PPL]
    assert "best_val" not in data.runs.columns  # the one name


# --- deciding: winners and their params, every trial, comparable gaps only ------------------
def _section(md: str, title: str) -> str:
    return md.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _unlinked(text: str) -> str:
    """Markdown with each link ``[text](url)`` as its text."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)


def _md_tables(section: str) -> list[list[dict[str, str]]]:
    """Every Markdown table of a section as rows of {header: cell} (links as their text)."""
    tables_, lines = [], _unlinked(section).splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and (i == 0 or not lines[i - 1].startswith("|")):
            head = [c.strip() for c in line.strip("|").split(" | ")]
            body = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                body.append(dict(zip(head, [c.strip() for c in row.strip("|").split(" | ")],
                                     strict=True)))
            tables_.append(body)
    return tables_


def _independent_trials(uri: str, name: str) -> tuple[list, dict[str, str]]:
    """A search's trial runs and its parent's tags, read back without the reports code."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                              max_results=5000)
    (parent,) = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH]
    return ([r for r in runs if r.data.tags.get(schema.PARENT_RUN_ID) == parent.info.run_id
             and r.data.tags.get(schema.ROLE) == schema.ROLE_TRIAL
             and not r.data.tags.get(schema.ABLATION)], parent.data.tags)


def _varying(runs: list) -> dict[str, set[str]]:
    """Per model, the params whose value differs between its runs."""
    out: dict[str, set[str]] = {}
    for model in {r.data.tags[schema.MODEL] for r in runs}:
        mine = [r.data.params for r in runs if r.data.tags[schema.MODEL] == model]
        out[model] = {name for name in set().union(*mine) - {"model", "gpus_per_trial"}
                      if len({str(float(p[name])) if _is_number(p.get(name)) else p.get(name)
                              for p in mine}) > 1}
    return out


def _is_number(text: str | None) -> bool:
    try:
        return text is not None and math.isfinite(float(text))
    except ValueError:
        return False


def _shown(text: str) -> str:
    """A param as the report must show it: ints as ints, floats to 3 significant digits."""
    if text.lstrip("-").isdigit():
        return text
    return f"{float(text):.3g}" if _is_number(text) else text


def test_hyperparameter_values_are_formatted_for_reading():
    assert [fmt_value(v) for v in (1150, 0.004978, 17.81, 30.0, 1.2e-6, "ntasgd", True,
                                   math.nan)] == ["1150", "0.00498", "17.8", "30", "1.2e-06",
                                                  "ntasgd", "True", "—"]
    assert fmt_value(pd.NA) == "—"  # an Int64 column's blank


def test_winners_show_every_searched_param_of_the_best_trial(reported, report):
    md = (report / "report.md").read_text()
    section = _section(md, "Best configuration per search")
    tables_ = _md_tables(section)
    assert len(tables_) == len(reported.names)
    for name, rows in zip(reported.names, tables_, strict=True):
        runs, parent_tags = _independent_trials(reported.uri, name)
        varying = _varying(runs)
        assert set().union(*varying.values()), name  # every search varies something
        columns = list(rows[0])[9:]
        assert set().union(*varying.values()) <= set(columns), (varying, columns)
        assert f"{name}: searched {', '.join(columns)}." in section
        assert rows[0]["Pick"] == "search best"
        assert rows[0]["Trial"] == parent_tags[schema.BEST_TRIAL_ID]
        for row in rows:  # the search's best, then the best of each other model, once each
            run = next(r for r in runs if r.data.tags[schema.TRIAL_ID] == row["Trial"])
            params = run.data.params
            for column in columns:
                shown = _shown(params[column]) if column in params else "—"
                if column in varying[row["Model"]]:
                    assert row[column] == shown, column
                else:  # blank: fixed for this model (unless its study sampled it)
                    assert row[column] in ("", shown), column
        assert len(rows) == len({r["Model"] for r in rows}) <= len(varying)


def test_fake_winners_are_the_params_that_vary_within_a_model(fake_report):
    section = _unlinked(_section((fake_report / "report.md").read_text(),
                                 "Best configuration per search"))
    # within a model (never across the models' presets), sorted by name without a study
    assert "awd-mixed: searched dropout, dropoute, dropouth, dropouti, emsize, nhid, wdrop." \
        in section
    assert "zaremba-medium: searched dropout, lr." in section
    # blank: not searched for that model (the GRU runs vary no dropouti, the LSTM's no dropouth)
    assert ("| search best | t0000 | awd_lstm | completed | 14 | 61.93 | 60.08 | 61.93 | 59.41 "
            "| 0.4 | 0.1 |  | 0.4 | 400 | 1150 | 0.5 |") in section
    assert ("| best awd_gru | t0002 | awd_gru | stopped_early | 11 | 72.77 | 72.77 | — | — "
            "| 0.4 |  | 0.2 |  |  |  | 0.5 |") in section


def test_trials_table_lists_every_trial_in_the_searchs_order(reported, report):
    md = (report / "report.md").read_text()
    for name in reported.names:
        (rows,) = _md_tables(_section(md, f"Trials: {name}"))
        runs, _ = _independent_trials(reported.uri, name)
        by_id = {r.data.tags[schema.TRIAL_ID]: r for r in runs}
        assert sorted(r["Trial"] for r in rows) == sorted(by_id)
        done = sorted((r for r in runs if r.data.tags[schema.STATUS] == "completed"),
                      key=lambda r: r.data.metrics["final_val_ppl"])
        others = sorted((r for r in runs if r.data.tags[schema.STATUS] not in ("completed",
                                                                                "failed")),
                        key=lambda r: r.data.metrics["best_val_ppl"])
        ranked = [r.data.tags[schema.TRIAL_ID] for r in done + others]
        assert [r["Trial"] for r in rows][:len(ranked)] == ranked
        assert [r["#"] for r in rows] == [str(i) for i in range(1, len(ranked) + 1)] + \
            ["—"] * (len(rows) - len(ranked))
        for row in rows:
            run = by_id[row["Trial"]]
            assert row["Status"] == run.data.tags[schema.STATUS]
            assert row["Epochs"] == f"{int(run.data.metrics['epochs_run']):,}"
            assert row["Best val"] == f"{run.data.metrics['best_val_ppl']:,.2f}"
            test = run.data.metrics.get("final_test_ppl")
            assert row["Test"] == (f"{test:,.2f}" if test is not None else "—")
    # a SQLite store: the command that serves it once, then links to where it serves them
    assert md.count(f"start `mlflow ui --backend-store-uri {reported.uri}` first") == 1
    links = re.findall(r"\]\((http[^)]*)\)", md)
    assert links and all(u.startswith(f"{schema.LOCAL_UI}/#/experiments/") and
                         u.endswith(f"?workflowType={schema.WORKFLOW_TYPE_ML}") for u in links)


def test_trial_ids_link_to_their_run_pages_on_an_mlflow_server(fake_store):
    uri, names = fake_store
    data = load(uri, names)
    server = "https://mlflow.example.org:5000/"
    data.tracking_uri = server  # the same runs, as an MLflow server would serve them
    doc = Document("t", [], [Section("Searches", [searches_table(data)]),
                             trials.winners_section(data), *trials.trials_sections(data)])
    md, page = to_markdown(doc), to_html(doc)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("zaremba-medium").experiment_id
    (run,) = client.search_runs([exp], f"tags.`{schema.TRIAL_ID}` = 't0004'")
    url = (f"https://mlflow.example.org:5000/#/experiments/{exp}/runs/{run.info.run_id}"
           "?workflowType=machine_learning")  # the run page under Model training, not GenAI
    assert f"| [t0004]({url}) |" in md
    assert f'<a href="{url}">t0004</a>' in page
    assert md.count("](https://mlflow.example.org:5000/#/experiments/") == \
        len(data.trials()) + 3 + 2  # every trial, the three winners, the two parent runs
    parent = data.searches.set_index("label").loc["zaremba-medium", "run_id"]
    assert f"| [{parent[:12]}](https://mlflow.example.org:5000/#/experiments/{exp}/runs/" \
        f"{parent}?workflowType=machine_learning) |" in md
    assert "links to its run page on the MLflow server" in md and "mlflow ui" not in md


def test_no_gap_where_the_numbers_are_not_comparable(tmp_path, new_mlflow_store):
    """A search on a slice of PTB: its best is shown with the published number beside it, but
    no gap: "—" and the reason once."""
    uri = new_mlflow_store(tmp_path / "store")
    sliced = [dict(t, params={"train_tokens": 20_000, "eval_tokens": 3_000})
              for t in LOST_RUN_TRIALS[:2]]
    write_search(MlflowClient(uri), "slice", tmp_path / "arts", sliced, "smoke", LSTM)
    build(uri, ["slice"], tmp_path / "r", log_artifacts=False)
    (row,) = pd.read_csv(tmp_path / "r" / SUMMARY_CSV).to_dict("records")
    assert row["ref_val_ppl"] == 61.2 and not row["comparable"]
    assert math.isnan(row["gap_val_ppl"]) and math.isnan(row["gap_test_ppl"])
    reason = ("trained on a 20,000-token slice and evaluated on 3,000-token slices: not "
              "comparable with the published number")
    assert row["note"] == reason
    md = (tmp_path / "r" / "report.md").read_text()
    best = _section(md, "Best trial per model vs published")
    (line,) = [ln for ln in best.splitlines() if ln.startswith("| awd_lstm | ptb | slice |")]
    assert "| 70.00 | 68.00 | 61.2 | 58.8 | — | — |" in line and line.count("comparable") == 1
    assert "%)" not in best
    # the rule itself: a whole-split run of the same dataset is compared, a slice never
    assert references.match(LSTM, "ptb").comparable
    assert not references.match(LSTM, "ptb", train_tokens=20_000).comparable
    assert not references.match(LSTM, "ptb", eval_tokens=3_000).comparable
    assert not references.match(GRU, "ptb").comparable  # nothing published


def test_no_gap_beside_a_slice_in_any_report(reported, report):
    csv = pd.read_csv(report / SUMMARY_CSV)
    client = MlflowClient(reported.uri)
    sliced_and_published = compared = 0
    for _, row in csv.iterrows():
        params = client.get_run(row["best_run_id"]).data.params if isinstance(
            row["best_run_id"], str) else {}
        sliced = any(float(params.get(k, 0)) > 0 for k in ("train_tokens", "eval_tokens"))
        if sliced:  # no gap; the reason once, where there is a published number at all
            assert math.isnan(row["gap_val_ppl"]) and math.isnan(row["gap_test_ppl"])
            published = not math.isnan(row["ref_val_ppl"])
            assert row["note"].count("not comparable") == int(published), row["note"]
            sliced_and_published += published
        elif params and not math.isnan(row["ref_val_ppl"]):  # a whole split, published
            assert row["comparable"] and not math.isnan(row["gap_val_ppl"]), row
            compared += 1
    assert sliced_and_published + compared >= 1  # some row had a published number to check
    if reported.names == ["smoke"]:  # the smoke space trains on a PTB slice
        assert sliced_and_published >= 1
    md = (report / "report.md").read_text()
    lines = [ln for ln in _section(md, "Best trial per model vs published").splitlines()
             if "not comparable" in ln]
    assert all("%)" not in ln for ln in lines)


def test_history_holds_train_and_val_ppl_per_epoch(fake_store):
    assert TRAIN_PPL in schema.EPOCH_METRICS
    uri = fake_store[0]
    data = load(uri, ["zaremba-medium"])
    client = MlflowClient(uri)
    for run_id in data.trials()["run_id"]:
        curve = data.history[data.history["run_id"] == run_id].sort_values("epoch")
        for metric in (schema.VAL_PPL, TRAIN_PPL):
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))
            assert list(zip(curve["epoch"], curve[metric], strict=True)) == logged


# --- the CLI and bad input -------------------------------------------------------------------
def test_cli_writes_report(reported):
    run = reported.cli
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    files = sorted(p.name for p in run.out.iterdir())
    assert {"report.html", "report.md", SUMMARY_CSV} <= set(files)
    assert f"report: {run.out / 'report.html'} and report.md ({len(files)} files)" in run.stdout
    assert "logged under report/ on run(s)" in run.stdout


def test_unknown_experiment_is_one_error_line(fake_store, tmp_path):
    run = bad_input(fake_store, tmp_path, "no-such-search")
    _assert_one_error_line(run, "unknown MLflow experiment 'no-such-search'")
    assert not run.out.exists()


@pytest.mark.parametrize(("uri", "message"), [
    ("", "no MLflow database at"),  # default: sqlite:///mlflow.db in the working folder
    ("http://127.0.0.1:9", "cannot reach the MLflow tracking server at http://127.0.0.1:9"),
])
def test_unusable_tracking_store_is_one_error_line(uri, message, tmp_path, monkeypatch,
                                                   capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code = main(["--experiment", "x", "--out", str(tmp_path / "r")])
    captured = capsys.readouterr()
    _assert_one_error_line(Cli(code, captured.out, captured.err, tmp_path / "r"), message)
    assert not (tmp_path / "r").exists() and not (tmp_path / "mlflow.db").exists()


def test_no_finished_runs_gives_partial_report(fake_store, tmp_path):
    run = bad_input(fake_store, tmp_path, "nothing-finished")
    _assert_one_error_line(run, "'nothing-finished' has no finished trial runs (1 failed)")
    page = (run.out / "report.html").read_text()
    assert "Missing or bad input" in page and "no finished trial runs" in page


def test_missing_metrics_gives_partial_report(fake_store, tmp_path):
    run = bad_input(fake_store, tmp_path, "missing-metrics")
    _assert_one_error_line(run, "lacks final_test_ppl", "partial report written")
    md = (run.out / "report.md").read_text()
    assert "lacks final_test_ppl" in md.split("## Missing or bad input", 1)[1]


def test_unknown_beside_known_experiment_gives_partial_report(fake_store, tmp_path):
    result = build(fake_store[0], ["zaremba-medium", "no-such-search"], tmp_path,
                   log_artifacts=False)
    assert result.problems == ["unknown MLflow experiment 'no-such-search'"]
    md = (tmp_path / "report.md").read_text()
    assert "unknown MLflow experiment 'no-such-search'" in md.split("## Searches")[0]
    assert "| zaremba (medium) | ptb | zaremba-medium | 86.90 |" in md


# --- the HTML renders in a real browser -----------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH "
                                    "(apt-get install chromium) to render report.html")


def _chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", *args, page.as_uri()],
        capture_output=True, text=True, timeout=90)


@pytest.mark.slow
@needs_chromium
def test_html_renders_in_headless_chromium(reported, report, tmp_path):
    from PIL import Image

    out = report
    shot = tmp_path / "shot.png"
    proc = _chromium(out / "report.html", tmp_path, f"--screenshot={shot}",
                     "--window-size=1280,2000")
    assert shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    image = Image.open(shot).convert("L")
    dark = sum(image.histogram()[:200])
    assert dark / (image.width * image.height) > 0.02  # text, tables and plots, not blank
    console = [ln for ln in proc.stderr.splitlines()
               if "CONSOLE" in ln or "Uncaught" in ln or "Failed to load" in ln]
    assert console == []
    dom = _chromium(out / "report.html", tmp_path, "--dump-dom").stdout
    assert dom.count("<table>") >= 3 and dom.count("data:image/png;base64,") >= 3
    data = load(reported.uri, reported.names)
    for name in reported.names:  # every trial a row of its search's table and a link
        section = dom.split(f"<h2>Trials: {name}</h2>", 1)[1].split("</section>", 1)[0]
        rows = len(data.trials(data.searches.loc[
            data.searches["label"] == name, "search_key"].iloc[0]))
        assert section.count("<tr>") == rows + 1
        assert section.count(f'<a href="{schema.LOCAL_UI}/#/experiments/') == rows
    # the same trials as an MLflow server would serve them: every trial id a link
    data.tracking_uri = "http://mlflow.example:5000"
    linked = tmp_path / "linked.html"
    linked.write_text(to_html(Document("linked", [], trials.trials_sections(data))))
    dom = _chromium(linked, tmp_path, "--dump-dom").stdout
    anchors = dom.split('<a href="http://mlflow.example:5000/#/experiments/')[1:]
    assert len(anchors) == len(data.trials())
    shown = {a.split(">", 1)[1].split("</a>", 1)[0] for a in anchors}
    assert shown == set(data.trials()["trial_id"])


WIDTH_PROBE = """<script>window.addEventListener('load', () => {
  const right = document.body.getBoundingClientRect().right;
  const over = [...document.querySelectorAll('table')].filter(
    t => t.getBoundingClientRect().right > right + 0.5).length;
  document.body.setAttribute('data-probe', over + ',' + document.documentElement.scrollWidth
                             + ',' + document.documentElement.clientWidth);
});</script>"""


def _widths(page: str, tmp_path: Path) -> tuple[int, int, int]:
    """(tables wider than the page's body, the page's scroll width, its client width) at a
    window of 1400 px."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", WIDTH_PROBE + "</body>"))
    dom = _chromium(probe, tmp_path, "--window-size=1400,1000", "--virtual-time-budget=5000",
                    "--dump-dom").stdout
    match = re.search(r'data-probe="(\d+),(\d+),(\d+)"', dom)
    assert match, dom[-500:]
    over, scroll, client = (int(g) for g in match.groups())
    return over, scroll, client


@pytest.mark.slow
@needs_chromium
def test_tables_fit_a_1400px_page(report, tmp_path):
    """The report, and a trials table of a search of 12 parameters (21 columns, wider than the
    page): no table runs past the page's body, the page never scrolls sideways."""
    over, scroll, client = _widths((report / "report.html").read_text(), tmp_path)
    assert over == 0 and scroll <= client, (over, scroll, client)
    params = ["emsize", "nhid", "dropout", "dropouth", "dropouti", "dropoute", "wdrop",
              "optimizer", "lr", "nonmono", "lr_decay", "clip"]
    row = ["1", "awd_lstm_4fa4dd6c", "awd_lstm", "stopped_early", "12", "1,124.34", "1,124.34",
           "1,124.34", "1,101.55", "400", "1150", "0.456", "0.253", "0.654", "0.123", "0.501",
           "sgd_schedule", "12.3", "8", "1.23", "0.25"]
    wide = Table(["#", *trials.COMMON, *params], [row] * 5, {"#"})
    page = to_html(Document("wide", [], [Section("Trials: wide", [wide])]))
    over, scroll, client = _widths(page, tmp_path)
    assert over == 0 and scroll <= client, (over, scroll, client)
    assert "overflow-x: auto" in page  # it scrolls in its own box, the page keeps its width

