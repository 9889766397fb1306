"""The Ray Tune trainable: one trial is one `awd` training run with NT-ASGD.

It reports every epoch with a checkpoint of the whole trainer (so a restarted worker resumes
mid-trial). Every result carries the trial's running totals (epochs run, train seconds, NT-ASGD
trigger epoch), and the last one adds the final validation and test perplexity: the last result
is all the search's summary needs. A diverging run
raises `TrainingDiverged`; its checkpoint is marked so that Ray's retries do not re-train the same
doomed epochs. A trial that cannot succeed however often it is retried (unreadable data, an
invalid config, a model too large to allocate) ends at once with a last result naming the reason
(`schema.FATAL`) instead of an error: Ray retries errors, and the retries would fail the same way.
An unreadable checkpoint (truncated by a crash) is no such failure: the trial starts afresh.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import ray
import torch
from ray import tune

from awd.config import from_flat
from awd.data import load_corpus
from awd.errors import CheckpointError, ConfigError, DataError, TrainingDiverged, first_line
from awd.memory import peak_memory_mb, reset_peak_memory
from awd.progress import epoch_line, final_line
from awd.trainer import EpochMetrics, Trainer
from search import diskspace, schema
from search.tune.console import TRIAL_LOG

CHECKPOINT_FILE = "trainer.pt"
DIVERGED_FILE = "diverged.json"
DIVERGED_PPL = 1e12
DISK_FULL_WAIT_S = 120.0  # a checkpoint that finds its disk full waits this long for space
DISK_FULL_RETRY_S = 2.0

log = logging.getLogger(__name__)

# This process, for its CPU use between two epochs: psutil measures since its previous call, so
# the first call (here, as the worker imports the trainable) starts the first epoch's count.
_PROCESS = psutil.Process()
_PROCESS.cpu_percent(None)


def _limit_threads() -> None:
    """Use as many intra-op threads as CPUs the trial holds, not the whole node."""
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


def _restore(trainer: Trainer) -> None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as d:
        diverged = Path(d) / DIVERGED_FILE
        if diverged.exists():
            info = json.loads(diverged.read_text())
            raise TrainingDiverged(info["epoch"], info["loss"], info["phase"])
        try:
            trainer.load(Path(d) / CHECKPOINT_FILE)
        except CheckpointError as e:  # the trainer is untouched by a failed load
            log.warning("trial checkpoint unreadable (%s): the trial starts afresh", e)


def epoch_result(m: EpochMetrics, trainer: Trainer) -> dict[str, Any]:
    """The metrics Tune sees for one epoch (``epoch`` is ASHA's time attribute), under the
    names of `EpochMetrics`, plus the trial's running totals."""
    result = m.as_dict()
    result.pop("phase")
    result["averaging"] = float(m.averaging)
    result[schema.NTASGD_TRIGGER_EPOCH] = m.ntasgd_trigger_epoch or 0
    result.update({schema.EPOCHS_RUN: trainer.epoch, schema.TRAIN_SECONDS: trainer.train_seconds,
                   schema.NUM_PARAMS: trainer.num_params, schema.FINISHED: False,
                   "device": str(trainer.device), "device_name": _device_name(trainer.device),
                   "node_id": _node_id(), "node_ip": ray.util.get_node_ip_address()})
    result.update(system_metrics(trainer.device))
    result.update(cost_metrics(trainer))
    return result


def cost_metrics(trainer: Trainer) -> dict[str, float]:
    """What the trial has cost so far (`schema.COST_METRICS`): its speed, its time per epoch
    and its peak memory since it started in this process (`awd.memory`)."""
    speeds = [m.tokens_per_s for m in trainer.history]
    out = {schema.PEAK_MEMORY_MB: peak_memory_mb(trainer.device)}
    if speeds:
        out[schema.TRAIN_TOKENS_PER_S] = sum(speeds) / len(speeds)
    if trainer.epoch:
        out[schema.SECONDS_PER_EPOCH] = trainer.train_seconds / trainer.epoch
    return out


def system_metrics(device: torch.device) -> dict[str, float]:
    """What the trial uses, as the epoch ends, under MLflow's system-metric names
    (`schema.SYSTEM_METRICS`; CPU: since the previous epoch; GPU memory: the trial's peak so
    far): MLflow's own monitor would measure the driver, which logs."""
    memory = psutil.virtual_memory()
    metrics = {schema.SYSTEM_CPU: _PROCESS.cpu_percent(None) / (psutil.cpu_count() or 1),
               schema.SYSTEM_MEMORY_MB: memory.used / 1e6,
               schema.SYSTEM_MEMORY_PCT: float(memory.percent),
               schema.SYSTEM_PROCESS_RSS_MB: _PROCESS.memory_info().rss / 1e6}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        metrics[schema.SYSTEM_GPU_MEMORY_MB.format(index=index)] = (
            torch.cuda.max_memory_allocated(device) / 1e6)  # the trial's peak, reset at its start
        try:
            metrics[schema.SYSTEM_GPU_UTILIZATION.format(index=index)] = float(
                torch.cuda.utilization(device))
        except Exception as e:  # no NVML (pynvml missing, a driver without it): not measured
            log.debug("GPU utilisation not measured: %s", e)
    return metrics


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def log_line(line: str) -> None:
    """A line of the trial's log (`search.tune.console.TRIAL_LOG`) in its working folder (Tune runs
    each trial in it: the current folder), which Ray copies from the node that runs the trial
    into the trial's folder of the search (``SyncConfig(sync_artifacts=True)``)."""
    try:
        with open(Path.cwd() / TRIAL_LOG, "a") as f:
            f.write(line + "\n")
    except OSError as e:  # a log line never fails a trial
        log.warning("cannot write the trial log: %s", e)


def fatal_reason(error: BaseException) -> str | None:
    """Why retrying the trial cannot help, or None for a failure worth a retry (a lost node,
    a bug): bad data, an invalid config, a tensor that cannot be allocated."""
    if isinstance(error, (ConfigError, DataError)):
        return f"{type(error).__name__}: {first_line(error)}"
    oom = isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError)
        and any(s in str(error) for s in ("can't allocate memory", "out of memory")))
    return f"out of memory: {first_line(error)}" if oom else None


