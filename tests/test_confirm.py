"""Confirmation of the winners (``--confirm-top K --seeds S``): choosing the configurations, the
seeds, the statistics and the verdict (fast), their MLflow records and report section (fast, a
real SQLite store), and one real search that confirms its best (slow)."""

from __future__ import annotations

import json
import math
import os
import pickle
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import DATA_DIR, real_data
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from awd.config import from_flat
from reports.build import build
from reports.confirmation import section
from reports.load import load
from reports.render import Table
from search import schema
from search.results import TrialSummary
from search.stages import confirm
from search.tune.callback import MLflowTrialLogger
from spaces import get_space

C, S, F = schema.STATUS_COMPLETED, schema.STATUS_STOPPED, schema.STATUS_FAILED
SMOKE = get_space("smoke")
PAPER = SMOKE.paper_config(epochs=2)


def trial(trial_id: str, status: str, val: float | None = None, config: dict | None = None,
          **metrics: float) -> TrialSummary:
    if val is not None:
        metrics = {schema.BEST_VAL_PPL: val, **metrics}
        if status == C:
            metrics.update({schema.FINISHED: True, schema.FINAL_VAL_PPL: val,
                            schema.FINAL_TEST_PPL: val - 1})
    return TrialSummary(trial_id, status, dict(config if config is not None else {**PAPER,
                                                                                   "lr": val}),
                        metrics, None, None)


# --- which configurations, which seeds -------------------------------------------------------
def test_choose_takes_the_top_distinct_configurations_then_the_paper_one():
    trials = [trial("paper", C, 90.0, config=PAPER), trial("a", C, 70.0),
              trial("a2", C, 71.0, config={**PAPER, "lr": 70.0}),  # a's config again
              trial("b", S, 60.0), trial("c", C, 80.0), trial("x", F, 5.0)]
    chosen = confirm.choose(trials, PAPER, top=2)
    assert [(c.trial_id, c.rank, c.paper) for c in chosen] == [
        ("a", 1, False), ("c", 3, False), ("paper", 4, True)]
    assert chosen[0].config == trials[1].config
    # completed trials rank before stopped ones; the failed one is never chosen
    assert [c.trial_id for c in confirm.choose(trials, PAPER, top=4)] == ["a", "c", "paper", "b"]


def test_choose_marks_the_paper_configuration_when_it_is_among_the_best():
    trials = [trial("paper", C, 60.0, config=PAPER), trial("a", C, 70.0)]
    chosen = confirm.choose(trials, PAPER, top=1)
    assert [(c.trial_id, c.rank, c.paper) for c in chosen] == [("paper", 1, True)]
    # configs compare as runs: a value spelled differently is the same configuration
    same = {**PAPER, "lr": int(PAPER["lr"])}
    assert confirm.choose([trial("p", C, 60.0, config=same)], PAPER, 1)[0].paper


def test_choose_without_a_paper_trial_or_any_result():
    assert [c.trial_id for c in confirm.choose([trial("a", C, 70.0)], PAPER, 3)] == ["a"]
    assert confirm.choose([trial("x", F, config=PAPER)], PAPER, 3) == [
        confirm.Candidate("x", 0, True, PAPER)]  # unranked, but the paper configuration
    assert confirm.choose([trial("x", F, config={**PAPER, "lr": 3.0})], PAPER, 3) == []


def test_new_seeds_are_reproducible_distinct_and_new():
    seeds = confirm.new_seeds(7, 5, taken={141})
    assert seeds == confirm.new_seeds(7, 5, taken={141}) != confirm.new_seeds(8, 5, set())
    assert len(set(seeds)) == 5 and 141 not in seeds and all(0 < s < 2**31 for s in seeds)
    assert seeds[0] not in confirm.new_seeds(7, 4, taken={seeds[0]})


def test_plan_gives_every_configuration_every_seed_and_the_logger_its_tags():
    trials = [trial("a", C, 70.0), trial("paper", C, 90.0, config=PAPER)]
    entries = confirm.plan(confirm.choose(trials, PAPER, 1), [11, 12])
    assert [(e["confirm_of"], e["seed"], e["run"]["seed"]) for e in entries] == [
        ("a", 11, 11), ("a", 12, 12), ("paper", 11, 11), ("paper", 12, 12)]
    config, tags = confirm.unwrap({confirm.KEY: entries[3]})
    assert from_flat(config).train.seed == 12 and config["lr"] == PAPER["lr"]
    assert tags == {schema.CONFIRM_OF: "paper", schema.SEED: "12", schema.CONFIRM_RANK: "2",
                    schema.CONFIRM_PAPER: "true"}


