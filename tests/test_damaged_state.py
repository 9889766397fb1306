"""A damaged Tune state is refused before a resume changes anything (issue 22): Tune would
otherwise restart the search from zero under its name. The check reads the newest experiment
state as JSON and every pickle's opcodes (`pickletools`): nothing is executed."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA_DIR

from search.storage import damaged_tune_state, pickle_problem

STATE = {"experiment_state-2026-01-01_00-00-00.json": json.dumps({"trial_data": []}).encode(),
         "tuner.pkl": pickle.dumps({"tuner": list(range(100))}),
         "searcher-state-2026-01-01_00-00-00.pkl": pickle.dumps({"study": "x" * 500}),
         "search_gen_state-2026-01-01_00-00-00.json": pickle.dumps({"gen": 1})}


def saved(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in STATE.items():
        (folder / name).write_bytes(data)
    return folder


def test_a_whole_state_passes(tmp_path):
    assert damaged_tune_state(str(saved(tmp_path / "exp"))) is None
    assert damaged_tune_state("s3://bucket/exp") is None  # Tune's own restore checks there


@pytest.mark.parametrize("name", sorted(STATE))
@pytest.mark.parametrize("damage", ["half", "empty", "garbage"])
def test_each_damaged_file_is_named(tmp_path, name, damage):
    folder = saved(tmp_path / "exp")
    data = STATE[name]
    (folder / name).write_bytes({"half": data[:len(data) // 2], "empty": b"",
                                 "garbage": b"\x80\x05garbage"}[damage])
    problem = damaged_tune_state(str(folder))
    assert problem is not None and problem.startswith(name)


def test_only_the_newest_experiment_state_counts(tmp_path):
    folder = saved(tmp_path / "exp")
    (folder / "experiment_state-2025-01-01_00-00-00.json").write_text("{cut")  # older: unused
    assert damaged_tune_state(str(folder)) is None


def test_a_whole_crafted_pickle_passes_the_structure_check(tmp_path):
    """The check reads structure only: a crafted but whole pickle is not its to catch."""

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran",))

    data = pickle.dumps(Evil())
    assert pickle_problem(data) is None
    assert pickle_problem(data[:-3]) is not None


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["experiment_state-*.json", "searcher-state-*.pkl"])
def test_resume_of_a_damaged_search_refuses_in_one_line_and_changes_nothing(
        smoke_search, tmp_path, victim):
    cwd = smoke_search[0]
    source = cwd / "ray_results" / "smoke"
    copy = tmp_path / "rr" / "smoke"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("driver.lock"))
    path = sorted(copy.glob(victim))[-1]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--space", "smoke", "--storage", str(tmp_path / "rr"),
         "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "AWD_DATA_DIR": str(DATA_DIR)})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"is damaged: {path.name}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    after = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    assert after == before  # nothing rewritten, no lock or state file added
