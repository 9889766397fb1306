"""The training loop: one epoch at a time, NT-ASGD or Zaremba's schedule, resumable.

``Trainer.run()`` yields an ``EpochMetrics`` after every epoch; between epochs the whole state
(model, optimiser, averaging, RNG streams, history) is in ``state_dict()``, so a run stopped after
epoch k and resumed gives the same weights as one that never stopped (on CPU).
"""

from __future__ import annotations

import math
import pickle
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from awd.config import RunConfig, from_flat
from awd.data import Corpus, batchify, eval_windows, train_windows
from awd.errors import AWDError, TrainingDiverged
from awd.models import build_model, count_parameters, detach_hidden
from awd.ntasgd import NTASGD, finetune_should_stop, zaremba_lr
from awd.regularizers import activation_regularization, temporal_activation_regularization


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch produced; ``averaging`` tells whether NT-ASGD's average was in use."""

    epoch: int
    phase: str  # "train" or "finetune"
    train_loss: float
    train_ppl: float
    val_loss: float
    val_ppl: float
    best_val_ppl: float
    lr: float
    seconds: float
    tokens_per_s: float
    averaging: bool
    trigger_epoch: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def perplexity(loss: float) -> float:
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
    def _epoch_lr(self) -> float:
        if self.cfg.optimizer == "sgd_schedule":
            return zaremba_lr(self.cfg.lr, self.epoch, self.cfg.lr_decay, self.cfg.decay_start)
        return self.cfg.lr

    def train_epoch(self) -> tuple[float, int]:
        """One pass over the training data; returns (mean token loss, tokens seen)."""
        cfg, model = self.cfg, self.model
        model.train()
        hidden = model.init_hidden(cfg.batch_size)
        rng = self.window_rng if cfg.variable_bptt else None
        lr = self._epoch_lr()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        tokens = 0
        # Fine-tuning caps the window at bptt + 10, as the reference's finetune.py does.
        cap = cfg.max_seq_len or (cfg.bptt + 10 if self.phase == "finetune" else None)
        windows = train_windows(self.train_data, cfg.bptt, rng, cfg.min_seq_len, cap)
        for start, w in windows:
            hidden = detach_hidden(hidden)
            self.opt.zero_grad()
            out = model(w.inputs, hidden)
            hidden = out.hidden
            loss = F.cross_entropy(out.logits.view(-1, self.ntokens), w.targets.reshape(-1))
            objective = loss * w.seq_len if cfg.loss_sum_over_time else loss
            if cfg.alpha:
                objective = objective + activation_regularization(out.dropped_output, cfg.alpha)
            if cfg.beta:
                objective = objective + temporal_activation_regularization(out.raw_output,
                                                                           cfg.beta)
            objective.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            self.opt.step(lr * w.lr_scale if cfg.variable_bptt else lr)
            n = w.targets.numel()
            total += loss.detach().double() * n
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
        lr = self._epoch_lr()
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
            best_val_ppl=perplexity(self.best_val_loss), lr=lr, seconds=seconds,
            tokens_per_s=tokens / seconds, averaging=self.opt.averaging,
            trigger_epoch=self.opt.trigger_epoch,
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

    def fit(self, callback: Callable[[EpochMetrics], None] | None = None) -> list[EpochMetrics]:
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
            raise AWDError(f"the checkpoint was trained with other values of {', '.join(changed)}"
                           f" (saved: {', '.join(f'{k}={saved.get(k)}' for k in changed)})")

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path) -> None:
        """Resume from a file written by `save`; a missing or mismatched one is a user error."""
        try:
            # On the CPU first: RNG states must stay CPU tensors; weights move in load_state_dict.
            state = torch.load(path, map_location="cpu", weights_only=False)
            self._check_same_run(state["config"])
            self.load_state_dict(state)
        except (OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AWDError(f"cannot resume from {path}: {first}") from None
