"""``python -m awd.train`` as a user runs it: help, a tiny run, resume, and bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import fields

import pytest
from conftest import REPO, pattern_text, write_corpus

from awd.config import AWDLSTMConfig, TrainConfig, ZarembaConfig

TINY_FLAGS = ["--emsize", "16", "--nhid", "16", "--nlayers", "2", "--batch_size", "4",
              "--eval_batch_size", "2", "--bptt", "10", "--device", "cpu", "--lr", "20"]
FINAL = re.compile(r"^final \| val ppl (\d+\.\d\d) \| test ppl (\d+\.\d\d)$", re.MULTILINE)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "awd.train", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny_dir(tmp_path):
    return write_corpus(tmp_path / "tiny", pattern_text(10), pattern_text(2), pattern_text(2))


# --- help ------------------------------------------------------------------------------------


def test_help_lists_every_config_field_with_its_default():
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # undo argparse's line wrapping
    owners = {}
    for cls in (AWDLSTMConfig, ZarembaConfig, TrainConfig):
        for f in fields(cls):
            if f.init:
                owners.setdefault(f.name, f.default)  # shared fields show the AWD default
    assert {"emsize", "wdrop", "init_range", "epochs", "nonmono", "finetune_epochs"} <= set(
        owners)
    for name, default in owners.items():
        shown = re.escape(str(default))
        pattern = rf"--{name} \w+ (?:awd preset |zaremba preset )?default: {shown}"
        assert re.search(pattern, text), f"--{name} with default {default} missing from --help"
    for flag in ("--model", "--data", "--preset", "--save", "--resume", "--quiet"):
        assert flag in text


# --- runs ------------------------------------------------------------------------------------


def test_tiny_run_prints_epochs_and_final_line_and_saves(tiny_dir, tmp_path):
    ckpt = tmp_path / "run.pt"
    result = cli("--model", "awd_lstm", "--data", tiny_dir, "--epochs", "2", *TINY_FLAGS,
                 "--save", ckpt)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^awd_lstm on tiny: [\d,]+ parameters, cpu$", out, re.MULTILINE)
    epochs = re.findall(r"^epoch +(\d+) \(train\) \| train ppl", out, re.MULTILINE)
    assert epochs == ["1", "2"]
    match = FINAL.search(out)
    assert match, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(summary) == {"num_params", "val_loss", "val_ppl", "test_loss", "test_ppl"}
    assert f"{summary['val_ppl']:.2f}" == match.group(1)
    assert f"{summary['test_ppl']:.2f}" == match.group(2)
    assert 1 < summary["val_ppl"] < 1_000
    assert ckpt.is_file()
    assert "Traceback" not in result.stderr

    resumed = cli("--model", "awd_lstm", "--data", tiny_dir, "--epochs", "3", *TINY_FLAGS,
                  "--resume", ckpt)
    assert resumed.returncode == 0, resumed.stderr
    assert re.findall(r"^epoch +(\d+) \(train\)", resumed.stdout, re.MULTILINE) == ["3"]
    assert FINAL.search(resumed.stdout)


def test_quiet_zaremba_run_prints_only_summary_lines(tiny_dir):
    result = cli("--model", "zaremba", "--preset", "small", "--data", tiny_dir, "--epochs", "1",
                 "--nhid", "16", "--batch_size", "4", "--eval_batch_size", "2", "--bptt", "10",
                 "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("zaremba on tiny: ")
    assert FINAL.match(lines[1])
    assert json.loads(lines[2])["num_params"] == 49 * 16 + 2 * (4 * 16 * 32 + 8 * 16) + 16 * 49 + 49


# --- bad input -------------------------------------------------------------------------------


def _write_bad(tmp_path, kind: str):
    if kind == "no_splits":
        folder = tmp_path / "bare"
        folder.mkdir()
        (folder / "readme.txt").write_text("nothing here\n")
        return folder
    if kind == "empty_split":
        return write_corpus(tmp_path / "empty", pattern_text(10), "", pattern_text(2))
    if kind == "oov":
        return write_corpus(tmp_path / "oov", pattern_text(10), pattern_text(2) + "zebra\n",
                            pattern_text(2))
    if kind == "tiny_valid":
        return write_corpus(tmp_path / "short", pattern_text(10), "the cat\n", pattern_text(2))
    raise AssertionError(kind)


BAD_INPUTS = {
    "unknown_model": (["--model", "transformer"], "transformer"),
    "dropout_1.5": (["--model", "awd_lstm", "--dropout", "1.5"], "dropout"),
    "emsize_0": (["--model", "awd_lstm", "--emsize", "0"], "emsize"),
    "emsize_not_a_number": (["--model", "awd_gru", "--emsize", "big"], "emsize"),
    "awd_field_on_zaremba": (["--model", "zaremba", "--wdrop", "0.1"], "wdrop"),
    "missing_folder": (["--model", "awd_lstm", "--data", "{tmp}/nowhere"], "does not exist"),
    "folder_without_splits": (["--model", "awd_lstm", "--data", "{no_splits}"], "no train split"),
    "empty_split": (["--model", "awd_lstm", "--data", "{empty_split}"], "empty"),
    "oov_token_in_valid": (["--model", "awd_lstm", "--data", "{oov}"], "zebra"),
}


def _run_bad(tmp_path, args: list[str]) -> subprocess.CompletedProcess:
    paths = {"tmp": tmp_path}
    for kind in ("no_splits", "empty_split", "oov", "tiny_valid"):
        if "{" + kind + "}" in " ".join(args):
            paths[kind] = _write_bad(tmp_path, kind)
    return cli(*[a.format(**paths) for a in args], "--epochs", "1", "--quiet")


def _assert_one_error_line(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert needle in errors[0]
    assert "final |" not in result.stdout


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_error_line(case, tmp_path):
    args, needle = BAD_INPUTS[case]
    _assert_one_error_line(_run_bad(tmp_path, args), needle)


def test_split_too_short_for_its_batch_size_exits_2_with_one_error_line(tmp_path):
    _assert_one_error_line(_run_bad(tmp_path, ["--model", "awd_lstm", "--data", "{tiny_valid}"]),
                           "valid")


def test_missing_resume_checkpoint_exits_2_with_one_error_line(tiny_dir, tmp_path):
    result = cli("--model", "awd_lstm", "--data", tiny_dir, "--epochs", "1", *TINY_FLAGS,
                 "--quiet", "--resume", tmp_path / "missing.pt")
    _assert_one_error_line(result, "missing.pt")
