"""``python -m awd.train`` as a user runs it: help, a tiny run, resume, and bad input.

Every case calls ``main(argv)`` in this process; one slow test runs the real ``python -m``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, fields

import pytest
import torch
from conftest import REPO, pattern_text, write_corpus

from awd.config import AWDLSTMConfig, TrainConfig, ZarembaConfig, from_flat
from awd.train import build_parser, main

TINY_FLAGS = ["--emsize", "16", "--nhid", "16", "--nlayers", "2", "--batch-size", "4",
              "--eval-batch-size", "2", "--bptt", "10", "--device", "cpu", "--lr", "20"]
FINAL = re.compile(r"^final \| val ppl (\d+\.\d\d) \| test ppl (\d+\.\d\d)$", re.MULTILINE)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(capsys, *args: object) -> Result:
    """``main(argv)`` in this process, with what it printed."""
    capsys.readouterr()  # drop anything printed before
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


@pytest.fixture
def tiny_dir(tmp_path):
    return write_corpus(tmp_path / "tiny", pattern_text(10), pattern_text(2), pattern_text(2))


# --- help and flags --------------------------------------------------------------------------


def _help_text(capsys) -> str:
    with pytest.raises(SystemExit, match=r"^0$") as info:
        main(["--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping


def test_help_lists_every_config_field_with_its_default(capsys):
    text = _help_text(capsys)
    owners = {}
    for cls in (AWDLSTMConfig, ZarembaConfig, TrainConfig):
        for f in fields(cls):
            if f.init:
                owners.setdefault(f.name, f.default)  # shared fields show the AWD default
    assert {"emsize", "wdrop", "init_range", "epochs", "nonmono", "finetune_epochs"} <= set(
        owners)
    for name, default in owners.items():
        flag = "--" + name.replace("_", "-")
        shown = re.escape(str(default))
        pattern = rf"{re.escape(flag)} \w+ (?:awd preset |zaremba preset )?default: {shown}"
        assert re.search(pattern, text), f"{flag} with default {default} missing from --help"
    for flag in ("--model", "--data", "--preset", "--save", "--resume", "--quiet"):
        assert flag in text


def test_help_shows_only_the_hyphenated_spelling(capsys):
    text = _help_text(capsys)
    assert "--batch-size" in text and "--eval-batch-size" in text
    assert "--batch_size" not in text
    assert re.findall(r"--[a-z]+_[a-z_]+", text) == []  # no underscore flag at all


@pytest.mark.parametrize("flag", ["--batch-size", "--batch_size"])
def test_both_spellings_of_a_field_flag_set_the_field(flag):
    args = build_parser().parse_args(["--model", "awd_lstm", flag, "4", "--finetune_epochs", "2",
                                      "--init-range", "0.1"])
    assert (args.batch_size, args.finetune_epochs, args.init_range) == ("4", "2", "0.1")


# --- runs ------------------------------------------------------------------------------------


def test_tiny_run_prints_epochs_and_final_line_and_saves_then_resumes(tiny_dir, tmp_path,
                                                                      capsys):
    ckpt = tmp_path / "run.pt"
    result = cli(capsys, "--model", "awd_lstm", "--data", tiny_dir, "--epochs", "2",
                 *TINY_FLAGS, "--save", ckpt)
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
    state = torch.load(ckpt, weights_only=True)  # the trainer after its last epoch: plain data
    assert state["epoch"] == 2 and [m["epoch"] for m in state["history"]] == [1, 2]
    assert state["config"]["batch_size"] == 4 and state["config"]["emsize"] == 16
    assert "Traceback" not in result.stderr

    # the config's own spelling of the flags (--batch_size) is the same run
    underscored = ["--" + f[2:].replace("-", "_") if f.startswith("--") else f
                   for f in TINY_FLAGS]
    resumed = cli(capsys, "--model", "awd_lstm", "--data", tiny_dir, "--epochs", "3",
                  *underscored, "--resume", ckpt)
    assert resumed.returncode == 0, resumed.stderr
    assert re.findall(r"^epoch +(\d+) \(train\)", resumed.stdout, re.MULTILINE) == ["3"]
    assert FINAL.search(resumed.stdout)


def test_quiet_zaremba_run_prints_only_summary_lines(tiny_dir, capsys):
    result = cli(capsys, "--model", "zaremba", "--preset", "small", "--data", tiny_dir,
                 "--epochs", "1", "--nhid", "16", "--batch_size", "4", "--eval-batch-size", "2",
                 "--bptt", "10", "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("zaremba on tiny: ")
    assert FINAL.match(lines[1])
    assert json.loads(lines[2])["num_params"] == 49 * 16 + 2 * (4 * 16 * 32 + 8 * 16) + 16 * 49 + 49


def test_progress_is_counted_in_tokens_through_the_final_test(tiny_dir, capsys, monkeypatch):
    """Bars for training, validation and the final test evaluation, all in tokens, on a
    terminal (into a file or a pipe, none: `awd.progress.TokenBars`)."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    result = cli(capsys, "--model", "awd_lstm", "--data", tiny_dir, "--epochs", "1", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr
    bars = result.stderr.replace("\r", "\n")
    for stage in ("train", "validate", "test"):
        assert re.search(rf"^{stage}: .*tok/s", bars, re.MULTILINE), (stage, bars[-2000:])
    assert "row" not in bars
    assert re.search(r"^epoch +1 \(train\) \| .* \| [\d,]+ tok/s \| averaging off$",
                     result.stdout, re.MULTILINE)


