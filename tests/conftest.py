"""Shared test setup: where the real corpora live, a private corpus cache, tiny corpora.

``$AWD_DATA_DIR`` defaults to the ``shared/data`` folder beside the repository root (CI sets it
to ``../shared/data``). ``$AWD_CACHE_DIR`` points at a fresh temporary folder for the whole
session, so no test writes into the user's cache.
"""

from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run: a red CI is reproducible, never a dice roll.
settings.register_profile("awdsearch", derandomize=True, deadline=None)
settings.load_profile("awdsearch")

REPO = Path(__file__).resolve().parents[1]


def _default_data_dir() -> Path:
    """$AWD_DATA_DIR; else the folder `python -m awd.data fetch` fills (the product's own
    default), where a user who ran the README's first command has the data; else the shared
    folder beside the clone (CI's)."""
    from awd.data.registry import data_root

    fetched = data_root()
    shared = REPO.parent / "shared" / "data"
    if (fetched / "ptb").is_dir() or not shared.is_dir():
        return fetched
    return shared


if not os.environ.get("AWD_DATA_DIR"):
    os.environ["AWD_DATA_DIR"] = str(_default_data_dir())
DATA_DIR = Path(os.environ["AWD_DATA_DIR"]).expanduser()


@pytest.fixture(scope="session", autouse=True)
def _private_corpus_cache(tmp_path_factory):
    """Every test (and every subprocess it starts) caches token ids in a temporary folder."""
    old = os.environ.get("AWD_CACHE_DIR")
    os.environ["AWD_CACHE_DIR"] = str(tmp_path_factory.mktemp("awd_cache"))
    yield
    if old is None:
        os.environ.pop("AWD_CACHE_DIR", None)
    else:
        os.environ["AWD_CACHE_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def _private_state_key(tmp_path_factory):
    """Every test (and every subprocess it starts) signs search state with a key of its own
    (`search.trust`), made in a temporary config folder, never the user's."""
    old = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "AWDSEARCH_STATE_KEY")}
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    os.environ.pop("AWDSEARCH_STATE_KEY", None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and far more predictably on a busy 2-core box.
    torch is imported here, not at the top: xdist's controller loads this file too and runs no
    test, and torch's import (a second) would hold back the start of its workers."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tune_rows(exp_dir: Path) -> dict[str, list[dict]]:
    """Every trial's rows in Ray Tune's result.json (one per reported result), by trial id. A
    last line that Tune is still writing (no newline yet) is left out; any other bad line
    raises."""
    out = {}
    for f in exp_dir.glob("*/result.json"):
        text = f.read_text()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            try:
                json.loads(lines[-1])
            except ValueError:
                lines.pop()
        rows = [json.loads(x) for x in lines if x.strip()]
        if rows:
            out[rows[-1]["trial_id"]] = rows
    return out


def real_data(name: str) -> Path:
    """The folder of a real dataset, or skip the test with the reason."""
    folder = DATA_DIR / name
    if not all((folder / f"{s}.txt").is_file() for s in ("train", "valid", "test")):
        pytest.skip(f"{name} not found under {DATA_DIR} (set AWD_DATA_DIR to the folder that "
                    f"holds ptb/ and wikitext-2/)")
    return folder


@pytest.fixture
def ptb_dir() -> Path:
    return real_data("ptb")


@pytest.fixture
def wt2_dir() -> Path:
    return real_data("wikitext-2")


SENTENCES = [  # 48 distinct words: the next word is given by the current one within a sentence
    "the cat sat on my mat",
    "a dog ran in his park",
    "one bird sang over every tree",
    "two fish swam under our boat",
    "big cows eat green wet grass",
    "small ants carry heavy dry leaves",
    "old men play slow quiet chess",
    "young kids read funny short books",
]


def write_corpus(folder: Path, train: str, valid: str, test: str,
                 names: tuple[str, str, str] = ("train.txt", "valid.txt", "test.txt")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in zip(names, (train, valid, test), strict=True):
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def pattern_text(repeats: int) -> str:
    """A learnable corpus: the same eight sentences over and over (48 words and <eos>)."""
    return "".join(f" {s} \n" for _ in range(repeats) for s in SENTENCES)


def reversed_text(repeats: int) -> str:
    """The same words as ``pattern_text`` in reverse order: what the pattern does not predict."""
    return "".join(" ".join(reversed(s.split())) + "\n" for _ in range(repeats) for s in SENTENCES)


@pytest.fixture
def pattern_corpus_dir(tmp_path) -> Path:
    """Tiny corpus folder with a strongly predictable pattern (train 2,240 tokens)."""
    return write_corpus(tmp_path / "pattern", pattern_text(40), pattern_text(5), pattern_text(5))


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema made, once per run: creating one runs every
    MLflow migration (seconds); a copy of this file is a new empty store in milliseconds. Under
    xdist the workers share one, made by the first that asks (the others wait on a lock)."""
    import fcntl

    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above every worker's own
    path = root / "mlflow_template" / "mlflow.db"
    path.parent.mkdir(exist_ok=True)
    with open(root / "mlflow_template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            part = path.with_name("making.db")
            MlflowClient(f"sqlite:///{part}").search_experiments(max_results=1)
            part.rename(path)  # whole or absent: a worker never copies a half-made store
    return path


@pytest.fixture(scope="session")
def new_mlflow_store(_empty_mlflow_db):
    """``new_mlflow_store(folder)``: the URI of a new, empty MLflow SQLite store in ``folder``."""
    import shutil

    def make(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_mlflow_db, folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"

    return make


SMOKE_TRIALS = 6
SLOW_ONLY_FIXTURES = ("smoke_search",)  # they start Ray: only tests marked slow may use them
SLOW_ONLY_MODULE = "\npytestmark = pytest.mark.slow\n"  # a file whose every test is slow


def _markexpr(config: pytest.Config) -> str:
    return (config.getoption("markexpr") or "").strip()


def _excludes_slow(config: pytest.Config) -> bool:
    """Whether ``-m`` leaves the slow tests out: the fast tier, or a narrower run of it."""
    return "not slow" in _markexpr(config)


def _fast_tier(config: pytest.Config) -> bool:
    """Exactly the fast tier's ``-m``: only then is every test of a slow-only file sure to be
    deselected (an expression with ``or`` could select some of them)."""
    return _markexpr(config) == "not slow"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fast tier does not import the files whose every test is slow (it would deselect
    them all): about a second less of collection in each worker."""
    if (_fast_tier(config) and collection_path.suffix == ".py"
            and collection_path.name.startswith("test_")
            and SLOW_ONLY_MODULE in collection_path.read_text()):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    """The fast tier stays fast: a test that uses a slow-only fixture must be marked slow."""
    unmarked = [item.nodeid for item in items
                if set(SLOW_ONLY_FIXTURES) & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("not marked slow but using a slow-only fixture "
                                f"({', '.join(SLOW_ONLY_FIXTURES)}): {', '.join(unmarked)}")


def pytest_xdist_make_scheduler(config, log):
    """`pytest -n 2 --dist loadfile` (both tiers; pyproject's addopts), except that the test
    files sharing the session's smoke search are one unit, so that search runs once rather
    than once per worker. Every other file is a unit of its own, so its module fixtures (a
    cluster, a search; in the fast tier the fake searches and their report, the registered
    model) are built once, not once per worker. (xdist's loadgroup does not group under
    pytest 9: it renames a private attribute that pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    # The fast tier never starts the smoke search (the fixture refuses): there the files that
    # name it are units of their own, not one unit that one worker runs alone.
    shared = not _excludes_slow(config)

    class SharedSearchScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return ("smoke_search" if shared and _uses_smoke_search(config.rootpath / path)
                    else path)

    return SharedSearchScheduling(config, log)


@functools.cache
def _uses_smoke_search(path: Path) -> bool:
    return path.is_file() and "smoke_search" in path.read_text()


@pytest.fixture(scope="session")
def smoke_search(request, tmp_path_factory):
    """One real smoke search (local Ray, Optuna, ASHA, MLflow SQLite), shared by the search and
    report tests: (working folder, finished process, tracking URI). Slow tests only."""
    if _excludes_slow(request.config):
        pytest.fail("smoke_search starts a real search: a fast-tier test asked for it")
    real_data("ptb")
    import subprocess
    import sys

    cwd = tmp_path_factory.mktemp("smoke")
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--space", "smoke", "--num-samples",
         str(SMOKE_TRIALS), "--max-epochs", "2", "--concurrency", "2", "--seed", "7",
         "--storage", "ray_results"],
        cwd=cwd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, proc, f"sqlite:///{cwd / 'mlflow.db'}"


@pytest.fixture(scope="module")
def no_tracking_env():
    """The default tracking store unless a test says otherwise: $MLFLOW_TRACKING_URI unset."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture(scope="module")
def file_and_folder(tmp_path_factory) -> Path:
    """A folder holding a regular file (``afile``) and a folder (``adir``): bad-path input."""
    root = tmp_path_factory.mktemp("input")
    (root / "afile").write_text("not a folder")
    (root / "adir").mkdir()
    return root


def pytest_configure(config):
    """A test run started in the background of a script (``pytest ... &`` without job control)
    inherits SIGINT ignored, and so would every search its tests start: a Ctrl-C sent to one
    would do nothing. The tests that stop a search with SIGINT need it delivered, so the
    process takes Python's own handler back (children then start with the default)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