# --- statistics and the verdict ----------------------------------------------------------------
def test_welch_p_is_scipys_one_sided_welch_test():
    from scipy import stats

    samples = [([60.0, 61.5, 59.0], [64.0, 66.0, 65.5, 63.0]), ([1.0, 2.0], [1.5, 9.0]),
               ([5.0, 5.1, 4.9], [5.0, 5.05])]
    for a, b in samples:
        expected = stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue
        assert confirm.welch_p(a, b) == pytest.approx(expected, rel=1e-9)


def test_welch_p_edge_cases():
    assert math.isnan(confirm.welch_p([1.0], [2.0, 3.0]))
    assert confirm.welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0  # no noise at all
    assert confirm.welch_p([2.0, 2.0], [2.0, 2.0]) == 1.0
    assert confirm.welch_p([1.0, 2.0], [1.0, 2.0]) == pytest.approx(0.5)


def record(of: str, rank: int, paper: bool, seed: int, val: float | None,
           status: str = C, train_seconds: float = 3600.0) -> dict:
    out = {"confirm_of": of, "rank": rank, "paper": paper, "seed": seed, "status": status,
           schema.TRAIN_SECONDS: train_seconds, "gpus_per_trial": 0.5}
    if val is not None:
        out.update({schema.FINAL_VAL_PPL: val, schema.FINAL_TEST_PPL: val - 2})
    return out


ORIGINALS = {"a": {"status": C, schema.FINAL_VAL_PPL: 58.0, schema.FINAL_TEST_PPL: 56.0},
             "p": {"status": S, schema.BEST_VAL_PPL: 70.0}}


def test_summarize_runs_mean_std_original_and_a_clear_win():
    runs = [record("p", 3, True, 1, 66.0), record("a", 1, False, 1, 60.0),
            record("a", 1, False, 2, 61.0), record("p", 3, True, 2, 65.0),
            record("a", 1, False, 3, 62.0), record("p", 3, True, 3, 64.0),
            record("a", 1, False, 4, None, status=F), record("p", 3, True, 4, None, status=S)]
    c = confirm.summarize_runs(runs, ORIGINALS)
    assert [s.trial_id for s in c.configs] == ["a", "p"]
    best, paper = c.best, c.paper
    assert best is not None and paper is not None and best.trial_id == "a" and paper.paper
    assert best.val_mean_std == (61.0, 1.0) and best.test_mean_std == (59.0, 1.0)
    assert (best.runs, sorted(best.seeds), best.val) == (4, [1, 2, 3, 4], [60.0, 61.0, 62.0])
    assert best.original_val == 58.0 and best.original_test == 56.0
    assert math.isnan(paper.original_val)  # stopped early: no final perplexity
    assert (c.runs, c.completed, c.gpu_hours) == (8, 6, 4.0)
    assert best.p_vs_paper == c.verdict.p_value == confirm.welch_p(best.val, paper.val)
    assert c.verdict.better is True and c.verdict.p_value < confirm.ALPHA
    assert c.verdict.text.startswith("yes") and "61.00 ± 1.00" in c.verdict.text
    metrics = confirm.summary_metrics(c)
    assert set(metrics) == set(schema.CONFIRM_SUMMARY_METRICS)
    assert metrics[schema.CONFIRM_BEST_VAL_MEAN] == 61.0
    assert metrics[schema.CONFIRM_PAPER_VAL_STD] == statistics.stdev([66.0, 65.0, 64.0])
    assert metrics[schema.CONFIRM_BETTER] == 1.0 and metrics[schema.CONFIRM_RUNS] == 8.0


def test_verdict_no_within_seed_noise():
    runs = [record("a", 1, False, s, v) for s, v in ((1, 60.0), (2, 66.0))]
    runs += [record("p", 2, True, s, v) for s, v in ((1, 62.0), (2, 65.0))]
    c = confirm.summarize_runs(runs, ORIGINALS)
    assert c.verdict.better is False and c.verdict.p_value >= confirm.ALPHA
    assert c.verdict.text.startswith("no")
    assert confirm.summary_metrics(c)[schema.CONFIRM_BETTER] == 0.0


