"""The continuous cache pointer (Grave, Joulin & Usunier, ICLR 2017) on a trained model.

p(w) = (1 - λ)·p_model(w) + λ·p_cache(w), where p_cache(w) ∝ Σ exp(θ · h_t·h_i) over the last W
positions i whose next word is w; h is the last layer's output (raw dot products, as the
released AWD-LSTM ``pointer.py``). The evaluation is sequential: batch 1, the hidden state carried
through the whole split, the cache reaching back across the bptt windows.

The cache needs no training, and its values are chosen on validation. So a split is run through
the model once (`collect_outputs`: every position's last-layer output, target word, and the
log-probability the model gave that target), and every (W, θ, λ) is then computed from those
alone (`cached_logprob`): perplexity needs only the target's probability. One difference from
``pointer.py``: there the cache is off until W positions are seen; here it uses the positions
there are (Grave et al.'s definition), so only the split's first word goes without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from awd.data import eval_windows
from awd.errors import ConfigError

CHUNK = 512  # query positions per block: a block costs CHUNK x (CHUNK + W) scores

# The first trial of a tuning: Merity et al. 2018's values (PTB: window 2000, θ 1.0, λ 0.1; the
# awd-lstm-lm README's PTB command uses window 500; WikiText-2: 3785, 0.662, 0.1279).
PAPER_VALUES = {"ptb": (2000, 1.0, 0.1), "wikitext-2": (3785, 0.662, 0.1279)}
MAX_THETA = 1e4  # θ·h_t·h_i beyond this only picks the single most similar position


@dataclass(frozen=True)
class CacheParams:
    """The cache's three values: window W (positions), flatness θ (≥ 0), weight λ (in [0, 1])."""

    window: int
    theta: float
    lam: float

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"cache window W must be a whole number of positions ≥ 1, got "
                              f"{self.window!r}")
        if not (math.isfinite(self.theta) and 0 <= self.theta <= MAX_THETA):
            raise ConfigError(f"cache theta must be a number from 0 to {MAX_THETA:g}, got "
                              f"{self.theta!r}")
        if not (math.isfinite(self.lam) and 0.0 <= self.lam <= 1.0):
            raise ConfigError(f"cache lambda must be in [0, 1], got {self.lam!r}")

    @classmethod
    def parse(cls, text: str) -> CacheParams:
        """``"W,θ,λ"``, e.g. ``"2000,1.0,0.1"``."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 3:
            raise ConfigError(f"--cache takes W,theta,lambda (e.g. 2000,1.0,0.1), got {text!r}")
        try:
            window = float(parts[0])
            theta, lam = float(parts[1]), float(parts[2])
        except ValueError:
            raise ConfigError(f"--cache takes three numbers W,theta,lambda, got {text!r}"
                              ) from None
        if not window.is_integer():
            raise ConfigError(f"cache window W must be a whole number of positions ≥ 1, got "
                              f"{parts[0]}")
        return cls(int(window), theta, lam)

    def as_text(self) -> str:
        """Every digit (what is stored: `parse` gives the same values back)."""
        return f"{self.window},{self.theta!r},{self.lam!r}"

    def shown(self) -> str:
        """Short, for tables."""
        return f"W {self.window}, θ {self.theta:.3g}, λ {self.lam:.3g}"

    def as_dict(self) -> dict[str, float]:
        return {"cache_window": self.window, "cache_theta": self.theta, "cache_lambda": self.lam}

    @classmethod
    def paper(cls, dataset: str) -> CacheParams:
        """The papers' values for a dataset (PTB's for any other)."""
        return cls(*PAPER_VALUES.get(dataset, PAPER_VALUES["ptb"]))


@dataclass(frozen=True)
class SplitOutputs:
    """One sequential pass over a split: at each position the last layer's output (N, H), the
    target word (N,), and the log-probability the model gave it (N, float64)."""

    hidden: torch.Tensor
    targets: torch.Tensor
    logprob: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.targets.numel())

    def loss(self) -> float:
        """Mean negative log-likelihood of the model alone."""
        return float(-self.logprob.mean())


@torch.no_grad()
def collect_outputs(model: torch.nn.Module, data: torch.Tensor, bptt: int,
                    on_progress: Callable[[int, int], None] | None = None) -> SplitOutputs:
    """Run ``model`` (evaluation mode) over ``data`` (a batchified split, batch 1: shape (T, 1))
    in bptt windows with the hidden state carried, keeping what the cache needs. With the same
    bptt, its mean loss is the trainer's evaluation of the split at batch 1."""
    if data.dim() != 2 or data.size(1) != 1:
        raise ConfigError(f"the cache evaluates a split at batch 1, got shape {tuple(data.shape)}")
    model.eval()
    hidden = model.init_hidden(1)  # type: ignore[operator]
    outs, targets, logprobs = [], [], []
    rows, done = data.size(0) - 1, 0
    for w in eval_windows(data, bptt):
        out = model(w.inputs, hidden)
        hidden = out.hidden
        target = w.targets.reshape(-1)
        # the log-softmax in the logits' own dtype, as the trainer's cross-entropy computes it
        # (a float64 copy of every window's (T, vocabulary) logits costs more than the model)
        logp = F.log_softmax(out.logits.view(target.numel(), -1), dim=-1)
        logprobs.append(logp.gather(1, target.view(-1, 1)).view(-1).double().cpu())
        outs.append(out.raw_output.reshape(target.numel(), -1).float().cpu())
        targets.append(target.cpu())
        done += w.seq_len
        if on_progress is not None:
            on_progress(done, rows)
    return SplitOutputs(torch.cat(outs), torch.cat(targets), torch.cat(logprobs))


