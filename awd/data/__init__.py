"""Corpora, batching and dataset download.

The names below load their module on first use (PEP 562), so that ``awd.config`` (which needs
only the dataset registry) and the command lines' ``--help`` start without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from awd.data.batching import Window, batchify, draw_seq_len, eval_windows, train_windows
    from awd.data.corpus import Corpus, load_corpus
    from awd.data.fetch import fetch, import_local, verify
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
    "fetch": "fetch", "import_local": "fetch", "verify": "fetch",
    "DATASETS": "registry", "canonical_dataset": "registry", "data_root": "registry",
    "dataset_spec": "registry", "resolve_data": "registry",
}

__all__ = [
    "DATASETS", "Corpus", "Window", "batchify", "canonical_dataset", "data_root", "dataset_spec",
    "draw_seq_len", "eval_windows", "fetch", "import_local", "load_corpus", "resolve_data",
    "train_windows", "verify",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'awd.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"awd.data.{_HOME[name]}"), name)