# --- --config FILE.json ------------------------------------------------------------------------


def _tiny_config(**changes: object) -> dict:
    """The full flat config of the tiny run, as a search's best_config file holds it."""
    flags = dict(zip(TINY_FLAGS[::2], TINY_FLAGS[1::2], strict=True))
    fields_ = {k[2:].replace("-", "_"): v for k, v in flags.items()}
    run = from_flat({"model": "awd_lstm", "dataset": "tiny", "epochs": 2, **fields_})
    return {**run.to_flat(), **changes}


def test_config_file_reproduces_the_same_run_as_the_flags(tiny_dir, tmp_path, capsys):
    by_flags = cli(capsys, "--model", "awd_lstm", "--data", tiny_dir, "--epochs", "2",
                   *TINY_FLAGS, "--quiet")
    path = tmp_path / "best_config_x.json"
    path.write_text(json.dumps(_tiny_config(), indent=2, sort_keys=True))
    by_file = cli(capsys, "--config", path, "--data", tiny_dir, "--quiet")
    assert by_flags.returncode == by_file.returncode == 0, by_file.stderr
    assert by_file.stdout == by_flags.stdout  # same parameters, same final numbers


def test_flags_override_the_config_file(tiny_dir, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_tiny_config(epochs=5, dropout=0.9)))
    ckpt = tmp_path / "run.pt"
    result = cli(capsys, "--config", path, "--data", tiny_dir, "--epochs", "1",
                 "--dropout", "0.1", "--save", ckpt, "--quiet")
    assert result.returncode == 0, result.stderr
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 1
    assert saved["config"]["epochs"] == 1 and saved["config"]["dropout"] == 0.1
    assert saved["config"]["emsize"] == 16  # from the file


