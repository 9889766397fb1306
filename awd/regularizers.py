"""AWD-LSTM's regularisers: locked dropout, embedding dropout, weight drop, AR and TAR.

Weight drop keeps the raw hidden-to-hidden weight as the RNN's own parameter and calls the RNN
through ``torch.func.functional_call`` with a dropped copy substituted, so the fused kernel runs
and gradients reach the raw weight. No parameter is deleted or re-registered. On CUDA the
substituted weights are laid out as views of one contiguous buffer in cuDNN's order, so cuDNN
uses them as they are (no "weights are not part of single contiguous chunk" warning).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class LockedDropout(nn.Module):
    """Variational dropout on (T, B, H): one mask per (sequence, unit), shared over time."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


def embedding_dropout(embed: nn.Embedding, words: torch.Tensor, p: float,
                      training: bool) -> torch.Tensor:
    """Drop whole word types (rows of the embedding matrix) for this minibatch; scale the rest."""
    weight = embed.weight
    if training and p > 0:
        mask = weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
        weight = weight * mask
    return F.embedding(words, weight, embed.padding_idx)


def _contiguous_views(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy tensors into one flat buffer (in the given order) and return views of it."""
    flat = torch.cat([t.reshape(-1) for t in tensors.values()])
    views, offset = {}, 0
    for name, t in tensors.items():
        views[name] = flat[offset : offset + t.numel()].view_as(t)
        offset += t.numel()
    return views


def dropconnect(weight: torch.Tensor, p: float) -> torch.Tensor:
    """Element-wise dropout of a weight matrix. On CPU a uniform draw compared with p is ~4x
    faster than ``bernoulli_`` (what F.dropout uses), the bulk of weight drop's cost there;
    CUDA's fused dropout kernel is already fast."""
    if weight.is_cuda:
        return F.dropout(weight, p, training=True)
    mask = torch.rand_like(weight).ge_(p).div_(1 - p)
    return weight * mask


class WeightDropRNN(nn.Module):
    """A single-layer ``nn.LSTM``/``nn.GRU`` with DropConnect on ``weight_hh_l0``.

    One mask per forward call, shared by every time step and batch row; none at evaluation.
    """

    def __init__(self, rnn: nn.RNNBase, wdrop: float) -> None:
        super().__init__()
        if rnn.num_layers != 1 or rnn.bidirectional:
            raise ValueError("WeightDropRNN wraps one unidirectional layer")
        self.rnn = rnn
        self.wdrop = wdrop

    def forward(self, x: torch.Tensor,
                hidden: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, Any]:
        if not self.training or self.wdrop == 0:
            return self.rnn(x, hidden)
        weights = {name: getattr(self.rnn, name) for name in self.rnn._flat_weights_names}
        weights["weight_hh_l0"] = dropconnect(weights["weight_hh_l0"], self.wdrop)
        if x.is_cuda:
            weights = _contiguous_views(weights)
        return functional_call(self.rnn, weights, (x, hidden))


def activation_regularization(dropped_output: torch.Tensor, alpha: float) -> torch.Tensor:
    """AR: alpha * mean(h^2) of the last layer's output after its dropout."""
    return alpha * dropped_output.pow(2).mean()


def temporal_activation_regularization(raw_output: torch.Tensor, beta: float) -> torch.Tensor:
    """TAR: beta * mean((h_{t+1} - h_t)^2) of the last layer's undropped output."""
    if raw_output.size(0) < 2:
        return raw_output.new_zeros(())
    return beta * (raw_output[1:] - raw_output[:-1]).pow(2).mean()
