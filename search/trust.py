"""The experiment folder as a trust boundary: Tune's state files, authenticated (issue 22).

On ``--resume`` Ray Tune unpickles files of the experiment folder (``tuner.pkl``, the searcher's
state, the trials inside ``experiment_state-*.json``): whoever can write that folder (a shared
NFS folder or bucket on a cluster) could run code on the driver's machine. So the driver signs
them as Tune writes them, and verifies them before Tune reads them:

- **Signing** (`StateSigner`, a Tune callback, and `sign` after each Tune run): an HMAC-SHA256 of
  every state file (`STATE_PATTERNS`) with a key that does not live in the storage, kept with a
  copy of the file in ``.awdsearch_signed/`` of the folder; the list of signatures is itself
  signed.
- **Verifying** (`verify`, before every `tune.Tuner.restore`): a state file whose signature does
  not match (edited, replaced, truncated, or one that was never signed) is put aside in
  ``.awdsearch_refused/`` and its last signed copy put back, one line naming it; with no copy
  that verifies, the resume is refused in one line. Nothing is unpickled before that.
- **The key**: ``$AWDSEARCH_STATE_KEY`` (on a cluster, set on the head node, as Ray's own token
  is), else a per-user key file, ``$XDG_CONFIG_HOME/awdsearch/state.key`` (``~/.config/...``),
  made on first use with 0600 permissions and refused if others may read it.

A folder written before this existed has no signatures and is refused, with the command that
signs it as it is (`main`: ``python -m search.trust sign FOLDER``) for a user who trusts every
writer of that folder. Not covered: the trials' checkpoints (``trainer.pt``, read with torch's
``weights_only``: data, never code) and the plain JSON and text files (read as data).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import sys
import time
from pathlib import Path
from typing import Any

from search import storage
from search.errors import SearchError

log = logging.getLogger(__name__)

KEY_ENV = "AWDSEARCH_STATE_KEY"
SIGNED = ".awdsearch_signed"  # the signed copies and the signatures, in the experiment folder
REFUSED = ".awdsearch_refused"  # files that failed the check, put aside (never read)
SIGNATURES = "signatures.json"
# Every file Tune unpickles (or reads trials from) when it restores a run or ends one: its
# tuner, experiment and searcher state, its callbacks' state (ours keep none: never signed, so
# one found is put aside) and each failed trial's error (``<trial>/error.pkl``).
STATE_PATTERNS = (storage.TUNER_FILE, "experiment_state-*.json", "searcher-state-*.pkl",
                  "search_gen_state-*.json", "basic-variant-state-*.json",
                  "callback-states-*.pkl", "*/error.pkl")
MIN_KEY_BYTES = 16


# --- the key -------------------------------------------------------------------------------
def key_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "awdsearch" / "state.key"


def state_key() -> bytes:
    """The signing key: the environment's, else the user's key file (made on first use)."""
    env = os.environ.get(KEY_ENV)
    if env:
        if len(env.encode()) < MIN_KEY_BYTES:
            raise SearchError(f"${KEY_ENV} is shorter than {MIN_KEY_BYTES} bytes: use a long "
                              "random secret (python -c 'import secrets; print(secrets."
                              "token_hex(32))')")
        return env.encode()
    path = key_path()
    if not path.exists():
        _make_key(path)
    info = path.stat()
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SearchError(f"the state key {path} can be read by others (mode "
                          f"{stat.S_IMODE(info.st_mode):o}): chmod 600 {path}")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise SearchError(f"the state key {path} belongs to another user")
    key = path.read_text().strip().encode()
    if len(key) < MIN_KEY_BYTES:
        raise SearchError(f"the state key {path} is too short ({len(key)} bytes): remove it "
                          "and the next search makes a new one (its searches' state must then "
                          "be signed again)")
    return key


def _make_key(path: Path) -> None:
    """A new random key, whole or not at all: written to a private temp file, then linked into
    place (a second process doing the same at once keeps the first key)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _mac(key: bytes, name: str, data: bytes) -> str:
    return hmac.new(key, name.encode() + b"\0" + data, hashlib.sha256).hexdigest()


