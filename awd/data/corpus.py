"""Word-level corpora with Mikolov tokenisation and an on-disk token-id cache.

Tokenisation: split each line on whitespace and append one ``<eos>``; the vocabulary is the
training split's words in first-seen order. Token ids of all three splits are cached, keyed by
the sha256 of the three files, so the search's many trials do not re-tokenise.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch

from awd.data.registry import SPLITS, resolve_data
from awd.errors import DataError

EOS = "<eos>"
# Accepted file names per split, in order of preference.
SPLIT_FILES = {s: (f"{s}.txt", f"ptb.{s}.txt", f"wiki.{s}.tokens") for s in SPLITS}
CACHE_VERSION = 1


@dataclass
class Corpus:
    """A vocabulary and the train/valid/test splits as 1-D int64 token-id tensors."""

    vocab: list[str]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor

    @property
    def ntokens(self) -> int:
        return len(self.vocab)

    def split(self, name: str) -> torch.Tensor:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
        return getattr(self, name)

    def truncated(self, train_tokens: int | None = None, eval_tokens: int | None = None) -> Corpus:
        """A prefix of each split (same vocabulary): for smoke runs and tests."""
        return Corpus(
            vocab=self.vocab,
            train=self.train[:train_tokens] if train_tokens else self.train,
            valid=self.valid[:eval_tokens] if eval_tokens else self.valid,
            test=self.test[:eval_tokens] if eval_tokens else self.test,
        )


def find_split_files(folder: Path) -> dict[str, Path]:
    """Map each split to its file in ``folder``, accepting the common naming schemes."""
    if not folder.is_dir():
        raise DataError(
            f"data folder {folder} does not exist; fetch it with `python -m awd.data fetch NAME` "
            "or point $AWD_DATA_DIR at the folder that holds ptb/ and wikitext-2/"
        )
    found: dict[str, Path] = {}
    for split, names in SPLIT_FILES.items():
        for name in names:
            if (folder / name).is_file():
                found[split] = folder / name
                break
        else:
            raise DataError(
                f"data folder {folder} has no {split} split (looked for {', '.join(names)})"
            )
    return found


def tokenize_lines(lines: Iterable[str]) -> list[str]:
    """Whitespace split with one <eos> per line (blank lines give a lone <eos>)."""
    words: list[str] = []
    for line in lines:
        words.extend(line.split())
        words.append(EOS)
    return words


def _read_words(path: Path) -> list[str]:
    try:
        with path.open(encoding="utf-8") as f:
            return tokenize_lines(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); the file is corrupt") from e


def build_corpus(files: dict[str, Path]) -> Corpus:
    """Tokenise the three files; every valid/test word must be in the training vocabulary."""
    train_words = _read_words(files["train"])
    if not train_words or all(w == EOS for w in train_words):
        raise DataError(f"training split {files['train']} is empty")
    word2idx: dict[str, int] = {}
    for w in train_words:
        if w not in word2idx:
            word2idx[w] = len(word2idx)
    ids: dict[str, torch.Tensor] = {"train": torch.tensor([word2idx[w] for w in train_words])}
    for split in ("valid", "test"):
        words = _read_words(files[split])
        if not words or all(w == EOS for w in words):
            raise DataError(f"{split} split {files[split]} is empty")
        unknown = sorted({w for w in words if w not in word2idx})
        if unknown:
            shown = ", ".join(repr(w) for w in unknown[:5])
            raise DataError(
                f"{files[split]}: {len(unknown)} word type(s) not in the training vocabulary "
                f"(e.g. {shown}); map them to <unk> first"
            )
        ids[split] = torch.tensor([word2idx[w] for w in words])
    return Corpus(vocab=list(word2idx), **ids)


def content_key(files: dict[str, Path]) -> str:
    """sha256 over the three files' bytes (in split order) and the cache format version."""
    h = hashlib.sha256(f"awd-corpus-v{CACHE_VERSION}".encode())
    for split in SPLITS:
        with files[split].open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _cache_dirs(folder: Path) -> list[Path]:
    """Candidates for the cache, first writable wins: next to the data, then a user cache."""
    dirs = [folder / ".awd_cache"]
    env = os.environ.get("AWD_CACHE_DIR")
    dirs.append(Path(env) if env else Path(platformdirs.user_cache_dir("awdsearch")) / "corpus")
    return dirs


def _load_cached(path: Path) -> Corpus | None:
    try:
        blob = torch.load(path, weights_only=True)
        return Corpus(
            vocab=list(blob["vocab"]), **{s: blob[s].long() for s in SPLITS}
        )
    except Exception:  # a corrupt or foreign cache file is rebuilt, never trusted
        return None


def _store(path: Path, corpus: Corpus) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        blob = {"vocab": corpus.vocab, **{s: corpus.split(s).int() for s in SPLITS}}
        torch.save(blob, tmp)
        os.replace(tmp, path)  # atomic: concurrent trials never read a half-written cache
        return True
    except OSError:
        return False


def load_corpus(data: str | os.PathLike, use_cache: bool = True) -> Corpus:
    """Load a corpus from a dataset name (``ptb``, ``wikitext-2``) or a folder path."""
    folder = resolve_data(data)
    files = find_split_files(folder)
    if not use_cache:
        return build_corpus(files)
    key = content_key(files)
    for d in _cache_dirs(folder):
        cached = _load_cached(d / f"{key}.pt") if (d / f"{key}.pt").is_file() else None
        if cached is not None:
            return cached
    corpus = build_corpus(files)
    for d in _cache_dirs(folder):
        if _store(d / f"{key}.pt", corpus):
            break
    return corpus
