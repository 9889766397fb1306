"""The search's console output (`search.tune.console`): trial event lines, the status table, Ray
kept quiet. Fast tests drive the callback with real Tune `Trial` objects; the slow ones read
the output of the shared smoke search."""

from __future__ import annotations

import logging
import pickle
import re

import pytest
from ray.tune.experiment import Experiment, Trial

from search import schema
from search.tune import console
from search.tune.console import Row, SearchConsole, best_row, status_table


def _trial(trial_id: str, model: str = "awd_lstm") -> Trial:
    return Trial("train_trial", config={"model": model}, trial_id=trial_id, stub=True,
                 max_failures=2)


def _report(trial: Trial, epoch: int, val: float, best: float, **extra: object) -> None:
    trial.update_last_result({schema.EPOCH: epoch, schema.VAL_PPL: val,
                              schema.BEST_VAL_PPL: best, **extra})


def _console(lines: list[str], interval_s: float = 60.0) -> SearchConsole:
    return SearchConsole(schema.BEST_VAL_PPL, "min", stopper="ASHA", interval_s=interval_s,
                         out=lines.append)


def test_status_table_shows_the_objective_and_the_best_trial_so_far():
    rows = [Row("a", "running", 1, 300.0, 300.0), Row("b", schema.STATUS_COMPLETED, 2, 210.0,
                                                      200.0),
            Row("c", schema.STATUS_FAILED, 1, None, None), Row("d", "pending", None, None, None),
            Row("e", schema.STATUS_STOPPED, 1, 250.0, 250.0)]
    lines = status_table(rows, schema.BEST_VAL_PPL, "min", 75.0)
    assert lines[0] == ("Search status after 1m15s: 5 trials (1 completed, 1 stopped_early, "
                        "1 failed, 1 running, 1 pending)")
    assert lines[1] == "Best so far: b best_val_ppl=200.00 at epoch 2 (completed)"
    assert lines[2].split() == ["trial", "status", "epoch", "val_ppl", "best_val_ppl"]
    # active trials first, then the ended ones best first, failed last
    assert [line.split()[0] for line in lines[3:]] == ["a", "d", "b", "e", "c"]
    assert lines[5].split() == ["b", "completed", "2", "210.00", "200.00"]
    assert lines[7].split() == ["c", "failed", "1", "-", "-"]
    short = status_table(rows, schema.BEST_VAL_PPL, "min", 3.0, max_rows=2)
    assert short[-1].strip() == "(3 more trials not shown)" and len(short) == 3 + 2 + 1
    assert best_row(rows, "max") == rows[0]
    assert best_row([rows[2]], "min") is None


def test_trial_events_are_one_line_each():
    lines: list[str] = []
    out = _console(lines)
    a, b, c, d = (_trial(i) for i in ("aaaa0001", "bbbb0002", "cccc0003", "dddd0004"))
    trials = [a, b, c, d]
    for t in trials:
        out.on_trial_start(iteration=0, trials=trials, trial=t)
    _report(a, 2, 210.0, 200.0, finished=True)
    out.on_trial_complete(iteration=1, trials=trials, trial=a)
    _report(b, 1, 400.0, 400.0, finished=False)  # ASHA: ended without finishing
    out.on_trial_complete(iteration=2, trials=trials, trial=b)
    _report(c, 1, 150.0, 150.0, **{schema.FATAL: "out of memory: CUDA"})
    out.on_trial_complete(iteration=3, trials=trials, trial=c)
    _report(d, 1, 190.0, 190.0)
    d.run_metadata.num_failures = 1
    out.on_trial_recover(iteration=4, trials=trials, trial=d)
    out.on_trial_start(iteration=5, trials=trials, trial=d)
    assert lines == [
        f"Trial {a} started", f"Trial {b} started", f"Trial {c} started", f"Trial {d} started",
        f"Trial {a} completed after epoch 2: best_val_ppl=200.00 (best so far)",
        f"Trial {b} stopped early by ASHA after epoch 1: best_val_ppl=400.00",
        f"Trial {c} failed at epoch 1: out of memory: CUDA",
        f"Trial {d} failed after epoch 1; retrying from its last checkpoint (failure 1 of at "
        "most 2)",
        f"Trial {d} resumed after epoch 1",
    ]


def test_the_table_is_throttled_and_tells_interrupted_trials():
    lines: list[str] = []
    out = _console(lines)
    done, cut = _trial("aaaa0001"), _trial("bbbb0002")
    trials = [done, cut]
    done.set_status(Trial.TERMINATED)  # ended before a restore: keeps its outcome
    _report(done, 2, 210.0, 200.0, finished=True)
    out.setup()
    out.on_step_begin(iteration=0, trials=trials)
    out.on_step_end(iteration=0, trials=trials)
    first = len(lines)
    assert first and lines[0].startswith("Search status after")
    cut.set_status(Trial.RUNNING)
    _report(cut, 1, 300.0, 300.0)
    out.on_step_end(iteration=1, trials=trials)  # changed, but within a minute: no table
    assert len(lines) == first
    cut.set_status(Trial.TERMINATED)  # Tune's cleanup after Ctrl-C: never ended by the search
    out.on_experiment_end(trials=trials)
    final = lines[first:]
    assert final[1] == f"Best so far: {done} best_val_ppl=200.00 at epoch 2 (completed)"
    assert final[-1].split()[:2] == [str(cut), schema.STATUS_INTERRUPTED]