# --- the folder, local or at a URI -----------------------------------------------------------
class StateFolder:
    """The few file operations signing needs, through pyarrow (Ray's own storage layer) for a
    URI, through the OS for a local folder."""

    def __init__(self, location: str) -> None:
        self.location = storage.absolute(location)
        self.uri = storage.is_uri(self.location)
        if self.uri:
            from pyarrow import fs

            self.fs, self.root = fs.FileSystem.from_uri(self.location)

    def names(self) -> dict[str, tuple[int, int]]:
        """Regular files directly in the folder, and each trial folder's ``error.pkl``
        (``<trial>/error.pkl``): (mtime ns, size)."""
        if not self.uri:
            folder = Path(self.location)
            if not folder.is_dir():
                return {}
            found = [p for p in folder.iterdir() if p.is_file()]
            found += [p for p in folder.glob("*/error.pkl") if p.is_file()]
            return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
                    for p in found}
        from pyarrow import fs

        infos = self.fs.get_file_info(fs.FileSelector(self.root, allow_not_found=True))
        subs = [f"{i.path}/error.pkl" for i in infos
                if i.type == fs.FileType.Directory and not i.base_name.startswith(".")]
        infos += [i for i in self.fs.get_file_info(subs) if i.type == fs.FileType.File]
        return {i.path[len(self.root):].lstrip("/"): (int(i.mtime_ns or 0), int(i.size or 0))
                for i in infos if i.type == fs.FileType.File}

    def read(self, name: str) -> bytes | None:
        if not self.uri:
            local = Path(self.location, name)
            return local.read_bytes() if local.is_file() else None
        from pyarrow import fs

        path = f"{self.root}/{name}"
        if self.fs.get_file_info(path).type != fs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return bytes(f.read())

    def write(self, name: str, data: bytes) -> None:
        """Atomically where the OS allows (a temp file renamed), one PUT on an object store."""
        if not self.uri:
            path = Path(self.location, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return
        parent = f"{self.root}/{name}".rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(f"{self.root}/{name}") as f:
            f.write(data)

    def remove(self, name: str) -> None:
        if not self.uri:
            Path(self.location, name).unlink(missing_ok=True)
        else:
            self.fs.delete_file(f"{self.root}/{name}")

    def put_aside(self, name: str) -> str:
        """Move ``name`` into `REFUSED` (never read again); its new name there."""
        flat = name.replace("/", "__")
        target = f"{REFUSED}/{flat}.{time.strftime('%Y%m%d-%H%M%S')}.{secrets.token_hex(3)}"
        if not self.uri:
            Path(self.location, REFUSED).mkdir(exist_ok=True)
            os.replace(Path(self.location, name), Path(self.location, target))
        else:
            self.fs.create_dir(f"{self.root}/{REFUSED}", recursive=True)
            self.fs.move(f"{self.root}/{name}", f"{self.root}/{target}")
        return target


def state_files(names: Any) -> list[str]:
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in STATE_PATTERNS))


# --- signing -------------------------------------------------------------------------------
def _signatures(folder: StateFolder, key: bytes) -> dict[str, str] | None:
    """The folder's signatures, if their own signature verifies (None: none saved);
    SearchError if they were changed."""
    raw = folder.read(f"{SIGNED}/{SIGNATURES}")
    if raw is None:
        return None
    try:
        saved = json.loads(raw)
        files, mac = dict(saved["files"]), str(saved["mac"])
    except (ValueError, KeyError, TypeError):
        files, mac = {}, ""
    if not hmac.compare_digest(mac, _mac(key, SIGNATURES, _canonical(files))):
        raise SearchError(f"{folder.location}/{SIGNED}/{SIGNATURES} does not verify: the "
                          "search's state was changed without this user's key (or the key "
                          f"changed: ${KEY_ENV}, {key_path()}); nothing was read")
    return {str(k): str(v) for k, v in files.items()}


def _canonical(files: dict[str, str]) -> bytes:
    return json.dumps(files, sort_keys=True).encode()


def _copy_name(name: str, mac: str) -> str:
    """A signed copy's name: by content, so that a new copy never overwrites the copy the
    current signatures name (a kill while signing leaves both)."""
    return f"{SIGNED}/{name.replace('/', '__')}.{mac[:16]}"


