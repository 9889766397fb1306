"""Importance, slices and parallel coordinates from a search's own Optuna study.

A real Optuna study in a SQLite file (the smoke space's shape: a categorical ``model`` and
params conditional on it, intermediate values per epoch, COMPLETE / PRUNED / FAIL / RUNNING
trials) and a real MLflow SQLite store whose parent runs name it, as `search.driver` writes
them; plus searches without a study, and one whose study file is gone.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from fake_searches import T0, close_trial, last_result, log_metrics, start_search, start_trial
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from reports import build as build_module
from reports import importance, plots, trials
from reports.importance import POOLED, SOURCE_MLFLOW, SOURCE_STUDY, Point, common_step
from reports.load import load, read_study
from reports.render import Document, Section, to_markdown
from search import schema

AWD, ZAREMBA = "awd_lstm", "zaremba"
MODEL = CategoricalDistribution([AWD, "awd_gru", ZAREMBA])
DISTS = {
    AWD: {"model": MODEL, "emsize": IntDistribution(16, 64, step=16),
          "dropout": FloatDistribution(0.0, 0.5), "dropouth": FloatDistribution(0.0, 0.4),
          "lr": FloatDistribution(2.0, 20.0, log=True)},
    ZAREMBA: {"model": MODEL, "nhid": IntDistribution(32, 96, step=16),
              "dropout": FloatDistribution(0.0, 0.5),
              "lr": FloatDistribution(0.5, 2.0, log=True)},
}
BEST_LR = {AWD: 8.0, ZAREMBA: 1.0}
# (model, state, epochs reported): AWD 5 completed (3 epochs) + 3 stopped at 1, a failed and a
# running one; Zaremba 2 completed + 4 stopped at epoch 2 (the last two: the same params)
PLAN = [(AWD, TrialState.COMPLETE, 3), (ZAREMBA, TrialState.PRUNED, 2),
        (AWD, TrialState.PRUNED, 1), (AWD, TrialState.COMPLETE, 3),
        (ZAREMBA, TrialState.COMPLETE, 3), (AWD, TrialState.FAIL, 1),
        (AWD, TrialState.COMPLETE, 3), (AWD, TrialState.PRUNED, 1),
        (ZAREMBA, TrialState.PRUNED, 2), (AWD, TrialState.COMPLETE, 3),
        (ZAREMBA, TrialState.COMPLETE, 3), (AWD, TrialState.PRUNED, 1),
        (AWD, TrialState.COMPLETE, 3), (AWD, TrialState.RUNNING, 1),
        (ZAREMBA, TrialState.PRUNED, 2), (ZAREMBA, TrialState.PRUNED, 2)]
DUPLICATES = (14, 15)  # two trials sampled the same params
STATUS = {TrialState.COMPLETE: schema.STATUS_COMPLETED, TrialState.PRUNED: schema.STATUS_STOPPED,
          TrialState.FAIL: schema.STATUS_FAILED, TrialState.RUNNING: schema.STATUS_RUNNING}


def _params(model: str, rng: np.random.Generator) -> dict:
    out: dict = {"model": model}
    for name, dist in DISTS[model].items():
        if isinstance(dist, FloatDistribution):
            low, high = (math.log(dist.low), math.log(dist.high)) if dist.log else (dist.low,
                                                                                   dist.high)
            value = float(rng.uniform(low, high))
            out[name] = math.exp(value) if dist.log else value
        elif isinstance(dist, IntDistribution):
            out[name] = int(rng.choice(np.arange(dist.low, dist.high + 1, dist.step)))
    return out


def _curve(model: str, params: dict, epochs: int) -> dict[int, float]:
    """Best val ppl per epoch: set by lr alone (its distance from the model's best lr)."""
    floor = 80.0 * (1 + 2.0 * (math.log(params["lr"]) - math.log(BEST_LR[model])) ** 2)
    return {e: floor * (1 + 1.5 / e) for e in range(1, epochs + 1)}


def make_study(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study as a smoke search leaves it."""
    rng = np.random.default_rng(3)
    study = optuna.create_study(storage=url, study_name=name)
    for number, (model, state, epochs) in enumerate(PLAN):
        params = (dict(study.trials[DUPLICATES[0]].params) if number == DUPLICATES[1]
                  else _params(model, rng))
        curve = _curve(model, params, epochs)
        if number == DUPLICATES[1]:
            curve = {e: v * 1.2 for e, v in curve.items()}
        if state == TrialState.FAIL:
            curve = {}
        study.add_trial(optuna.trial.create_trial(
            state=state, params=params, distributions=DISTS[model], intermediate_values=curve,
            value=curve[epochs] if state == TrialState.COMPLETE else None,
            user_attrs={schema.OPTUNA_TUNE_TRIAL_ID: f"t{number:04d}"}))  # as the searcher does
    return study.trials


def full_config(trial: optuna.trial.FrozenTrial) -> dict:
    """What a real trial run logs besides its sampled params: its whole config, so a param its
    model or condition did not sample holds its default, and a value a condition fixes
    (decay_start of an SGD schedule) differs between one model's runs."""
    return {"emsize": 400, "nhid": 1150, "dropouth": 0.25, "lr": 30.0,
            "decay_start": 6 if trial.number % 3 == 0 else 0}


def write_search(client: MlflowClient, name: str, trials: list, study: tuple[str, str] | None,
                 fixed: dict[str, float] | None = None,
                 logged: Callable[[optuna.trial.FrozenTrial], dict] | None = None) -> str:
    """A parent run (naming the study if given) and one trial run per study trial, started in
    the reverse order of the trial numbers (but the duplicates in order), as search/ writes
    them (with tests/fake_searches); ``fixed``: config values --set fixed (the runs hold them,
    not the sampled ones); ``logged``: the rest of each run's config."""
    tags = {schema.SPACE: "smoke", schema.MODEL: "mixed", schema.DATASET: "ptb"}
    if study:
        tags[schema.STUDY_STORAGE], tags[schema.STUDY_NAME] = study
    fixed = fixed or {}
    exp, pid = start_search(client, name, tags, {
        "max_epochs": 3, "gpus_per_trial": 0,
        "fixed": json.dumps([f"{k}={v}" for k, v in fixed.items()])}, "smoke-search")
    starts = {t.number: T0 + 1000 * (len(trials) - t.number) for t in trials}
    a, b = DUPLICATES
    if a in starts and b in starts:
        starts[a], starts[b] = min(starts[a], starts[b]), max(starts[a], starts[b])
    for t in trials:
        model, status, start = t.params["model"], STATUS[t.state], starts[t.number]
        config = {**(logged(t) if logged else {}), **t.params, **fixed, "epochs": 3,
                  "batch_size": 20, "gpus_per_trial": 0}
        run_id = start_trial(client, exp, pid, f"t{t.number:04d}", f"smoke-t{t.number:04d}",
                             start, {schema.MODEL: model, schema.DATASET: "ptb"}, config)
        curve = dict(t.intermediate_values)
        log_metrics(client, run_id, [Metric(k, v, start + e, e) for e, v in curve.items()
                                     for k in (schema.VAL_PPL, schema.BEST_VAL_PPL)]
                    + [Metric(schema.NUM_PARAMS, 1e5, start, 0)])
        final = (t.value, t.value * 0.97) if status == schema.STATUS_COMPLETED else None
        close_trial(client, run_id, last_result(len(curve) or 1, 10.0, final=final), status,
                    None, start + len(curve))
    return pid


@pytest.fixture(scope="module")
def store(tmp_path_factory, new_mlflow_store) -> tuple[str, Path, list]:
    """with-study (its runs log every config field, as real ones do), no-study (an older
    search), fixed-dropout (--set dropout=0.3), missing-db."""
    root = tmp_path_factory.mktemp("importance")
    db = root / "optuna.db"
    url = f"sqlite:///{db}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = make_study(url, "smoke-abc")
    uri = new_mlflow_store(root)
    client = MlflowClient(uri)
    write_search(client, "with-study", trials, (url, "smoke-abc"), logged=full_config)
    write_search(client, "no-study", trials, None)
    write_search(client, "fixed-dropout", trials, (url, "smoke-abc"), fixed={"dropout": 0.3})
    write_search(client, "missing-db", trials[:6], (f"sqlite:///{root / 'gone.db'}", "x"))
    return uri, db, trials


def _analysis(store, name: str) -> importance.Analysis:
    (analysis,) = importance.analyse(load(store[0], [name]))
    return analysis


@pytest.fixture(scope="module")
def with_study(store) -> importance.Analysis:
    return _analysis(store, "with-study")


def _group(analysis: importance.Analysis, model: str) -> importance.Group:
    (group,) = [g for g in analysis.groups if g.model == model]
    return group


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the study --------------------------------------------------------------------------------
def test_study_is_read_read_only_from_the_parent_tags(store):
    uri, db, trials = store
    before = _sha(db)
    data = load(uri, ["with-study"])
    (record,) = data.studies.values()
    assert (record.storage, record.name, record.error) == (f"sqlite:///{db}", "smoke-abc", "")
    assert [t.number for t in record.trials] == [t.number for t in trials]
    assert record.trials[3].distributions == DISTS[AWD]  # the real distributions
    assert _sha(db) == before


def test_a_missing_study_is_an_error_that_creates_nothing(store, tmp_path):
    gone = tmp_path / "none.db"
    record = read_study(f"sqlite:///{gone}", "x")
    assert record.error == f"no Optuna database at {gone}" and not record.trials
    assert not gone.exists()
    record = read_study(f"sqlite:///{store[1]}", "no-such-study")
    assert record.error.startswith("no study named 'no-such-study'")


def test_an_unreadable_study_is_a_note_and_a_labelled_reconstruction(store):
    data = load(store[0], ["missing-db"])
    assert any("its Optuna study 'x' cannot be read (no Optuna database at" in n
               for n in data.notes)
    (analysis,) = importance.analyse(data)
    assert analysis.source == SOURCE_MLFLOW
    assert "reconstructed from the MLflow params" in analysis.origin
    assert "its study could not be read" in analysis.origin
    assert not (store[1].parent / "gone.db").exists()


# --- per model, pooled, at a common budget ------------------------------------------------------
def test_each_model_is_evaluated_on_its_own_params_only(with_study):
    assert with_study.source == SOURCE_STUDY
    assert [g.model for g in with_study.groups] == [POOLED, AWD, ZAREMBA]
    awd, zaremba = _group(with_study, AWD), _group(with_study, ZAREMBA)
    assert set(awd.importances) == {"emsize", "dropout", "dropouth", "lr"}
    assert set(zaremba.importances) == {"nhid", "dropout", "lr"}
    assert awd.params["lr"] == DISTS[AWD]["lr"] and zaremba.params["lr"] == DISTS[ZAREMBA]["lr"]


def test_the_evaluator_ranks_first_the_param_that_sets_the_value():
    """20 trials whose best val ppl at epoch 2 is set by lr alone; the 4 that went on to epoch 3
    did so with values that say otherwise, and do not count: too few reached it."""
    rng = np.random.default_rng(0)
    points = []
    for i in range(20):
        params = _params(AWD, rng)
        curve = _curve(AWD, params, 2)
        if i < 4:
            curve[3] = min(curve[2], 50.0 + params["dropout"])
        points.append(Point(i, AWD, "completed", params, DISTS[AWD], curve))
    group = importance.Group("s", AWD, points, params={
        n: d for n, d in DISTS[AWD].items() if n != "model"})
    importance.evaluate(group)
    assert (group.step, len(group.compared), group.message) == (2, 20, "")
    assert next(iter(group.importances)) == "lr", group.importances


def test_the_pooled_view_has_only_shared_params_and_model(with_study):
    pooled = _group(with_study, POOLED)
    assert set(pooled.importances) == {"dropout", "model"}
    assert pooled.params["model"] == MODEL
    assert pooled.left_out == {"emsize": "not every model samples it",
                               "dropouth": "not every model samples it",
                               "lr": "its range differs between models",
                               "nhid": "not every model samples it"}


def test_trials_are_compared_at_each_groups_common_budget(with_study, store):
    trials = {t.number: t for t in store[2]}
    awd, zaremba = _group(with_study, AWD), _group(with_study, ZAREMBA)
    pooled = _group(with_study, POOLED)
    # AWD: 8 finished (the failed and the running one left out), 5 reached epoch 3
    assert (awd.step, len(awd.compared), len(awd.points)) == (3, 5, 8)
    assert awd.label == "awd_lstm (epoch 3, 5 of 8 trials)"
    # Zaremba: 2 of 6 reached epoch 3, all 6 reached epoch 2: compared at 2, the completed
    # ones by their value at epoch 2, not their final one
    assert (zaremba.step, len(zaremba.compared), len(zaremba.points)) == (2, 6, 6)
    for p in zaremba.compared:
        assert zaremba.value(p) == trials[p.number].intermediate_values[2]
    assert (pooled.step, len(pooled.compared), len(pooled.points)) == (3, 7, 14)


def test_common_step_is_the_largest_epoch_enough_trials_reached():
    def points(*lasts: int) -> list[Point]:
        return [Point(i, AWD, "completed", {}, {}, {e: 100.0 for e in range(1, n + 1)})
                for i, n in enumerate(lasts)]

    assert common_step(points(5, 5, 3, 3, 3, 1)) == 3
    assert common_step(points(9, 8, 7, 6, 5, 4, 3)) == 5
    assert common_step(points(4, 2)) == 2  # fewer than MIN_TRIALS: the step all reached
    assert common_step([]) is None


def test_study_trials_are_paired_with_their_runs_by_their_tune_trial_id(with_study, store):
    """Runs started in the reverse order of the trials: pairing by order would mismatch every
    one; the two trials with the same params get their own runs. A trial without the id the
    searcher records has no run, even if a run has its params."""
    points = [p for g in with_study.models for p in g.points]
    assert len(points) == 14
    assert all(p.trial_id == f"t{p.number:04d}" for p in points)
    trial = optuna.trial.create_trial(params={"lr": 1.0}, distributions={
        "lr": FloatDistribution(0.1, 10.0)}, value=1.0)
    runs = pd.DataFrame([{"trial_id": "t0000", "run_id": "r", "params": {"lr": "1.0"}}])
    assert importance.match_runs([trial], runs) == {}


def test_a_param_fixed_by_set_is_left_out(store):
    analysis = _analysis(store, "fixed-dropout")
    assert analysis.source == SOURCE_STUDY
    assert [g.model for g in analysis.groups] == [POOLED, AWD, ZAREMBA]  # none left unchecked
    for group in analysis.groups:
        assert "dropout" not in group.importances and "dropout" not in group.searched
        assert group.left_out["dropout"].startswith("fixed by --set")
    points = [p for g in analysis.models for p in g.points]
    assert len(points) == 14  # the finished trials, every one paired with its run
    assert all(p.trial_id == f"t{p.number:04d}" for p in points)


def test_a_search_without_a_study_gets_a_labelled_reconstruction(store):
    analysis = _analysis(store, "no-study")
    assert analysis.source == SOURCE_MLFLOW
    assert analysis.origin.startswith(importance.FALLBACK)
    assert "the search run names none" in analysis.origin
    awd, zaremba = _group(analysis, AWD), _group(analysis, ZAREMBA)
    assert set(awd.params) == {"emsize", "dropout", "dropouth", "lr"}
    assert set(zaremba.params) == {"nhid", "dropout", "lr"}
    assert (awd.step, len(awd.compared), zaremba.step, len(zaremba.compared)) == (3, 5, 2, 6)


def test_no_top_parameter_is_compared_on_a_tie(with_study, store):
    pooled = _group(with_study, POOLED)
    tied = importance.Analysis("s", SOURCE_STUDY, "o", [pooled],
                               optuna_default={"lr": 0.5, "dropout": 0.5})
    assert "sets no parameter first (a tie at the top)" in importance.compare(tied,
                                                                              tuple(store[2]))


def test_optunas_own_answer_keeps_the_studys_direction_and_says_why_it_is_missing(store):
    """A study that maximises: its best 10% are its highest values (the copy keeps the
    direction). Here the highest values are set by b, the lowest by a."""
    trials = [optuna.trial.create_trial(
        params={"a": a, "b": b}, value=b if b > 0.5 else -a,
        distributions={"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)})
        for a, b in np.random.default_rng(0).uniform(size=(60, 2))]
    up, why = importance.optuna_default(tuple(trials), ("maximize",))
    assert why == "" and max(up, key=up.get) == "b", up
    down, _ = importance.optuna_default(tuple(trials), ("minimize",))
    assert max(down, key=down.get) == "a", down
    none, why = importance.optuna_default(tuple(trials[:1]), ("minimize",))
    assert none == {} and why == "1 completed trial(s), it needs 2"
    empty = importance.Analysis("s", SOURCE_STUDY, "o", [], optuna_missing=why)
    assert importance.compare(empty, ()) .endswith("nothing to rank: 1 completed trial(s), "
                                                   "it needs 2.")


def test_a_field_fixed_by_set_is_not_a_searched_column(store):
    data = load(store[0], ["fixed-dropout"])
    (search,) = [s for _, s in data.searches.iterrows()]
    assert "dropout" not in trials.searched_params(data, search).names
    assert "lr" in trials.searched_params(data, search).names


def test_trial_tables_show_what_each_trial_sampled_and_nothing_else(store):
    """With a study, the searched params are what it sampled, in its order: not decay_start,
    which a condition fixes and which differs between one model's runs; a param a trial did
    not sample (another model's) is missing, not its logged default; integers stay integers,
    in trials.csv too."""
    data = load(store[0], ["with-study"])
    (search,) = [s for _, s in data.searches.iterrows()]
    frame = trials.trial_frame(data, search)
    names = ["emsize", "dropout", "dropouth", "lr", "nhid"]
    assert list(frame.columns[len(trials.FRAME_COLUMNS):]) == names
    rows = frame.set_index("trial_id")
    assert len(rows) == len(store[2])
    for t in store[2]:
        row = rows.loc[f"t{t.number:04d}"]
        for name in names:
            if name in t.params:
                assert row[name] == pytest.approx(t.params[name]), (t.number, name)
            else:
                assert pd.isna(row[name]), (t.number, name, row[name])
    assert str(frame["emsize"].dtype) == str(frame["nhid"].dtype) == "Int64"
    text = io.StringIO()
    trials.all_trials(data).to_csv(text, index=False)
    csv = pd.read_csv(io.StringIO(text.getvalue()), dtype=str)
    assert {v for v in csv["nhid"].dropna()} <= {str(n) for n in range(32, 97, 16)}
    assert csv["emsize"].notna().sum() == sum("emsize" in t.params for t in store[2])
    section = trials.winners_section(data)
    assert "with-study: searched emsize, dropout, dropouth, lr, nhid." in section.blocks


# --- the report -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(store, tmp_path_factory) -> Path:
    """The report's sections that read the study (importance, slices, parallel coordinates),
    built as `reports.build.document` builds them, as report.md beside their figures."""
    out = tmp_path_factory.mktemp("report")
    analyses = importance.analyse(load(store[0], ["with-study", "no-study"]))
    sections = [build_module._importance_section(analyses, out),
                Section("Slices: every searched parameter", [*plots.slices(analyses, out)]),
                Section("Parallel coordinates", [*plots.parallel_coordinates(analyses, out)])]
    (out / "report.md").write_text(to_markdown(Document("r", [], sections)))
    return out


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_report_tables_name_the_source_budget_and_trial_counts(report, store):
    section = _section((report / "report.md").read_text(), "Hyperparameter importance")
    assert ("| Parameter | all models (epoch 3, 7 of 14 trials) | awd_lstm (epoch 3, 5 of 8 "
            "trials) | zaremba (epoch 2, 6 of 6 trials) |") in section
    assert f"with-study: Optuna study 'smoke-abc' in sqlite:///{store[1]}." in section
    assert f"no-study: {importance.FALLBACK} (the search run names none)." in section
    assert ("with-study: Left out: emsize, dropouth, nhid (not every model samples it; from "
            "the pooled view); lr (its range differs between models; from the pooled view).") \
        in section  # one line, each param once
    assert ("with-study: Rests on all models: 7 trials at epoch 3; awd_lstm: 5 trials at epoch "
            "3; zaremba: 6 trials at epoch 2. A hint, not a finding, below 20 trials") in section
    header = next(line for line in section.splitlines() if line.startswith("| Parameter"))
    assert header.endswith("| PED-ANOVA: Optuna's default (completed trials) |")
    assert "with-study: Optuna's default evaluator (PED-ANOVA" in section


def test_optunas_own_answer_is_optunas_default_call_on_the_study(with_study, store):
    """The column beside ours is what `get_param_importances(study)` gives on the stored
    study, with Optuna's default evaluator (PED-ANOVA), not one of ours."""
    import warnings

    study = optuna.load_study(study_name="smoke-abc", storage=f"sqlite:///{store[1]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = optuna.importance.get_param_importances(study)
    assert with_study.optuna_default == pytest.approx(dict(expected))
    assert set(with_study.optuna_default) >= {"lr", "dropout", "model"}


def test_a_disagreement_with_optuna_is_explained_by_what_this_search_has(with_study, store):
    pooled = _group(with_study, POOLED)
    agree = importance.Analysis("s", SOURCE_STUDY, "o", [pooled],
                                optuna_default={n: v for n, v in pooled.importances.items()})
    line = importance.compare(agree, tuple(store[2]))
    assert line.endswith(f"agrees on the most important parameter of all models: "
                         f"{max(pooled.importances, key=pooled.importances.get)}.")
    theirs = {"lr": 0.7, "dropout": 0.2, "model": 0.1}
    ours = importance.Group("s", POOLED, pooled.points, params=pooled.params,
                            left_out=pooled.left_out, step=2,
                            importances={"model": 0.8, "dropout": 0.2})
    line = importance.compare(importance.Analysis("s", SOURCE_STUDY, "o", [ours],
                                                  optuna_default=theirs), tuple(store[2]))
    assert "ranks lr first where fANOVA here ranks model first (all models)" in line
    assert "only the 7 completed trials' final values (the 7 ASHA stopped are left out)" in line
    assert "the best 10% of them (1) against all of them" in line
    assert "it ranks lr, which ours leaves out of all models (its range differs between " \
        "models)" in line
    assert "ours compares trials at epoch 2, where it uses each completed trial's value at " \
        "its end (epoch 3)" in line


def test_slices_cover_every_searched_param(with_study, report):
    assert list(plots.slice_params(with_study)) == ["emsize", "dropout", "dropouth", "lr",
                                                    "nhid"]
    section = _section((report / "report.md").read_text(), "Slices: every searched parameter")
    assert "](slice_with-study.png)" in section and "](slice_no-study.png)" in section


@pytest.mark.parametrize("name", ["slice_with-study.png", "parallel_with-study.png",
                                  "parallel_no-study.png", "importance_with-study.png"])
def test_figures_are_real_pngs(report, name):
    from PIL import Image

    with Image.open(report / name) as image:
        image.load()
        assert image.width >= 600 and image.height >= 300, image.size
        gray = image.convert("L")
    low, high = gray.getextrema()
    assert high - low > 100
    inked = sum(gray.histogram()[:128]) / (gray.width * gray.height)
    assert 0.005 < inked < 0.5, inked
    assert f"]({name})" in (report / "report.md").read_text()