def train_trial(config: dict[str, Any]) -> None:
    """Train one trial config (a flat `awd` config) and report each epoch to Tune."""
    _limit_threads()
    trainer: Trainer | None = None
    try:
        run = from_flat(config)
        trainer = Trainer(run, load_corpus(run.dataset))
        reset_peak_memory(trainer.device)
        _restore(trainer)
        _train(trainer)
    except Exception as e:
        reason = fatal_reason(e)
        if reason is None:
            raise
        _end_fatally(reason, trainer)


def _end_fatally(reason: str, trainer: Trainer | None) -> None:
    """The trial's last result: the reason it can never succeed, ranked last (the search metric
    must be in every result; finite, see `DIVERGED_PPL`)."""
    log.error("trial cannot succeed: %s", reason)
    epoch = trainer.epoch if trainer is not None else 0
    seconds = trainer.train_seconds if trainer is not None else 0.0
    tune.report({schema.EPOCH: epoch, schema.FATAL: reason, schema.BEST_VAL_PPL: DIVERGED_PPL,
                 schema.EPOCHS_RUN: epoch, schema.TRAIN_SECONDS: seconds})


def _report_with_checkpoint(result: dict[str, Any], trainer: Trainer,
                            wait_s: float = DISK_FULL_WAIT_S) -> None:
    """The epoch's result with its checkpoint. A disk full (``ENOSPC``) while the checkpoint is
    written or stored is waited out, up to ``wait_s``: the driver stops the search once a
    folder is short of space (`search.diskspace`), and this trial with it, without an error of
    its own; the checkpoint is tried again (nothing was reported yet) if space comes back."""
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            with tempfile.TemporaryDirectory() as d:
                trainer.save(Path(d) / CHECKPOINT_FILE)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
            return
        except Exception as e:  # ENOSPC, or a CheckpointError / torch's error caused by one
            if not diskspace.is_disk_full(e) or time.monotonic() > deadline:
                raise
            if not said:
                said = True
                log_line("the disk is full: the checkpoint waits for space (or for the search "
                         "to stop)")
            time.sleep(DISK_FULL_RETRY_S)


def _train(trainer: Trainer) -> None:
    try:
        for m in trainer.run():
            log_line(epoch_line(m))
            result = epoch_result(m, trainer)
            if trainer.finished:
                log_line("final evaluation of the best weights (test at batch size "
                         f"{trainer.cfg.test_batch_size})")
                final = trainer.final_metrics()
                log_line(final_line(final))
                result.update({schema.FINAL_VAL_PPL: final["val_ppl"],
                               schema.FINAL_TEST_PPL: final["test_ppl"], schema.FINISHED: True})
            _report_with_checkpoint(result, trainer)
    except TrainingDiverged as e:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / DIVERGED_FILE).write_text(
                json.dumps({"epoch": e.epoch, "loss": str(e.loss), "phase": e.phase}))
            # The search metric must be in every result. A diverged run ranks last, with a
            # finite value: ASHA's rung percentiles turn NaN once infinities dominate.
            tune.report({schema.EPOCH: e.epoch, schema.DIVERGED: 1.0,
                         schema.BEST_VAL_PPL: DIVERGED_PPL, schema.EPOCHS_RUN: e.epoch - 1,
                         schema.TRAIN_SECONDS: trainer.train_seconds},
                        checkpoint=tune.Checkpoint.from_directory(d))
        raise


def export_best_model(checkpoint: tune.Checkpoint, out: Path) -> Path:
    """The best weights, config and vocabulary of a trial's last checkpoint (local or remote
    storage alike), written by `Trainer.export_checkpoint`."""
    with checkpoint.as_directory() as d:
        return Trainer.export_checkpoint(Path(d) / CHECKPOINT_FILE, out)