def sign(location: str, key: bytes | None = None, names: list[str] | None = None,
         reset: bool = False, source: str | None = None) -> list[str]:
    """Sign the folder's state files as they are now (``names``: only those), keeping a copy of
    each; the names signed anew. ``source``: read them from that folder instead (Tune's local
    staging copy, which the storage's copy is uploaded from: signed before it lands). Signatures
    that do not verify are an error, unless ``reset`` (`main`'s ``sign``: the user vouches for
    the folder as it is)."""
    key = key if key is not None else state_key()
    folder = StateFolder(location)
    origin = StateFolder(source) if source is not None else folder
    present = state_files(origin.names())
    try:
        files = _signatures(folder, key) or {}
    except SearchError:
        if not reset:
            raise
        files = {}
    old = dict(files)
    changed = []
    for name in present if names is None else [n for n in names if n in present]:
        data = origin.read(name)
        if data is None:
            continue
        mac = _mac(key, name, data)
        if files.get(name) != mac:
            folder.write(_copy_name(name, mac), data)  # the copy first, the signature after
            files[name] = mac
            changed.append(name)
    if changed or folder.read(f"{SIGNED}/{SIGNATURES}") is None:
        body = {"files": files, "mac": _mac(key, SIGNATURES, _canonical(files))}
        folder.write(f"{SIGNED}/{SIGNATURES}", json.dumps(body, indent=1).encode())
        for name in changed:  # the copies no signature names any more
            if name in old:
                folder.remove(_copy_name(name, old[name]))
    return changed


def verify(location: str, key: bytes | None = None, repair: bool = True) -> list[str]:
    """Check every state file before Tune reads any: one that fails is put aside and its last
    signed copy put back (returned: one line each; with ``repair`` False, only said); a
    SearchError (one line, nothing changed) where no copy verifies, or for a folder with no
    signatures at all."""
    key = key if key is not None else state_key()
    folder = StateFolder(location)
    files = _signatures(folder, key)
    if files is None:
        raise SearchError(f"the search's state at {folder.location} is not signed (saved before "
                          "awdsearch signed its state, or copied without it): Ray's files there "
                          "can run code when read. If you trust everyone who can write that "
                          f"folder, sign it as it is: python -m search.trust sign "
                          f"{folder.location}")
    present = state_files(folder.names())
    plan: list[tuple[str, str, bytes | None, bool]] = []  # name, why, signed copy, present
    for name in sorted(set(present) | set(files)):
        data = folder.read(name) if name in present else None
        if data is not None and name in files and hmac.compare_digest(
                files[name], _mac(key, name, data)):
            continue
        why = ("never signed" if name not in files else "missing" if data is None
               else "its signature does not match (changed or damaged)")
        copy = folder.read(_copy_name(name, files[name])) if name in files else None
        if name in files and (copy is None
                              or not hmac.compare_digest(files[name], _mac(key, name, copy))):
            raise SearchError(f"{folder.location}/{name}: {why}, and no signed copy of it "
                              "verifies; nothing was read or changed")
        plan.append((name, why, copy, data is not None))
    if not repair:
        return [f"{name}: {why}" for name, why, _, _ in plan]
    notes = []
    for name, why, copy, there in plan:  # every failure has a way out: now act
        where = f"; put aside as {folder.put_aside(name)}" if there else ""
        if copy is None:
            notes.append(f"{name}: {why}{where}; not used")
        else:
            folder.write(name, copy)
            notes.append(f"{name}: {why}{where}; its last signed version is used")
    return notes


def verified(location: str, repair: bool = True) -> None:
    """`verify`, its lines as warnings: what a resume calls before `tune.Tuner.restore` (and,
    without ``repair``, before it takes the search's lock: a refusal changes nothing)."""
    for line in verify(location, repair=repair):
        if repair:
            log.warning("the search's saved state: %s", line)


# --- python -m search.trust ----------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.trust", description=(
        "Sign or check the saved state of a search (its Ray Tune files) with this user's key. "
        "Sign only a folder whose every writer you trust: signing vouches for its files."))
    p.add_argument("action", choices=("sign", "check"))
    p.add_argument("folder", help="the experiment folder, e.g. ray_results/smoke")
    args = p.parse_args(argv)
    try:
        if not state_files(StateFolder(args.folder).names()):
            raise SearchError(f"{args.folder} holds no saved search (no tuner.pkl or "
                              "experiment_state-*.json): name a search's experiment folder, "
                              "e.g. ray_results/smoke")
        if args.action == "sign":
            names = sign(args.folder, reset=True)
            print(f"signed {len(names)} state file(s) of {args.folder}")
            return 0
        key = state_key()
        folder = StateFolder(args.folder)
        files = _signatures(folder, key)
        if files is None:
            print(f"{args.folder}: not signed", file=sys.stderr)
            return 1
        bad = [n for n in state_files(folder.names())
               if files.get(n) != _mac(key, n, folder.read(n) or b"")]
        for name in bad:
            print(f"{name}: does not verify", file=sys.stderr)
        return 1 if bad else 0
    except SearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
