"""The three language models: AWD-LSTM, AWD-GRU (one class, two cells) and Zaremba's LSTM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from awd.config import AWDLSTMConfig, RunConfig, ZarembaConfig
from awd.regularizers import (
    LockedDropout,
    WeightDropRNN,
    embedding_dropout,
)

Hidden = Any  # a tensor, a tuple of tensors, or a list of those


@dataclass
class ModelOutput:
    """Logits (T, B, V), the next hidden state, and the last layer's output before and after
    its dropout (for TAR and AR)."""

    logits: torch.Tensor
    hidden: Hidden
    raw_output: torch.Tensor
    dropped_output: torch.Tensor


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph between BPTT windows while carrying the state over."""
    if isinstance(hidden, torch.Tensor):
        return hidden.detach()
    return type(hidden)(detach_hidden(h) for h in hidden)


class AWDModel(nn.Module):
    """Embedding -> n single-layer weight-dropped RNNs -> tied decoder, with AWD's dropouts."""

    def __init__(self, cfg: AWDLSTMConfig, ntoken: int) -> None:
        super().__init__()
        self.cfg = cfg
        rnn_cls = nn.LSTM if cfg.cell == "lstm" else nn.GRU
        last = cfg.emsize if cfg.tie_weights else cfg.nhid
        sizes = [cfg.emsize] + [cfg.nhid] * (cfg.nlayers - 1) + [last]
        self.encoder = nn.Embedding(ntoken, cfg.emsize)
        self.rnns = nn.ModuleList(
            WeightDropRNN(rnn_cls(sizes[i], sizes[i + 1]), cfg.wdrop) for i in range(cfg.nlayers)
        )
        self.decoder = nn.Linear(last, ntoken)
        self.lockdrop_in = LockedDropout(cfg.dropouti)
        self.lockdrop_hid = LockedDropout(cfg.dropouth)
        self.lockdrop_out = LockedDropout(cfg.dropout)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if cfg.tie_weights:
            self.decoder.weight = self.encoder.weight

    def init_hidden(self, batch_size: int) -> list[Hidden]:
        weight = self.encoder.weight
        hidden = []
        for layer in self.rnns:
            assert isinstance(layer, WeightDropRNN)
            h = weight.new_zeros(1, batch_size, layer.rnn.hidden_size)
            hidden.append((h, h.clone()) if self.cfg.cell == "lstm" else h)
        return hidden

    def forward(self, words: torch.Tensor, hidden: list[Hidden]) -> ModelOutput:
        x = embedding_dropout(self.encoder, words, self.cfg.dropoute, self.training)
        x = self.lockdrop_in(x)
        new_hidden = []
        for i, layer in enumerate(self.rnns):
            raw, h = layer(x, hidden[i])
            new_hidden.append(h)
            x = self.lockdrop_hid(raw) if i < len(self.rnns) - 1 else self.lockdrop_out(raw)
        return ModelOutput(self.decoder(x), new_hidden, raw, x)


class ZarembaModel(nn.Module):
    """Embedding -> stacked LSTM -> linear softmax; dropout only on non-recurrent connections
    (a fresh mask per time step), every parameter initialised U(-init_range, init_range)."""

    def __init__(self, cfg: ZarembaConfig, ntoken: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Embedding(ntoken, cfg.nhid)
        # nn.LSTM's dropout acts between its layers only (none with one layer: say so to it)
        between = cfg.dropout if cfg.nlayers > 1 else 0.0
        self.rnn = nn.LSTM(cfg.nhid, cfg.nhid, cfg.nlayers, dropout=between)
        self.decoder = nn.Linear(cfg.nhid, ntoken)
        self.drop = nn.Dropout(cfg.dropout)
        for p in self.parameters():
            nn.init.uniform_(p, -cfg.init_range, cfg.init_range)

    def init_hidden(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder.weight.new_zeros(self.cfg.nlayers, batch_size, self.cfg.nhid)
        return h, h.clone()

    def forward(self, words: torch.Tensor, hidden: Hidden) -> ModelOutput:
        raw, hidden = self.rnn(self.drop(self.encoder(words)), hidden)
        dropped = self.drop(raw)
        return ModelOutput(self.decoder(dropped), hidden, raw, dropped)


LanguageModel = AWDModel | ZarembaModel


def build_model(run: RunConfig, ntoken: int) -> LanguageModel:
    """The model a RunConfig names, for a vocabulary of ``ntoken`` words."""
    if isinstance(run.arch, ZarembaConfig):
        return ZarembaModel(run.arch, ntoken)
    return AWDModel(run.arch, ntoken)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each shared tensor (tied weights) counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
