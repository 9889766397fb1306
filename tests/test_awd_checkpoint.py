"""Checkpoints: written atomically, read with ``weights_only``, refused in one line when bad.

A refused file leaves the trainer as it was (a search trial then starts afresh), and nothing
in a crafted file runs.
"""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from conftest import pattern_text, write_corpus

import awd.files
import awd.train
from awd.data import load_corpus
from awd.errors import CheckpointError
from awd.trainer import Trainer, load_exported

TINY = {"model": "awd_lstm", "emsize": 8, "nhid": 8, "nlayers": 2, "batch_size": 4,
        "eval_batch_size": 2, "bptt": 8, "device": "cpu", "seed": 5, "epochs": 3}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt_corpus")
    return load_corpus(write_corpus(folder, pattern_text(6), pattern_text(1), pattern_text(1)),
                       use_cache=False)


@pytest.fixture(scope="module")
def saved(corpus, tmp_path_factory):
    """A trainer after one epoch, and its checkpoint."""
    trainer = Trainer(TINY, corpus)
    trainer.step_epoch()
    path = tmp_path_factory.mktemp("ckpt") / "trainer.pt"
    trainer.save(path)
    return trainer, path


def snapshot(trainer: Trainer) -> dict:
    return {"weights": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "epoch": trainer.epoch, "history": list(trainer.history),
            "window": trainer.window_rng.bit_generator.state}


def assert_unchanged(trainer: Trainer, before: dict) -> None:
    after = snapshot(trainer)
    assert after["epoch"] == before["epoch"] and after["history"] == before["history"]
    assert after["window"] == before["window"]
    for k, v in before["weights"].items():
        assert torch.equal(after["weights"][k], v), k


def assert_one_line(error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value)
    assert message and "\n" not in message, message
    for word in words:
        assert word in message, message


