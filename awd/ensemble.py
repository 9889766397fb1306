"""Model averaging: an ensemble's next-word distribution is the weighted mean of its members'.

Members are chosen by greedy ensemble selection with replacement (Caruana et al., ICML 2004, as
auto-sklearn and AutoGluon do it): start empty, and K times add the candidate (again, if it is
the best choice) that most lowers the ensemble's validation loss; the weights are how often each
was picked, over K, and the ensemble kept is the best one seen along the way. It needs only each
candidate's log-probability of every validation target (`awd.cache.SplitOutputs.logprob`): one
model pass per candidate, none per selection step.

An ensemble is saved as one file (`write_ensemble`): every member's config and weights, the
shared vocabulary, the weights of the average, and optionally the cache values tuned on top; it
is read with ``weights_only`` like a single model's export (`load_ensemble`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from awd import checkpoint as ckpt
from awd.cache import CacheParams, SplitOutputs
from awd.config import from_flat
from awd.errors import CheckpointError, ConfigError, UserError, first_line
from awd.models import build_model
from awd.trainer import ExportedModel

ENSEMBLE_FORMAT = "awdsearch.ensemble/1"


def check_aligned(outputs: Sequence[SplitOutputs], names: Sequence[str]) -> None:
    """Averaging needs every candidate to have scored the same words: same split, same slice."""
    first = outputs[0]
    for o, name in zip(outputs[1:], names[1:], strict=True):
        if o.tokens != first.tokens or not torch.equal(o.targets, first.targets):
            raise ConfigError(f"{name} scored other words than {names[0]} ({o.tokens:,} against "
                              f"{first.tokens:,} tokens): an ensemble needs models of the same "
                              "dataset and evaluation slice")


def mixture_logprob(logprobs: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """log Σ_m w_m·p_m(target) per position, for member log-probabilities (M, N)."""
    w = torch.tensor(weights, dtype=torch.float64)
    if w.numel() != logprobs.size(0) or not torch.all(torch.isfinite(w) & (w >= 0)) \
            or not w.sum() > 0:
        raise ConfigError(f"ensemble weights must be {logprobs.size(0)} numbers ≥ 0 with a "
                          f"positive sum, got {list(weights)}")
    w = w / w.sum()
    with torch.no_grad():
        logw = torch.log(w)[:, None]
        keep = w > 0  # log 0 + -inf would be NaN
        return torch.logsumexp((logprobs.double() + logw)[keep], dim=0)


@dataclass(frozen=True)
class Selection:
    """Greedy selection's result: the weight of every candidate (0 for those never picked), the
    candidate picked at each step, the validation loss after each step, and the step whose
    ensemble is kept. The first pick is the best single candidate."""

    weights: list[float]
    picks: list[int]
    losses: list[float]
    best_step: int

    @property
    def members(self) -> list[int]:
        return [i for i, w in enumerate(self.weights) if w > 0]


MAX_SIZE = 1000  # --ensemble K: auto-sklearn uses 50, AutoGluon 25 ("no gain above")


def greedy_selection(logprobs: torch.Tensor, size: int) -> Selection:
    """Caruana's selection with replacement over candidates' log-probabilities (M, N): ``size``
    steps, each adding the candidate whose addition gives the lowest mean validation loss (the
    first of equals; a candidate with a non-finite loss only if nothing else is left); the
    ensemble kept is the best of the steps (the smallest of equals). Equal is up to rounding
    (`_first_of_the_lowest`), in both choices."""
    if not 1 <= size <= MAX_SIZE:
        raise ConfigError(f"--ensemble must be 1 to {MAX_SIZE} members, got {size}")
    probs = logprobs.double().exp()
    total = torch.zeros(probs.size(1), dtype=torch.float64)
    picks: list[int] = []
    losses: list[float] = []
    for step in range(1, size + 1):
        candidate = -torch.log((total[None, :] + probs) / step).mean(dim=1)
        candidate = torch.nan_to_num(candidate, nan=math.inf)
        pick = _first_of_the_lowest(candidate)
        picks.append(pick)
        total += probs[pick]
        losses.append(float(candidate[pick]))
    best = _first_of_the_lowest(torch.tensor(losses, dtype=torch.float64))
    counts = [0] * probs.size(0)
    for pick in picks[:best + 1]:
        counts[pick] += 1
    return Selection([c / (best + 1) for c in counts], picks, losses, best)


def _first_of_the_lowest(losses: torch.Tensor, rel_tol: float = 1e-12) -> int:
    """The first index whose loss equals the lowest up to rounding: a mean's summation order
    (vectorized differently on different CPUs) must not decide between equal candidates."""
    lowest = float(losses.min())
    if not math.isfinite(lowest):
        return int(torch.argmin(losses))
    tied = losses <= lowest + rel_tol * max(abs(lowest), 1.0)
    return int(torch.nonzero(tied)[0])


# --- the ensemble as a file ------------------------------------------------------------------
@dataclass(frozen=True)
class Ensemble:
    """Members (exports of one vocabulary), the weight of each, and cache values if tuned."""

    members: list[ExportedModel]
    weights: list[float]
    names: list[str]
    cache: CacheParams | None = None

    def __post_init__(self) -> None:
        if not self.members or not len(self.members) == len(self.weights) == len(self.names):
            raise ConfigError("an ensemble needs one weight and one name per member, and at "
                              "least one member")
        if not all(math.isfinite(w) and w >= 0 for w in self.weights) or \
                not sum(self.weights) > 0:
            raise ConfigError(f"an ensemble's weights must be finite, >= 0 and not all 0, got "
                              f"{self.weights}")
        check_compatible(self.members, self.names)

    @property
    def vocab(self) -> list[str]:
        return self.members[0].vocab

    @property
    def dataset(self) -> str:
        return self.members[0].run.dataset

    @property
    def pointer_member(self) -> int:
        """Whose last-layer outputs the cache attends over: the heaviest member (the first of
        equals)."""
        return max(range(len(self.weights)), key=lambda i: (self.weights[i], -i))


def check_compatible(members: Sequence[ExportedModel], names: Sequence[str]) -> None:
    """Members must share the vocabulary and the dataset (and its evaluation slice)."""
    first = members[0]
    for m, name in zip(members[1:], names[1:], strict=True):
        if m.vocab != first.vocab:
            raise ConfigError(f"{name} has another vocabulary ({len(m.vocab):,} words) than "
                              f"{names[0]} ({len(first.vocab):,}): an ensemble's members must "
                              "share theirs")
        if m.run.dataset != first.run.dataset or m.run.train.eval_tokens != \
                first.run.train.eval_tokens:
            raise ConfigError(f"{name} was trained on {m.run.dataset} (eval slice "
                              f"{m.run.train.eval_tokens or 'all'}), {names[0]} on "
                              f"{first.run.dataset} (eval slice "
                              f"{first.run.train.eval_tokens or 'all'}): an ensemble's members "
                              "must share the dataset")


def write_ensemble(ensemble: Ensemble, path: str | os.PathLike[str]) -> Path:
    """One file, plain data only (read back with ``weights_only``)."""
    state: dict[str, Any] = {
        "format": ENSEMBLE_FORMAT, "vocab": list(ensemble.vocab),
        "weights": [float(w) for w in ensemble.weights], "names": list(ensemble.names),
        "members": [{"config": m.run.to_flat(),
                     "model": {k: v.detach().cpu() for k, v in m.state_dict.items()}}
                    for m in ensemble.members],
        "cache": None if ensemble.cache is None else [ensemble.cache.window,
                                                      ensemble.cache.theta, ensemble.cache.lam]}
    ckpt.write(state, path)
    return Path(path)


def is_ensemble_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds an ensemble (read safely; False for anything else)."""
    try:
        ckpt.read(path, ENSEMBLE_FORMAT)
    except CheckpointError:
        return False
    return True


