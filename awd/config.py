"""Configuration dataclasses, paper presets, and the flat-dict form used by searches.

A run is a model name, a dataset, the model's config and a ``TrainConfig``. ``preset`` gives the
paper values for a (model, dataset) pair; ``from_flat`` applies a search trial's flat dict of
overrides on top of it and validates every value.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from awd.data.registry import canonical_dataset
from awd.errors import ConfigError

MODELS = ("awd_lstm", "awd_gru", "zaremba")  # the one list of model names
ZAREMBA_SIZES = ("small", "medium", "large")
OPTIMIZERS = ("ntasgd", "sgd_schedule")
# Sanity bounds: far above any published model, far below what would make a run allocate for
# minutes and then die out of memory. A larger model is a typo, not a plan.
MAX_WIDTH = 1 << 16  # emsize, nhid
MAX_LAYERS = 64
MAX_PARAMS = 1 << 31  # parameters without the vocabulary's embedding and softmax
MAX_SEED = 2**32 - 1  # NumPy's legacy seeding takes 32 bits
MAX_INT = 2**31 - 1  # any other whole number: epochs, batch sizes, token counts ...
MAX_EPOCHS = 1_000_000
MAX_FLOAT = 3.4028234663852886e38  # float32's largest: the weights' dtype must hold every value
MAX_NAME = 4096  # a dataset name or folder (PATH_MAX)
SHOWN = 60  # characters of an offending value an error message quotes


def shown(value: Any) -> str:
    """``repr(value)``, cut to `SHOWN` characters: an error line stays one short line."""
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text):,} characters)"
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _check_rate(name: str, value: float) -> None:
    if not 0 <= value < 1:  # also false for NaN
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


def _finite(value: float) -> bool:
    """True for every int (math.isfinite overflows on huge ones) and finite floats."""
    return isinstance(value, int) or math.isfinite(value)


def _in_bounds(value: float) -> bool:
    """Within what the run's numbers can be: int32 for whole numbers, float32 for the rest."""
    return value <= (MAX_INT if isinstance(value, int) else MAX_FLOAT)


def _check_positive(name: str, value: float) -> None:
    if not (_finite(value) and value > 0 and _in_bounds(value)):
        raise ConfigError(f"{name} must be a finite number > 0{_bound_text(value)}, "
                          f"got {_short_number(value)}")


def _check_non_negative(name: str, value: float) -> None:
    if not (_finite(value) and value >= 0 and _in_bounds(value)):
        raise ConfigError(f"{name} must be a finite number >= 0{_bound_text(value)}, "
                          f"got {_short_number(value)}")


def _bound_text(value: float) -> str:
    return f" and <= {MAX_INT:,}" if isinstance(value, int) else " that float32 can hold"


def _short_number(value: float) -> str:
    text = str(value)
    return text if len(text) <= SHOWN else f"{text[:12]}... ({len(text):,} digits)"


def _check_at_most(name: str, value: int, bound: int) -> None:
    if value > bound:
        raise ConfigError(f"{name} must be <= {bound:,}, got {_short_number(value)}")


def _check_param_count(count: int, sizes: str) -> None:
    if count > MAX_PARAMS:
        raise ConfigError(f"model too large: {sizes} give {count:,} recurrent parameters "
                          f"(limit {MAX_PARAMS:,}); reduce them")


@dataclass(frozen=True)
class AWDLSTMConfig:
    """AWD-LSTM (Merity et al. 2018). Defaults: the PTB model of the reference code's README.

    emsize/nhid: embedding and hidden sizes (the last layer outputs emsize when tied).
    dropout: locked dropout on the last layer's output; dropouth: between layers;
    dropouti: on the embedded input; dropoute: whole embedding rows; wdrop: DropConnect on W_hh.
    """

    emsize: int = 400
    nhid: int = 1150
    nlayers: int = 3
    dropout: float = 0.4
    dropouth: float = 0.25
    dropouti: float = 0.4
    dropoute: float = 0.1
    wdrop: float = 0.5
    tie_weights: bool = True
    cell: str = field(default="lstm", init=False)

    def validate(self) -> None:
        for name in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop"):
            _check_rate(name, getattr(self, name))
        for name in ("emsize", "nhid", "nlayers"):
            _check_positive(name, getattr(self, name))
        _check_at_most("emsize", self.emsize, MAX_WIDTH)
        _check_at_most("nhid", self.nhid, MAX_WIDTH)
        _check_at_most("nlayers", self.nlayers, MAX_LAYERS)
        _check_param_count(self.estimated_params(0),
                           f"emsize={self.emsize}, nhid={self.nhid}, nlayers={self.nlayers}")

    def estimated_params(self, ntoken: int) -> int:
        """The model's parameter count for a vocabulary of ``ntoken`` words (exact)."""
        gates = 4 if self.cell == "lstm" else 3
        last = self.emsize if self.tie_weights else self.nhid
        sizes = [self.emsize] + [self.nhid] * (self.nlayers - 1) + [last]
        rnn = sum(gates * (i * o + o * o + 2 * o) for i, o in itertools.pairwise(sizes))
        decoder = ntoken + (0 if self.tie_weights else last * ntoken)
        return ntoken * self.emsize + rnn + decoder


