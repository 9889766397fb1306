"""Bad input to ``python -m search.run``, all of it rejected at option time: one ``error:`` line,
exit 2, before Ray starts or anything is written. Property-based over the flags (hypothesis):
any invalid value fails with a one-line `UserError` (or argparse's exit 2), every valid
combination passes. No test here starts Ray: validation is all pre-Ray."""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from awd.errors import UserError
from search import run
from search.options import (
    EXPERIMENT_NAME,
    MAX_CACHE_TRIALS,
    MAX_ENSEMBLE,
    MAX_SEED,
    OptionError,
    address_problem,
    build_parser,
    options_from_args,
    study_storage_problem,
    tracking_uri_problem,
)
from spaces import SPACES


@pytest.fixture(scope="module", autouse=True)
def _no_tracking_env(no_tracking_env):
    """$MLFLOW_TRACKING_URI is input too: unset unless a test sets it."""


@pytest.fixture(scope="module")
def base(file_and_folder) -> Path:
    return file_and_folder


def validate(argv: list[str]) -> None:
    options_from_args(build_parser().parse_args(argv))


# --- every flag: valid values, invalid values --------------------------------------------------
def _ints(minimum: int, maximum: int | None = None) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    top = maximum if maximum is not None else minimum + 10_000
    valid = st.integers(minimum, top).map(str)
    invalid = st.integers(max_value=minimum - 1).map(str) | st.sampled_from(
        ["nan", "inf", "1.5", "", "abc", "1e3"])
    if maximum is not None:
        invalid |= st.integers(min_value=maximum + 1).map(str)
    return valid, invalid


NOT_FINITE = st.sampled_from(["nan", "inf", "-inf", "NaN", "x", ""])

EXPERIMENTS_BAD = st.sampled_from(["../x", "/abs/x", "a/b", "a\\b", "", ".", "..", ".hidden",
                                   "a b", "x" * 201, "é", "a\nb", "~x"]) | st.text(
    alphabet=st.sampled_from("/ :*?\t"), min_size=1).map(lambda s: "a" + s)


