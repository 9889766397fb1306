"""Corpora (real counts, tokenisation, file names, cache, errors) and batching/BPTT windows."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch
from conftest import write_corpus

from awd.data import batchify, draw_seq_len, eval_windows, load_corpus, registry, train_windows
from awd.data import corpus as corpus_mod
from awd.data.corpus import content_key, find_split_files
from awd.data.registry import SPLITS, DatasetSpec
from awd.errors import DataError
from awd.files import sha256_file

# --- real corpora ----------------------------------------------------------------------------


def test_ptb_has_10000_types_and_the_published_token_counts(ptb_dir):
    corpus = load_corpus(ptb_dir, use_cache=False)
    assert corpus.ntokens == 10_000
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929_589, 73_760, 82_430)
    assert corpus.vocab[corpus.train[-1]] == "<eos>"


def test_wikitext2_has_33278_types_and_the_published_token_counts(wt2_dir):
    corpus = load_corpus(wt2_dir, use_cache=False)
    assert corpus.ntokens == 33_278
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (
        2_088_628, 217_646, 245_569)


def test_dataset_name_resolves_through_awd_data_dir(ptb_dir, monkeypatch):
    monkeypatch.setenv("AWD_DATA_DIR", str(ptb_dir.parent))
    corpus = load_corpus("ptb")
    assert corpus.ntokens == 10_000 and len(corpus.train) == 929_589


def test_cached_load_equals_fresh_tokenisation(ptb_dir):
    fresh = load_corpus(ptb_dir, use_cache=False)
    cached = load_corpus(ptb_dir)
    assert cached.vocab == fresh.vocab
    for split in ("train", "valid", "test"):
        assert cached.split(split).dtype == torch.int64
        assert torch.equal(cached.split(split), fresh.split(split))


# --- tokenisation on a made corpus -----------------------------------------------------------


def test_vocabulary_is_first_seen_order_with_one_eos_per_line(tmp_path):
    folder = write_corpus(tmp_path / "c", "b a c\n\na b  d\n", "a\nd c\n", "b\n")
    corpus = load_corpus(folder, use_cache=False)
    assert corpus.vocab == ["b", "a", "c", "<eos>", "d"]
    words = [corpus.vocab[i] for i in corpus.train]
    assert words == ["b", "a", "c", "<eos>", "<eos>", "a", "b", "d", "<eos>"]
    assert [corpus.vocab[i] for i in corpus.valid] == ["a", "<eos>", "d", "c", "<eos>"]
    assert [corpus.vocab[i] for i in corpus.test] == ["b", "<eos>"]


@pytest.mark.parametrize("names", [
    ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
    ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
])
def test_reference_file_names_are_accepted(tmp_path, names):
    folder = write_corpus(tmp_path / "c", "x y\ny z\n", "z x\n", "y\n", names=names)
    assert set(find_split_files(folder)) == {"train", "valid", "test"}
    corpus = load_corpus(folder, use_cache=False)
    assert corpus.vocab == ["x", "y", "<eos>", "z"]
    assert len(corpus.train) == 6 and len(corpus.valid) == 3 and len(corpus.test) == 2


# --- cache -----------------------------------------------------------------------------------


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A cache folder of this test's own: no other test's entries in it."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("AWD_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def ptb_copy(ptb_dir, tmp_path, cache_dir):
    folder = tmp_path / "ptb"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copyfile(ptb_dir / f"{split}.txt", folder / f"{split}.txt")
    return folder


def _cache_file(folder):
    return corpus_mod.cache_dir() / f"{content_key(find_split_files(folder))}.pt"


def test_second_load_comes_from_the_cache_and_is_fast(ptb_copy):
    cache = _cache_file(ptb_copy)
    assert not cache.exists()
    first = load_corpus(ptb_copy)
    assert cache.is_file()
    start = time.perf_counter()
    second = load_corpus(ptb_copy)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert second.vocab == first.vocab
    assert all(torch.equal(second.split(s), first.split(s)) for s in ("train", "valid", "test"))


def test_cache_lives_in_the_cache_folder_never_beside_the_data(tmp_path, cache_dir):
    folder = write_corpus(tmp_path / "c", "p q\n", "q\n", "p\n")
    load_corpus(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    assert [p.name for p in cache_dir.iterdir()] == [_cache_file(folder).name]


def test_cache_is_really_read_on_the_second_load(tmp_path, cache_dir):
    folder = write_corpus(tmp_path / "c", "p q\n", "q\n", "p\n")
    fresh = load_corpus(folder)
    key = content_key(find_split_files(folder))
    marked = corpus_mod.Corpus(["P", "Q", "<eos>"], fresh.train, fresh.valid, fresh.test)
    corpus_mod._store(_cache_file(folder), key, marked)  # a marker only the cache can provide
    assert load_corpus(folder).vocab == ["P", "Q", "<eos>"]
    assert load_corpus(folder, use_cache=False).vocab == ["p", "q", "<eos>"]


def test_corrupt_cache_file_is_rebuilt(ptb_copy):
    first = load_corpus(ptb_copy)
    cache = _cache_file(ptb_copy)
    cache.write_bytes(b"this is not a torch file")
    with pytest.warns(UserWarning, match="rebuilding the corpus cache"):
        again = load_corpus(ptb_copy)
    assert again.vocab == first.vocab
    assert torch.equal(again.train, first.train)
    assert torch.load(cache, weights_only=True)["vocab"] == first.vocab  # rewritten


def _poison(blob: dict, how: str) -> dict:
    """A cache blob changed in one way a corrupt, stale or foreign file could be."""
    blob = dict(blob)
    if how == "vocab_edited":
        blob["vocab"] = ["P", "Q", "<eos>"]  # digest no longer matches
    elif how == "ids_out_of_range":
        blob["train"] = blob["train"] + 100
    elif how == "wrong_dtype":
        blob["train"] = blob["train"].float()
    elif how == "wrong_shape":
        blob["valid"] = blob["valid"].view(1, -1)
    elif how == "other_key":
        blob["key"] = "0" * 64
    elif how == "old_format":
        blob = {k: blob[k] for k in ("vocab", "train", "valid", "test")}
    elif how == "duplicate_words":
        blob["vocab"] = ["p", "p", "<eos>"]
    elif how == "not_a_dict":
        blob = [1, 2, 3]  # type: ignore[assignment]
    return blob


@pytest.mark.parametrize("how", ["vocab_edited", "ids_out_of_range", "wrong_dtype",
                                 "wrong_shape", "other_key", "old_format", "duplicate_words",
                                 "not_a_dict"])
def test_poisoned_cache_is_rebuilt_with_a_warning_never_trusted(tmp_path, cache_dir, how):
    folder = write_corpus(tmp_path / "c", "p q\n", "q\n", "p\n")
    fresh = load_corpus(folder)
    cache = _cache_file(folder)
    torch.save(_poison(torch.load(cache, weights_only=True), how), cache)
    with pytest.warns(UserWarning, match="rebuilding the corpus cache"):
        again = load_corpus(folder)
    assert again.vocab == fresh.vocab and torch.equal(again.train, fresh.train)
    assert load_corpus(folder).vocab == fresh.vocab  # and the rebuilt cache is sound


def test_changed_file_gets_a_new_cache_key(tmp_path, cache_dir):
    folder = write_corpus(tmp_path / "c", "p q\n", "q\n", "p\n")
    assert load_corpus(folder).vocab == ["p", "q", "<eos>"]
    (folder / "train.txt").write_text("q p r\n", encoding="utf-8")
    assert load_corpus(folder).vocab == ["q", "p", "r", "<eos>"]
    assert len(list(cache_dir.iterdir())) == 2


def test_unwritable_cache_folder_only_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("AWD_CACHE_DIR", str(blocker / "cache"))
    folder = write_corpus(tmp_path / "c", "p q\n", "q\n", "p\n")
    with pytest.warns(UserWarning, match="cannot write the corpus cache"):
        assert load_corpus(folder).vocab == ["p", "q", "<eos>"]


# --- registered datasets: checked against the registry ----------------------------------------


@pytest.fixture
def registered(tmp_path, monkeypatch, cache_dir):
    """A tiny dataset 'tiny' in the registry, with its files under a private data root."""
    root = tmp_path / "data"
    folder = write_corpus(root / "tiny", "p q\n", "q\n", "p\n")
    spec = DatasetSpec(name="tiny", url="http://example.invalid/tiny.tgz",
                       members={s: f"{s}.txt" for s in SPLITS},
                       sha256={s: sha256_file(folder / f"{s}.txt") for s in SPLITS})
    monkeypatch.setitem(registry.DATASETS, "tiny", spec)
    monkeypatch.setenv("AWD_DATA_DIR", str(root))
    return folder


def test_registered_dataset_loads_when_its_checksums_match(registered):
    assert load_corpus("tiny").vocab == ["p", "q", "<eos>"]
    assert load_corpus(registered).vocab == ["p", "q", "<eos>"]  # its folder, by path


@pytest.mark.parametrize("use_cache", [True, False])
def test_edited_file_of_a_registered_dataset_is_a_one_line_data_error(registered, use_cache):
    load_corpus("tiny")  # cached while it was intact
    (registered / "valid.txt").write_text("q p\n", encoding="utf-8")
    for data in ("tiny", registered):
        with pytest.raises(DataError, match="does not match the tiny registry checksum") as info:
            load_corpus(data, use_cache=use_cache)
        message = str(info.value)
        assert "\n" not in message
        assert str(registered / "valid.txt") in message
        assert "python -m awd.data fetch tiny --force" in message


def test_real_ptb_matches_the_registry(ptb_dir, monkeypatch, cache_dir):
    monkeypatch.setenv("AWD_DATA_DIR", str(ptb_dir.parent))
    assert load_corpus("ptb").ntokens == 10000


# --- errors ----------------------------------------------------------------------------------


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(tmp_path / "nowhere")


@pytest.mark.parametrize("missing", ["train", "valid", "test"])
def test_missing_split_is_a_data_error_naming_the_split(tmp_path, missing):
    folder = write_corpus(tmp_path / "c", "a b\n", "a\n", "b\n")
    (folder / f"{missing}.txt").unlink()
    with pytest.raises(DataError, match=f"no {missing} split"):
        load_corpus(folder)


@pytest.mark.parametrize("empty", ["train", "valid", "test"])
def test_empty_split_is_a_data_error(tmp_path, empty):
    texts = {"train": "a b\n", "valid": "a\n", "test": "b\n"}
    texts[empty] = "\n\n" if empty == "train" else ""
    folder = write_corpus(tmp_path / "c", texts["train"], texts["valid"], texts["test"])
    with pytest.raises(DataError, match="empty"):
        load_corpus(folder)


def test_valid_word_missing_from_training_vocabulary_is_a_data_error(tmp_path):
    folder = write_corpus(tmp_path / "c", "a b\n", "a zebra\n", "b\n")
    with pytest.raises(DataError, match="zebra") as info:
        load_corpus(folder)
    assert "not in the training vocabulary" in str(info.value)


@pytest.mark.parametrize("content", [b"\x00" * 64, b"a b\n\x00\x00\n", bytes(range(256)) * 4,
                                     b"a\x07b\n", b"\x1f\x8b\x08\x00gzip"])
@pytest.mark.parametrize("split", ["train", "valid"])
def test_binary_or_nul_file_is_a_one_line_data_error(tmp_path, content, split):
    folder = write_corpus(tmp_path / "c", "a b\n", "a\n", "b\n")
    (folder / f"{split}.txt").write_bytes(content)
    with pytest.raises(DataError, match=rf"{split}\.txt (holds a control character .*: a "
                       r"binary or corrupt file, not text|is not UTF-8 text)") as info:
        load_corpus(folder)
    assert "\n" not in str(info.value) and f"{split}.txt" in str(info.value)


def test_non_utf8_file_is_a_data_error(tmp_path):
    folder = write_corpus(tmp_path / "c", "a b\n", "a\n", "b\n")
    (folder / "train.txt").write_bytes(b"a \xff\xfe b\n")
    with pytest.raises(DataError, match="UTF-8"):
        load_corpus(folder, use_cache=False)


# --- batching --------------------------------------------------------------------------------


def test_batchify_lays_out_contiguous_streams_as_columns():
    ids = torch.arange(103)
    data = batchify(ids, 4)
    assert data.shape == (25, 4)
    for b in range(4):
        assert torch.equal(data[:, b], torch.arange(25 * b, 25 * (b + 1)))


def test_draw_seq_len_is_mostly_bptt_and_sometimes_half():
    rng = np.random.default_rng(0)
    draws = np.array([draw_seq_len(rng, 70) for _ in range(20_000)])
    near_full = draws >= 53  # halfway between 35 and 70, > 3 sigma from both
    assert near_full.mean() == pytest.approx(0.95, abs=0.01)
    assert (~near_full).mean() == pytest.approx(0.05, abs=0.01)
    assert draws[near_full].mean() == pytest.approx(70, abs=1.0)  # int() truncates: ~69.5
    assert draws[~near_full].mean() == pytest.approx(35, abs=1.5)
    assert draws[near_full].std() == pytest.approx(5, abs=0.3)
    assert draws.min() >= 5


def test_draw_seq_len_respects_minimum_and_cap():
    rng = np.random.default_rng(1)
    small = [draw_seq_len(rng, 8, min_len=5) for _ in range(5_000)]
    assert min(small) == 5  # N(4 or 8, 5) goes below 5 often: clamped
    capped = [draw_seq_len(rng, 70, max_len=80) for _ in range(5_000)]
    assert max(capped) == 80
    assert min(capped) >= 5


def test_variable_windows_scale_lr_by_length_and_cover_data_once():
    source = batchify(torch.arange(2_000), 2)  # (1000, 2)
    rng = np.random.default_rng(3)
    seen_inputs, seen_targets, expected_start = [], [], 0
    for start, w in train_windows(source, 30, rng):
        assert start == expected_start
        assert w.lr_scale == w.seq_len / 30
        assert w.inputs.shape == w.targets.shape == (w.seq_len, 2)
        assert torch.equal(w.targets, source[start + 1 : start + 1 + w.seq_len])
        assert torch.equal(w.inputs[1:], w.targets[:-1])
        seen_inputs.append(w.inputs)
        seen_targets.append(w.targets)
        expected_start += w.seq_len
    assert torch.equal(torch.cat(seen_inputs), source[:-1])
    assert torch.equal(torch.cat(seen_targets), source[1:])
    lengths = {t.size(0) for t in seen_inputs[:-1]}
    assert len(lengths) > 3  # really variable


def test_eval_windows_have_fixed_length_and_cover_data_once():
    source = batchify(torch.arange(1_000), 5)  # (200, 5)
    windows = list(eval_windows(source, 35))
    assert [w.seq_len for w in windows] == [35] * 5 + [199 - 175]
    assert torch.equal(torch.cat([w.inputs for w in windows]), source[:-1])
    assert torch.equal(torch.cat([w.targets for w in windows]), source[1:])
    assert all(w.lr_scale == w.seq_len / 35 for w in windows)