@dataclass(frozen=True)
class AWDGRUConfig(AWDLSTMConfig):
    """AWD-GRU: the AWD-LSTM recipe on GRU layers (3 gates, no cell state)."""

    cell: str = field(default="gru", init=False)


@dataclass(frozen=True)
class ZarembaConfig:
    """Zaremba et al. 2014: untied embedding (size nhid), stacked LSTM, standard dropout on
    non-recurrent connections only, every parameter U(-init_range, init_range)."""

    nhid: int = 650
    nlayers: int = 2
    dropout: float = 0.5
    init_range: float = 0.05

    def validate(self) -> None:
        _check_rate("dropout", self.dropout)
        for name in ("nhid", "nlayers", "init_range"):
            _check_positive(name, getattr(self, name))
        _check_at_most("nhid", self.nhid, MAX_WIDTH)
        _check_at_most("nlayers", self.nlayers, MAX_LAYERS)
        _check_param_count(self.estimated_params(0), f"nhid={self.nhid}, nlayers={self.nlayers}")

    def estimated_params(self, ntoken: int) -> int:
        """The model's parameter count for a vocabulary of ``ntoken`` words (exact)."""
        h = self.nhid
        return ntoken * h + self.nlayers * 4 * (2 * h * h + 2 * h) + h * ntoken + ntoken

    @classmethod
    def small(cls) -> ZarembaConfig:
        return cls(nhid=200, dropout=0.0, init_range=0.1)

    @classmethod
    def medium(cls) -> ZarembaConfig:
        return cls(nhid=650, dropout=0.5, init_range=0.05)

    @classmethod
    def large(cls) -> ZarembaConfig:
        return cls(nhid=1500, dropout=0.65, init_range=0.04)


ModelConfig = AWDLSTMConfig | AWDGRUConfig | ZarembaConfig


@dataclass(frozen=True)
class TrainConfig:
    """How to train: batching, optimiser (NT-ASGD or Zaremba's SGD schedule), regularisation.

    The Zaremba presets use ``sgd_schedule`` (the paper exactly); the search spaces train every
    model, Zaremba's included, with ``ntasgd``.

    lr is scaled per window by seq_len / bptt when variable_bptt is on. ``sgd_schedule`` divides
    lr by lr_decay after each epoch from decay_start on (Zaremba). loss_sum_over_time multiplies
    the mean token loss by the window length, as Zaremba's code did, so that lr 1 / clip 5 match.
    """

    epochs: int = 500
    batch_size: int = 20
    eval_batch_size: int = 10
    test_batch_size: int = 1
    bptt: int = 70
    variable_bptt: bool = True
    min_seq_len: int = 5
    max_seq_len: int = 0  # 0: no cap
    lr: float = 30.0
    clip: float = 0.25
    wdecay: float = 1.2e-6
    alpha: float = 2.0
    beta: float = 1.0
    optimizer: str = "ntasgd"
    nonmono: int = 5
    lr_decay: float = 1.0
    decay_start: int = 0
    loss_sum_over_time: bool = False
    finetune_epochs: int = 0
    train_tokens: int = 0  # 0: the whole split (a prefix otherwise, for smoke runs)
    eval_tokens: int = 0
    seed: int = 141
    device: str = "auto"

    def validate(self) -> None:
        """Every value in range and every combination consistent; NaN and inf are refused
        here so that a bad value fails at once, not as a diverged loss an epoch later. Whether
        a cuda device exists is checked where the run starts (`awd.trainer.pick_device`): a
        search's driver may validate configs on a machine without the workers' GPUs."""
        for name in ("epochs", "batch_size", "eval_batch_size", "test_batch_size", "bptt"):
            _check_positive(name, getattr(self, name))
        for name in ("lr", "clip", "nonmono", "lr_decay", "min_seq_len"):
            _check_positive(name, getattr(self, name))
        for name in ("wdecay", "alpha", "beta", "finetune_epochs", "train_tokens", "eval_tokens",
                     "max_seq_len", "decay_start"):
            _check_non_negative(name, getattr(self, name))
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ConfigError(f"seed must be a whole number >= 0, got {shown(self.seed)}")
        _check_at_most("seed", self.seed, MAX_SEED)
        _check_at_most("epochs", self.epochs, MAX_EPOCHS)
        _check_at_most("finetune_epochs", self.finetune_epochs, MAX_EPOCHS)
        if self.lr_decay < 1:
            raise ConfigError(f"lr_decay divides the lr: it must be >= 1, got {self.lr_decay}")
        if self.min_seq_len > self.bptt:
            raise ConfigError(f"min_seq_len ({self.min_seq_len}) must be <= bptt ({self.bptt})")
        if self.max_seq_len and self.max_seq_len < self.min_seq_len:
            raise ConfigError(f"max_seq_len ({self.max_seq_len}) must be 0 (no cap) or >= "
                              f"min_seq_len ({self.min_seq_len})")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {shown(self.optimizer)}"
            )
        if self.finetune_epochs and self.optimizer != "ntasgd":
            raise ConfigError("finetune_epochs is NT-ASGD's fine-tuning stage: it needs "
                              f"optimizer ntasgd, not {self.optimizer}")
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], got {shown(self.device)}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs, apart from the data itself."""

    model: str
    dataset: str
    arch: ModelConfig
    train: TrainConfig
    preset: str = ""

    def validate(self) -> RunConfig:
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {shown(self.model)}; known: {', '.join(MODELS)}")
        if not isinstance(self.dataset, str) or not self.dataset.strip() \
                or len(self.dataset) > MAX_NAME or "\x00" in self.dataset:
            raise ConfigError(f"dataset must be a dataset name or folder, got "
                              f"{shown(self.dataset)}")
        self.arch.validate()
        self.train.validate()
        return self

    def to_flat(self) -> dict[str, Any]:
        """One flat dict (model, dataset, preset and every field): a search trial's config."""
        arch = {k: v for k, v in asdict(self.arch).items() if k != "cell"}
        return {"model": self.model, "dataset": self.dataset, "preset": self.preset, **arch,
                **asdict(self.train)}


