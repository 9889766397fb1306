"""Corpora (real counts, tokenisation, file names, cache, errors) and batching/BPTT windows."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch
from conftest import write_corpus

from awd.data import batchify, draw_seq_len, eval_windows, load_corpus, train_windows
from awd.data.corpus import content_key, find_split_files
from awd.errors import DataError

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
def ptb_copy(ptb_dir, tmp_path):
    folder = tmp_path / "ptb"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copyfile(ptb_dir / f"{split}.txt", folder / f"{split}.txt")
    return folder


def _cache_file(folder):
    return folder / ".awd_cache" / f"{content_key(find_split_files(folder))}.pt"


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


def test_cache_is_really_read_on_the_second_load(tmp_path):
    folder = write_corpus(tmp_path / "c", "p q\n", "q\n", "p\n")
    load_corpus(folder)
    cache = _cache_file(folder)
    blob = torch.load(cache, weights_only=True)
    blob["vocab"] = ["P", "Q", "<eos>"]  # a marker only the cache can provide
    torch.save(blob, cache)
    assert load_corpus(folder).vocab == ["P", "Q", "<eos>"]
    assert load_corpus(folder, use_cache=False).vocab == ["p", "q", "<eos>"]


def test_corrupt_cache_file_is_rebuilt(ptb_copy):
    first = load_corpus(ptb_copy)
    cache = _cache_file(ptb_copy)
    cache.write_bytes(b"this is not a torch file")
    again = load_corpus(ptb_copy)
    assert again.vocab == first.vocab
    assert torch.equal(again.train, first.train)
    assert torch.load(cache, weights_only=True)["vocab"] == first.vocab  # rewritten


def test_changed_file_gets_a_new_cache_key(tmp_path):
    folder = write_corpus(tmp_path / "c", "p q\n", "q\n", "p\n")
    assert load_corpus(folder).vocab == ["p", "q", "<eos>"]
    (folder / "train.txt").write_text("q p r\n", encoding="utf-8")
    assert load_corpus(folder).vocab == ["q", "p", "r", "<eos>"]


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
