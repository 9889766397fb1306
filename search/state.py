"""What a search needs to be resumed, kept in its experiment folder beside Ray's own state.

One JSON file (`STATE_FILE`) with a format number: a file written by another format is
refused in one line that says what to do, never half-read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from search import storage
from search.errors import SearchError
from search.options import SearchOptions

STATE_FILE = "awdsearch.json"
FORMAT = 2  # 1: options as a loose dict, no format field (awdsearch before 2026-12)


@dataclass(frozen=True)
class SearchState:
    """The search's MLflow parent run and experiment, its store, the options it was started
    with, the GPUs each trial got, and its Optuna study."""

    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    options: SearchOptions
    gpus_per_trial: float
    study_storage: str
    study_name: str

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "parent_run_id": self.parent_run_id,
                "experiment_id": self.experiment_id, "tracking_uri": self.tracking_uri,
                "options": self.options.to_json(), "gpus_per_trial": self.gpus_per_trial,
                "study_storage": self.study_storage, "study_name": self.study_name}

    def save(self, experiment_dir: str) -> None:
        storage.write_text(storage.join(experiment_dir, STATE_FILE),
                           json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, experiment_dir: str) -> SearchState:
        """The saved state; `SearchError` when there is none, or it cannot be read as this
        version's."""
        text = storage.read_text(storage.join(experiment_dir, STATE_FILE))
        if text is None:
            raise SearchError(f"nothing to resume at {experiment_dir} (no saved search there)")
        try:
            data = json.loads(text)
        except ValueError as e:
            raise SearchError(f"the saved search at {experiment_dir} is unreadable "
                              f"({STATE_FILE}: {e})") from None
        found = data.get("format", 1) if isinstance(data, dict) else None
        if found != FORMAT:
            raise SearchError(
                f"the saved search at {experiment_dir} has state format {found} ({STATE_FILE}); "
                f"this awdsearch reads format {FORMAT}: finish that search with the version "
                "that started it, or start a new one with --experiment NAME")
        try:
            fields = {k: v for k, v in data.items() if k != "format"}
            return cls(**{**fields, "options": SearchOptions.from_json(fields["options"])})
        except (KeyError, TypeError) as e:
            raise SearchError(f"the saved search at {experiment_dir} is unreadable "
                              f"({STATE_FILE}: {e})") from None
