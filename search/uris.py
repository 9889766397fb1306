"""Tracking-store URIs, read in one place: which SQLite file a ``sqlite:///`` URI names, whether a
URI is an MLflow server (and whether it answers), and which store a command uses when none is
given.

Standard library only: the command lines, `reports` and the searcher's study storage read
them without loading MLflow.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from pathlib import Path

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
SQLITE = "sqlite:///"  # then the path: relative, or absolute with a fourth slash
DEFAULT_DB = "mlflow.db"  # the default store, in the working folder


def sqlite_path(uri: str) -> Path | None:
    """The file a ``sqlite:///PATH`` URI names (as written: relative stays relative), else
    None."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def sqlite_uri(path: Path | str) -> str:
    """The ``sqlite:///`` URI of the database file ``path``."""
    return f"{SQLITE}{path}"


def is_server(uri: str) -> bool:
    """Whether ``uri`` is an MLflow tracking server (http or https), not a store opened
    directly."""
    return uri.startswith(("http://", "https://"))


def resolve_tracking_uri(uri: str | None = None, env: Mapping[str, str] | None = None,
                         workdir: Path | None = None) -> str:
    """The store a search writes to and a report or evaluation reads from: ``uri`` if given,
    else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working folder. SQLite
    paths are made absolute so that the printed ``mlflow ui`` command works from anywhere."""
    env = os.environ if env is None else env
    workdir = workdir or Path.cwd()
    uri = (uri or env.get(ENV_TRACKING_URI, "")).strip()
    if not uri:
        return sqlite_uri((workdir / DEFAULT_DB).resolve())
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        return sqlite_uri((workdir / path).resolve())
    return uri


# MLflow's HTTP client retries a request 7 times with backoff (minutes) before it gives up: every
# command fails fast instead (a search's outbox retries on its own).
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
HEALTH_TIMEOUT_S = 10.0


def fail_fast_http() -> None:
    """MLflow's HTTP client gives up within seconds (unless the user's environment says
    otherwise)."""
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def server_problem(uri: str, timeout: float) -> str | None:
    """Why the MLflow server at ``uri`` fails its health check (``GET /health`` answered 200
    within ``timeout`` s), or None: seconds, where MLflow's own client retries for minutes."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return None if response.status == 200 else f"it answered {response.status}"
    except OSError as e:  # urllib's URLError and HTTPError included
        return str(getattr(e, "reason", e))
