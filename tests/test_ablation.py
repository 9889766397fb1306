"""``--ablate``: the AWD-LSTM paper's Table 4 on a search's winner (issue 18).

Fast: the rows (what each changes, where each applies), the statistics, the bad values. Slow: a
real smoke search with ``--confirm-top 1 --ablate``, SIGKILLed (driver, Ray and all) in the
middle of its ablation, then resumed: every applicable row trained once per seed with its change
and nothing else, the winner's row shared with the confirmation, the report's section."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA_DIR, real_data
from mlflow.tracking import MlflowClient
from processes import kill_tree, tail

from awd.ablation import PAPER, ROWS, ablated, applies_to, paper_change, parse_rows, rows_for
from awd.config import ConfigError, from_flat, preset
from search import schema
from search.options import OptionError, SearchOptions, resumed
from search.plan import retrainings
from search.results import parse_param
from search.stages.ablate import FULL, RowStats, full_from_confirmation, holm, summarize
from search.stages.confirm import ConfigStats, Confirmation, Verdict, welch_p


# --- the rows -------------------------------------------------------------------------------
def _lstm(**over) -> dict:
    return {**preset("awd_lstm").to_flat(), "finetune_epochs": 2, **over}


@pytest.mark.parametrize("name", list(ROWS))
def test_each_row_changes_only_what_it_removes(name):
    flat = _lstm()
    out = ablated(flat, name)
    changed = {k for k in out if out[k] != flat[k]}
    assert changed and changed <= set(ROWS[name].remove(flat))
    assert not ROWS[name].uses(out) or (name == "ntasgd" and out["optimizer"] == "sgd_schedule")
    from_flat(dict(out))  # a valid run


def test_what_the_rows_change_is_the_papers():
    flat = _lstm()
    assert ablated(flat, "ntasgd")["optimizer"] == "sgd_schedule"
    assert ablated(flat, "ntasgd")["lr_decay"] == 1.0  # constant lr: no averaging, no decay
    assert ablated(flat, "ntasgd")["finetune_epochs"] == 0
    assert ablated(flat, "full_embedding")["emsize"] == flat["nhid"] == 1150
    assert ablated(flat, "variable_bptt")["variable_bptt"] is False
    assert (ablated(flat, "ar_tar")["alpha"], ablated(flat, "ar_tar")["beta"]) == (0.0, 0.0)
    assert ablated(flat, "weight_drop")["wdrop"] == 0.0


def test_a_technique_the_configuration_does_not_use_cannot_be_removed():
    with pytest.raises(ConfigError, match="does not use it"):
        ablated(_lstm(wdrop=0.0), "weight_drop")
    with pytest.raises(ConfigError, match="does not use it"):
        ablated(_lstm(finetune_epochs=0), "finetune")
    with pytest.raises(ConfigError, match="does not use it"):
        ablated(_lstm(emsize=1150), "full_embedding")


def test_a_search_trials_partial_config_counts_its_preset_values():
    partial = {"model": "awd_lstm", "dataset": "ptb", "nhid": 64, "emsize": 32}  # as Tune has it
    out = ablated(partial, "weight_decay")  # the preset's wdecay 1.2e-6 is removed
    assert out["wdecay"] == 0.0 and out["nhid"] == 64 and out["alpha"] == 2.0
    assert ablated(partial, "ar_tar")["alpha"] == 0.0


def test_zaremba_gets_only_the_rows_that_apply():
    assert [r.name for r in rows_for("zaremba")] == [
        "finetune", "ntasgd", "variable_bptt", "weight_decay", "ar_tar"]
    assert [r.name for r in rows_for("awd_gru")] == list(ROWS)
    assert not applies_to(ROWS["weight_drop"], "zaremba")


@pytest.mark.parametrize("text, message", [
    ("nope", "unknown row 'nope'"),
    ("weight_drop,weight_drop", "given twice"),
    ("ar_tar,", "unknown row ''"),
])
def test_bad_rows_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_rows(text, "awd_lstm")


def test_a_row_that_does_not_apply_to_the_model_is_refused():
    with pytest.raises(ConfigError, match="does not apply to zaremba: it has no wdrop"):
        parse_rows("ntasgd,weight_drop", "zaremba")


def test_the_papers_changes():
    assert paper_change("weight_drop", "ptb") == (11.1, 11.6)  # 71.1/68.9 against 60.0/57.3
    assert paper_change("ar_tar", "wikitext-2") == (4.6, 4.3)
    assert set(PAPER) == set(ROWS)


# --- the statistics ---------------------------------------------------------------------------
def _rec(row: str, seed: int, val: float | None, status: str = schema.STATUS_COMPLETED) -> dict:
    return {"row": row, "seed": seed, "status": status, schema.FINAL_VAL_PPL: val,
            schema.FINAL_TEST_PPL: None if val is None else val - 2, "train_seconds": 3600.0,
            "gpus_per_trial": 0.5}


def test_summarize_compares_each_row_with_the_winner():
    records = [_rec(FULL, 1, 60.0), _rec(FULL, 2, 61.0), _rec(FULL, 3, 62.0),
               _rec("weight_drop", 1, 70.0), _rec("weight_drop", 2, 71.5),
               _rec("weight_drop", 3, 69.0), _rec("ar_tar", 1, 61.0), _rec("ar_tar", 2, 60.5),
               _rec("ar_tar", 3, None, schema.STATUS_FAILED), _rec("ntasgd", 1, 80.0)]
    a = summarize(records, winner="t1", model="awd_lstm", dataset="ptb")
    assert [r.row for r in a.rows] == [FULL, "ntasgd", "ar_tar", "weight_drop"]  # paper order
    wd = next(r for r in a.rows if r.row == "weight_drop")
    assert wd.delta_val == pytest.approx((70 + 71.5 + 69) / 3 - 61.0)
    assert wd.p_value == pytest.approx(welch_p([60, 61, 62], [70, 71.5, 69]))
    assert wd.beyond_noise is True
    ar = next(r for r in a.rows if r.row == "ar_tar")
    assert ar.runs == 3 and ar.val == [61.0, 60.5] and ar.beyond_noise is False
    assert wd.verdict.startswith("worse (Holm p = ") and ar.verdict.startswith("no (Holm p = ")
    nt = next(r for r in a.rows if r.row == "ntasgd")
    assert math.isnan(nt.p_value) and nt.beyond_noise is None  # one seed: undecided
    assert nt.verdict == ""
    assert a.runs == 10 and a.completed == 9
    assert a.gpu_hours == pytest.approx(10 * 0.5)
    row = next(r for r in a.rows_dicts() if r["row"] == "weight_drop")
    assert (row["paper_delta_val"], row["paper_delta_test"]) == (11.1, 11.6)


def test_a_removal_that_helps_beyond_noise_says_so_and_identical_runs_are_named():
    records = [_rec(FULL, 1, 60.0), _rec(FULL, 2, 61.0), _rec(FULL, 3, 62.0),
               _rec("full_embedding", 1, 50.0), _rec("full_embedding", 2, 51.0),
               _rec("full_embedding", 3, 50.5), _rec("ntasgd", 1, 60.0), _rec("ntasgd", 2, 61.0),
               _rec("ntasgd", 3, 62.0)]
    a = summarize(records, winner="t1", model="awd_lstm", dataset="ptb")
    fe = next(r for r in a.rows if r.row == "full_embedding")
    assert fe.beyond_noise is True and fe.verdict.startswith("better (Holm p = ")
    assert fe.p_better == pytest.approx(welch_p([50, 51, 50.5], [60, 61, 62]))
    assert fe.p_holm == pytest.approx(2 * fe.p_better)  # two rows tested: Holm doubles it
    nt = next(r for r in a.rows if r.row == "ntasgd")
    assert nt.verdict == "no (identical runs: the technique never acted)"


def test_holm_adjusts_for_the_rows_tested_together():
    rows = [RowStats("a", p_value=0.01, p_better=0.99), RowStats("b", p_value=0.04, p_better=0.96),
            RowStats("c", p_value=0.98, p_better=0.02)]
    holm(rows)
    # sorted 0.01, 0.02, 0.04: x3, x2, x1, each at least the one before
    assert [r.p_holm for r in rows] == pytest.approx([0.03, 0.04, 0.04])
    assert [r.beyond_noise for r in rows] == [True, True, True]
    rows[1].p_value = 0.2
    holm(rows)
    assert rows[1].p_holm == pytest.approx(0.2) and rows[1].beyond_noise is False


def test_the_winners_row_comes_from_the_confirmation_when_it_ran():
    best = ConfigStats("t1", 1, False, 59.0, 57.0, runs=2, seeds=[5, 6], val=[60.0, 62.0],
                       test=[58.0, 60.0])
    c = Confirmation([best], Verdict(None, math.nan, ""), 2, 2, 0.0)
    full = full_from_confirmation(c, "t1")
    assert isinstance(full, RowStats) and full.val == [60.0, 62.0] and full.seeds == [5, 6]
    assert full_from_confirmation(c, "other") is None
    a = summarize([_rec("weight_decay", 5, 64.0),
                   _rec("weight_decay", 6, 66.0)], winner="t1", model="awd_lstm",
                  dataset="ptb", full=full)
    assert a.rows[0] is full and a.rows[1].delta_val == pytest.approx(4.0)
    assert a.completed == 2  # the confirmation's runs are counted there, not here


# --- options ----------------------------------------------------------------------------------
def test_options_check_the_rows_of_the_spaces_models():
    SearchOptions(space="zaremba_ptb", ablate="ntasgd,ar_tar").validate()
    SearchOptions(space="smoke", ablate="weight_drop").validate()  # a mixed space: one applies
    with pytest.raises(OptionError, match="does not apply to zaremba"):
        SearchOptions(space="zaremba_ptb", ablate="full_embedding").validate()


def test_a_resume_keeps_the_ablation_asked_for_at_the_start():
    saved = SearchOptions(space="smoke", ablate="all")
    assert resumed(SearchOptions(space="smoke", resume=True), saved).ablate == "all"
    again = resumed(SearchOptions(space="smoke", resume=True, ablate="ar_tar", seeds=5), saved)
    assert again.ablate == "ar_tar" and again.seeds == 5  # an ablation after the fact: its seeds


def test_the_plan_counts_the_ablation_runs():
    both = retrainings(SearchOptions(space="awd_ptb", confirm_top=1, seeds=3, ablate="all"))
    assert [n for _, n in both] == [6, 8 * 3]  # the winner's own row: the confirmation's
    alone = retrainings(SearchOptions(space="zaremba_ptb", seeds=2, ablate="all"))
    assert [n for _, n in alone] == [(5 + 1) * 2]


@pytest.mark.parametrize("value, message", [
    ("nope", "--ablate: unknown row 'nope'"),
    ("weight_drop", "--ablate: row weight_drop (wdrop = 0) does not apply to zaremba"),
])
def test_the_command_refuses_a_bad_row_before_ray_starts(tmp_path, value, message):
    proc = subprocess.run([sys.executable, "-m", "search.run", "--space", "zaremba_ptb",
                           "--ablate", value], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


# --- one real search: killed in its ablation, resumed -----------------------------------------
ARGS = ["--space", "smoke", "--num-samples", "2", "--max-epochs", "1", "--concurrency", "2",
        "--confirm-top", "1", "--seeds", "2", "--ablate", "--seed", "3", "--experiment", "abl",
        "--set", "model=awd_lstm", "--set", "train_tokens=4000", "--set", "wdecay=1e-6",
        "--set", "alpha=1.0", "--set", "beta=1.0"]


def _count_finished_ablation_runs(con: sqlite3.Connection) -> int:
    return int(con.execute(
        "SELECT COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = ? AND t.value = ? AND r.status = 'FINISHED'",
        (schema.ROLE, schema.ROLE_ABLATION)).fetchone()[0])


def _finished_ablation_runs(db: Path) -> int:
    """While the driver writes: read-only, and 0 for a store not made yet or busy."""
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return _count_finished_ablation_runs(con)
    except sqlite3.Error:
        return 0


def _finished_ablation_runs_after_kill(db: Path) -> int:
    """After the kill: a connection that may write, since a driver killed inside a transaction
    leaves a hot journal that only such a connection rolls back (a read-only one fails with
    "attempt to write a readonly database", which counted 0 once in CI); as --resume's store
    will."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
        return _count_finished_ablation_runs(con)


