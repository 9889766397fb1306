"""The error contract of every command line, in-process: a `UserError` (of any subclass, from any
layer) is one ``error:`` line on stderr and exit status 2; anything else is a bug and keeps its
traceback. Also: the search and the reports find the same MLflow store by default."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import awd.errors
from awd.data.__main__ import main as data_main
from awd.errors import CheckpointError, ConfigError, DataError, TrainingDiverged, UserError
from awd.train import main as train_main
from reports import ReportError
from reports.__main__ import main as reports_main
from search.driver import SearchError
from search.options import OptionError
from search.run import main as search_main
from search.tracking.store import TrackingError
from spaces import UnknownSpaceError

ERRORS = [DataError("no train split in /x"), ConfigError("dropout must be in [0, 1), got 1.5"),
          CheckpointError("cannot resume from a.pt: No such file"),
          TrainingDiverged(3, math.nan), UnknownSpaceError("unknown space 'x'; known: smoke"),
          OptionError("--num-samples must be >= 1"), TrackingError("cannot reach the server"),
          SearchError("nothing to resume at /r"), ReportError("unknown MLflow experiment 'x'")]

# command line -> (its main, an argv that reaches the patched function, the function to patch)
CLIS = {
    "awd.train": (train_main, ["--model", "awd_lstm", "--quiet"], "awd.data.corpus.load_corpus"),
    "awd.data": (data_main, ["verify", "ptb"], "awd.data.__main__.dataset_spec"),
    "search.run": (search_main, ["--space", "smoke"], "search.driver.run_search"),
    "reports": (reports_main, ["--experiment", "x", "--no-log"], "reports.build.build"),
}


def test_every_user_fixable_error_is_a_user_error():
    assert not hasattr(awd.errors, "AWDError")
    for cls in (DataError, ConfigError, CheckpointError, TrainingDiverged, UnknownSpaceError,
                OptionError, TrackingError, SearchError, ReportError):
        assert issubclass(cls, UserError), cls
    assert not issubclass(UnknownSpaceError, KeyError)  # str() is the message, unquoted


def _raiser(error: BaseException):
    def raise_it(*args, **kwargs):
        raise error
    return raise_it


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("cli", sorted(CLIS))
def test_user_error_is_one_error_line_and_exit_2(cli, error, monkeypatch, capsys, tmp_path):
    main, argv, target = CLIS[cli]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(target, _raiser(error))
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.splitlines() == [f"error: {error}"]
    assert "Traceback" not in captured.out


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_any_other_exception_is_a_bug_with_its_traceback(cli, monkeypatch, tmp_path):
    main, argv, target = CLIS[cli]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(target, _raiser(KeyError("a bug")))
    with pytest.raises(KeyError, match="a bug"):
        main(argv)


# --- one default MLflow store for the search and the reports ---------------------------------
@pytest.mark.parametrize("env, flag, expected", [
    (None, None, "{cwd}/mlflow.db"),
    ("sqlite:///rel/m.db", None, "{cwd}/rel/m.db"),
    ("http://127.0.0.1:9", None, "http://127.0.0.1:9"),
    ("http://127.0.0.1:9", "sqlite:///flag.db", "{cwd}/flag.db"),
], ids=["default", "env-relative-sqlite", "env-http", "flag-beats-env"])
def test_search_and_reports_resolve_the_same_tracking_uri(env, flag, expected, tmp_path,
                                                          monkeypatch, capsys):
    cwd = tmp_path.resolve()
    monkeypatch.chdir(cwd)
    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    seen: dict[str, str] = {}

    def search_check(uri: str, timeout: float = 5.0) -> None:
        seen["search"] = uri
        raise TrackingError("stop here")

    def report_build(uri: str, experiments, out: Path, log_artifacts: bool = True):
        seen["reports"] = uri
        raise ReportError("stop here")

    monkeypatch.setattr("search.driver.check_data", lambda dataset: None)
    monkeypatch.setattr("search.driver.check_tracking_location", search_check)
    monkeypatch.setattr("reports.build.build", report_build)
    extra = ["--tracking-uri", flag] if flag else []
    assert search_main(["--space", "smoke", *extra]) == 2
    assert reports_main(["--experiment", "x", "--out", str(cwd / "r"), *extra]) == 2
    capsys.readouterr()
    want = expected.format(cwd=cwd)
    want = want if want.startswith("http") else f"sqlite:///{want}"
    assert seen == {"search": want, "reports": want}
