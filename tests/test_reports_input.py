"""Bad arguments to ``python -m reports``: one ``error:`` line and exit 2, before the MLflow store
is opened or anything is written. Property-based over the arguments (hypothesis)."""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reports import ReportError
from reports.__main__ import check_args, main, parser


@pytest.fixture(scope="module", autouse=True)
def _no_tracking_env(no_tracking_env):
    """$MLFLOW_TRACKING_URI is input too: unset unless a test sets it."""


@pytest.fixture(scope="module")
def base(file_and_folder) -> Path:
    return file_and_folder


NAMES = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_categories=("Cc",)),
                min_size=1, max_size=10)


@functools.cache
def arg_values(base: Path) -> dict[str, tuple[st.SearchStrategy, st.SearchStrategy]]:
    """Each argument -> (valid values, invalid values)."""
    return {
        "--experiment": (
            st.lists(NAMES.filter(lambda s: not s.startswith("-")), min_size=1, max_size=3),
            st.lists(st.sampled_from(["", " ", "\t", "a\nb", "x\x00", "\x7f", "a\x85"]),
                     min_size=1, max_size=2)),
        "--tracking-uri": (
            st.sampled_from([f"sqlite:///{base}/m.db", "http://127.0.0.1:5000", "mlruns",
                             "file:///tmp/mlruns", "postgresql://u@h/db"]),
            st.sampled_from(["htp://x", "http://", "sqlite://m.db", "", "ftp://h", "file:"])),
        "--out": (
            st.sampled_from([str(base / "r"), str(base / "adir"), str(base / "adir" / "x" / "y")]),
            st.sampled_from([str(base / "afile"), str(base / "afile" / "r"), "r\x01"])),
    }


@st.composite
def reports_argv(draw: st.DrawFn, base: Path) -> tuple[list[str], set[str]]:
    values = arg_values(base)
    bad = draw(st.sets(st.sampled_from([*values, "--unknown"]), max_size=2))
    argv: list[str] = []
    for name, (valid, invalid) in values.items():
        if name == "--experiment" or name in bad or draw(st.booleans()):
            value = draw(invalid if name in bad else valid)
            argv += [name, *value] if isinstance(value, list) else [f"{name}={value}"]
    if "--unknown" in bad:
        argv.append(draw(st.sampled_from(["--format=pdf", "--frobnicate"])))
    argv += draw(st.sampled_from([[], ["--no-log"], ["--debug"]]))
    return argv, bad


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_invalid_argument_fails_with_one_line_and_valid_ones_pass(base, data):
    argv, bad = data.draw(reports_argv(base))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            check_args(parser().parse_args(argv))
    except ReportError as e:
        assert bad, argv
        message = str(e)
    except SystemExit as e:
        assert e.code == 2 and bad, (argv, err.getvalue())
        message = err.getvalue()
        assert message.startswith("error: ")
    else:
        assert not bad, f"accepted invalid {sorted(bad)}: {argv}"
        return
    assert len(message.strip().splitlines()) == 1, (argv, message)


BAD_CASES = {
    "out is a file": ["-e", "x", "--out", "{tmp}/afile"],
    "out below a file": ["-e", "x", "--out", "{tmp}/afile/report"],
    "empty experiment": ["-e", "", "--out", "{tmp}/r"],
    "tracking-uri unknown scheme": ["-e", "x", "--tracking-uri", "htp://x", "--out", "{tmp}/r"],
    "tracking-uri empty": ["-e", "x", "--tracking-uri", "", "--out", "{tmp}/r"],
    "unknown format flag": ["-e", "x", "--format", "pdf"],
    "no experiment": ["--out", "{tmp}/r"],
    "no experiment name": ["-e"],
}


@pytest.mark.parametrize("args", list(BAD_CASES.values()), ids=list(BAD_CASES))
def test_each_bad_case_is_one_error_line_exit_2_nothing_written(args, tmp_path, monkeypatch,
                                                               capsys):
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)

    def no_build(*a, **k):
        raise AssertionError("the report was built")

    monkeypatch.setattr("reports.build.build", no_build)
    try:
        code = main(["--debug", *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_malformed_tracking_uri_in_the_environment_is_one_error_line(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite://m.db")
    assert main(["-e", "x", "--out", str(tmp_path / "r"), "--debug"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: $MLFLOW_TRACKING_URI 'sqlite://m.db'")


def test_a_missing_experiment_is_one_error_line(tmp_path, monkeypatch, capsys,
                                               new_mlflow_store):
    """The store exists but the experiment does not: `reports.load` says so in one line."""
    uri = new_mlflow_store(tmp_path / "store")
    monkeypatch.chdir(tmp_path)
    code = main(["-e", "nope", "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--no-log"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0], lines
