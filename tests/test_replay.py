"""The replay benchmark at a tiny size: a curve table whose answer is known (a smooth made-up
objective over the benchmark space), replayed through the search's own searcher and scheduler.
"""

from __future__ import annotations

import gzip
import json
import math
import statistics
from typing import Any

import numpy as np
import pytest

from benchmarks import curves, replay
from search.tune.session import RUNGS_FILE
from spaces import spec_of
from spaces.bench_ptb import SPACE

SPEC = spec_of(SPACE)
EPOCHS = 6
# The made-up optimum, on each parameter's unit scale: only lr and nhid matter (a GRU costs a
# constant), so the best configurations are known.
BEST_LR, BEST_NHID = 0.8, 0.9


def known_curve(params: dict[str, Any]) -> list[float]:
    u = {p.name: replay.unit(p, params[p.name]) for p in curves.design_params(SPEC)}
    final = 400 * math.exp(3 * (u["lr"] - BEST_LR) ** 2 + 2 * (u["nhid"] - BEST_NHID) ** 2
                           + 0.2 * u["model"])
    return [final * (1 + 1.5 / e) for e in range(1, EPOCHS + 1)]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rows = [{"key": f"d{i}", "index": i, "seed": SPEC.fixed["seed"], "params": p,
             "epochs": [{"val_ppl": v, "train_ppl": v, "seconds": 1.0 + replay.unit(
                 SPEC.parameters[1], p["nhid"])} for v in known_curve(p)]}
            for i, p in enumerate(curves.design(128, seed=3))]
    data = {"format": curves.FORMAT, "space": SPACE.name, "settings": {"epochs": EPOCHS},
            "summary": {}, "rows": rows}
    path = tmp_path_factory.mktemp("table") / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(data, f)
    return curves.load_table(path)


def test_design_covers_every_parameter_range_and_both_models():
    points = curves.design(64, seed=0)
    for p in curves.design_params(SPEC):
        values = [x[p.name] for x in points]
        if p.type == "categorical":
            assert set(values) == set(p.choices)
        else:
            assert p.low <= min(values) and max(values) <= p.high
            # space-filling: every quarter of the unit scale holds a design point
            quarters = {min(int(replay.unit(p, v) * 4), 3) for v in values}
            assert quarters == {0, 1, 2, 3}, p.name
    assert curves.design(64, seed=0) == points  # the same table on every machine


def test_surrogate_is_faithful_on_held_out_configurations(table):
    fid = replay.fidelity(table, SPEC)
    assert fid["spearman_objective"] > 0.85
    assert fid["rmse_log_objective"] < 0.15
    surrogate = replay.fit_surrogate(table, SPEC)
    best = min(table["rows"], key=lambda r: r["epochs"][-1]["val_ppl"])
    predicted, seconds = surrogate.predict([best["params"]])
    assert predicted.shape == (1, EPOCHS) and seconds.shape == (1,)
    assert predicted[0, -1] == pytest.approx(best["epochs"][-1]["val_ppl"], rel=0.1)


def test_replayed_search_drives_the_real_searcher_and_asha(table, tmp_path):
    surrogate = replay.fit_surrogate(table, SPEC)
    run = replay.replay_search(replay.ARMS["tpe-asha"], 0, surrogate, 20 * EPOCHS, 2, tmp_path)
    assert run["trial_epochs"] == 20 * EPOCHS
    incumbent, tried = replay.series(run, "incumbent"), replay.series(run, "best tried")
    assert len(incumbent) == len(tried) == 20 * EPOCHS
    # the best trial tried is never worse than the one the search picks, and never gets worse
    assert (tried <= incumbent).all() and (np.diff(tried) <= 0).all()
    seconds = replay.series(run, "seconds")
    assert (np.diff(seconds) >= 0).all() and seconds[-1] == run["simulated_seconds"]
    assert run["trials_started"] > 20  # ASHA stopped some early: more trials than full ones
    study = run["study"]
    assert study["PRUNED"] > 0 and study["pruned_with_values"] == study["PRUNED"]
    assert study["COMPLETE"] > 0
    rungs = json.loads((tmp_path / "tpe-asha-s0" / RUNGS_FILE).read_text())  # PersistentASHA's
    assert rungs["stopped"] and sum(len(r) for b in rungs["rungs"] for _, r in b) > 20
    fifo = replay.replay_search(replay.ARMS["random"], 0, surrogate, 10 * EPOCHS, 2, tmp_path)
    # no early stopping: every finished trial ran all its epochs, and only the 2 trials in
    # flight when the budget ran out are unfinished
    assert fifo["study"].get("PRUNED", 0) == 0
    assert fifo["study"]["COMPLETE"] == fifo["trials_finished"] >= 8
    assert fifo["trials_started"] - fifo["trials_finished"] == 2