@functools.cache
def flag_values(base: Path) -> dict[str, tuple[st.SearchStrategy, st.SearchStrategy]]:
    """``--flag`` -> (valid values, invalid values), as command-line strings."""
    return {
        "--space": (st.sampled_from(sorted(SPACES)),
                    st.text(min_size=0, max_size=8).filter(lambda s: s not in SPACES)),
        "--num-samples": _ints(1),
        "--max-epochs": _ints(1),
        "--grace-period": _ints(1),
        "--concurrency": _ints(1),
        "--seed": _ints(0, MAX_SEED),
        "--max-failures": _ints(0),
        "--top": _ints(1),
        "--confirm-top": _ints(0),
        "--seeds": _ints(1),
        "--cache-trials": _ints(0, MAX_CACHE_TRIALS),
        "--ensemble": _ints(0, MAX_ENSEMBLE),
        "--cpus-per-trial": (st.floats(0.001, 1e4).map(repr),
                             NOT_FINITE | st.floats(max_value=0).map(repr)),
        "--gpus-per-trial": (st.floats(0, 1).map(repr) | st.integers(2, 16).map(str),
                             NOT_FINITE | st.floats(max_value=-1e-9).map(repr)
                             | st.floats(1.01, 15.99).filter(lambda v: not v.is_integer())
                             .map(repr)),
        "--time-budget": (st.floats(0.001, 1e9).map(repr),
                          NOT_FINITE | st.floats(max_value=0).map(repr)),
        "--scheduler": (st.sampled_from(["asha", "none"]),
                        st.text(max_size=6).filter(lambda s: s not in ("asha", "none"))),
        "--sampler": (st.sampled_from(["tpe", "random"]),
                      st.text(max_size=6).filter(lambda s: s not in ("tpe", "random"))),
        "--experiment": (st.from_regex(EXPERIMENT_NAME, fullmatch=True), EXPERIMENTS_BAD),
        "--storage": (st.sampled_from([str(base / "store"), str(base / "adir" / "new" / "deep"),
                                       str(base / "adir"), "s3://bucket/results"]),
                      st.sampled_from([str(base / "afile"), str(base / "afile" / "sub"), "",
                                       "s3://", "a\x01b", "~no-such-user-x/r"])),
        "--best-config": (st.sampled_from([str(base / "best.json"), str(base / "afile"),
                                           str(base / "adir" / "b.json")]),
                          st.sampled_from([str(base / "nodir" / "b.json"),
                                           str(base / "afile" / "b.json"), str(base / "adir"),
                                           "", "a\nb.json"])),
        "--tracking-uri": (st.sampled_from([f"sqlite:///{base}/m.db", "sqlite:///rel/m.db",
                                            "http://127.0.0.1:5000", "https://mlflow.example/x",
                                            "file:///tmp/mlruns", "mlruns", str(base / "adir"),
                                            "postgresql://u:p@db:5432/mlflow", "databricks"]),
                           st.sampled_from(["htp://x", "http://", "http://h:99999", "http://h:x",
                                            "sqlite://m.db", "sqlite:///", "", "ftp://h/x",
                                            "file:", "sqlite:///m\n.db", "redis://h"])),
        "--study-storage": (st.sampled_from([f"sqlite:///{base}/o.db", f"sqlite:///{base}/afile",
                                             "postgresql://u:p@h/optuna", "mysql+pymysql://h/db"]),
                            st.sampled_from(["redis://h", f"sqlite:///{base}/nodir/o.db",
                                             f"sqlite:///{base}/afile/o.db",
                                             f"sqlite:///{base}/adir", "sqlite://", "",
                                             "optuna.db", "postgresql://"])),
        "--address": (st.sampled_from(["auto", "local", "10.0.0.1:6379", "head:1",
                                       "ray://head:10001", "ray://head", "[::1]:6379"]),
                      st.sampled_from(["", "head", "head:0", "head:70000", "head:x", "a b:1",
                                       "ray://", "http://head:1", "ray://head:", "head:6379\n"])),
        "--warm-start-from": (st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                                      min_size=1, max_size=12),
                              st.sampled_from(["", " ", "\t", "a\nb"])),
    }


SET_VALID = [("lr", "1.5"), ("dropout", "0.3"), ("train_tokens", "2000"), ("wdecay", "0"),
             ("variable_bptt", "false"), ("clip", "0.5"), ("nonmono", "3")]
SET_INVALID = ["lr=nan", "lr=inf", "lr=-1", "lr=0", "dropout=2", "dropout=-0.1", "bogus=1",
               "lr", "=1", "epochs=3", "clip=abc", "nonmono=1.5", "variable_bptt=maybe",
               "device=tpu", "optimizer=adam", "wdecay=-1", "train_tokens=-5"]


@st.composite
def search_argv(draw: st.DrawFn, base: Path) -> tuple[list[str], set[str]]:
    """An argument list and the flags given an invalid value (empty: all valid)."""
    values = flag_values(base)
    flags = sorted(values)
    bad = draw(st.sets(st.sampled_from([*flags, "--set"]), max_size=2))
    argv: list[str] = []
    for flag in flags:
        if flag in bad or draw(st.booleans()):
            valid, invalid = values[flag]
            argv.append(f"{flag}={draw(invalid if flag in bad else valid)}")
    keys = draw(st.lists(st.sampled_from(SET_VALID), max_size=3, unique_by=lambda kv: kv[0]))
    items = [f"{k}={v}" for k, v in keys]
    if "--set" in bad:
        if items and draw(st.booleans()):
            items.append(items[0])  # a key given twice
        else:
            items.insert(draw(st.integers(0, len(items))), draw(st.sampled_from(SET_INVALID)))
    argv += [f"--set={item}" for item in items]
    if draw(st.booleans()):
        argv.append("--resume")
    return argv, bad


