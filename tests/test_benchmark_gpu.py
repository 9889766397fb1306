"""`python -m benchmarks.gpu`: refused in one line without CUDA; every part's code path runs
(at tiny sizes, on CPU) and writes the figures the README reads."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from benchmarks import gpu

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")


def test_refuses_without_cuda_in_one_line(capsys):
    """`main` in-process (``python -m benchmarks.gpu`` is ``sys.exit(main())``): a fresh
    interpreter would only add the imports' seconds."""
    assert gpu.main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: python -m benchmarks.gpu needs a CUDA GPU")
    assert "(a CPU build)" in lines[0] and "benchmarks.train_step" in lines[0]


def test_epochs_and_zaremba_parts_measure_real_training(ptb_dir, tmp_path):
    out = tmp_path / "gpu.json"
    report = gpu.run(["epochs", "zaremba"], gpu.Sizes.tiny(), torch.device("cpu"), out, 600,
                     log=lambda _: None)
    assert json.loads(out.read_text())["parts"] == report["parts"]
    epochs = report["parts"]["epochs"]
    assert set(epochs) == {"awd_lstm", "awd_gru", "wall_s"}
    for model in ("awd_lstm", "awd_gru"):
        (e,) = epochs[model]["epochs"]
        assert epochs[model]["train_tokens"] == (4000 // 20 - 1) * 20  # targets at batch 20
        assert 0 < e["validation_s"] < e["epoch_s"]
        assert e["train_s"] == pytest.approx(e["epoch_s"] - e["validation_s"])
        assert math.isfinite(e["val_ppl"]) and e["val_ppl"] > 1
        assert e["peak_mib"] is None  # CUDA's allocator only
    z = report["parts"]["zaremba"]
    assert z["optimizer"] == "sgd_schedule" and len(z["epochs"]) == 1
    assert z["final_val_ppl"] == pytest.approx(z["epochs"][0]["val_ppl"])
    assert math.isfinite(z["final_test_ppl"])
    lines = gpu.summary_lines(report)
    assert any(line.startswith("epoch awd_lstm") for line in lines)
    assert any(line.startswith("zaremba medium: val ppl by epoch") for line in lines)


def test_a_part_past_the_budget_is_skipped_and_says_so(tmp_path):
    report = gpu.run(["packing"], gpu.Sizes.full(), torch.device("cpu"), tmp_path / "g.json", 30,
                     log=lambda _: None)
    skipped = report["parts"]["packing"]["skipped"]
    assert re.fullmatch(r"(29|30) s of the budget left, the part takes about 100 s", skipped)
    assert f"packing: {skipped}" in gpu.summary_lines(report)


@pytest.mark.slow
def test_packing_runs_separate_processes_side_by_side(ptb_dir, tmp_path):
    report = gpu.run(["packing"], gpu.Sizes.tiny(), torch.device("cpu"), tmp_path / "g.json", 600,
                     log=lambda _: None)
    packing = report["parts"]["packing"]
    assert "error" not in packing, packing
    for model in ("zaremba", "awd_lstm"):
        runs = packing[model]["runs"]
        assert runs["1"]["processes"] == 1 and runs["2"]["processes"] == 2
        assert len(runs["2"]["per_trial_tokens_per_s"]) == 2
        assert runs["2"]["aggregate_tokens_per_s"] == pytest.approx(
            sum(runs["2"]["per_trial_tokens_per_s"]))
        assert packing[model]["throughput_gain"] == pytest.approx(
            runs["2"]["aggregate_tokens_per_s"] / runs["1"]["aggregate_tokens_per_s"])