@pytest.fixture(scope="module")
def ablated_search(tmp_path_factory):
    real_data("ptb")
    cwd = tmp_path_factory.mktemp("ablate")
    env = {**os.environ, "AWD_DATA_DIR": str(DATA_DIR)}
    log = cwd / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "search.run", *ARGS], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 400
        while _finished_ablation_runs(cwd / "mlflow.db") < 2:
            assert proc.poll() is None, tail(log)
            assert time.time() < deadline, tail(log)
            time.sleep(0.1)
        kill_tree(proc.pid)  # the driver and its Ray, at once, in the middle of the ablation
        proc.wait(timeout=60)
    at_kill = _finished_ablation_runs_after_kill(cwd / "mlflow.db")
    again = subprocess.run([sys.executable, "-m", "search.run", *ARGS, "--resume"], cwd=cwd,
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return cwd, at_kill, again


def _by_role(uri: str) -> dict[str, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("abl").experiment_id
    out: dict[str, list] = {}
    for r in client.search_runs([exp], max_results=1000):
        out.setdefault(r.data.tags.get(schema.ROLE, ""), []).append(r)
    return out


@pytest.mark.slow
def test_every_row_is_trained_once_per_seed_with_its_change_and_nothing_else(ablated_search):
    cwd, at_kill, again = ablated_search
    runs = _by_role(f"sqlite:///{cwd / 'mlflow.db'}")
    (parent,) = runs[schema.ROLE_SEARCH]
    ablations = runs[schema.ROLE_ABLATION]
    total = len(ablations)
    assert 2 <= at_kill < total  # the kill came in the middle of the stage
    winner_id = parent.data.tags[schema.BEST_TRIAL_ID]
    winner = next(r for r in runs[schema.ROLE_TRIAL] if r.data.tags[schema.TRIAL_ID] == winner_id)
    flat = {k: parse_param(v) for k, v in winner.data.params.items() if k != "gpus_per_trial"}
    expected = [r.name for r in rows_for("awd_lstm") if r.uses(flat)]
    assert {"ar_tar", "weight_decay", "ntasgd", "weight_drop"} <= set(expected)
    confirm_state = json.loads((cwd / "ray_results" / "abl-confirm" /
                                "awdsearch_confirm.json").read_text())
    seeds = sorted(confirm_state["seeds"])
    done = sorted((r.data.tags[schema.ABLATION], int(r.data.params["seed"])) for r in ablations)
    assert done == sorted((row, s) for row in expected for s in seeds)  # once each, no "full"
    for r in ablations:
        row = r.data.tags[schema.ABLATION]
        assert r.info.status == "FINISHED" and r.data.tags[schema.STATUS] == "completed"
        assert r.data.tags[schema.ABLATION_OF] == winner_id
        assert r.data.tags[schema.PARENT_RUN_ID] == parent.info.run_id
        want = {k: str(v) for k, v in ablated(flat, row).items() if k != "seed"}
        got = {k: v for k, v in r.data.params.items() if k not in ("seed", "gpus_per_trial")}
        assert {k: parse_param(v) for k, v in got.items()} == \
            {k: parse_param(v) for k, v in want.items()}, row
        assert r.data.metrics[schema.FINAL_VAL_PPL] > 1
    for r in runs[schema.ROLE_TRIAL] + runs[schema.ROLE_CONFIRM] + ablations:  # their cost
        m = r.data.metrics
        assert m[schema.NUM_PARAMS] > 0 and m[schema.TRAIN_TOKENS_PER_S] > 0
        assert m[schema.SECONDS_PER_EPOCH] > 0 and m[schema.PEAK_MEMORY_MB] > 50
        assert m[schema.SECONDS_PER_EPOCH] == pytest.approx(
            m[schema.TRAIN_SECONDS] / m[schema.EPOCHS_RUN])
        assert r.data.tags[schema.DEVICE] == "cpu"
    metrics = parent.data.metrics
    assert metrics["trials_total"] == 2  # ablation runs are not trials
    assert metrics[schema.ABLATION_RUNS] == metrics[schema.ABLATION_COMPLETED] == total
    assert "Ablation of the winner" in again.stdout


@pytest.mark.slow
def test_the_ablation_artifact_and_report(ablated_search):
    cwd, _, _ = ablated_search
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    client = MlflowClient(uri)
    (parent,) = _by_role(uri)[schema.ROLE_SEARCH]
    path = client.download_artifacts(parent.info.run_id, "ablation.json", str(cwd))
    saved = json.loads(Path(path).read_text())
    rows = {r["row"]: r for r in saved["rows"]}
    assert rows[FULL]["completed"] == 2  # the confirmation's re-trainings of the winner
    assert rows["weight_drop"]["paper_delta_val"] == 11.1
    from reports.build import build

    result = build(uri, ["abl"], cwd / "report", log_artifacts=False)
    text = (cwd / "report" / "report.md").read_text()
    assert not result.problems and "## Ablation of the winners" in text
    for name in rows:
        if name != FULL:
            assert f"– {ROWS[name].label}" in text
    assert "## Cost against perplexity" in text and (cwd / "report" / "cost_ptb.png").is_file()
