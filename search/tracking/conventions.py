"""MLflow's own conventions, so that its UI shows a search the way it shows any training run:
the source tags (Source, User and Version columns), the dataset input (Dataset column), the
experiment's kind, primary metric and a saved runs-table view.

Our runs are written by the driver through the client API, not by ``mlflow.start_run`` in the
training process, so nothing of this is filled in by MLflow itself.

Which page the MLflow 3.17 UI opens an experiment on is not the experiment's to say: the UI takes
it from the browser's "GenAI / Model training" toggle (``localStorage["mlflow.workflowType"]``,
GenAI by default) or from the URL's ``?workflowType=``, and lands a GenAI-mode browser on the
traces overview. The ``mlflow.experimentKind`` tag only stops the UI asking which kind the
experiment is. `experiment_url` is a link that opens the runs table, with our saved view's
columns; there is no server-side default for the runs table's columns other than such a view.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, SourceType
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_EXPERIMENT_PRIMARY_METRIC_GREATER_IS_BETTER,
    MLFLOW_EXPERIMENT_PRIMARY_METRIC_NAME,
    MLFLOW_GIT_COMMIT,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

from awd.data.registry import find_dataset
from awd.errors import DataError
from search import schema

SOURCE_TAGS = (MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_GIT_COMMIT, MLFLOW_USER)
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."  # the 3.x UI's saved views (its "Views" menu)
RUNS_VIEW_TAG = SAVED_VIEW_PREFIX + schema.RUNS_VIEW
RUNS_VIEW_NAME = "awdsearch: objective and results"
DIGEST_CHARS = 16  # MLflow keeps at most 36


def source_tags(git_commit: str) -> dict[str, str]:
    """The tags MLflow's UI shows as a run's Source, Version and User."""
    return {MLFLOW_SOURCE_NAME: schema.SOURCE_NAME,
            MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL),
            MLFLOW_GIT_COMMIT: git_commit, MLFLOW_USER: _user()}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"


@dataclass(frozen=True)
class DatasetRef:
    """A dataset as MLflow's dataset tracking records it; plain, so that records can carry it."""

    name: str
    digest: str
    source_type: str
    source: str

    def as_input(self) -> DatasetInput:
        return DatasetInput(Dataset(self.name, self.digest, self.source_type, self.source),
                            tags=[InputTag(MLFLOW_DATASET_CONTEXT, schema.DATASET_CONTEXT)])

    def as_record(self) -> dict[str, str]:
        return asdict(self)


def split_digest(sha256: Mapping[str, str]) -> str:
    """One digest of a dataset from the sha256 of each of its split files: the same for a
    registry dataset and a folder holding the same files."""
    text = "\n".join(f"{split}:{sha256[split]}" for split in sorted(sha256))
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def dataset_ref(dataset: str) -> DatasetRef | None:
    """A registry dataset (``ptb``, ``wt2``...): digest from the registry's checksums, source its
    download URL. A folder: digest from its files, if this process can read them; else None."""
    spec = find_dataset(dataset)
    if spec is not None:
        return DatasetRef(spec.name, split_digest(spec.sha256), "http", spec.url)
    folder = Path(dataset).expanduser().resolve()
    digest = _folder_digest(str(folder))
    return DatasetRef(folder.name, digest, "local", str(folder)) if digest else None


@lru_cache(maxsize=8)
def _folder_digest(folder: str) -> str:
    """Hashing a corpus takes a moment: once per folder and process, not once per trial."""
    from awd.data.corpus import file_digests, find_split_files  # torch: only when needed

    try:
        return split_digest(file_digests(find_split_files(Path(folder))))
    except (DataError, OSError):
        return ""


def log_dataset(client: MlflowClient, run_id: str, dataset: DatasetRef | None) -> None:
    if dataset is not None:
        client.log_inputs(run_id, datasets=[dataset.as_input()])


def runs_view(created_ms: int) -> str:
    """The saved view (the envelope the 3.17 UI writes): the objective and results as columns,
    best first."""
    columns = ([f"metrics.`{m}`" for m in schema.RUNS_VIEW_METRICS]
               + [f"tags.`{t}`" for t in schema.RUNS_VIEW_TAGS]
               + [f"attributes.`{a}`" for a in ("Dataset", "Source", "Models")])
    state = {"selectedColumns": columns, "orderByKey": f"metrics.`{schema.BEST_VAL_PPL}`",
             "orderByAsc": True}
    return json.dumps({"name": RUNS_VIEW_NAME, "createdAt": created_ms, "updatedAt": created_ms,
                       "state": json.dumps(state)})


def experiment_tags(created_ms: int) -> dict[str, str]:
    """An experiment of model training (not GenAI), minimising best_val_ppl, with our view."""
    return {schema.EXPERIMENT_KIND: schema.EXPERIMENT_KIND_ML,
            MLFLOW_EXPERIMENT_PRIMARY_METRIC_NAME: schema.BEST_VAL_PPL,
            MLFLOW_EXPERIMENT_PRIMARY_METRIC_GREATER_IS_BETTER: "False",
            RUNS_VIEW_TAG: runs_view(created_ms)}


def without_credentials(uri: str) -> str:
    """``uri`` without a user name or password (``https://user:token@host`` -> ``https://host``):
    what may be printed, put in a report or logged as a link."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.username and not parts.password:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def experiment_url(server: str, experiment_id: str) -> str:
    """The link that opens the experiment's runs table with our view, whatever the browser's
    GenAI / Model training toggle says (``server``: the UI's address, http://host:port)."""
    server = without_credentials(server)
    return (f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType={schema.WORKFLOW_TYPE_ML}&viewStateShareKey={schema.RUNS_VIEW}")


def inherited_tags(parent_tags: Mapping[str, Any]) -> dict[str, str]:
    """A child run's source tags: its parent's."""
    return {k: str(parent_tags[k]) for k in SOURCE_TAGS if k in parent_tags}