def test_verdict_when_it_cannot_compare():
    one_seed = [record("a", 1, False, 1, 60.0), record("p", 2, True, 1, 70.0)]
    c = confirm.summarize_runs(one_seed, ORIGINALS)
    assert c.verdict.better is None and c.verdict.text.startswith("undecided")
    metrics = confirm.summary_metrics(c)
    assert schema.CONFIRM_BETTER not in metrics and schema.CONFIRM_P_VALUE not in metrics
    assert schema.CONFIRM_BEST_VAL_STD not in metrics  # undefined with one value
    best_is_paper = confirm.summarize_runs([record("p", 1, True, s, 60.0 + s) for s in (1, 2)],
                                           ORIGINALS)
    assert best_is_paper.verdict.better is False
    assert "is the paper configuration" in best_is_paper.verdict.text
    no_paper = confirm.summarize_runs([record("a", 1, False, s, 60.0) for s in (1, 2)], {})
    assert no_paper.verdict.better is None and "not among" in no_paper.verdict.text


# --- no confirmation of an interrupted search --------------------------------------------------
def test_tune_gives_the_previous_sigint_handler_back_only_when_it_catches_sigint():
    """The contract `search.tune.session.fit` tells an interrupted search by."""
    import signal

    from ray.tune.tune import _setup_signal_catching

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}

    def before(signum, frame):  # the handler in place when the search calls fit
        raise AssertionError("Tune's handler takes the first SIGINT")

    signal.signal(signal.SIGINT, before)
    try:
        event = _setup_signal_catching()
        tunes = signal.getsignal(signal.SIGINT)
        assert tunes is not before and not event.is_set()  # Tune's, for the whole run
        tunes(signal.SIGINT, None)  # Ctrl-C
        assert event.is_set() and signal.getsignal(signal.SIGINT) is before
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


# --- MLflow: the runs, the parent's summary, the report ---------------------------------------
@pytest.fixture(scope="module")
def database(tmp_path_factory, new_mlflow_store):
    """One SQLite store for the module: an experiment per test."""
    folder = tmp_path_factory.mktemp("mlflow")
    return new_mlflow_store(folder), folder


@pytest.fixture
def store(database, request):
    uri, folder = database
    client = MlflowClient(uri)
    name = request.node.name[:40]
    exp = client.create_experiment(name, artifact_location=(folder / name).as_uri())
    parent = client.create_run(exp, run_name="smoke-search", tags={
        schema.ROLE: schema.ROLE_SEARCH, schema.SPACE: "smoke"}).info.run_id
    client.log_batch(parent, params=[Param("gpus_per_trial", "0.5")])
    return uri, client, exp, parent, name


def fake_trial(trial_id: str, config: dict) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config=config, last_result={}, error_file=None)


def test_logger_writes_confirmation_runs_with_their_role_and_tags(store):
    uri, client, exp, parent, _ = store
    logger = MLflowTrialLogger(uri, exp, parent, "smoke", {"gpus_per_trial": 0.5},
                               role=schema.ROLE_CONFIRM, unwrap=confirm.unwrap)
    logger = pickle.loads(pickle.dumps(logger))  # as Tune keeps it in its experiment state
    entry = confirm.plan([confirm.Candidate("abc", 1, False, dict(PAPER))], [99])[0]
    t = fake_trial("cf_00000", {confirm.KEY: entry})
    logger.on_trial_start(0, [], t)
    logger.on_trial_result(0, [], t, {"epoch": 1, "val_ppl": 80.0, "best_val_ppl": 80.0,
                                      "num_params": 10.0})
    logger.on_trial_complete(0, [], t)
    assert logger.drain(10)  # written by the logger's own thread, off Tune's loop
    (run,) = client.search_runs([exp], filter_string=f"tags.`{schema.ROLE}` = 'confirm'")
    tags, params = run.data.tags, run.data.params
    assert run.info.run_name == "smoke-confirm-cf_00000"
    assert tags[schema.PARENT_RUN_ID] == parent and tags[schema.TRIAL_ID] == "cf_00000"
    assert (tags[schema.CONFIRM_OF], tags[schema.SEED], tags[schema.CONFIRM_RANK],
            tags[schema.CONFIRM_PAPER]) == ("abc", "99", "1", "false")
    assert params["seed"] == "99" and params["gpus_per_trial"] == "0.5"
    assert from_flat({k: v for k, v in params.items() if k != "gpus_per_trial"}).train.seed == 99
    # a search trial's logger, as before, also after the pickling of a saved Tuner
    plain = MLflowTrialLogger(uri, exp, parent, "smoke")
    revived = pickle.loads(pickle.dumps(plain))
    revived.on_trial_start(0, [], fake_trial("t1", dict(PAPER)))
    assert revived.drain(10)
    (run,) = client.search_runs([exp], filter_string=f"tags.`{schema.ROLE}` = 'trial'")
    assert run.info.run_name == "smoke-t1" and schema.CONFIRM_OF not in run.data.tags


