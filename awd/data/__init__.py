"""Corpora, batching and dataset download.

The names below load their module on first use (PEP 562), so that ``awd.config`` (which needs
only the dataset registry) and the command lines' ``--help`` start without torch. Downloading
and checking a dataset is `awd.data.fetch` (``python -m awd.data``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from awd.data.batching import Window, batchify, draw_seq_len, eval_windows, train_windows
    from awd.data.corpus import Corpus, load_corpus
    from awd.data.registry import (
        DATASETS,
        canonical_dataset,
        data_root,
        dataset_spec,
        resolve_data,
    )

_HOME = {
    "Window": "batching", "batchify": "batching", "draw_seq_len": "batching",
    "eval_windows": "batching", "train_windows": "batching",
    "Corpus": "corpus", "load_corpus": "corpus",
    "DATASETS": "registry", "canonical_dataset": "registry", "data_root": "registry",
    "dataset_spec": "registry", "resolve_data": "registry",
}

__all__ = [
    "DATASETS", "Corpus", "Window", "batchify", "canonical_dataset", "data_root", "dataset_spec",
    "draw_seq_len", "eval_windows", "load_corpus", "resolve_data", "train_windows",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'awd.data' has no attribute {name!r}")
    # Not cached: every use reads the name from its module (what a test patches there, too).
    return getattr(importlib.import_module(f"awd.data.{_HOME[name]}"), name)