class Marker:
    """A pickle that, if loaded unsafely, writes a marker file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_the_crafted_file_would_run_code_if_loaded_unsafely(tmp_path):
    """The marker test below means something: an unsafe load does write the marker."""
    torch.save(Marker(str(tmp_path / "MARKER")), tmp_path / "crafted.pt")
    torch.load(tmp_path / "crafted.pt", weights_only=False).close()
    assert (tmp_path / "MARKER").exists()


def bad_files(tmp_path, good: bytes) -> dict:
    """Every kind of file a crash, a disk error, an old version or an attacker could leave."""
    files = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "flipped_bytes": good[:200] + bytes(b ^ 0xFF for b in good[200:400]) + good[400:],
        "text": b"not a checkpoint\n",
        "plain_pickle": pickle.dumps({"epoch": 1}),
    }
    out = {}
    for name, data in files.items():
        (tmp_path / f"{name}.pt").write_bytes(data)
        out[name] = tmp_path / f"{name}.pt"
    torch.save(Marker(str(tmp_path / "MARKER")), tmp_path / "crafted.pt")
    out["crafted"] = tmp_path / "crafted.pt"
    old = {"config": {}, "rng": {"numpy": np.random.get_state()}}  # pre-weights_only content
    torch.save(old, tmp_path / "old.pt")
    out["old_format"] = tmp_path / "old.pt"
    torch.save({"format": "awdsearch.trainer/2", "config": "x"}, tmp_path / "wrong_types.pt")
    out["wrong_types"] = tmp_path / "wrong_types.pt"
    torch.save([1, 2], tmp_path / "list.pt")
    out["not_a_dict"] = tmp_path / "list.pt"
    return out


# --- safe, atomic writing ----------------------------------------------------------------------


def test_checkpoint_is_plain_data_that_weights_only_reads(saved):
    _, path = saved
    state = torch.load(path, weights_only=True)
    assert state["format"] == "awdsearch.trainer/2" and state["epoch"] == 1
    assert isinstance(state["history"][0], dict) and isinstance(state["config"], dict)


def test_resume_restores_every_random_stream(saved, corpus):
    trainer, path = saved
    rng_state = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    other = Trainer(TINY, corpus)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    other.load(path)
    assert other.window_rng.bit_generator.state == trainer.window_rng.bit_generator.state
    assert other.history == trainer.history and other.epoch == 1
    torch.set_rng_state(rng_state[0]), np.random.set_state(rng_state[1])
    random.setstate(rng_state[2])


def test_failed_write_leaves_the_previous_checkpoint_and_no_temp_file(saved, tmp_path,
                                                                      monkeypatch):
    trainer, _ = saved
    path = tmp_path / "trainer.pt"
    trainer.save(path)
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)  # what awd.files.atomic_torch_save calls
    with pytest.raises(CheckpointError, match=r"^cannot write .*: No space left") as info:
        trainer.save(path)
    assert_one_line(info, "No space left")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["trainer.pt"]


def test_save_into_a_missing_folder_is_a_checkpoint_error(saved, tmp_path):
    trainer, _ = saved
    with pytest.raises(CheckpointError, match=r"^cannot write .*nowhere") as info:
        trainer.save(tmp_path / "nowhere" / "t.pt")
    assert_one_line(info, "nowhere")
    with pytest.raises(CheckpointError, match=r"^cannot write .*nowhere") as info:
        trainer.export_best(tmp_path / "nowhere" / "m.pt")
    assert_one_line(info, str(tmp_path / "nowhere" / "m.pt"))


# --- safe, checked reading ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["empty", "truncated", "flipped_bytes", "text", "plain_pickle",
                                  "crafted", "old_format", "wrong_types", "not_a_dict"])
def test_bad_checkpoint_is_refused_in_one_line_and_the_trainer_is_untouched(
        kind, saved, corpus, tmp_path):
    _, good = saved
    path = bad_files(tmp_path, good.read_bytes())[kind]
    trainer = Trainer(TINY, corpus)
    before = snapshot(trainer)
    with pytest.raises(CheckpointError, match=r"^cannot resume from ") as info:
        trainer.load(path)
    assert_one_line(info, "cannot resume from", str(path))
    assert_unchanged(trainer, before)
    assert not (tmp_path / "MARKER").exists()
    with pytest.raises(CheckpointError, match=r"^cannot export ") as info:
        Trainer.export_checkpoint(path, tmp_path / "out.pt")
    assert_one_line(info, "cannot export")
    assert not (tmp_path / "out.pt").exists()
    with pytest.raises(CheckpointError, match="is not a model exported by awdsearch: ") as info:
        load_exported(path)
    assert_one_line(info, str(path))
    assert not (tmp_path / "MARKER").exists()


def test_old_and_crafted_files_are_named_as_not_of_this_version(saved, corpus, tmp_path):
    files = bad_files(tmp_path, saved[1].read_bytes())
    trainer = Trainer(TINY, corpus)
    for kind in ("old_format", "crafted", "not_a_dict"):
        with pytest.raises(CheckpointError, match="older version"):
            trainer.load(files[kind])


@pytest.mark.parametrize("part", ["model", "dtype", "best_state", "rng", "ntasgd", "optimizer",
                                  "history", "epoch", "vocab", "finetune_history"])
def test_checkpoint_with_one_malformed_part_is_refused_before_anything_is_applied(
        part, saved, corpus, tmp_path):
    _, good = saved
    state = torch.load(good, weights_only=True)
    broken = {
        "model": {k: v[:1] for k, v in state["model"].items()},
        "best_state": {"encoder.weight": torch.zeros(1)},
        "rng": {**state["rng"], "numpy": {"kind": "MT19937", "key": torch.zeros(3)}},
        "ntasgd": {**state["ntasgd"], "average": [torch.zeros(1)]},
        "optimizer": {**state["ntasgd"], "optimizer": {
            **state["ntasgd"]["optimizer"], "param_groups": [
                {**g, "weight_decay": "x"} for g in state["ntasgd"]["optimizer"]["param_groups"]]}},
        "dtype": {k: v.double() for k, v in state["model"].items()},
        "history": [{"epoch": 1}],
        "epoch": -3,
        "vocab": ["other"],
        "finetune_history": "x",
    }[part]
    path = tmp_path / "broken.pt"
    key = {"optimizer": "ntasgd", "dtype": "model"}.get(part, part)
    torch.save({**state, key: broken}, path)
    trainer = Trainer(TINY, corpus)
    before = snapshot(trainer)
    with pytest.raises(CheckpointError, match=r"^cannot resume from .*: the checkpoint") as info:
        trainer.load(path)
    assert_one_line(info, "cannot resume from")
    assert_unchanged(trainer, before)


# --- the command line ------------------------------------------------------------------------


@pytest.fixture
def tiny_dir(tmp_path):
    return write_corpus(tmp_path / "tiny", pattern_text(6), pattern_text(1), pattern_text(1))


def _flags(data) -> list[str]:
    return ["--model", "awd_lstm", "--data", str(data), "--emsize", "8", "--nhid", "8",
            "--nlayers", "1", "--batch-size", "4", "--eval-batch-size", "2", "--bptt", "8",
            "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("kind", ["empty", "truncated", "crafted", "old_format", "plain_pickle"])
def test_awd_train_resume_from_a_bad_file_is_one_error_line(kind, saved, tiny_dir, tmp_path,
                                                           capsys):
    path = bad_files(tmp_path, saved[1].read_bytes())[kind]
    capsys.readouterr()
    assert awd.train.main([*_flags(tiny_dir), "--epochs", "1", "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume from") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not (tmp_path / "MARKER").exists()


def test_awd_train_save_keeps_a_valid_checkpoint_after_every_epoch(tiny_dir, tmp_path, capsys,
                                                                   monkeypatch):
    path = tmp_path / "run.pt"
    epochs_seen = []
    real_save = Trainer.save

    def save_and_check(self, target):
        real_save(self, target)
        epochs_seen.append(torch.load(target, weights_only=True)["epoch"])
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    monkeypatch.setattr(Trainer, "save", save_and_check)
    assert awd.train.main([*_flags(tiny_dir), "--epochs", "2", "--save", str(path)]) == 0
    assert epochs_seen == [1, 2]