def write_run(client: MlflowClient, exp: str, parent: str, trial_id: str, role: str,
              val: float, tags: dict | None = None, seed: int = 141) -> None:
    run = client.create_run(exp, run_name=f"smoke-{trial_id}", tags={
        schema.PARENT_RUN_ID: parent, schema.ROLE: role, schema.TRIAL_ID: trial_id,
        schema.STATUS: C, schema.MODEL: "awd_lstm", schema.DATASET: "ptb", **(tags or {})})
    rid = run.info.run_id
    params = {**PAPER, "lr": 5.0 if trial_id == "best" else PAPER["lr"], "seed": seed,
              "gpus_per_trial": 0.5}
    metrics = {schema.FINAL_VAL_PPL: val, schema.FINAL_TEST_PPL: val - 1, "num_params": 1e4,
               "epochs_run": 2, "train_seconds": 1800.0, schema.BEST_VAL_PPL: val}
    client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()],
                     metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()]
                     + [Metric("val_ppl", val, 0, e) for e in (1, 2)])
    client.set_terminated(rid, "FINISHED")


def test_parent_summary_and_report_section_from_mlflow(store, tmp_path):
    uri, client, exp, parent, name = store
    write_run(client, exp, parent, "best", schema.ROLE_TRIAL, 58.0)
    write_run(client, exp, parent, "paper", schema.ROLE_TRIAL, 66.0)
    for of, rank, vals in (("best", 1, (60.0, 61.0, 62.0)), ("paper", 2, (64.0, 65.0, 66.0))):
        for seed, val in enumerate(vals, 1):
            write_run(client, exp, parent, f"c-{of}-{seed}", schema.ROLE_CONFIRM, val, tags={
                schema.CONFIRM_OF: of, schema.CONFIRM_RANK: str(rank), schema.SEED: str(seed),
                schema.CONFIRM_PAPER: str(of == "paper").lower()}, seed=seed)
    records = [{"confirm_of": of, "rank": r, "paper": of == "paper", "seed": s,
                "status": C, schema.FINAL_VAL_PPL: v, schema.FINAL_TEST_PPL: v - 1,
                schema.TRAIN_SECONDS: 1800.0, "gpus_per_trial": 0.5}
               for of, r, vals in (("best", 1, (60.0, 61.0, 62.0)),
                                   ("paper", 2, (64.0, 65.0, 66.0)))
               for s, v in enumerate(vals, 1)]
    result = confirm.summarize_runs(records, {"best": {"status": C, "final_val_ppl": 58.0}})
    confirm.log_confirmation(client, parent, result)
    run = client.get_run(parent)
    assert run.data.metrics[schema.CONFIRM_BEST_VAL_MEAN] == 61.0
    assert run.data.metrics[schema.CONFIRM_BETTER] == 1.0
    assert run.data.tags[schema.CONFIRM_VERDICT] == result.verdict.text
    artifact = json.loads(Path(client.download_artifacts(parent, confirm.ARTIFACT,
                                                         str(tmp_path))).read_text())
    assert [c["trial_id"] for c in artifact["configurations"]] == ["best", "paper"]
    assert artifact["configurations"][0]["original_val_ppl"] == 58.0

    data = load(uri, [name])
    assert sorted(data.trials()["trial_id"]) == ["best", "paper"]  # confirmations: not trials
    found = section(data)
    assert found is not None
    (table,) = [b for b in found.blocks if isinstance(b, Table)]
    assert [row[:5] for row in table.rows] == [[name, "best", "1", "", "58.00"],
                                               [name, "paper", "2", "yes", "66.00"]]
    assert table.rows[0][5:8] == ["61.00 ± 1.00", "60.00 ± 1.00", "3/3"]
    assert float(table.rows[0][8]) == pytest.approx(result.verdict.p_value, rel=1e-2)
    assert any(f"{name}: {result.verdict.text}" in b for b in found.blocks if isinstance(b, list))
    assert any(f"{name}: 6 confirmation runs, 1.500 GPU-h" in b[0] for b in found.blocks
               if isinstance(b, list) and len(b) == 1 and "GPU-h" in b[0])


