"""A full disk is an honest stop (issue 22): the folders a search writes to, the free space
each must keep, the refusal before anything starts, and the watch that stops a running search
as Ctrl-C does. The stop of a real search on a small tmpfs is in tests/test_disk_full.py."""

from __future__ import annotations

import errno
import signal
import time
from pathlib import Path

import pytest
from conftest import DATA_DIR

from search import diskspace
from search.diskspace import MB, DiskWatch, Folder, NoSpaceError, check, folders, shortage
from search.errors import SearchError
from search.run import EXIT_NO_SPACE, main


def test_one_file_system_is_one_folder_whose_needs_add_up(tmp_path, monkeypatch):
    monkeypatch.setenv("AWDSEARCH_MIN_FREE_MB", "10")
    got = folders(str(tmp_path / "rr" / "exp"), f"sqlite:///{tmp_path / 'mlflow.db'}",
                  tmp_path / "rr" / "exp", params=1_000_000, concurrency=2)
    assert len(got) == 1  # storage, store and spool on one file system
    model = 1_000_000 * diskspace.BYTES_PER_PARAM
    assert got[0].what == "the search's storage"
    assert got[0].need == 10 * MB + 2 * model + model


def test_folders_at_a_uri_are_not_watched_here(tmp_path, monkeypatch):
    monkeypatch.setenv("AWDSEARCH_MIN_FREE_MB", "10")
    got = folders("s3://bucket/exp", "http://127.0.0.1:5000", tmp_path / "cache", params=None,
                  concurrency=4)
    assert [(f.what, f.path, f.need) for f in got] == [
        ("the spool's folder", tmp_path / "cache", 10 * MB)]


@pytest.mark.parametrize("raw, message", [("abc", "not a number"), ("-1", "between 0"),
                                          ("1e40", "between 0")])
def test_a_bad_minimum_is_a_one_line_error(tmp_path, monkeypatch, raw, message):
    monkeypatch.setenv("AWDSEARCH_MIN_FREE_MB", raw)
    with pytest.raises(SearchError, match=message):
        folders(str(tmp_path), "sqlite:///x.db", tmp_path, None, 1)


def test_a_short_folder_is_named_with_what_it_has_and_needs(tmp_path):
    roomy = Folder("the MLflow store's folder", tmp_path, 0)
    short = Folder("the search's storage", tmp_path / "not" / "yet", 1 << 60)
    assert shortage([roomy]) is None
    with pytest.raises(NoSpaceError, match=r"the search's storage .*/not/yet has \d+ MB free, "
                                           r"it needs at least \d+ MB there"):
        check([roomy, short])


def test_the_watch_stops_the_search_as_ctrl_c_does_and_says_why(tmp_path):
    caught: list[int] = []

    def tunes(signum, frame):  # Tune's handler: installed once the watch runs
        caught.append(signum)

    short = [Folder("the search's storage", tmp_path, 1 << 60)]
    before = signal.getsignal(signal.SIGINT)
    try:
        idle = DiskWatch(short, every=0.05)  # Tune not catching SIGINT: nothing is sent
        with idle.watching():
            time.sleep(0.3)
        assert idle.reason is None
        roomy = DiskWatch([Folder("the search's storage", tmp_path, 0)], every=0.05)
        signal.signal(signal.SIGINT, tunes)
        with roomy.watching():
            time.sleep(0.3)
        assert caught == [] and roomy.reason is None  # enough space: nothing happens
        signal.signal(signal.SIGINT, before)
        watch = DiskWatch(short, every=0.05)
        signal.signal(signal.SIGINT, tunes)
        with watch.watching():
            deadline = time.time() + 10
            while not caught and time.time() < deadline:
                time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, before)
    assert caught == [signal.SIGINT]
    assert watch.reason is not None and str(tmp_path) in watch.reason
    assert "no space left for the search: the search's storage" in watch.reason


def test_a_search_without_room_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWD_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("AWDSEARCH_MIN_FREE_MB", str(1 << 29))
    code = main(["--space", "smoke", "--storage", "rr"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_NO_SPACE, err
    assert err.startswith("error: no space left for the search: the search's storage "
                          f"{tmp_path / 'rr' / 'smoke'} has")
    assert len(err.splitlines()) == 1
    assert list(Path(tmp_path).iterdir()) == []  # no store, no folder, no Ray


class _Trainer:
    """What `_report_with_checkpoint` asks of a trainer: to save itself."""

    def save(self, path: Path) -> None:
        path.write_bytes(b"weights")


def test_a_checkpoint_that_finds_the_disk_full_waits_for_space(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the trial's folder: its trial.log
    from search.tune import trainable

    calls: list[dict] = []

    def report(result, checkpoint):
        calls.append(result)
        if len(calls) < 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainable.tune, "report", report)
    monkeypatch.setattr(trainable, "DISK_FULL_RETRY_S", 0.01)
    trainable._report_with_checkpoint({"epoch": 1}, _Trainer())
    assert calls == [{"epoch": 1}] * 3  # tried again until there was room: reported once
    assert (tmp_path / "trial.log").read_text().count("the disk is full") == 1  # said once

    def full(result, checkpoint):
        calls.append(result)
        raise OSError(errno.ENOSPC, "No space left on device")

    calls.clear()
    monkeypatch.setattr(trainable.tune, "report", full)
    with pytest.raises(OSError, match="No space"):  # not forever
        trainable._report_with_checkpoint({"epoch": 2}, _Trainer(), wait_s=0.05)
    assert len(calls) >= 2

    def broken(result, checkpoint):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(trainable.tune, "report", broken)
    with pytest.raises(OSError, match="Permission denied"):  # other errors are not waited out
        trainable._report_with_checkpoint({"epoch": 3}, _Trainer())


def test_a_checkpoint_file_that_cannot_be_written_for_space_waits_too(monkeypatch, tmp_path):
    """The trainer's own save turns ENOSPC into a CheckpointError (`awd.checkpoint.write`):
    still a full disk, waited out, not a failed trial; another cause is raised at once."""
    monkeypatch.chdir(tmp_path)  # the trial's folder: its trial.log
    from awd import checkpoint
    from awd.errors import CheckpointError
    from search.tune import trainable

    failures = [errno.ENOSPC]

    def save(state, to):
        if failures:
            raise OSError(failures.pop(), "No space left on device")
        Path(to).write_bytes(b"weights")

    class Saving(_Trainer):
        def save(self, path: Path) -> None:
            checkpoint.write({"x": 1}, path)

    reported: list[dict] = []
    monkeypatch.setattr(checkpoint, "atomic_torch_save", save)
    monkeypatch.setattr(trainable, "DISK_FULL_RETRY_S", 0.01)
    monkeypatch.setattr(trainable.tune, "report",
                        lambda result, checkpoint: reported.append(result))
    trainable._report_with_checkpoint({"epoch": 1}, Saving())
    assert reported == [{"epoch": 1}] and failures == []
    failures.append(errno.EACCES)
    save_error = OSError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(checkpoint, "atomic_torch_save",
                        lambda state, to: (_ for _ in ()).throw(save_error))
    with pytest.raises(CheckpointError, match="Permission denied"):
        trainable._report_with_checkpoint({"epoch": 2}, Saving())
