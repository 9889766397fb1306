"""Corpora, batching and dataset download."""

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

__all__ = [
    "DATASETS",
    "Corpus",
    "Window",
    "batchify",
    "canonical_dataset",
    "data_root",
    "dataset_spec",
    "draw_seq_len",
    "eval_windows",
    "fetch",
    "import_local",
    "load_corpus",
    "resolve_data",
    "train_windows",
    "verify",
]
