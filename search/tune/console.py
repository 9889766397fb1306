"""What a running search prints: one line per trial event, a short status table, Ray quiet.

Ray Tune's default console output (its "AIR" engine, `ray.tune.experimental.output`) picks the
table's columns itself (iteration, time, then the first four numbers a trial reports: never the
search's objective) and shows a best trial only when `TuneConfig` names the metric and mode,
which our scheduler already carries (ASHA refuses a second one with a ValueError). A
`progress_reporter` is ignored by that engine. So the search runs Tune with ``verbose=0`` (its
reporters silent; errors are still logged) and prints through `SearchConsole`, a plain Tune
callback: the same output with either engine, on a fresh search and after `Tuner.restore`
(callbacks travel in the saved Tuner).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.stopper import Stopper

from awd.errors import first_line
from search import diskspace, schema
from search.results import failure_reason, status_counts, status_of

# Ray Tune snapshots the experiment state every time a trial checkpoints when
# `CheckpointConfig(num_to_keep)` is set: each trial keeps only its latest checkpoint, and the
# snapshot must name it before the older one is deleted, or --resume would point at a deleted
# checkpoint. With concurrent trials checkpointing every epoch this is by design, and Ray warns
# about it in four lines ("triggered multiple times ... may become a bottleneck") whenever two
# snapshots fall within 5 s. `TUNE_GLOBAL_CHECKPOINT_S` only paces the periodic snapshots, not
# these. The snapshot that is really slow still warns (`TUNE_WARN_SLOW_..._THRESHOLD_S`, 30 s).
EXCESSIVE_SNAPSHOT_WARNING = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"

# The worker-side logger that says "Checkpoint successfully created at: ..." (INFO) once per
# epoch and trial; it logs nothing else at INFO or above.
CHECKPOINT_LOGGER = "ray.train._internal.storage"

# Each trial's epoch lines (`awd.progress.epoch_line`, as `awd.train` prints them) and final
# evaluation, in the trial's own folder: the driver's console keeps the events and the table.
TRIAL_LOG = "trial.log"

TABLE_INTERVAL_S = 60.0  # at most one status table a minute while the search runs
MAX_ROWS = 20


# Tune's new output engine prints its "Configuration for experiment" box, the results folder
# and a TensorBoard hint even at ``verbose=0``; its legacy engine prints nothing there. Our
# console (`SearchConsole`) is the output, so the legacy engine runs, unless the user chose.
NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"

# Lines of the driver's Tune that say what the search's own lines say better: on a stop, its
# advice to call `Tuner.restore(...)` (the search prints its `--resume` command), and the
# timing of each experiment-state save.
TUNE_LOGGER = "ray.tune.tune"
TUNE_NOISE = ("Resume experiment with:", "Experiment has been interrupted",
              "Wrote the latest version of all result files")

# What `ray.init` says on a laptop that our plan line says better: that it started a local
# instance, and that token authentication is on (Ray's default for a local cluster, which the
# search keeps; the warning only says how to turn it off). "Connected to Ray cluster." stays.
RAY_START_NOISE = {"ray._private.worker": ("Started a local Ray instance.",),
                   "ray._private.authentication.authentication_token_setup": (
                       "Token authentication is enabled for this Ray cluster",)}
NOISE = {TUNE_LOGGER: TUNE_NOISE, **RAY_START_NOISE}

# The worker-side logger that says "Restored on IP from checkpoint: ..." (INFO, with Ray's
# coloured prefix) for each trial a resume or a retry restores.
RESTORE_LOGGER = "ray.tune.trainable.trainable"


# Tune's state save: a failed upload is logged with its traceback. A full disk is the search's
# to report, in one line (`search.diskspace`): the record keeps its first line, not the trace.
STATE_LOGGER = "ray.tune.execution.experiment_state"


class _OneLineWhenDiskFull(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and diskspace.is_disk_full(error):
            record.msg = f"{record.getMessage()}{first_line(error)[:200]}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


class _DropNoise(logging.Filter):
    """Drops the records of one logger that hold one of its `NOISE` phrases."""

    def __init__(self, phrases: tuple[str, ...]) -> None:
        super().__init__()
        self.phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.phrases)


def quiet_ray() -> None:
    """Ray's per-epoch snapshot warning off (see `EXCESSIVE_SNAPSHOT_WARNING`) and Tune's
    legacy, silent output engine (`NEW_OUTPUT`), unless the user set them; Ray's start-up lines,
    Tune's restore advice and save timings dropped (`NOISE`), a state save that found the disk
    full one line. Read when Ray starts and when Tune starts a run: call before `ray.init` and
    before `Tuner.fit` (it adds each filter once)."""
    os.environ.setdefault(EXCESSIVE_SNAPSHOT_WARNING, "0")
    os.environ.setdefault(NEW_OUTPUT, "0")
    filters: list[tuple[str, logging.Filter]] = [
        *((name, _DropNoise(phrases)) for name, phrases in NOISE.items()),
        (STATE_LOGGER, _OneLineWhenDiskFull())]
    for name, new in filters:
        logger = logging.getLogger(name)
        if not any(type(f) is type(new) for f in logger.filters):
            logger.addFilter(new)


def quiet_worker() -> None:
    """Ray's ``worker_process_setup_hook`` (`search.tune.session.connect_ray`): each worker's
    per-trial "Restored on ... from checkpoint" and "Checkpoint successfully created" lines off
    (WARNING and above still reach the driver)."""
    for name in (RESTORE_LOGGER, CHECKPOINT_LOGGER):
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_trainable(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """``fn`` without Ray's per-epoch "Checkpoint successfully created" line in its worker.
    Same name, so `Tuner.restore` accepts it for a search started with plain ``fn``."""

    @functools.wraps(fn)
    def trainable(config: dict[str, Any]) -> None:
        quiet_worker()  # also where Ray was started without its setup hook
        fn(config)

    return trainable


@dataclass(frozen=True)
class Row:
    """One trial as the status table shows it."""

    name: str
    status: str  # pending, running, paused, or a `schema.TRIAL_STATUSES` outcome
    epoch: int | None
    val_ppl: float | None
    objective: float | None  # the search metric (best_val_ppl); None for a failed trial

    @property
    def active(self) -> bool:
        return self.status in ("pending", "running", "paused")


def row(trial: Trial, metric: str, status: str | None = None) -> Row:
    """``status``: the trial's outcome when the caller knows it; else Tune's status, and for
    an ended trial the outcome its last result tells."""
    result = trial.last_result or {}
    if status is None:
        status = (schema.STATUS_FAILED if trial.status == Trial.ERROR
                  else status_of(result) if trial.status == Trial.TERMINATED
                  else trial.status.lower())
    failed = status == schema.STATUS_FAILED
    epoch = result.get(schema.EPOCH)
    return Row(name=str(trial), status=status,
               epoch=int(epoch) if epoch is not None else None,
               val_ppl=None if failed else _number(result.get(schema.VAL_PPL)),
               objective=None if failed else _number(result.get(metric)))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def best_row(rows: Iterable[Row], mode: str) -> Row | None:
    """The trial with the best objective so far (running trials included); None before any."""
    scored = [r for r in rows if r.objective is not None]
    if not scored:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(scored, key=lambda r: sign * (r.objective or 0.0))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def status_table(rows: Sequence[Row], metric: str, mode: str, elapsed_s: float,
                 max_rows: int = MAX_ROWS) -> list[str]:
    """The status block: counts, the best trial so far, then running trials and the best ended
    ones (at most ``max_rows``)."""
    counts = status_counts(r.status for r in rows)
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [f"Search status after {_duration(elapsed_s)}: {len(rows)} trials ({summary})"]
    best = best_row(rows, mode)
    if best is not None:
        at = f" at epoch {best.epoch}" if best.epoch is not None else ""
        lines.append(f"Best so far: {best.name} {metric}={_fmt(best.objective)}{at} "
                     f"({best.status})")
    sign = 1.0 if mode == "min" else -1.0
    ended = sorted((r for r in rows if not r.active),
                   key=lambda r: (r.objective is None, sign * (r.objective or 0.0)))
    shown = ([r for r in rows if r.active] + ended)[:max_rows]
    header = ("trial", "status", schema.EPOCH, schema.VAL_PPL, metric)
    cells = [header] + [(r.name, r.status, "-" if r.epoch is None else str(r.epoch),
                         _fmt(r.val_ppl), _fmt(r.objective)) for r in shown]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    for c in cells:
        left = [c[i].ljust(widths[i]) for i in (0, 1)]
        right = [c[i].rjust(widths[i]) for i in range(2, len(header))]
        lines.append("  " + "  ".join(left + right).rstrip())
    if len(rows) > len(shown):
        lines.append(f"  ({len(rows) - len(shown)} more trials not shown)")
    return lines


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


class SearchConsole(tune.Callback):
    """Prints one line per trial event (started, completed, stopped early by the scheduler,
    failed, retried) and, at most every ``interval_s`` while something changed and at the end,
    the status table. ``stopper`` names what stops trials early ("ASHA")."""

    def __init__(self, metric: str, mode: str, stopper: str = "the scheduler",
                 interval_s: float = TABLE_INTERVAL_S, max_rows: int = MAX_ROWS,
                 out: Callable[[str], None] | None = None) -> None:
        self.metric, self.mode, self.stopper = metric, mode, stopper
        self.interval_s, self.max_rows = interval_s, max_rows
        self.out = out
        self._start = time.monotonic()
        self._last_table = float("-inf")
        self._shown: tuple[tuple[str, str, Any], ...] = ()
        self._ended: dict[str, str] = {}  # trial id -> outcome, for the trials that ended
        self._started = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["out"] = None  # saved with the Tuner: a restored search prints to stdout
        return state

    def setup(self, stop: Stopper | None = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        self._start = time.monotonic()  # again after Tuner.restore
        self._last_table = float("-inf")
        self._ended, self._started = {}, False

    def _print(self, line: str) -> None:
        if self.out is not None:
            self.out(line)
        else:
            print(line, flush=True)

    # --- trial events -------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        epoch = (trial.last_result or {}).get(schema.EPOCH)
        self._print(f"Trial {trial} started" if not epoch
                    else f"Trial {trial} resumed after epoch {epoch}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        result = trial.last_result or {}
        status = status_of(result)  # the trial is still RUNNING to Tune here
        self._ended[trial.trial_id] = status
        epoch = result.get(schema.EPOCH)
        at = f"epoch {epoch}" if epoch is not None else "its start"
        if status == schema.STATUS_FAILED:
            reason = failure_reason(result)
            self._print(f"Trial {trial} failed at {at}: {reason}")
            return
        what = ("completed" if status == schema.STATUS_COMPLETED
                else f"stopped early by {self.stopper}")
        best = best_row((self._row(t) for t in trials), self.mode)
        note = " (best so far)" if best is not None and best.name == str(trial) else ""
        self._print(f"Trial {trial} {what} after {at}: "
                    f"{self.metric}={_fmt(_number(result.get(self.metric)))}{note}")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        self._ended[trial.trial_id] = schema.STATUS_FAILED
        epoch = (trial.last_result or {}).get(schema.EPOCH)
        after = f" after epoch {epoch}" if epoch else ""
        self._print(f"Trial {trial} failed{after} (error above; {trial.error_file})")

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial,
                         **info: Any) -> None:
        epoch = (trial.last_result or {}).get(schema.EPOCH)
        after = f" after epoch {epoch}" if epoch else ""
        self._print(f"Trial {trial} failed{after}; retrying from its last checkpoint "
                    f"(failure {trial.run_metadata.num_failures} of at most "
                    f"{trial.max_failures})")

    # --- the status table ---------------------------------------------------------------------
    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if not self._started:  # trials a restored search had already ended keep their outcome
            self._started = True
            for t in trials:
                if t.status in (Trial.TERMINATED, Trial.ERROR):
                    self._ended[t.trial_id] = row(t, self.metric).status

    def _row(self, trial: Trial) -> Row:
        """Tune also marks TERMINATED the trials it cut off at the end of a run (a signal, the
        time budget) without ending them: those are interrupted, not stopped early."""
        status = self._ended.get(trial.trial_id)
        if status is None and trial.status == Trial.TERMINATED:
            status = schema.STATUS_INTERRUPTED
        return row(trial, self.metric, status)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        now = time.monotonic()
        if now - self._last_table >= self.interval_s:
            self._table(trials, now, force=False)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._table(trials, time.monotonic(), force=True)

    def _table(self, trials: list[Trial], now: float, force: bool) -> None:
        rows = [self._row(t) for t in trials]
        seen = tuple((r.name, r.status, r.epoch) for r in rows)
        if not rows or (not force and (seen == self._shown
                                       or all(r.epoch is None for r in rows))):
            return
        self._shown, self._last_table = seen, now
        for line in status_table(rows, self.metric, self.mode, now - self._start,
                                 self.max_rows):
            self._print(line)