def test_no_confirmation_runs_no_section(store):
    uri, client, exp, parent, name = store
    write_run(client, exp, parent, "best", schema.ROLE_TRIAL, 58.0)
    assert section(load(uri, [name])) is None


# --- one real search that confirms its best ---------------------------------------------------
@pytest.mark.slow
def test_search_confirms_its_best_and_the_paper_configuration(tmp_path):
    real_data("ptb")
    samples, seeds = 2, 2
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--space", "smoke", "--num-samples", str(samples),
         "--max-epochs", "1", "--concurrency", "2", "--confirm-top", "1", "--seeds", str(seeds),
         "--set", "train_tokens=3000", "--seed", "0", "--experiment", "conf"],
        cwd=tmp_path, capture_output=True, text=True, timeout=400,
        env={**os.environ, "AWD_DATA_DIR": str(DATA_DIR)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Confirmation (new seeds" in proc.stdout and "Best vs paper: " in proc.stdout

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("conf").experiment_id
    runs = client.search_runs([exp], max_results=100)
    by_role: dict[str, list] = {}
    for r in runs:
        by_role.setdefault(r.data.tags[schema.ROLE], []).append(r)
    (parent,) = by_role[schema.ROLE_SEARCH]
    trials = {r.data.tags[schema.TRIAL_ID]: r for r in by_role[schema.ROLE_TRIAL]}
    confirms = by_role[schema.ROLE_CONFIRM]
    assert len(trials) == samples
    best_id = parent.data.tags[schema.BEST_TRIAL_ID]
    warm = get_space("smoke").warm_start
    paper_id = next(t for t, r in trials.items()
                    if all(r.data.params[k] == str(v) for k, v in warm.items()))
    confirmed = {r.data.tags[schema.CONFIRM_OF] for r in confirms}
    assert confirmed == {best_id, paper_id}
    assert len(confirms) == seeds * len(confirmed)
    state = json.loads((tmp_path / "ray_results" / "conf-confirm" / confirm.STATE_FILE)
                       .read_text())
    assert state["parent_run_id"] == parent.info.run_id
    for r in confirms:  # a re-training of its original's config with a new seed, full budget
        tags, params = r.data.tags, r.data.params
        original = trials[tags[schema.CONFIRM_OF]].data.params
        assert tags[schema.PARENT_RUN_ID] == parent.info.run_id
        assert tags[schema.STATUS] == C and r.info.status == "FINISHED"
        assert tags[schema.SEED] == params["seed"] and int(params["seed"]) in state["seeds"]
        run = from_flat({k: v for k, v in original.items() if k != "gpus_per_trial"})
        assert int(params["seed"]) != run.train.seed  # a new seed, not the original's
        assert {k: v for k, v in params.items() if k != "seed"} == {
            k: v for k, v in original.items() if k != "seed"}
        assert tags[schema.CONFIRM_PAPER] == str(tags[schema.CONFIRM_OF] == paper_id).lower()
        assert r.data.metrics[schema.EPOCHS_RUN] == 1 and r.data.metrics[schema.FINAL_VAL_PPL] > 1
    assert sorted(int(r.data.params["seed"]) for r in confirms) == sorted(
        state["seeds"] * len(confirmed))

    metrics = parent.data.metrics
    assert metrics["trials_total"] == samples  # confirmation runs are not trials
    assert metrics[schema.CONFIRM_RUNS] == metrics[schema.CONFIRM_COMPLETED] == len(confirms)
    best_vals = [r.data.metrics[schema.FINAL_VAL_PPL] for r in confirms
                 if r.data.tags[schema.CONFIRM_OF] == best_id]
    assert metrics[schema.CONFIRM_BEST_VAL_MEAN] == pytest.approx(statistics.fmean(best_vals))
    assert metrics[schema.CONFIRM_BEST_VAL_STD] == pytest.approx(statistics.stdev(best_vals))
    assert schema.CONFIRM_PAPER_VAL_MEAN in metrics and schema.CONFIRM_BETTER in metrics
    assert parent.data.tags[schema.CONFIRM_VERDICT].startswith(
        ("yes", "no") if best_id != paper_id else "the search's best configuration is the paper")

    result = build(uri, ["conf"], tmp_path / "report", log_artifacts=False)
    text = (tmp_path / "report" / "report.md").read_text()
    assert not result.problems and "## Confirmation of the winners" in text
    assert parent.data.tags[schema.CONFIRM_VERDICT] in text
    assert f"| conf | {best_id} | 1 |" in text
