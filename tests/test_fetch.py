"""Dataset download/import: verified, atomic, and clear about failures (no internet needed).

Archives of a tiny fake corpus are served by a real ``http.server`` on 127.0.0.1; the registry
entry for it is injected through the ``spec=`` parameter of the API.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from awd.data.__main__ import main
from awd.data.corpus import load_corpus
from awd.data.fetch import fetch, import_local, sha256_file, verify
from awd.data.registry import SPLITS, DatasetSpec, dataset_spec
from awd.errors import DataError

REPO = Path(__file__).resolve().parents[1]
TEXTS = {
    "train": " the cat sat on the mat \n a dog ran in the park \n the dog sat \n",
    "valid": " the cat ran \n",
    "test": " a dog sat on the mat \n",
}
MEMBERS = {s: f"fake-corpus/data/fake.{s}.txt" for s in SPLITS}
SPEC = DatasetSpec(
    name="fake",
    url="http://127.0.0.1:1/unused.tgz",
    members=MEMBERS,
    sha256={s: hashlib.sha256(t.encode()).hexdigest() for s, t in TEXTS.items()},
)


def make_tgz(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """A gzip'd tar holding ``members`` (name -> bytes) and symlinks (name -> target)."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def corpus_members(skip: str | None = None) -> dict[str, bytes]:
    """The fake corpus laid out as in the real archives, plus unrelated files around it."""
    members = {MEMBERS[s]: TEXTS[s].encode() for s in SPLITS if s != skip}
    members["fake-corpus/README"] = b"not a split\n"
    return members


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Path, str]]:
    """(folder, base URL): a real HTTP server on an ephemeral port, serving the folder."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def dest(tmp_path) -> Path:
    """Target folder inside an otherwise empty parent, so leftovers are easy to spot."""
    return tmp_path / "cache" / "fake"


def dead_url() -> str:
    """A URL on a local port with nothing listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/fake.tgz"


def assert_nothing_left(dest: Path) -> None:
    """A failed fetch leaves neither the dataset folder nor staging files beside it."""
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def assert_installed(dest: Path) -> None:
    for split in SPLITS:
        assert (dest / f"{split}.txt").read_text() == TEXTS[split]
        assert sha256_file(dest / f"{split}.txt") == SPEC.sha256[split]
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no staging left


@pytest.mark.parametrize("archive", ["fake.tgz", "fake.zip", "download"])
def test_fetch_happy_path(served, dest, archive):
    root, base = served
    members = corpus_members()
    if archive.endswith(".zip"):
        make_zip(root / archive, members)
    else:  # "download" has no extension: the format is detected by content
        make_tgz(root / archive, members)
    messages: list[str] = []

    path = fetch("fake", url=f"{base}/{archive}", dest=dest, spec=SPEC, log=messages.append)

    assert path == dest
    assert_installed(dest)
    verify("fake", dest, spec=SPEC)
    corpus = load_corpus(dest, use_cache=False)
    assert corpus.ntokens == len(set(TEXTS["train"].split())) + 1
    assert any("downloading" in m for m in messages)


def test_fetch_uses_spec_url_and_skips_when_verified(served, dest):
    root, base = served
    make_tgz(root / "fake.tgz", corpus_members())
    spec = replace(SPEC, url=f"{base}/fake.tgz")
    fetch("fake", dest=dest, spec=spec)
    messages: list[str] = []

    # Already verified: nothing is downloaded, so even a dead mirror is fine.
    assert fetch("fake", url=dead_url(), dest=dest, spec=spec, log=messages.append) == dest
    assert any("already present" in m for m in messages)

    # --force must download; when that fails the verified copy stays intact.
    with pytest.raises(DataError, match="cannot download"):
        fetch("fake", url=dead_url(), dest=dest, force=True, spec=spec)
    assert_installed(dest)


def test_fetch_replaces_a_corrupt_copy(served, dest):
    root, base = served
    make_zip(root / "fake.zip", corpus_members())
    fetch("fake", url=f"{base}/fake.zip", dest=dest, spec=SPEC)
    (dest / "valid.txt").write_text("tampered\n")
    with pytest.raises(DataError, match="valid split"):
        verify("fake", dest, spec=SPEC)

    fetch("fake", url=f"{base}/fake.zip", dest=dest, spec=SPEC)  # not verified: fetched again
    assert_installed(dest)


def test_checksum_mismatch(served, dest):
    root, base = served
    make_tgz(root / "fake.tgz", corpus_members())
    wrong = "0" * 64
    spec = replace(SPEC, sha256={**SPEC.sha256, "valid": wrong})
    with pytest.raises(DataError, match=r"^checksum mismatch for fake valid split ") as info:
        fetch("fake", url=f"{base}/fake.tgz", dest=dest, spec=spec)
    msg = str(info.value)
    assert "valid split" in msg and wrong in msg and SPEC.sha256["valid"] in msg
    assert "\n" not in msg
    assert_nothing_left(dest)


def test_dead_server(dest):
    url = dead_url()
    with pytest.raises(DataError, match="cannot download") as info:
        fetch("fake", url=url, dest=dest, spec=SPEC, timeout=5)
    assert url in str(info.value)
    assert_nothing_left(dest)


def test_http_404(served, dest):
    _, base = served
    url = f"{base}/no-such-file.tgz"
    with pytest.raises(DataError, match="404") as info:
        fetch("fake", url=url, dest=dest, spec=SPEC)
    assert url in str(info.value)
    assert_nothing_left(dest)


