"""The experiment folder as a trust boundary (issue 22, `search.trust`): Tune's state files are
signed with a key that does not live in the storage and verified before Tune reads them.
Signing and verifying a folder of state files: a changed, a new, a truncated, a missing file;
changed signatures; an unsigned folder; the key file. On real searches (a crafted ``tuner.pkl``
or searcher state runs nothing): tests/test_damaged_state.py, which shares its smoke search."""

from __future__ import annotations

import json
import pickle
import stat
from pathlib import Path

import pytest

from search.errors import SearchError
from search.trust import REFUSED, SIGNATURES, SIGNED, key_path, main, sign, state_key, verify

KEY = b"k" * 32
STATE = {"tuner.pkl": pickle.dumps({"tuner": 1}),
         "experiment_state-2026-01-01_00-00-00.json": b'{"trial_data": []}',
         "searcher-state-2026-01-01_00-00-00.pkl": pickle.dumps({"study": "s"}),
         "search_gen_state-2026-01-01_00-00-00.json": pickle.dumps({"gen": 1}),
         "basic-variant-state-2026-01-01_00-00-00.json": b"{}"}


def signed(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, data in STATE.items():
        (folder / name).write_bytes(data)
    (folder / "awdsearch.json").write_text("{}")  # plain data: not a state file
    assert sorted(sign(str(folder), KEY)) == sorted(STATE)
    return folder


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_signed_folder_verifies_unchanged(tmp_path):
    folder = signed(tmp_path / "exp")
    assert verify(str(folder), KEY) == []
    assert sign(str(folder), KEY) == []  # nothing changed: nothing signed anew
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == {
        **STATE, "awdsearch.json": b"{}"}


@pytest.mark.parametrize("name", sorted(STATE))
@pytest.mark.parametrize("damage", ["crafted", "truncated", "empty"])
def test_a_changed_file_is_put_aside_and_its_signed_copy_used(tmp_path, name, damage):
    folder = signed(tmp_path / "exp")
    bad = {"crafted": pickle.dumps(Evil(tmp_path / "ran")), "empty": b"",
           "truncated": STATE[name][: len(STATE[name]) // 2]}[damage]
    (folder / name).write_bytes(bad)
    (note,) = verify(str(folder), KEY)
    assert note.startswith(f"{name}: its signature does not match") and "put aside" in note
    assert (folder / name).read_bytes() == STATE[name]
    (aside,) = (folder / REFUSED).iterdir()
    assert aside.name.startswith(name) and aside.read_bytes() == bad
    assert not (tmp_path / "ran").exists()


def test_a_folder_at_a_uri_is_signed_and_verified_through_pyarrow(tmp_path):
    """The object-store path (``s3://``...), here through pyarrow's ``file://`` filesystem."""
    folder = signed(tmp_path / "exp")
    uri = f"file://{folder}"
    assert verify(uri, KEY) == [] and sign(uri, KEY) == []
    (folder / "tuner.pkl").write_bytes(b"changed")
    (note,) = verify(uri, KEY)
    assert note.startswith("tuner.pkl: its signature does not match")
    assert (folder / "tuner.pkl").read_bytes() == STATE["tuner.pkl"]


def test_a_new_unsigned_state_file_is_never_used(tmp_path):
    """Tune restores from the newest state: one an attacker adds must not be it."""
    folder = signed(tmp_path / "exp")
    newer = folder / "searcher-state-2030-01-01_00-00-00.pkl"
    newer.write_bytes(pickle.dumps(Evil(tmp_path / "ran")))
    (note,) = verify(str(folder), KEY)
    assert note.startswith(f"{newer.name}: never signed") and note.endswith("not used")
    assert not newer.exists() and not (tmp_path / "ran").exists()


def test_a_missing_file_comes_back_from_its_signed_copy(tmp_path):
    folder = signed(tmp_path / "exp")
    (folder / "tuner.pkl").unlink()
    assert verify(str(folder), KEY) == ["tuner.pkl: missing; its last signed version is used"]
    assert (folder / "tuner.pkl").read_bytes() == STATE["tuner.pkl"]


def test_no_copy_that_verifies_refuses_and_changes_nothing(tmp_path):
    folder = signed(tmp_path / "exp")
    (folder / "tuner.pkl").write_bytes(b"x")
    (copy,) = (folder / SIGNED).glob("tuner.pkl.*")
    copy.write_bytes(b"y")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(SearchError, match=r"tuner.pkl: its signature does not match .* no signed "
                                          r"copy of it verifies; nothing was read or changed"):
        verify(str(folder), KEY)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert (folder / "tuner.pkl").read_bytes() == b"x"


def test_changed_signatures_or_another_key_are_refused(tmp_path):
    folder = signed(tmp_path / "exp")
    with pytest.raises(SearchError, match="does not verify: the search's state was changed"):
        verify(str(folder), b"another key")
    sigs = folder / SIGNED / SIGNATURES
    saved = json.loads(sigs.read_text())
    saved["files"]["tuner.pkl"] = "0" * 64  # an attacker re-points a signature
    sigs.write_text(json.dumps(saved))
    with pytest.raises(SearchError, match="does not verify"):
        verify(str(folder), KEY)


def test_an_unsigned_folder_is_refused_with_the_command_that_signs_it(tmp_path, capsys):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(STATE["tuner.pkl"])
    with pytest.raises(SearchError, match=r"is not signed .* python -m search.trust sign "):
        verify(str(folder), KEY)
    assert main(["check", str(folder)]) == 1
    assert main(["sign", str(folder)]) == 0 and "signed 1 state file" in capsys.readouterr().out
    assert main(["check", str(folder)]) == 0 and verify(str(folder)) == []


def test_the_key_file_is_made_private_and_refused_when_others_may_read_it(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("AWDSEARCH_STATE_KEY", raising=False)
    first = state_key()
    path = key_path()
    assert path == tmp_path / "cfg" / "awdsearch" / "state.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) == 64
    assert state_key() == first  # the same key next time
    path.chmod(0o644)
    with pytest.raises(SearchError, match=r"can be read by others .* chmod 600"):
        state_key()
    monkeypatch.setenv("AWDSEARCH_STATE_KEY", "cluster-secret-0123456789")  # the env's wins
    assert state_key() == b"cluster-secret-0123456789"
    monkeypatch.setenv("AWDSEARCH_STATE_KEY", "short")
    with pytest.raises(SearchError, match="shorter than 16 bytes"):
        state_key()
    monkeypatch.delenv("AWDSEARCH_STATE_KEY")
    path.chmod(0o600)
    path.write_text("")  # a key file cut short (a kill as it was made): never an empty key
    with pytest.raises(SearchError, match="too short"):
        state_key()


def test_signing_never_blesses_a_folder_whose_signatures_fail(tmp_path):
    folder = signed(tmp_path / "exp")
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Evil(tmp_path / "ran")))
    (folder / SIGNED / SIGNATURES).write_text("garbled")
    with pytest.raises(SearchError, match="does not verify"):
        sign(str(folder), KEY)
    assert sign(str(folder), KEY, reset=True)  # `python -m search.trust sign`: the user vouches


def test_a_kill_while_signing_leaves_a_copy_that_verifies(tmp_path):
    """The new copy is written beside the old one, the signatures after: a kill in between
    leaves the old signature and its own copy."""
    folder = signed(tmp_path / "exp")
    (old,) = (folder / SIGNED).glob("tuner.pkl.*")
    (folder / SIGNED / "tuner.pkl.0123456789abcdef").write_bytes(b"a newer copy")
    (folder / "tuner.pkl").write_bytes(b"newer, its signature never written")
    (note,) = verify(str(folder), KEY)
    assert "its last signed version is used" in note
    assert (folder / "tuner.pkl").read_bytes() == old.read_bytes() == STATE["tuner.pkl"]


def test_callback_state_and_trial_errors_are_covered(tmp_path):
    folder = signed(tmp_path / "exp")
    (folder / "trial_1").mkdir()
    (folder / "trial_1" / "error.pkl").write_bytes(pickle.dumps(RuntimeError("x")))
    assert sign(str(folder), KEY) == ["trial_1/error.pkl"]
    (folder / "trial_1" / "error.pkl").write_bytes(pickle.dumps(Evil(tmp_path / "ran")))
    (folder / "callback-states-2026-01-01_00-00-00.pkl").write_bytes(pickle.dumps(1))
    notes = verify(str(folder), KEY)
    assert any(n.startswith("callback-states-") and n.endswith("not used") for n in notes)
    assert any(n.startswith("trial_1/error.pkl: its signature does not match") for n in notes)
    assert pickle.loads((folder / "trial_1" / "error.pkl").read_bytes()).args == ("x",)
    assert not (tmp_path / "ran").exists()


def test_the_signer_signs_tunes_staging_copy_and_nothing_planted(tmp_path):
    """Tune saves its state into a staging folder of the driver's own and uploads it: the
    signer signs the staged content (before it lands), tuner.pkl once, and nothing else that
    appears in the shared folder."""
    from search.tune.signing import _STAGING, StateSigner

    folder, staging = tmp_path / "exp", tmp_path / "staging"
    folder.mkdir()
    staging.mkdir()
    state = "experiment_state-2026-01-01_00-00-00.json"
    (staging / state).write_text('{"saved": 1}')  # saved by Tune, not uploaded yet
    (staging / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(pickle.dumps({"s": 1}))
    (folder / "tuner.pkl").write_bytes(b"tuner")
    signer = StateSigner(str(folder))
    _STAGING[str(folder)] = str(staging)
    try:
        signer.sign_changed()
        files = set(json.loads((folder / SIGNED / SIGNATURES).read_text())["files"])
        assert files == {"tuner.pkl", state, "searcher-state-2026-01-01_00-00-00.pkl"}
        (folder / state).write_text('{"saved": 1}')  # the upload lands: it verifies
        assert verify(str(folder)) == ["searcher-state-2026-01-01_00-00-00.pkl: missing; its "
                                       "last signed version is used"]
        (folder / "tuner.pkl").write_bytes(b"replaced during the run")  # Tune writes it once
        (folder / "experiment_state-2099-01-01_00-00-00.json").write_text("{}")  # planted
        (folder / "trial_1").mkdir()
        (folder / "trial_1" / "error.pkl").write_bytes(pickle.dumps(RuntimeError("x")))
        signer.sign_changed()
        files = json.loads((folder / SIGNED / SIGNATURES).read_text())["files"]
        assert set(files) == {"tuner.pkl", state, "searcher-state-2026-01-01_00-00-00.pkl",
                              "trial_1/error.pkl"}  # a failed trial's error: this session's
        notes = verify(str(folder))
        assert any(n.startswith("tuner.pkl: its signature does not match") for n in notes)
        assert any(n.startswith("experiment_state-2099") and n.endswith("not used")
                   for n in notes)
        assert (folder / "tuner.pkl").read_bytes() == b"tuner"
    finally:
        _STAGING.pop(str(folder), None)


@pytest.mark.parametrize("action", ["sign", "check"])
def test_a_folder_without_a_search_is_refused_in_one_line_and_left_alone(tmp_path, capsys,
                                                                          action):
    """A typo'd or empty folder is not "signed 0 files" (nor made): nothing there to vouch for."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "missing"):
        assert main([action, str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {folder} holds no saved search")
    assert list(empty.iterdir()) == [] and not (tmp_path / "missing").exists()