def preset(model: str, dataset: str = "ptb", size: str = "") -> RunConfig:
    """The paper configuration of ``model`` on ``dataset`` (size: Zaremba's small/medium/large)."""
    wt2 = canonical_dataset(dataset) == "wikitext-2"
    if model in ("awd_lstm", "awd_gru"):
        if size:
            raise ConfigError(f"preset {shown(size)} is a zaremba size; {model} has no sizes (its "
                              "preset is the paper's model for the dataset)")
        cls = AWDLSTMConfig if model == "awd_lstm" else AWDGRUConfig
        if wt2:  # reference README: WT2 uses dropouth 0.2, dropouti 0.65, batch 80, 750 epochs
            arch = cls(dropouth=0.2, dropouti=0.65)
            train = TrainConfig(epochs=750, batch_size=80, seed=1882)
        else:
            arch, train = cls(), TrainConfig()
        return RunConfig(model, dataset, arch, train).validate()
    if model == "zaremba":
        size = size or "medium"
        if size not in ZAREMBA_SIZES:
            raise ConfigError(f"zaremba preset must be one of {', '.join(ZAREMBA_SIZES)}")
        arch = getattr(ZarembaConfig, size)()
        schedule = {"small": (13, 2.0, 4, 5.0), "medium": (39, 1.2, 6, 5.0),
                    "large": (55, 1.15, 14, 10.0)}[size]
        epochs, decay, start, clip = schedule
        train = TrainConfig(
            epochs=epochs, batch_size=20, bptt=20 if size == "small" else 35,
            variable_bptt=False, lr=1.0, clip=clip, wdecay=0.0, alpha=0.0, beta=0.0,
            optimizer="sgd_schedule", lr_decay=decay, decay_start=start, loss_sum_over_time=True,
            seed=1111,
        )
        return RunConfig(model, dataset, arch, train, preset=size).validate()
    raise ConfigError(f"unknown model {shown(model)}; known: {', '.join(MODELS)}")


def _coerce(name: str, value: Any, like: Any) -> Any:
    """Convert a value (possibly a CLI string) to the type of the field's default."""
    try:
        if isinstance(value, bool) and not isinstance(like, bool):
            raise ValueError(value)  # JSON's true is not the number 1
        if isinstance(like, bool):
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if isinstance(like, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, str):
                number = float(value)
                if not number.is_integer():
                    raise ValueError(value)
                return int(number)
            return int(value)
        return type(like)(value)
    except (TypeError, ValueError, OverflowError):
        expected = type(like).__name__
        raise ConfigError(f"{name}: cannot use {shown(value)} (expected {expected})") from None


def from_flat(flat: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a flat dict: the preset, then every override."""
    flat = dict(flat)
    model = flat.pop("model", None)
    if model is None:
        raise ConfigError("config has no 'model'")
    dataset = flat.pop("dataset", "ptb")
    base = preset(model, dataset, flat.pop("preset", "") or "")
    arch_fields = {f.name: f for f in fields(base.arch) if f.init}
    train_fields = {f.name for f in fields(base.train)}
    arch_over, train_over = {}, {}
    for key, value in flat.items():
        if key in arch_fields:
            arch_over[key] = _coerce(key, value, getattr(base.arch, key))
        elif key in train_fields:
            train_over[key] = _coerce(key, value, getattr(base.train, key))
        else:
            known = sorted([*arch_fields, *train_fields])
            raise ConfigError(f"unknown config field {shown(key)} for {model}; known: {known}")
    return dataclasses.replace(
        base, arch=replace(base.arch, **arch_over), train=replace(base.train, **train_over)
    ).validate()
