"""The training loop: one epoch at a time, NT-ASGD or Zaremba's schedule, resumable.

``Trainer.run()`` yields an ``EpochMetrics`` after every epoch; between epochs the whole state
(model, optimiser, averaging, RNG streams, history) is in ``state_dict()``, so a run stopped after
epoch k and resumed gives the same weights as one that never stopped (on CPU).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from awd import checkpoint as ckpt
from awd.config import RunConfig, from_flat
from awd.data import Corpus, Window, batchify, eval_windows, train_windows
from awd.errors import CheckpointError, ConfigError, TrainingDiverged, UserError, first_line
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
    """The device a config names; a cuda device this machine does not have is a user error,
    raised before any data is loaded or any weight allocated."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available on this machine "
                              "(use --device cpu or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA device(s)")
    return device


# Copies of the weights a run holds: the weights, their gradients, the best weights and
# NT-ASGD's average (plus activations, not counted: this is a floor).
WEIGHT_COPIES = 4


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory on ``device`` (None if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(run: RunConfig, ntokens: int, device: torch.device) -> None:
    """Refuse, before allocating anything, a model whose weights alone cannot fit: a typo in a
    size must be a one-line error, not minutes of swapping and an OOM kill."""
    params = run.arch.estimated_params(ntokens)
    need = params * 4 * WEIGHT_COPIES  # float32
    have = device_memory(device)
    if have is not None and need > have:
        raise ConfigError(
            f"model too large for {device}: {params:,} parameters with a {ntokens:,}-word "
            f"vocabulary need {need / 2**30:.1f} GiB, the device has {have / 2**30:.1f} GiB; "
            "reduce emsize/nhid/nlayers")


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
        check_fits_in_memory(self.run_config, corpus.ntokens, self.device)
        self.train_data = batchify(corpus.train, cfg.batch_size, "train").to(self.device)
        self.val_data = batchify(corpus.valid, cfg.eval_batch_size, "valid").to(self.device)
        self.test_data = batchify(corpus.test, cfg.test_batch_size, "test").to(self.device)
        rows = self.train_data.size(0) - 1
        if cfg.variable_bptt and cfg.min_seq_len > rows:
            raise ConfigError(f"min_seq_len ({cfg.min_seq_len}) is longer than the training "
                              f"stream ({rows} steps at batch size {cfg.batch_size})")
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
        # Progress bars: called after every window with (stage, tokens done, tokens in the
        # stage); stage is "train", "valid" or "test" (`awd.progress.TokenBars` draws them).
        self.on_progress: Callable[[str, int, int], None] | None = None

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
            if self.on_progress is not None:
                rows = self.train_data.size(0) - 1
                self.on_progress("train", (start + w.seq_len) * cfg.batch_size,
                                 rows * cfg.batch_size)
        return (total / max(tokens, 1)).item(), tokens

    @torch.no_grad()
    def evaluate(self, split: str = "valid") -> float:
        """Mean token loss on a split with fixed bptt windows and the current weights."""
        data = {"valid": self.val_data, "test": self.test_data}[split]
        model = self.model
        model.eval()
        hidden = model.init_hidden(data.size(1))
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        rows, width, done = data.size(0) - 1, data.size(1), 0
        for w in eval_windows(data, self.cfg.bptt):
            out = model(w.inputs, hidden)
            hidden = out.hidden
            loss = F.cross_entropy(out.logits.view(-1, self.ntokens), w.targets.reshape(-1),
                                   reduction="sum")
            total += loss.double()
            done += w.seq_len
            if self.on_progress is not None:
                self.on_progress(split, done * width, rows * width)
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
        """The whole run as plain data (tensors, dicts, lists, numbers, str: see
        `awd.checkpoint`), so that `load` reads it back with ``weights_only=True``."""
        return {
            "format": ckpt.TRAINER_FORMAT,
            "config": self.run_config.to_flat(),
            "vocab": list(self.vocab),
            "model": self.model.state_dict(),
            "ntasgd": self.opt.state_dict(),
            "rng": ckpt.encode_rng(self.window_rng),
            "epoch": self.epoch,
            "phase": self.phase,
            "finetune_history": list(self.finetune_history),
            "finetune_done": self.finetune_done,
            "best_val_loss": self.best_val_loss,
            "best_state": self.best_state,
            "history": [m.as_dict() for m in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the run ``state`` holds. Every part is checked before any is applied: a
        bad one raises `CheckpointError` and leaves this trainer as it was."""
        self._check_same_run(ckpt.field(state, "config", dict))
        if ckpt.field(state, "vocab", list) != self.vocab:
            raise CheckpointError("the checkpoint was trained on another vocabulary")
        weights = self.model.state_dict()
        ckpt.check_tensors(state.get("model"), weights, "weights")
        best = state.get("best_state")
        if best is not None:
            ckpt.check_tensors(best, weights, "best weights")
        ntasgd = ckpt.field(state, "ntasgd", dict)
        self.opt.check_state_dict(ntasgd)
        rng = ckpt.DecodedRng(ckpt.field(state, "rng", dict))
        epoch = ckpt.field(state, "epoch", int)
        phase = ckpt.field(state, "phase", str)
        if epoch < 0 or phase not in ("train", "finetune"):
            raise CheckpointError(f"the checkpoint's epoch {epoch} / phase {phase!r} is invalid")
        finetune_history = ckpt.check_floats(state.get("finetune_history"), "finetune history")
        finetune_done = ckpt.field(state, "finetune_done", bool)
        best_val_loss = float(ckpt.field(state, "best_val_loss", (float, int)))
        history = _decode_history(ckpt.field(state, "history", list))

        self.model.load_state_dict(state["model"])  # copies onto the model's device
        self.opt.load_state_dict(ntasgd)
        rng.apply(self.window_rng)
        self.epoch, self.phase = epoch, phase
        self.finetune_history, self.finetune_done = finetune_history, finetune_done
        self.best_val_loss = best_val_loss
        self.best_state = None if best is None else {k: v.to(self.device) for k, v in best.items()}
        self.history = history

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
        """The whole trainer, enough for `load` to continue the run exactly. Written to a
        temporary file and renamed: ``path`` holds the previous checkpoint until then."""
        ckpt.write(self.state_dict(), path)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Resume from a file written by `save`. Every unreadable, foreign, crafted or
        mismatched file is a one-line `CheckpointError`, and the trainer stays as it was."""
        try:
            self.load_state_dict(ckpt.read(path, ckpt.TRAINER_FORMAT))
        except CheckpointError as e:
            raise CheckpointError(f"cannot resume from {path}: {e}") from None

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
            state = ckpt.read(checkpoint, ckpt.TRAINER_FORMAT)
            config = ckpt.field(state, "config", dict)
            vocab = ckpt.field(state, "vocab", list)
            best = state.get("best_state")
            weights = best if best is not None else ckpt.field(state, "model", dict)
            if not isinstance(weights, dict) or not all(
                    isinstance(v, torch.Tensor) for v in weights.values()):
                raise CheckpointError("its weights are not tensors")
        except CheckpointError as e:
            raise CheckpointError(f"cannot export {checkpoint}: {e}") from None
        return _write_export(config, vocab, weights, Path(path))


def _decode_history(saved: list[Any]) -> list[EpochMetrics]:
    try:
        return [EpochMetrics(**m) for m in saved]
    except TypeError as e:
        raise CheckpointError(f"the checkpoint's history is malformed ({first_line(e)})") from None


EXPORT_FORMAT = ckpt.EXPORT_FORMAT


def _write_export(config: dict[str, Any], vocab: list[str], weights: dict[str, torch.Tensor],
                  path: Path) -> Path:
    cpu = {k: v.detach().cpu() for k, v in weights.items()}
    ckpt.write({"format": EXPORT_FORMAT, "config": config, "vocab": list(vocab), "model": cpu},
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
        saved = ckpt.read(path, EXPORT_FORMAT)
        vocab = ckpt.field(saved, "vocab", list)
        weights = ckpt.field(saved, "model", dict)
        run = from_flat(ckpt.field(saved, "config", dict))
        ckpt.check_tensors(weights, build_model(run, len(vocab)).state_dict(), "weights")
        return ExportedModel(run, vocab, weights)
    except UserError as e:
        raise CheckpointError(
            f"{path} is not a model exported by awdsearch: {first_line(e)}") from None
