"""Batching and BPTT windows, including AWD-LSTM's variable-length windows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from awd.errors import DataError


def batchify(ids: torch.Tensor, batch_size: int, split: str = "data") -> torch.Tensor:
    """Trim to a multiple of ``batch_size`` and lay out as (T, B): B contiguous streams."""
    nrows = ids.numel() // batch_size
    if nrows < 2:
        raise DataError(f"the {split} split ({ids.numel()} tokens) is too short for batch size "
                        f"{batch_size} (it needs at least {2 * batch_size})")
    return ids[: nrows * batch_size].view(batch_size, nrows).t().contiguous()


@dataclass(frozen=True)
class Window:
    """One BPTT window: inputs (T, B), targets (T, B) and the lr scale seq_len / bptt."""

    inputs: torch.Tensor
    targets: torch.Tensor
    lr_scale: float

    @property
    def seq_len(self) -> int:
        return self.inputs.size(0)


def get_window(source: torch.Tensor, start: int, seq_len: int, bptt: int) -> Window:
    seq_len = min(seq_len, source.size(0) - 1 - start)
    return Window(
        inputs=source[start : start + seq_len],
        targets=source[start + 1 : start + 1 + seq_len],
        lr_scale=seq_len / bptt,
    )


def draw_seq_len(
    rng: np.random.Generator, bptt: int, min_len: int = 5, max_len: int | None = None
) -> int:
    """AWD's window length: base bptt (p=0.95) or bptt/2, then N(base, 5), at least min_len."""
    base = bptt if rng.random() < 0.95 else bptt / 2
    seq_len = max(min_len, int(rng.normal(base, 5)))
    return min(seq_len, max_len) if max_len else seq_len


def train_windows(
    source: torch.Tensor,
    bptt: int,
    rng: np.random.Generator | None,
    min_len: int = 5,
    max_len: int | None = None,
) -> Iterator[tuple[int, Window]]:
    """Yield (start, window) over ``source``; variable lengths when ``rng`` is given."""
    i = 0
    while i < source.size(0) - 1:
        seq_len = draw_seq_len(rng, bptt, min_len, max_len) if rng is not None else bptt
        w = get_window(source, i, seq_len, bptt)
        yield i, w
        i += w.seq_len


def eval_windows(source: torch.Tensor, bptt: int) -> Iterator[Window]:
    """Fixed-length windows for evaluation."""
    for _, w in train_windows(source, bptt, rng=None):
        yield w