def _outcome(argv: list[str]) -> tuple[str, str]:
    """("ok", "") / ("user", message) / ("argparse", stderr)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            validate(argv)
    except UserError as e:
        return "user", str(e)
    except SystemExit as e:
        assert e.code == 2, argv
        return "argparse", err.getvalue()
    return "ok", ""


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_invalid_flag_fails_with_one_line_and_every_valid_set_passes(base, data):
    argv, bad = data.draw(search_argv(base))
    kind, message = _outcome(argv)
    if not bad:
        assert kind == "ok", (argv, message)
        return
    assert kind != "ok", f"accepted invalid {sorted(bad)}: {argv}"
    lines = message.strip().splitlines()
    assert len(lines) == 1, (argv, message)
    if kind == "argparse":
        assert lines[0].startswith("error: argument "), message
    assert any(flag in message for flag in bad) or "unknown space" in message, (argv, message)


@settings(max_examples=40, deadline=None)
@given(name=st.text(max_size=12))
def test_an_experiment_is_a_plain_name_that_stays_inside_the_storage(base, name):
    kind, _ = _outcome(["--storage", str(base / "s"), f"--experiment={name}"])
    plain = (name != "" and not name.startswith(".")
             and all(c.isascii() and (c.isalnum() or c in "-_.") for c in name))
    assert (kind == "ok") == plain, name
    if plain:
        opts = options_from_args(build_parser().parse_args(
            ["--storage", str(base / "s"), f"--experiment={name}"]))
        assert Path(opts.experiment_dir).parent == (base / "s").resolve()


@pytest.mark.parametrize("uri, ok", [
    ("sqlite:///m.db", True), ("sqlite:////abs/m.db", True), ("http://h:5000", True),
    ("https://h", True), ("file:///x", True), ("file:rel", True), ("mlruns", True),
    ("C:/mlruns", True), ("postgresql+psycopg2://u@h/db", True), ("databricks", True),
    ("", False), ("  ", False), ("sqlite://m.db", False), ("sqlite:///", False),
    ("http://", False), ("http://:80", False), ("http://h:0x1", False), ("gopher://h", False),
    ("postgresql://", False), ("file:", False), ("a\tb", False),
])
def test_tracking_uri_forms(uri, ok):
    assert (tracking_uri_problem(uri) is None) == ok


@pytest.mark.parametrize("url, ok", [
    ("sqlite:///{base}/o.db", True), ("postgresql://u@h/db", True), ("sqlite:///o.db", True),
    ("sqlite:///{base}/afile/o.db", False), ("sqlite:///{base}/no/o.db", False),
    ("sqlite://", False), ("mongodb://h", False), ("{base}/o.db", False),
])
def test_study_storage_forms(url, ok, base, monkeypatch):
    monkeypatch.chdir(base)
    assert (study_storage_problem(url.format(base=base)) is None) == ok


@pytest.mark.parametrize("address, ok", [
    ("auto", True), ("local", True), ("h:1", True), ("ray://h", True), ("ray://h:10001", True),
    ("h", False), ("h:", False), ("h:65536", False), ("ray://", False), ("ray://h/x:1", False),
])
def test_ray_address_forms(address, ok):
    assert (address_problem(address) is None) == ok


@pytest.mark.parametrize("resume", [False, True])
def test_a_malformed_tracking_uri_in_the_environment_is_rejected_unless_resuming(resume,
                                                                                monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "htp://x")
    argv = ["--resume"] if resume else []
    if resume:  # a resumed search uses the store saved with it
        validate(argv)
    else:
        with pytest.raises(OptionError, match=r"^\$MLFLOW_TRACKING_URI 'htp://x': unknown"):
            validate(argv)
    with pytest.raises(OptionError, match=r"^--tracking-uri 'htp://y'"):
        validate([*argv, "--tracking-uri", "htp://y"])


def test_a_read_only_folder_is_rejected_for_storage_and_best_config(tmp_path):
    import os
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OptionError, match="not writable"):
            validate(["--storage", str(ro / "s")])
        with pytest.raises(OptionError, match=r"--best-config .* is not writable"):
            validate(["--storage", str(tmp_path / "s"), "--best-config", str(ro / "b.json")])
    finally:
        ro.chmod(0o700)


# --- the command itself: one error line, exit 2, no Ray ----------------------------------------
BAD_CASES = {
    "best-config in a missing folder": ["--best-config", "{tmp}/missing/best.json"],
    "best-config below a file": ["--best-config", "{tmp}/afile/best.json"],
    "best-config is a folder": ["--best-config", "{tmp}"],
    "storage below a file": ["--storage", "{tmp}/afile/results"],
    "storage is a file": ["--storage", "{tmp}/afile"],
    "storage in an unknown home": ["--storage", "~no-such-user-x/results"],
    "experiment ../x": ["--experiment", "../x"],
    "experiment absolute": ["--experiment", "/tmp/x"],
    "experiment with a separator": ["--experiment", "a/b"],
    "experiment empty": ["--experiment", ""],
    "experiment hidden": ["--experiment", ".x"],
    "num-samples 0": ["--num-samples", "0"],
    "num-samples -3": ["--num-samples", "-3"],
    "num-samples nan": ["--num-samples", "nan"],
    "max-epochs 0": ["--max-epochs", "0"],
    "grace-period -1": ["--grace-period", "-1"],
    "concurrency 0": ["--concurrency", "0"],
    "cpus-per-trial 0": ["--cpus-per-trial", "0"],
    "cpus-per-trial nan": ["--cpus-per-trial", "nan"],
    "cpus-per-trial inf": ["--cpus-per-trial", "inf"],
    "gpus-per-trial -1": ["--gpus-per-trial", "-1"],
    "gpus-per-trial inf": ["--gpus-per-trial", "inf"],
    "gpus-per-trial 1.5": ["--gpus-per-trial", "1.5"],
    "time-budget 0": ["--time-budget", "0"],
    "time-budget nan": ["--time-budget", "nan"],
    "time-budget inf": ["--time-budget", "inf"],
    "seed -1": ["--seed", "-1"],
    "seed 2**32": ["--seed", str(MAX_SEED + 1)],
    "max-failures -1": ["--max-failures", "-1"],
    "top 0": ["--top", "0"],
    "confirm-top -1": ["--confirm-top", "-1"],
    "seeds 0": ["--seeds", "0"],
    "cache-trials -1": ["--cache-trials", "-1"],
    "ensemble -2": ["--ensemble", "-2"],
    "set unknown key": ["--set", "bogus=1"],
    "set lr=nan": ["--set", "lr=nan"],
    "set lr=inf": ["--set", "lr=inf"],
    "set dropout=2": ["--set", "dropout=2"],
    "set twice": ["--set", "lr=1", "--set", "lr=2"],
    "set epochs": ["--set", "epochs=3"],
    "set without =": ["--set", "lr"],
    "tracking-uri unknown scheme": ["--tracking-uri", "htp://localhost:5000"],
    "tracking-uri no host": ["--tracking-uri", "http://"],
    "tracking-uri sqlite two slashes": ["--tracking-uri", "sqlite://m.db"],
    "tracking-uri empty": ["--tracking-uri", ""],
    "study-storage not a database": ["--study-storage", "redis://h"],
    "study-storage in a missing folder": ["--study-storage", "sqlite:///{tmp}/missing/o.db"],
    "address without a port": ["--address", "head"],
    "address bad port": ["--address", "head:99999"],
    "scheduler unknown": ["--scheduler", "pbt"],
    "sampler unknown": ["--sampler", "grid"],
    "space unknown": ["--space", "nope"],
    "unknown flag": ["--frobnicate"],
    "resume with a bad value": ["--resume", "--num-samples", "0"],
}


@pytest.mark.parametrize("args", list(BAD_CASES.values()), ids=list(BAD_CASES))
def test_each_bad_case_is_one_error_line_exit_2_and_no_ray(args, tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)

    def no_search(opts):  # validation must have failed before the search was asked for
        raise AssertionError(f"the search was started with {opts}")

    monkeypatch.setattr("search.driver.run_search", no_search)
    argv = ["--space", "smoke", *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    try:
        code = run.main(argv)
    except SystemExit as e:  # argparse: a value that is not a number at all, an unknown flag
        code = e.code
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not ray.is_initialized()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing written