def test_tpe_with_asha_beats_random_search_where_the_answer_is_known(table, tmp_path):
    surrogate = replay.fit_surrogate(table, SPEC)
    ref = replay.space_reference(surrogate, SPEC, table, n=2000)
    regret: dict[str, list[float]] = {}
    for arm in ("tpe-asha", "random"):
        for seed in range(3):
            run = replay.replay_search(replay.ARMS[arm], seed, surrogate, 20 * EPOCHS, 2,
                                       tmp_path / f"{arm}{seed}")
            regret.setdefault(arm, []).append(run["steps"][-1][1] - ref["optimum"])
    assert statistics.median(regret["tpe-asha"]) < statistics.median(regret["random"])
    steps = replay.steps_of([9.0, 5.0, 5.0, 1.0], [9.0, 5.0, 5.0, 1.0], [2.0, 4.0, 5.0, 7.5])
    assert steps == [[1, 9.0, 9.0, 2.0], [2, 5.0, 5.0, 4.0], [4, 1.0, 1.0, 7.5]]
    summary = replay.summarize(
        [{"arm": "tpe-asha", "seed": s, "trials_started": 1, "steps": steps} for s in range(3)],
        {"optimum": 0.0, "top1": 1.0, "top5": 5.0}, [1, 4], 1)
    assert summary["tpe-asha"]["incumbent"]["trial_epochs_to"]["top5"]["median"] == 2
    assert summary["tpe-asha"]["incumbent"]["trial_epochs_to"]["top1"]["median"] == 4
    assert summary["tpe-asha"]["incumbent"]["simulated_seconds_to"]["top1"]["median"] == 7.5
    never = replay.bootstrap_median([3.0, math.inf, math.inf])
    assert never[0] == math.inf and not any(math.isnan(x) for x in never)
    assert summary["tpe-asha"]["incumbent"]["regret"]["1"]["regret_median"] == 9.0


def test_a_table_of_another_format_is_refused_in_one_line(tmp_path):
    path = tmp_path / "old.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"format": 0, "rows": []}, f)
    with pytest.raises(SystemExit, match=r"format 0.*rebuild it"):
        curves.load_table(path)
    with pytest.raises(SystemExit, match="cannot read the curve table"):
        curves.load_table(tmp_path / "missing.json.gz")


def test_curve_caps_a_diverged_run():
    row = {"epochs": [{"val_ppl": 900.0}, {"val_ppl": float("nan")}]}
    assert curves.curve(row, 3) == [900.0, curves.DIVERGED_PPL, curves.DIVERGED_PPL]


@pytest.mark.slow
def test_curves_trains_the_table_resumes_and_records_who_built_it(tmp_path):
    """The real builder at a tiny size: real training on a PTB slice in a worker process."""
    work, out = tmp_path / "w.jsonl", tmp_path / "t.json.gz"
    argv = ["--configs", "2", "--noise-configs", "1", "--noise-seeds", "1", "--epochs", "2",
            "--train-tokens", "2000", "--eval-tokens", "1000", "--workers", "1",
            "--work", str(work), "--out", str(out)]
    assert curves.main(argv) == 0
    table = curves.load_table(out)
    assert [r["key"] for r in table["rows"]] == ["warm", "d0", "d1", "d0-s2"]
    assert all(len(r["epochs"]) == 2 and r["epochs"][1]["seconds"] > 0 for r in table["rows"])
    assert table["complete"] and table["summary"]["seed_noise"]["configs"] == 1
    assert [h["runs_added"] for h in table["history"]] == [4]
    lines = work.read_text().splitlines()
    work.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])  # killed mid-write
    assert curves.main(argv) == 0  # trains the two runs it no longer has, and only those
    table = curves.load_table(out)
    assert len(table["rows"]) == 4 and [h["runs_added"] for h in table["history"]] == [4, 2]
