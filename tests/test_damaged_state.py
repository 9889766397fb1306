"""A damaged Tune state never restarts a search (issue 22): Tune would otherwise restart it from
zero under its name. A damaged file fails its signature (`search.trust`) and its last signed
copy is used; with none that verifies, the resume is refused before it changes anything. The
structure check behind it reads the newest experiment state as JSON and every pickle's opcodes
(`pickletools`): nothing is executed."""

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
from search.trust import REFUSED, SIGNED

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


def _copy(smoke_search, tmp_path: Path, victim: str) -> tuple[Path, Path]:
    copy = tmp_path / "rr" / "smoke"
    shutil.copytree(smoke_search[0] / "ray_results" / "smoke", copy,
                    ignore=shutil.ignore_patterns("driver.lock"))
    path = sorted(copy.glob(victim))[-1]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return copy, path


def _resume(tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.run", "--space", "smoke", "--storage", str(tmp_path / "rr"),
         "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "AWD_DATA_DIR": str(DATA_DIR)})


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["experiment_state-*.json", "searcher-state-*.pkl"])
def test_resume_of_a_damaged_search_goes_on_from_its_last_signed_state(smoke_search, tmp_path,
                                                                       victim):
    _, path = _copy(smoke_search, tmp_path, victim)
    proc = _resume(tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert f"{path.name}: its signature does not match (changed or damaged)" in out
    assert "Restarting experiment" not in out  # the search went on, it did not start over
    assert "Best configuration written" in proc.stdout


@pytest.mark.slow
def test_resume_of_a_damaged_search_without_a_good_copy_refuses_in_one_line(smoke_search,
                                                                            tmp_path):
    copy, path = _copy(smoke_search, tmp_path, "searcher-state-*.pkl")
    (signed,) = (copy / SIGNED).glob(f"{path.name}.*")
    signed.write_bytes(signed.read_bytes()[:10])
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    proc = _resume(tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{path.name}: its signature does not match" in proc.stderr
    assert "no signed copy of it verifies" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert after == before  # nothing rewritten, no lock or state file added


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["tuner.pkl", "searcher-state-*.pkl"])
def test_a_crafted_pickle_in_the_search_folder_runs_nothing(smoke_search, tmp_path, victim):
    cwd = smoke_search[0]
    copy = tmp_path / "rr" / "smoke"
    shutil.copytree(cwd / "ray_results" / "smoke", copy,
                    ignore=shutil.ignore_patterns("driver.lock"))
    marker = tmp_path / "ran"
    path = sorted(copy.glob(victim))[-1]
    crafted = pickle.dumps(Evil(marker))
    path.write_bytes(crafted)
    proc = _resume(tmp_path)
    assert not marker.exists(), "the crafted pickle ran"
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert f"{path.name}: its signature does not match (changed or damaged)" in out
    assert "its last signed version is used" in out
    (aside,) = (copy / REFUSED).iterdir()  # kept for whoever investigates, never read
    assert aside.read_bytes() == crafted


@pytest.mark.slow
def test_a_folder_saved_without_signatures_is_refused_in_one_line(smoke_search, tmp_path):
    cwd = smoke_search[0]
    copy = tmp_path / "rr" / "smoke"
    shutil.copytree(cwd / "ray_results" / "smoke", copy,
                    ignore=shutil.ignore_patterns("driver.lock", SIGNED))
    marker = tmp_path / "ran"
    (copy / "tuner.pkl").write_bytes(pickle.dumps(Evil(marker)))
    proc = _resume(tmp_path)
    assert proc.returncode == 2 and not marker.exists()
    assert "is not signed" in proc.stderr and "python -m search.trust sign" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