def test_config_file_names_its_dataset_when_data_is_not_given(tiny_dir, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tiny_dir.parent)  # an unregistered dataset name is a folder path
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_tiny_config(epochs=1)))
    result = cli(capsys, "--config", path, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("awd_lstm on tiny: ")


BAD_CONFIG_FILES = {
    "missing": (None, "cannot read config file"),
    "not_json": ("{model: awd_lstm", "not valid JSON"),
    "a_list": ("[1, 2]", "one JSON object"),
    "unknown_key": (json.dumps({"model": "awd_lstm", "dropuot": 0.1}), "dropuot"),
    "bad_value": (json.dumps({"model": "awd_lstm", "dropout": 1.5}), "dropout"),
    "no_model": (json.dumps({"dropout": 0.1}), "no model"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIG_FILES))
def test_bad_config_file_exits_2_with_one_error_line(case, tiny_dir, tmp_path, capsys):
    text, needle = BAD_CONFIG_FILES[case]
    path = tmp_path / "config.json"
    if text is not None:
        path.write_text(text)
    result = cli(capsys, "--config", path, "--data", tiny_dir, "--epochs", "1", "--quiet")
    _assert_one_error_line(result, needle)


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
    "batch_size_not_a_number": (["--model", "awd_gru", "--batch_size", "x"], "batch_size"),
    "awd_field_on_zaremba": (["--model", "zaremba", "--wdrop", "0.1"], "wdrop"),
    "missing_folder": (["--model", "awd_lstm", "--data", "{tmp}/nowhere"], "does not exist"),
    "folder_without_splits": (["--model", "awd_lstm", "--data", "{no_splits}"], "no train split"),
    "empty_split": (["--model", "awd_lstm", "--data", "{empty_split}"], "empty"),
    "oov_token_in_valid": (["--model", "awd_lstm", "--data", "{oov}"], "zebra"),
}


def _run_bad(capsys, tmp_path, args: list[str]) -> Result:
    paths = {"tmp": tmp_path}
    for kind in ("no_splits", "empty_split", "oov", "tiny_valid"):
        if "{" + kind + "}" in " ".join(args):
            paths[kind] = _write_bad(tmp_path, kind)
    return cli(capsys, *[a.format(**paths) for a in args], "--epochs", "1", "--quiet")


def _assert_one_error_line(result: Result, needle: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert needle in errors[0]
    assert "final |" not in result.stdout


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_error_line(case, tmp_path, capsys):
    args, needle = BAD_INPUTS[case]
    _assert_one_error_line(_run_bad(capsys, tmp_path, args), needle)


def test_split_too_short_for_its_batch_size_exits_2_with_one_error_line(tmp_path, capsys):
    _assert_one_error_line(
        _run_bad(capsys, tmp_path, ["--model", "awd_lstm", "--data", "{tiny_valid}"]), "valid")


def test_missing_resume_checkpoint_exits_2_with_one_error_line(tiny_dir, tmp_path, capsys):
    result = cli(capsys, "--model", "awd_lstm", "--data", tiny_dir, "--epochs", "1",
                 *TINY_FLAGS, "--quiet", "--resume", tmp_path / "missing.pt")
    _assert_one_error_line(result, "missing.pt")


def test_checkpoint_of_another_configuration_exits_2_with_one_error_line(tiny_dir, tmp_path,
                                                                        capsys):
    ckpt = tmp_path / "run.pt"
    assert cli(capsys, "--model", "awd_lstm", "--data", tiny_dir, "--epochs", "1", *TINY_FLAGS,
               "--quiet", "--save", ckpt).returncode == 0
    result = cli(capsys, "--model", "awd_lstm", "--data", tiny_dir, "--epochs", "2",
                 *TINY_FLAGS, "--dropout", "0.3", "--quiet", "--resume", ckpt)
    _assert_one_error_line(result, "other values of dropout")


# --- the real command ------------------------------------------------------------------------


@pytest.mark.slow
def test_python_m_awd_train_runs_a_tiny_model(tiny_dir):
    """The one subprocess test: ``python -m awd.train`` works as a command."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "awd.train", "--model", "awd_lstm", "--data", str(tiny_dir),
         "--epochs", "1", *TINY_FLAGS, "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("awd_lstm on tiny: ") and FINAL.match(lines[1])
    assert json.loads(lines[2])["num_params"] > 0
    assert "Traceback" not in proc.stderr
