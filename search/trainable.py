"""The Ray Tune trainable: one trial is one `awd` training run with NT-ASGD.

It reports every epoch with a checkpoint of the whole trainer (so a restarted worker resumes
mid-trial), and on the last epoch adds the final validation and test perplexity. A diverging run
raises `TrainingDiverged`; its checkpoint is marked so that Ray's retries do not re-train the same
doomed epochs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from awd.config import from_flat
from awd.data import load_corpus
from awd.errors import TrainingDiverged
from awd.trainer import EpochMetrics, Trainer

CHECKPOINT_FILE = "trainer.pt"
DIVERGED_FILE = "diverged.json"
DIVERGED_PPL = 1e12


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
        trainer.load(Path(d) / CHECKPOINT_FILE)


def epoch_result(m: EpochMetrics, trainer: Trainer) -> dict[str, Any]:
    """The metrics Tune sees for one epoch (``epoch`` is ASHA's time attribute)."""
    result = m.as_dict()
    result.pop("phase")
    result["averaging"] = float(m.averaging)
    result["trigger_epoch"] = m.trigger_epoch or 0
    result["epoch_seconds"] = result.pop("seconds")
    result.update(num_params=trainer.num_params, device=str(trainer.device),
                  device_name=_device_name(trainer.device), node_id=_node_id(),
                  node_ip=ray.util.get_node_ip_address(), finished=False)
    return result


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def train_trial(config: dict[str, Any]) -> None:
    """Train one trial config (a flat `awd` config) and report each epoch to Tune."""
    _limit_threads()
    run = from_flat(config)
    trainer = Trainer(run, load_corpus(run.dataset))
    _restore(trainer)
    try:
        for m in trainer.run():
            result = epoch_result(m, trainer)
            if trainer.finished:
                final = trainer.final_metrics()
                result.update(final_val_ppl=final["val_ppl"], final_test_ppl=final["test_ppl"],
                              finished=True)
            with tempfile.TemporaryDirectory() as d:
                trainer.save(Path(d) / CHECKPOINT_FILE)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
    except TrainingDiverged as e:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / DIVERGED_FILE).write_text(
                json.dumps({"epoch": e.epoch, "loss": str(e.loss), "phase": e.phase}))
            # The search metric must be in every result. A diverged run ranks last, with a
            # finite value: ASHA's rung percentiles turn NaN once infinities dominate.
            tune.report({"epoch": e.epoch, "diverged": 1.0, "best_val_ppl": DIVERGED_PPL},
                        checkpoint=tune.Checkpoint.from_directory(d))
        raise


def best_model_file(checkpoint_dir: str | os.PathLike, out: Path) -> Path:
    """Write the best weights and config of a trial checkpoint as a slim file for MLflow."""
    state = torch.load(Path(checkpoint_dir) / CHECKPOINT_FILE, map_location="cpu",
                       weights_only=False)
    weights = state["best_state"] or state["model"]
    torch.save({"config": state["config"], "model": weights}, out)
    return out
