"""The training loop: one epoch at a time, NT-ASGD or Zaremba's schedule, resumable.

``Trainer.run()`` yields an ``EpochMetrics`` after every epoch; between epochs the whole state
(model, optimiser, averaging, RNG streams, history) is in ``state_dict()``, so a run stopped after
epoch k and resumed gives the same weights as one that never stopped (on CPU).
"""

from __future__ import annotations

import math
import os
import pickle
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from awd.config import RunConfig, from_flat
from awd.data import Corpus, Window, batchify, eval_windows, train_windows
from awd.errors import CheckpointError, TrainingDiverged, first_line
from awd.models import Hidden, build_model, count_parameters, detach_hidden
from awd.ntasgd import NTASGD, finetune_should_stop, zaremba_lr
from awd.regularizers import activation_regularization, temporal_activation_regularization


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch produced; ``averaging`` tells whether NT-ASGD's average was in use.

    These names are the platform's names: Tune results and MLflow metrics use them unchanged.
    """

    epoch: int
    phase: str  # "train" or "finetune"
    train_loss: float
    train_ppl: float
    val_loss: float
    val_ppl: float
    best_val_ppl: float
    lr: float
    epoch_seconds: float
    tokens_per_s: float
    averaging: bool
    ntasgd_trigger_epoch: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the model's init and dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def perplexity(loss: float) -> float:
    """exp(loss), capped so that a huge loss gives a huge finite number, not an overflow."""
    return math.exp(min(loss, 700.0))


class Trainer:
    """Trains one RunConfig on one Corpus."""

    def __init__(self, run: RunConfig | dict[str, Any], corpus: Corpus,
                 device: str | torch.device | None = None) -> None:
        self.run_config = from_flat(run) if isinstance(run, dict) else run.validate()
        cfg = self.run_config.train
        self.cfg = cfg
        self.device = pick_device(str(device) if device else cfg.device)
        seed_everything(cfg.seed)
        corpus = corpus.truncated(cfg.train_tokens or None, cfg.eval_tokens or None)
        self.ntokens = corpus.ntokens
        self.vocab = list(corpus.vocab)
        self.train_data = batchify(corpus.train, cfg.batch_size, "train").to(self.device)
        self.val_data = batchify(corpus.valid, cfg.eval_batch_size, "valid").to(self.device)
        self.test_data = batchify(corpus.test, cfg.test_batch_size, "test").to(self.device)
        self.model = build_model(self.run_config, corpus.ntokens).to(self.device)
        self.num_params = count_parameters(self.model)
        self.opt = NTASGD(list(self.model.parameters()), cfg.lr, cfg.wdecay, cfg.nonmono)
        self.window_rng = np.random.default_rng(cfg.seed)
        self.epoch = 0
        self.phase = "train"
        self.finetune_history: list[float] = []
        self.finetune_done = False
        self.best_val_loss = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[EpochMetrics] = []
        # Called after every training window with (rows done, rows in the epoch): progress bars.
        self.on_window: Callable[[int, int], None] | None = None

    # --- one epoch -----------------------------------------------------------------------
    def epoch_lr(self) -> float:
        """The base lr of the epoch in progress: Zaremba's schedule, or the constant lr (each
        window scales it by its length with variable BPTT)."""
        if self.cfg.optimizer == "sgd_schedule":
            return zaremba_lr(self.cfg.lr, self.epoch, self.cfg.lr_decay, self.cfg.decay_start)
        return self.cfg.lr

    def train_step(self, window: Window, hidden: Hidden, lr: float) -> tuple[Hidden, torch.Tensor]:
        """The one training step: forward, cross-entropy (times the window length for Zaremba's
        summed loss), AR and TAR, backward, gradient clipping and the NT-ASGD optimiser's step
        at ``lr``. Returns the next hidden state (cut from the graph) and the window's mean
        token loss as a detached device tensor (no host sync)."""
        cfg, model = self.cfg, self.model
        self.opt.zero_grad()
        out = model(window.inputs, hidden)
        loss = F.cross_entropy(out.logits.view(-1, self.ntokens), window.targets.reshape(-1))
        objective = loss * window.seq_len if cfg.loss_sum_over_time else loss
        if cfg.alpha:
            objective = objective + activation_regularization(out.dropped_output, cfg.alpha)
        if cfg.beta:
            objective = objective + temporal_activation_regularization(out.raw_output, cfg.beta)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        self.opt.step(lr)
        return detach_hidden(out.hidden), loss.detach()

    def train_epoch(self) -> tuple[float, int]:
        """One pass over the training data; returns (mean token loss, tokens seen)."""
        cfg = self.cfg
        self.model.train()
        hidden = self.model.init_hidden(cfg.batch_size)
        rng = self.window_rng if cfg.variable_bptt else None
        lr = self.epoch_lr()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        tokens = 0
        # Fine-tuning caps the window at bptt + 10, as the reference's finetune.py does.
        cap = cfg.max_seq_len or (cfg.bptt + 10 if self.phase == "finetune" else None)
        windows = train_windows(self.train_data, cfg.bptt, rng, cfg.min_seq_len, cap)
        for start, w in windows:
            hidden, loss = self.train_step(w, hidden, lr * w.lr_scale if cfg.variable_bptt
                                           else lr)
            n = w.targets.numel()
            total += loss.double() * n
            tokens += n
            if self.on_window is not None:
                self.on_window(start + w.seq_len, self.train_data.size(0) - 1)
        return (total / max(tokens, 1)).item(), tokens

    @torch.no_grad()
    def evaluate(self, split: str = "valid") -> float:
        """Mean token loss on a split with fixed bptt windows and the current weights."""
        data = {"valid": self.val_data, "test": self.test_data}[split]
        model = self.model
        model.eval()
        hidden = model.init_hidden(data.size(1))
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for w in eval_windows(data, self.cfg.bptt):
            out = model(w.inputs, hidden)
            hidden = out.hidden
            loss = F.cross_entropy(out.logits.view(-1, self.ntokens), w.targets.reshape(-1),
                                   reduction="sum")
            total += loss.double()
        return total.item() / (data.size(0) - 1) / data.size(1)

    def step_epoch(self) -> EpochMetrics:
        """Train one epoch, validate (with averaged weights once NT-ASGD has triggered), keep the
        best weights, and apply the NT-ASGD trigger."""
        self.epoch += 1
        start = time.perf_counter()
        lr = self.epoch_lr()
        train_loss, tokens = self.train_epoch()
        if not math.isfinite(train_loss):
            raise TrainingDiverged(self.epoch, train_loss, "train")
        with self.opt.averaged_weights():
            val_loss = self.evaluate("valid")
            if not math.isfinite(val_loss):
                raise TrainingDiverged(self.epoch, val_loss, "validation")
            if val_loss < self.best_val_loss:
                self.best_val_loss = val_loss
                self.best_state = {k: v.detach().clone()
                                   for k, v in self.model.state_dict().items()}
        if self.phase == "finetune":
            if finetune_should_stop(self.finetune_history, val_loss):
                self.finetune_done = True
            else:
                self.finetune_history.append(val_loss)
        elif self.cfg.optimizer == "ntasgd":
            self.opt.observe(val_loss, self.epoch)
        seconds = time.perf_counter() - start
        metrics = EpochMetrics(
            epoch=self.epoch, phase=self.phase, train_loss=train_loss,
            train_ppl=perplexity(train_loss), val_loss=val_loss, val_ppl=perplexity(val_loss),
            best_val_ppl=perplexity(self.best_val_loss), lr=lr, epoch_seconds=seconds,
            tokens_per_s=tokens / seconds, averaging=self.opt.averaging,
            ntasgd_trigger_epoch=self.opt.trigger_epoch,
        )
        self.history.append(metrics)
        return metrics

    # --- whole runs ----------------------------------------------------------------------
    def start_finetune(self) -> None:
        """The paper's fine-tuning stage: from the best weights, averaging from the first step."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.phase = "finetune"
        self.finetune_history = []
        self.opt.start_averaging()

    @property
    def finished(self) -> bool:
        main_done = self.epoch >= self.cfg.epochs
        if not main_done or self.cfg.finetune_epochs == 0:
            return main_done
        return self.finetune_done or self.epoch >= self.cfg.epochs + self.cfg.finetune_epochs

    def run(self) -> Iterator[EpochMetrics]:
        """Yield one record per epoch until the budget (and fine-tuning, if asked) is spent."""
        while not self.finished:
            if self.epoch >= self.cfg.epochs and self.phase == "train":
                self.start_finetune()
            yield self.step_epoch()

    @property
    def train_seconds(self) -> float:
        """Seconds spent in epochs (training and validation) over the whole run, resumes
        included: the cost a search charges to this run."""
        return sum(m.epoch_seconds for m in self.history)

    def fit(self, callback: Callable[[EpochMetrics], None] | None = None) -> list[EpochMetrics]:
        """Run to the end, calling ``callback`` after every epoch; returns the history."""
        for metrics in self.run():
            if callback is not None:
                callback(metrics)
        return self.history

    def final_metrics(self) -> dict[str, float]:
        """Validation and test (batch 1) loss and perplexity of the best weights (the
        validation loss of those weights is the best one seen: no need to evaluate again)."""
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        try:
            val = self.best_val_loss if self.best_state is not None else self.evaluate("valid")
            test = self.evaluate("test")
        finally:
            self.model.load_state_dict(current)
        return {"val_loss": val, "val_ppl": perplexity(val), "test_loss": test,
                "test_ppl": perplexity(test)}

    # --- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
               "python": random.getstate(), "window": self.window_rng.bit_generator.state}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "config": self.run_config.to_flat(),
            "vocab": self.vocab,
            "model": self.model.state_dict(),
            "ntasgd": self.opt.state_dict(),
            "rng": rng,
            "epoch": self.epoch,
            "phase": self.phase,
            "finetune_history": list(self.finetune_history),
            "finetune_done": self.finetune_done,
            "best_val_loss": self.best_val_loss,
            "best_state": self.best_state,
            "history": [m.as_dict() for m in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("vocab", self.vocab) != self.vocab:
            raise CheckpointError("the checkpoint was trained on another vocabulary")
        self.model.load_state_dict(state["model"])  # copies onto the model's device
        self.opt.load_state_dict(state["ntasgd"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.window_rng.bit_generator.state = rng["window"]
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.epoch = state["epoch"]
        self.phase = state["phase"]
        self.finetune_history = list(state["finetune_history"])
        self.finetune_done = state["finetune_done"]
        self.best_val_loss = state["best_val_loss"]
        best = state["best_state"]
        self.best_state = None if best is None else {k: v.to(self.device) for k, v in best.items()}
        self.history = [EpochMetrics(**m) for m in state["history"]]

    # Fields a resumed run may change: where it runs and how long it goes on.
    RESUMABLE_CHANGES = frozenset({"device", "epochs", "finetune_epochs"})

    def _check_same_run(self, saved: dict[str, Any]) -> None:
        ours = self.run_config.to_flat()
        changed = sorted(k for k in ours.keys() | saved.keys()
                         if k not in self.RESUMABLE_CHANGES and ours.get(k) != saved.get(k))
        if changed:
            raise CheckpointError(
                f"the checkpoint was trained with other values of {', '.join(changed)}"
                f" (saved: {', '.join(f'{k}={saved.get(k)}' for k in changed)})")

    def save(self, path: str | os.PathLike[str]) -> None:
        """The whole trainer, enough for `load` to continue the run exactly."""
        torch.save(self.state_dict(), path)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Resume from a file written by `save`; a missing or mismatched one is a user error."""
        try:
            # On the CPU first: RNG states must stay CPU tensors; weights move in load_state_dict.
            state = torch.load(path, map_location="cpu", weights_only=False)
            self._check_same_run(state["config"])
            self.load_state_dict(state)
        except (OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as e:
            raise CheckpointError(f"cannot resume from {path}: {first_line(e)}") from None

    # --- the trained model, for use -------------------------------------------------------
    def export_best(self, path: str | os.PathLike[str]) -> Path:
        """Write the best weights (the current ones if no epoch ran) with the full config and
        the vocabulary: a file `load_exported` reads with ``weights_only=True``."""
        weights = self.best_state if self.best_state is not None else self.model.state_dict()
        return _write_export(self.run_config.to_flat(), self.vocab, weights, Path(path))

    @staticmethod
    def export_checkpoint(checkpoint: str | os.PathLike[str],
                          path: str | os.PathLike[str]) -> Path:
        """`export_best` of the trainer saved in ``checkpoint``, without rebuilding it (no
        corpus needed): what a search does with its best trial's last checkpoint."""
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=False)
            weights = state["best_state"] or state["model"]
            return _write_export(state["config"], state["vocab"], weights, Path(path))
        except (OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as e:
            raise CheckpointError(f"cannot export {checkpoint}: {first_line(e)}") from None


EXPORT_FORMAT = "awdsearch.model/1"


def _write_export(config: dict[str, Any], vocab: list[str], weights: dict[str, torch.Tensor],
                  path: Path) -> Path:
    cpu = {k: v.detach().cpu() for k, v in weights.items()}
    torch.save({"format": EXPORT_FORMAT, "config": config, "vocab": list(vocab), "model": cpu},
               path)
    return path


@dataclass(frozen=True)
class ExportedModel:
    """A model written by `Trainer.export_best`: its run config, vocabulary and weights."""

    run: RunConfig
    vocab: list[str]
    state_dict: dict[str, torch.Tensor]

    def build(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The model with its trained weights, in evaluation mode."""
        model = build_model(self.run, len(self.vocab))
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()


def load_exported(path: str | os.PathLike[str]) -> ExportedModel:
    """Read an exported model without executing any code from the file (``weights_only``)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("format") != EXPORT_FORMAT:
            raise KeyError("format")
        return ExportedModel(from_flat(saved["config"]), list(saved["vocab"]), saved["model"])
    except (OSError, RuntimeError, KeyError, TypeError, AttributeError,
            pickle.UnpicklingError) as e:
        raise CheckpointError(
            f"{path} is not a model exported by awdsearch: {first_line(e)}") from None