def test_the_console_travels_in_the_saved_tuner():
    """`Tuner.restore` unpickles the callbacks: the console comes back, printing to stdout."""
    out = pickle.loads(pickle.dumps(_console([])))
    assert isinstance(out, SearchConsole) and out.out is None and out.stopper == "ASHA"


def test_quiet_trainable_keeps_tunes_name_and_silences_the_checkpoint_line():
    from ray.train._internal import storage as train_storage

    from search.tune.session import trainable as _trainable
    from search.tune.trainable import train_trial

    # Tuner.restore refuses a trainable whose name differs from the saved search's
    assert (Experiment.get_trainable_name(_trainable(1, 0))
            == Experiment.get_trainable_name(train_trial) == "train_trial")
    assert train_storage.logger.name == console.CHECKPOINT_LOGGER  # where the line is logged
    seen: list[dict[str, object]] = []
    logger = logging.getLogger(console.CHECKPOINT_LOGGER)
    level = logger.level
    try:
        console.quiet_trainable(seen.append)({"model": "zaremba"})
        assert seen == [{"model": "zaremba"}]
        assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
    finally:
        logger.setLevel(level)


def test_quiet_ray_leaves_a_users_setting(monkeypatch):
    monkeypatch.delenv(console.EXCESSIVE_SNAPSHOT_WARNING, raising=False)
    console.quiet_ray()
    import os

    assert os.environ[console.EXCESSIVE_SNAPSHOT_WARNING] == "0"
    monkeypatch.setenv(console.EXCESSIVE_SNAPSHOT_WARNING, "5")
    console.quiet_ray()
    assert os.environ[console.EXCESSIVE_SNAPSHOT_WARNING] == "5"


def test_quiet_ray_drops_tunes_restore_advice_and_keeps_its_other_lines(monkeypatch, caplog):
    for name in (console.NEW_OUTPUT, console.EXCESSIVE_SNAPSHOT_WARNING):
        monkeypatch.setenv(name, "")  # what quiet_ray sets is undone after the test
        monkeypatch.delenv(name)
    logger = logging.getLogger(console.TUNE_LOGGER)
    monkeypatch.setattr(logger, "filters", [])
    console.quiet_ray()
    console.quiet_ray()  # once is enough: no second filter
    assert len(logger.filters) == 1
    import os

    assert os.environ[console.NEW_OUTPUT] == "0"
    with caplog.at_level(logging.INFO, logger=console.TUNE_LOGGER):
        logger.warning("Experiment has been interrupted, but the most recent state was saved.\n"
                       "Resume experiment with: Tuner.restore(path='x', trainable=...)")
        logger.info("Wrote the latest version of all result files and experiment state to 'x'")
        logger.error("Trials did not complete: [t1]")
    assert [r.getMessage() for r in caplog.records] == ["Trials did not complete: [t1]"]


def test_quiet_ray_drops_rays_start_up_lines_and_keeps_a_clusters(monkeypatch, caplog):
    for name in (console.NEW_OUTPUT, console.EXCESSIVE_SNAPSHOT_WARNING):
        monkeypatch.setenv(name, "")
    loggers = {name: logging.getLogger(name) for name in console.RAY_START_NOISE}
    for logger in loggers.values():
        monkeypatch.setattr(logger, "filters", [])
    console.quiet_ray()
    with caplog.at_level(logging.INFO):
        worker = loggers["ray._private.worker"]
        worker.info("Started a local Ray instance.")
        worker.info("Connected to Ray cluster.")
        auth = loggers["ray._private.authentication.authentication_token_setup"]
        auth.warning("Token authentication is enabled for this Ray cluster. Set "
                     "RAY_AUTH_MODE=disabled to opt out.")
        auth.warning("Token authentication is disabled for this Ray cluster. Anyone with ...")
    assert [r.getMessage() for r in caplog.records] == [
        "Connected to Ray cluster.",
        "Token authentication is disabled for this Ray cluster. Anyone with ..."]