def load_ensemble(path: str | os.PathLike[str]) -> Ensemble:
    """An ensemble written by `write_ensemble`, every member checked against its config."""
    try:
        saved = ckpt.read(path, ENSEMBLE_FORMAT)
        vocab = ckpt.field(saved, "vocab", list)
        weights = ckpt.check_floats(ckpt.field(saved, "weights", list), "weights")
        names = [str(n) for n in ckpt.field(saved, "names", list)]
        members = []
        for entry in ckpt.field(saved, "members", list):
            if not isinstance(entry, dict):
                raise CheckpointError("the checkpoint's members are malformed")
            run = from_flat(ckpt.field(entry, "config", dict))
            state = ckpt.field(entry, "model", dict)
            ckpt.check_tensors(state, build_model(run, len(vocab)).state_dict(), "weights")
            members.append(ExportedModel(run, vocab, state))
        cache = saved.get("cache")
        params = None if cache is None else CacheParams(int(cache[0]), float(cache[1]),
                                                        float(cache[2]))
        return Ensemble(members, weights, names, params)
    except UserError as e:
        raise CheckpointError(f"{path} is not an ensemble written by awdsearch: "
                              f"{first_line(e)}") from None
    except (TypeError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path} is not an ensemble written by awdsearch: "
                              f"{first_line(e)}") from None