@pytest.mark.parametrize("maker", [make_tgz, make_zip])
def test_missing_member(served, dest, maker):
    root, base = served
    name = "fake.tgz" if maker is make_tgz else "fake.zip"
    maker(root / name, corpus_members(skip="test"))
    with pytest.raises(DataError, match="no member") as info:
        fetch("fake", url=f"{base}/{name}", dest=dest, spec=SPEC)
    assert MEMBERS["test"] in str(info.value)
    assert_nothing_left(dest)


def test_not_an_archive(served, dest):
    root, base = served
    (root / "fake.tgz").write_text("<html>moved</html>\n")
    with pytest.raises(DataError, match="neither a zip nor a tar"):
        fetch("fake", url=f"{base}/fake.tgz", dest=dest, spec=SPEC)
    assert_nothing_left(dest)


def test_truncated_archive(served, dest):
    root, base = served
    whole = make_tgz(root / "whole.tgz", corpus_members()).read_bytes()
    (root / "fake.tgz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        fetch("fake", url=f"{base}/fake.tgz", dest=dest, spec=SPEC)
    assert_nothing_left(dest)


def test_archive_cannot_escape(tmp_path, dest):
    """Only the named members are read; links and ``..`` names are never written out."""
    members = corpus_members(skip="train")
    members["../escape.txt"] = b"outside\n"
    archive = make_tgz(tmp_path / "evil.tgz", members, links={MEMBERS["train"]: "/etc/passwd"})
    with pytest.raises(DataError, match="not a regular file"):
        import_local("fake", archive, dest=dest, spec=SPEC)
    assert not (tmp_path / "escape.txt").exists()
    assert_nothing_left(dest)


@pytest.mark.parametrize(
    "names",
    [
        ("train.txt", "valid.txt", "test.txt"),
        ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
    ],
)
def test_import_local_folder(tmp_path, dest, names):
    source = tmp_path / "copy"
    source.mkdir()
    for name, split in zip(names, SPLITS, strict=True):
        (source / name).write_text(TEXTS[split])
    assert import_local("fake", source, dest=dest, spec=SPEC) == dest
    assert_installed(dest)


def test_import_local_archive_file(tmp_path, dest):
    archive = make_zip(tmp_path / "fake.zip", corpus_members())
    import_local("fake", archive, dest=dest, spec=SPEC)
    assert_installed(dest)


def test_import_local_mismatch_leaves_nothing(tmp_path, dest):
    source = tmp_path / "copy"
    source.mkdir()
    for split in SPLITS:
        (source / f"ptb.{split}.txt").write_text(TEXTS[split])
    (source / "ptb.test.txt").write_text(TEXTS["test"] + " extra line \n")
    with pytest.raises(DataError, match="test split"):
        import_local("fake", source, dest=dest, spec=SPEC)
    assert_nothing_left(dest)


def test_import_local_missing_source(tmp_path, dest):
    with pytest.raises(DataError, match="does not exist"):
        import_local("fake", tmp_path / "nowhere", dest=dest, spec=SPEC)
    assert_nothing_left(dest)


def test_import_real_ptb(ptb_dir, tmp_path, monkeypatch, capsys):
    """The real PTB against the registry's checksums, through the API and the CLI."""
    monkeypatch.setenv("AWD_DATA_DIR", str(tmp_path / "data"))
    path = import_local("penn", ptb_dir)  # aliases resolve to the canonical folder
    assert path == tmp_path / "data" / "ptb"
    verify("ptb")
    for split in SPLITS:
        assert sha256_file(path / f"{split}.txt") == dataset_spec("ptb").sha256[split]

    assert main(["fetch", "ptb", "--from", str(ptb_dir)]) == 0
    assert "already present" in capsys.readouterr().err
    assert main(["verify", "ptb"]) == 0
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ok: ptb" in out and str(path) in out

    (path / "test.txt").write_text("corrupt\n")
    assert main(["verify", "ptb"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checksum mismatch for ptb test split")


@pytest.mark.parametrize("command", [[], ["fetch"], ["verify"], ["list"]])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit, match=r"^0$") as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_cli_failure_is_one_error_line(tmp_path, monkeypatch, capsys):
    url = dead_url()
    dest = tmp_path / "cache" / "ptb"
    monkeypatch.setenv("AWD_DATA_DIR", str(tmp_path / "data"))
    code = main(["fetch", "ptb", "--url", url, "--dest", str(dest), "--timeout", "5"])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0]
    assert "Traceback" not in err
    assert_nothing_left(dest)


def test_cli_unknown_dataset_is_one_error_line(capsys):
    assert main(["verify", "no-such-corpus"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: unknown dataset 'no-such-corpus'; known: ptb, wikitext-2"]


@pytest.mark.slow
def test_python_m_awd_data_exits_2_with_one_error_line(tmp_path):
    """The one subprocess test: ``python -m awd.data`` as a command, its exit status included."""
    url = dead_url()
    dest = tmp_path / "cache" / "ptb"
    env = {**os.environ, "AWD_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run(
        [sys.executable, "-m", "awd.data", "fetch", "ptb", "--url", url, "--dest", str(dest),
         "--timeout", "5"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0]
    assert "Traceback" not in proc.stderr
    assert_nothing_left(dest)


def test_the_tests_find_the_data_the_user_fetched(tmp_path, monkeypatch):
    """Issue 21: with $AWD_DATA_DIR unset, the tests read where `python -m awd.data fetch` put
    the data (the product's default), not only the shared folder beside the clone."""
    import conftest

    monkeypatch.delenv("AWD_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fetched = tmp_path / "cache" / "awdsearch" / "data"
    assert conftest._default_data_dir() in (fetched, conftest.REPO.parent / "shared" / "data")
    (fetched / "ptb").mkdir(parents=True)
    assert conftest._default_data_dir() == fetched
