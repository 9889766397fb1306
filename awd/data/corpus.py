"""Word-level corpora with Mikolov tokenisation and an on-disk token-id cache.

Tokenisation: split each line on whitespace and append one ``<eos>``; the vocabulary is the
training split's words in first-seen order. Token ids of all three splits are cached, keyed by
the sha256 of the three files, so the search's many trials do not re-tokenise.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch

from awd.data.registry import (
    DATASETS,
    SPLITS,
    DatasetSpec,
    data_root,
    find_dataset,
    resolve_data,
)
from awd.errors import DataError, first_line
from awd.files import atomic_torch_save, sha256_file

EOS = "<eos>"
# Accepted file names per split, in order of preference.
SPLIT_FILES = {s: (f"{s}.txt", f"ptb.{s}.txt", f"wiki.{s}.tokens") for s in SPLITS}
CACHE_VERSION = 2
CACHE_FORMAT = f"awdsearch.corpus/{CACHE_VERSION}"
# C0 control characters other than whitespace, and DEL: never in a text corpus, always in a
# binary file (NUL bytes are valid UTF-8, so decoding alone does not catch them).
BINARY = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


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
        with path.open(encoding="utf-8") as f:  # universal newlines, as the reference reads
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); the file is corrupt") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    binary = BINARY.search(text)
    if binary:
        raise DataError(f"{path} holds a control character ({binary.group()!r}, line "
                        f"{text.count(chr(10), 0, binary.start()) + 1}): a binary or corrupt "
                        "file, not text")
    return tokenize_lines(io.StringIO(text))  # lines end at \n only, as in the file


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


def file_digests(files: dict[str, Path]) -> dict[str, str]:
    """The sha256 of each split's file: checked against the registry and keying the cache."""
    try:
        return {split: sha256_file(files[split]) for split in SPLITS}
    except OSError as e:
        raise DataError(f"cannot read the corpus files: {e}") from None


def content_key(files: dict[str, Path], digests: dict[str, str] | None = None) -> str:
    """The cache key: a sha256 over the three files' digests and the cache format version, so
    that any change to any file (or to the format) is a different key."""
    digests = digests or file_digests(files)
    text = "\n".join([f"awd-corpus-v{CACHE_VERSION}", *(digests[s] for s in SPLITS)])
    return hashlib.sha256(text.encode()).hexdigest()


def registered_dataset(data: str | os.PathLike, folder: Path) -> DatasetSpec | None:
    """The registry's dataset ``data`` names, or whose data-root folder it points at."""
    spec = find_dataset(str(data))
    if spec is not None:
        return spec
    for spec in DATASETS.values():
        if folder.resolve() == (data_root() / spec.name).resolve():
            return spec
    return None


def check_registered(spec: DatasetSpec, files: dict[str, Path], digests: dict[str, str]) -> None:
    """A registered dataset's files must be the published ones: an edited or corrupt file
    would make every result computed on it incomparable with the papers'."""
    for split in SPLITS:
        if digests[split] != spec.sha256[split]:
            raise DataError(
                f"{files[split]} does not match the {spec.name} registry checksum (edited or "
                f"corrupt); re-fetch it with `python -m awd.data fetch {spec.name} --force`")


def cache_dir() -> Path:
    """Where token ids are cached: ``$AWD_CACHE_DIR``, else the user cache folder. Never beside
    the data: a data folder may be read-only, shared, or someone else's."""
    env = os.environ.get("AWD_CACHE_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("awdsearch")) / \
        "corpus"


def _payload_digest(vocab: list[str], ids: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256("\n".join(vocab).encode())
    for split in SPLITS:
        h.update(ids[split].numpy().tobytes())
    return h.hexdigest()


def _load_cached(path: Path, key: str) -> Corpus | None:
    """The cached corpus if ``path`` is a sound cache of ``key``; None (with a warning) for a
    corrupt, foreign or stale file, which is then rebuilt: a cache is never trusted blindly."""
    try:
        blob = torch.load(path, weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT:
            raise ValueError("not a corpus cache of this version")
        if blob.get("key") != key:
            raise ValueError("it caches other files")
        vocab = blob["vocab"]
        if not (isinstance(vocab, list) and vocab and all(isinstance(w, str) for w in vocab)
                and len(set(vocab)) == len(vocab)):
            raise ValueError("its vocabulary is malformed")
        ids = {s: blob[s] for s in SPLITS}
        for split, t in ids.items():
            if not (isinstance(t, torch.Tensor) and t.dtype == torch.int32 and t.dim() == 1
                    and t.numel() > 0 and int(t.min()) >= 0 and int(t.max()) < len(vocab)):
                raise ValueError(f"its {split} ids are malformed")
        if blob.get("digest") != _payload_digest(vocab, ids):
            raise ValueError("its content does not match its checksum")
    except Exception as e:  # unreadable or unsound: rebuilt, never trusted
        warnings.warn(f"rebuilding the corpus cache {path}: {first_line(e)}", stacklevel=3)
        return None
    return Corpus(vocab=vocab, **{s: t.long() for s, t in ids.items()})


def _store(path: Path, key: str, corpus: Corpus) -> None:
    """Write the cache atomically (concurrent trials never read a half-written file); a cache
    that cannot be written only costs the next load a re-tokenisation."""
    ids = {s: corpus.split(s).int() for s in SPLITS}
    blob = {"format": CACHE_FORMAT, "key": key, "vocab": list(corpus.vocab), **ids,
            "digest": _payload_digest(corpus.vocab, ids)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(blob, path)
    except OSError as e:
        warnings.warn(f"cannot write the corpus cache {path}: {e}", stacklevel=3)


def verify_data(data: str | os.PathLike) -> tuple[dict[str, Path], dict[str, str]]:
    """The corpus files of ``data`` and their digests, after checking that all three exist and
    that a registered dataset's are the published ones: what a search checks before any trial
    starts, and every load checks again."""
    folder = resolve_data(data)
    files = find_split_files(folder)
    digests = file_digests(files)
    spec = registered_dataset(data, folder)
    if spec is not None:
        check_registered(spec, files, digests)
    return files, digests


def load_corpus(data: str | os.PathLike, use_cache: bool = True) -> Corpus:
    """Load a corpus from a dataset name (``ptb``, ``wikitext-2``) or a folder path.

    A registered dataset's files are checked against the registry's checksums on every load
    (one hashing pass, which also keys the cache)."""
    files, digests = verify_data(data)
    if not use_cache:
        return build_corpus(files)
    key = content_key(files, digests)
    path = cache_dir() / f"{key}.pt"
    cached = _load_cached(path, key) if path.is_file() else None
    if cached is not None:
        return cached
    corpus = build_corpus(files)
    _store(path, key, corpus)
    return corpus