def test_a_state_save_that_found_the_disk_full_is_one_line(monkeypatch, caplog):
    import errno

    logger = logging.getLogger(console.STATE_LOGGER)
    monkeypatch.setattr(logger, "filters", [])
    monkeypatch.setenv(console.NEW_OUTPUT, "")
    monkeypatch.setenv(console.EXCESSIVE_SNAPSHOT_WARNING, "")
    console.quiet_ray()

    def failed_save(error: Exception) -> logging.LogRecord:
        caplog.clear()
        try:
            raise error
        except OSError:
            logger.error("Saving experiment state to storage at 'x' failed with exception: ",
                         exc_info=True)
        return caplog.records[-1]

    with caplog.at_level(logging.INFO, logger=console.STATE_LOGGER):
        full = failed_save(OSError(errno.ENOSPC, "Error writing bytes to file"))
        assert full.exc_info is None and full.getMessage().endswith("Error writing bytes to file")
        assert "Traceback" not in caplog.text
        other = failed_save(OSError(errno.EACCES, "Permission denied"))
        assert other.exc_info is not None and "Traceback" in caplog.text  # not ours to shorten


def test_quiet_worker_leaves_warnings_of_the_restore_and_checkpoint_loggers(monkeypatch):
    loggers = [logging.getLogger(n) for n in (console.RESTORE_LOGGER, console.CHECKPOINT_LOGGER)]
    for logger in loggers:
        monkeypatch.setattr(logger, "level", logging.NOTSET)
    console.quiet_worker()
    assert all(not lg.isEnabledFor(logging.INFO) and lg.isEnabledFor(logging.WARNING)
               for lg in loggers)


# --- the real search's output ------------------------------------------------------------------
EVENT = re.compile(r"^Trial (\S+) (started|completed|stopped early by ASHA|failed)\b")
MAX_LINES = 100  # measured 57 (49 stdout + 8 stderr) on 2 CPU cores; was 300+ before


@pytest.mark.slow
def test_smoke_search_output_is_a_table_and_one_line_per_trial_event(smoke_search):
    from tests.conftest import SMOKE_TRIALS

    _, proc, _ = smoke_search
    out, err = proc.stdout.splitlines(), proc.stderr.splitlines()
    headers = [line.split() for line in out if line.split()[:3] == ["trial", "status", "epoch"]]
    assert headers and all(h[3:] == ["val_ppl", "best_val_ppl"] for h in headers), headers
    assert any(line.startswith("Best so far: ") and "best_val_ppl=" in line for line in out)
    events: dict[str, list[str]] = {}
    for line in out:
        m = EVENT.match(line)
        if m:
            events.setdefault(m.group(1), []).append(m.group(2))
    assert len(events) == SMOKE_TRIALS
    assert all(kinds[0] == "started" and len(kinds) == 2 for kinds in events.values()), events
    noise = ("Checkpoint successfully created", "triggered multiple times",
             "Trial status:", "started with configuration", "Configuration for experiment",
             "View detailed results", "A new study created", "Using an existing study",
             "Wrote the latest version", "Token authentication is enabled",
             "Started a local Ray instance")
    assert not [line for line in out + err if any(n in line for n in noise)]
    assert len(out) + len(err) < MAX_LINES, f"{len(out)} + {len(err)} lines"


@pytest.mark.slow
def test_each_trial_logs_its_epochs_in_its_folder_as_awd_train_prints_them(smoke_search):
    """The epoch line of `awd.progress` in each trial's `TRIAL_LOG`, not on the console."""
    cwd, proc, _ = smoke_search
    line = re.compile(r"^epoch +(\d+) \((?:train|finetune)\) \| train ppl +[\d.]+ \| val ppl "
                      r"+[\d.]+ \| best +[\d.]+ \| lr \S+ \| [\d.]+s \| [\d,]+ tok/s \| "
                      r"averaging (?:on|off)$", re.MULTILINE)
    logs = sorted((cwd / "ray_results" / "smoke").glob(f"*/{console.TRIAL_LOG}"))
    assert logs
    trial_dirs = [d for d in (cwd / "ray_results" / "smoke").iterdir()
                  if (d / "result.json").is_file()]
    assert len(logs) == len(trial_dirs)
    for log in logs:
        text = log.read_text()
        epochs = [int(e) for e in line.findall(text)]
        results = [r for r in (log.parent / "result.json").read_text().splitlines() if r]
        assert epochs == list(range(1, len(results) + 1)), (log, text[-1000:])
        if '"finished": true' in results[-1]:
            assert re.search(r"^final \| val ppl [\d.]+ \| test ppl [\d.]+$", text, re.MULTILINE)
    assert not line.search(proc.stdout)


def test_token_bars_draw_on_a_terminal_only(capsys, monkeypatch):
    """`awd.evaluate` and `awd.train` into a log file: no tqdm redraws, one a line."""
    import sys

    from awd.progress import TokenBars

    bars = TokenBars()
    for done in (100, 200, 300):
        bars("validate", done, 300)
    bars.close()
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bars = TokenBars()
    bars("validate", 100, 300)
    bars.close()
    assert "validate:" in capsys.readouterr().err
