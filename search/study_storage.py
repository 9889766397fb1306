"""Opening an Optuna study storage (the search's study, the stages' studies): a SQLite file is
opened under `search.lock.creation_lock`, so that two commands creating its tables at once take
turns; any storage that cannot be opened is one `SearchError` line."""

from __future__ import annotations

from contextlib import nullcontext

import optuna

from awd.errors import first_line
from search.errors import SearchError
from search.uris import sqlite_path


def open_storage(url: str) -> optuna.storages.RDBStorage:
    from search.lock import creation_lock

    db = sqlite_path(url)
    try:
        with creation_lock(db) if db is not None else nullcontext():
            return optuna.storages.RDBStorage(url)
    except SearchError:
        raise
    except Exception as e:  # SQLAlchemy's errors for a bad URL, a missing folder, a dead server
        raise SearchError(f"cannot open the Optuna study storage {url}: "
                          f"{first_line(e)}") from None
