"""Download or import a dataset into the data cache, verified and placed atomically.

Every file that ends up in a dataset folder has had its sha256 checked against the registry:
the archive is downloaded, and the three splits are extracted or copied, into a staging folder
beside the destination (same file system, so ``os.replace`` is atomic); only verified files are
renamed into place and the staging folder is always removed. A failed or interrupted fetch thus
leaves the destination as it was, and the cause is raised as a one-line ``DataError``.

Only the archive members named in the registry are read, each streamed into a fixed file name
(``train.txt`` …), so a hostile archive cannot write outside the staging folder.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from awd.data.corpus import find_split_files
from awd.data.registry import SPLITS, DatasetSpec, data_root, dataset_spec
from awd.errors import DataError
from awd.files import sha256_file

Log = Callable[[str], None]
CHUNK = 1 << 20
DEFAULT_TIMEOUT = 60.0
USER_AGENT = "awdsearch-fetch/1"
# Errors a truncated or corrupt archive can raise while being read.
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error)


def _quiet(_: str) -> None:
    """Default logger for the Python API: library calls stay silent."""


def _spec(name: str, spec: DatasetSpec | None) -> DatasetSpec:
    """The injected spec (tests, private datasets) or the registry's entry for ``name``."""
    return spec if spec is not None else dataset_spec(name)


def _dest(spec: DatasetSpec, dest: str | os.PathLike | None) -> Path:
    """The dataset's folder: ``--dest`` if given, else ``data_root()/NAME``."""
    return Path(dest).expanduser() if dest is not None else data_root() / spec.name


def _check(spec: DatasetSpec, files: dict[str, Path], origin: str) -> None:
    """Raise on the first split whose bytes differ from the registry's checksum."""
    for split in SPLITS:
        expected = spec.sha256[split]
        actual = sha256_file(files[split])
        if actual != expected:
            raise DataError(
                f"checksum mismatch for {spec.name} {split} split ({origin}): "
                f"expected sha256 {expected}, got {actual}"
            )


def verify(
    name: str, folder: str | os.PathLike | None = None, *, spec: DatasetSpec | None = None
) -> None:
    """Check the dataset's files in ``folder`` (default: its cache folder) against the registry.

    Raises ``DataError`` when a split is missing or its checksum differs, so callers can trust
    results computed on the folder.
    """
    spec = _spec(name, spec)
    where = _dest(spec, folder)
    files = find_split_files(where)
    _check(spec, files, str(where))


def _is_verified(spec: DatasetSpec, folder: Path, log: Log) -> bool:
    """True if ``folder`` already holds the verified dataset; logs why a present copy is not."""
    if not folder.exists():
        return False
    try:
        _check(spec, find_split_files(folder), str(folder))
    except DataError as e:
        log(f"existing copy is not usable, replacing it: {e}")
        return False
    return True


def _copy_stream(src: IO[bytes], target: Path) -> None:
    """Stream ``src`` into a new file ``target`` (never into an existing one)."""
    with target.open("xb") as out:
        shutil.copyfileobj(src, out, CHUNK)


def _place(staging: Path, dest: Path) -> None:
    """Rename the verified splits into ``dest`` one by one; each rename is atomic."""
    dest.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        os.replace(staging / f"{split}.txt", dest / f"{split}.txt")


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A private temp folder beside ``dest`` (same file system), removed whatever happens."""
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", suffix=".partial", dir=parent))
    except OSError as e:
        raise DataError(f"cannot create a staging folder in {parent}: {e}") from e
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _install(
    spec: DatasetSpec, dest: Path, force: bool, log: Log, fill: Callable[[Path], str]
) -> Path:
    """Shared fetch/import flow: skip if verified, else stage, verify, then place atomically.

    ``fill(staging)`` writes ``{split}.txt`` into the staging folder and returns a short
    description of where they came from, used in error messages.
    """
    if not force and _is_verified(spec, dest, log):
        log(f"{spec.name} is already present and verified at {dest}")
        return dest
    with _staging(dest) as staging:
        try:
            origin = fill(staging)
            _check(spec, {s: staging / f"{s}.txt" for s in SPLITS}, origin)
            _place(staging, dest)
        except OSError as e:
            raise DataError(f"cannot install {spec.name} into {dest}: {e}") from e
    log(f"{spec.name}: {len(SPLITS)} files verified and placed in {dest}")
    return dest


def _download(url: str, target: Path, timeout: float) -> None:
    """Fetch ``url`` into ``target``; every network failure becomes a DataError naming it."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            expected = resp.headers.get("Content-Length")
            with target.open("xb") as out:
                shutil.copyfileobj(resp, out, CHUNK)
    except urllib.error.HTTPError as e:
        raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        reason = "timed out" if isinstance(e.reason, TimeoutError) else e.reason
        raise DataError(f"cannot download {url}: {reason}") from e
    except TimeoutError as e:
        raise DataError(f"cannot download {url}: timed out after {timeout:g}s") from e
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise DataError(f"cannot download {url}: {str(e) or type(e).__name__}") from e
    got = target.stat().st_size
    if expected and expected.isdigit() and got != int(expected):
        raise DataError(f"cannot download {url}: truncated ({got} of {expected} bytes)")