def cache_prob(hidden: torch.Tensor, targets: torch.Tensor, window: int, theta: float,
               chunk: int = CHUNK) -> torch.Tensor:
    """p_cache(target_t) at every position t (float64; 0 at t = 0, whose cache is empty): the
    attention softmax(θ · h_t·h_i) over i in [t - W, t - 1], summed where the word after i is
    the target of t. Blocks of ``chunk`` positions, no loop per token."""
    n = targets.numel()
    out = torch.zeros(n, dtype=torch.float64)
    positions = torch.arange(n)
    for a in range(1, n, chunk):
        b = min(a + chunk, n)
        lo = max(0, a - window)
        keys = hidden[lo:b - 1]  # every i some t in [a, b) may attend to
        scores = (hidden[a:b] @ keys.T).double() * theta
        t, i = positions[a:b, None], positions[None, lo:b - 1]
        scores = scores.masked_fill((i >= t) | (i < t - window), -math.inf)
        attn = torch.softmax(scores, dim=1)
        same = targets[lo:b - 1][None, :] == targets[a:b, None]
        out[a:b] = (attn * same).sum(dim=1)
    return out


def mix(logprob: torch.Tensor, p_cache: torch.Tensor, lam: float) -> torch.Tensor:
    """log((1 - λ)·p_model + λ·p_cache) per position; the first position (no cache) keeps the
    model's own. λ = 0 gives ``logprob`` exactly."""
    if lam == 0.0:
        return logprob.clone()
    with torch.no_grad():
        mixed = torch.logaddexp(logprob + math.log1p(-lam) if lam < 1 else
                                torch.full_like(logprob, -math.inf),
                                torch.log(p_cache) + math.log(lam))
    mixed[:1] = logprob[:1]
    return mixed


def cached_logprob(outputs: SplitOutputs, params: CacheParams) -> torch.Tensor:
    """The log-probability of every target word under the model with the cache."""
    if params.lam == 0.0:
        return outputs.logprob.clone()
    p_cache = cache_prob(outputs.hidden, outputs.targets, params.window, params.theta)
    return mix(outputs.logprob, p_cache, params.lam)


def cached_loss(outputs: SplitOutputs, params: CacheParams) -> float:
    """Mean negative log-likelihood of the split under the model with the cache."""
    return float(-cached_logprob(outputs, params).mean())
