"""``python -m search.run`` in-process: the spaces list, and bad input that must fail with one
clear line before Ray starts or any trial runs. (The real command runs in test_search_e2e.)"""

from __future__ import annotations

import socket
import time

import pytest
import ray
from conftest import real_data

from search.run import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield
    assert not ray.is_initialized(), "a bad-input case started Ray"
    assert not (tmp_path / "ray_results").exists()  # no trial, no experiment folder
    assert not (tmp_path / "mlflow.db").exists()  # nothing written to the default store


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--space", "nope"], "unknown space 'nope'; known spaces: awd_ptb"),
    (["--space", "smoke", "--num-samples", "0"], "--num-samples must be >= 1"),
    (["--space", "smoke", "--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0"),
    (["--space", "smoke", "--scheduler", "pbt"], "--scheduler must be one of asha, none"),
    (["--space", "smoke", "--resume", "--storage", "nowhere"], "nothing to resume"),
    (["--space", "smoke", "--max-epochs", "-2"], "--max-epochs must be >= 1"),
    (["--space", "smoke", "--set", "lr"], "--set takes KEY=VALUE, got 'lr'"),
    (["--space", "smoke", "--set", "bogus=1"], "--set: unknown config field 'bogus'"),
    (["--space", "smoke", "--set", "dropout=2"], "--set: dropout must be in [0, 1)"),
])
def test_bad_input_is_one_clear_line(args, message, capsys):
    assert main(args) == 2
    assert message in _one_error_line(capsys)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_fails_before_any_trial(capsys):
    real_data("ptb")  # the data check comes first
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.time()
    assert main(["--space", "smoke", "--tracking-uri", uri]) == 2
    assert f"cannot reach the MLflow tracking server at {uri}" in _one_error_line(capsys)
    assert time.time() - start < 30


def test_sqlite_store_in_a_missing_folder_fails_before_any_trial(tmp_path, capsys):
    real_data("ptb")
    assert main(["--space", "smoke", "--tracking-uri", "sqlite:///no/such/dir/m.db"]) == 2
    assert f"folder {tmp_path.resolve()}/no/such/dir of the MLflow database does not exist" \
        in _one_error_line(capsys)


def test_missing_data_fails_before_any_trial(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWD_DATA_DIR", str(tmp_path / "no-data"))
    assert main(["--space", "smoke"]) == 2
    assert "fetch it with `python -m awd.data fetch ptb`" in _one_error_line(capsys)


def test_list_spaces_names_every_space(capsys):
    assert main(["--list-spaces"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["awd_ptb", "awd_wt2", "gru_ptb", "gru_wt2", "zaremba_ptb", "compare_ptb",
                     "smoke", "bench_ptb"]