def _norm(member: str) -> str:
    """Archive member names without a leading ``./`` (some tar tools add one)."""
    while member.startswith("./"):
        member = member[2:]
    return member


def _missing(spec: DatasetSpec, origin: str, found: set[str]) -> None:
    """Raise naming the first split whose member the archive lacks."""
    for split in SPLITS:
        if split not in found:
            raise DataError(
                f"archive {origin} has no member {spec.members[split]!r} "
                f"(the {spec.name} {split} split)"
            )


def _extract_zip(spec: DatasetSpec, archive: Path, staging: Path, origin: str) -> None:
    """Copy the named members of a zip into ``staging/{split}.txt``."""
    found: set[str] = set()
    with zipfile.ZipFile(archive) as zf:
        names = {_norm(n): n for n in zf.namelist()}
        for split in SPLITS:
            real = names.get(_norm(spec.members[split]))
            if real is None or real.endswith("/"):
                continue
            with zf.open(real) as src:
                _copy_stream(src, staging / f"{split}.txt")
            found.add(split)
    _missing(spec, origin, found)


def _extract_tar(spec: DatasetSpec, archive: Path, staging: Path, origin: str) -> None:
    """Copy the named members of a (compressed) tar into ``staging/{split}.txt``, one pass."""
    wanted = {_norm(spec.members[s]): s for s in SPLITS}
    found: set[str] = set()
    with tarfile.open(archive, "r:*") as tf:
        for info in tf:
            split = wanted.get(_norm(info.name))
            if split is None or split in found:
                continue
            if not info.isfile():  # a link could point anywhere: refuse it
                raise DataError(
                    f"archive {origin}: member {info.name!r} ({split} split) is not a regular file"
                )
            src = tf.extractfile(info)
            if src is None:  # cannot happen for a regular file; keeps the type checker honest
                raise DataError(f"archive {origin}: cannot read member {info.name!r}")
            with src:
                _copy_stream(src, staging / f"{split}.txt")
            found.add(split)
            if len(found) == len(SPLITS):
                break
    _missing(spec, origin, found)


def _extract(spec: DatasetSpec, archive: Path, staging: Path, origin: str) -> None:
    """Extract the splits from a zip or tar archive, detected by content, not by name."""
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(spec, archive, staging, origin)
        elif tarfile.is_tarfile(archive):
            _extract_tar(spec, archive, staging, origin)
        else:
            with archive.open("rb") as f:
                head = f.read(16)
            raise DataError(f"{origin} is neither a zip nor a tar archive (starts with {head!r})")
    except ARCHIVE_ERRORS as e:
        raise DataError(f"archive {origin} is corrupt or truncated: {e}") from e


def fetch(
    name: str,
    url: str | None = None,
    dest: str | os.PathLike | None = None,
    force: bool = False,
    *,
    spec: DatasetSpec | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    log: Log = _quiet,
) -> Path:
    """Download dataset ``name`` (from ``url`` if given, e.g. a mirror) and return its folder.

    Does nothing if the folder already holds the verified files, unless ``force``.
    """
    spec = _spec(name, spec)
    folder = _dest(spec, dest)
    source = url or spec.url

    def fill(staging: Path) -> str:
        archive = staging / "download.part"
        log(f"downloading {source}")
        _download(source, archive, timeout)
        _extract(spec, archive, staging, source)
        return source

    return _install(spec, folder, force, log, fill)


def _copy_folder(spec: DatasetSpec, source: Path, staging: Path) -> None:
    """Copy the three splits of a local folder (any accepted naming) into ``staging``."""
    for split, path in find_split_files(source).items():
        with path.open("rb") as src:
            _copy_stream(src, staging / f"{split}.txt")


def import_local(
    name: str,
    source: str | os.PathLike,
    dest: str | os.PathLike | None = None,
    force: bool = False,
    *,
    spec: DatasetSpec | None = None,
    log: Log = _quiet,
) -> Path:
    """Import a local copy (a folder of splits, or the archive file) and return the folder.

    For machines without internet: the files get the same checksum check as a download.
    """
    spec = _spec(name, spec)
    folder = _dest(spec, dest)
    src = Path(source).expanduser()
    if not src.exists():
        raise DataError(f"cannot import {spec.name}: {src} does not exist")
    # checked even when the dataset is installed already: a wrong --from is said, not skipped
    if src.is_dir():
        find_split_files(src)
    elif not (zipfile.is_zipfile(src) or tarfile.is_tarfile(src)):
        raise DataError(f"cannot import {spec.name} from {src}: it is neither a folder of "
                        "splits nor a zip or tar archive")

    def fill(staging: Path) -> str:
        log(f"importing {src}")
        if src.is_dir():
            _copy_folder(spec, src, staging)
        else:
            _extract(spec, src, staging, str(src))
        return str(src)

    return _install(spec, folder, force, log, fill)
