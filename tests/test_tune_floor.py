"""`python -m benchmarks.tune_floor`: a bad flag is refused in one line before Ray starts, so
no run's result is written nowhere after minutes of work."""

from __future__ import annotations

import pytest

from benchmarks import tune_floor


@pytest.mark.parametrize("argv, says", [
    (["--trials", "0"], "must be >= 1"),
    (["--trial-seconds", "-1"], "--trial-seconds > 0"),
    (["--out", "."], "a file in an existing folder"),
    (["--out", "no/such/folder/floor.json"], "a file in an existing folder"),
])
def test_a_bad_flag_is_one_line_before_anything_runs(argv, says, capsys, tmp_path,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        tune_floor.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1] and err[-1].startswith("python -m benchmarks.tune_floor: error: ")
    assert not any(tmp_path.iterdir())
