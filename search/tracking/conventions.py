"""MLflow's own conventions, so that its UI shows a search the way it shows any training run:
the source tags (Source, User and Version columns), the dataset input (Dataset column), the
experiment's kind, primary metric and a saved runs-table view.

Our runs are written by the driver through the client API, not by ``mlflow.start_run`` in the
training process, so nothing of this is filled in by MLflow itself.

Which page the MLflow 3.17 UI opens an experiment or a run on is not the experiment's to say: the
UI takes it from the browser's "GenAI / Model training" toggle
(``localStorage["mlflow.workflowType"]``, GenAI by default) or from the URL's ``?workflowType=``
(any page's, a run page's included), and lands a GenAI-mode browser on the traces overview and a
run page under the GenAI sidebar. The ``mlflow.experimentKind`` tag only stops the UI asking
which kind the experiment is. `experiment_url` is a link that opens the runs table with our saved
view, `run_page_url` a run's page, both in Model training mode; there is no server-side default
for the runs table's columns or charts other than such a view.

The saved view (`runs_view`; what the 3.17.2 UI bundle reads from it, checked there): the view
is the experiment tag ``mlflow.sharedViewState.<id>`` holding the envelope ``{name, createdAt,
updatedAt, state}``, ``state`` a JSON string (or ``deflate;`` + base64). Opening it, the UI takes
from ``state`` the search facets ``searchFilter``, ``orderByKey``, ``orderByAsc``, ``startTime``,
``lifecycleFilter``, ``modelVersionFilter``, ``datasetsFilter``, and the UI state
``selectedColumns``, ``columnOrder``, ``columnWidths``, ``runsHiddenMode``, ``compareRunCharts``,
``compareRunSections``, ``viewMaximized``, ``runListHidden``, ``isAccordionReordered``,
``groupBy``, ``groupsExpanded``, ``useGroupedValuesInCharts``, ``hideEmptyCharts``,
``globalLineChartConfig``, ``chartsSearchFilter``; it drops ``runsExpanded``, ``runsPinned``,
``runsHidden``, ``runsVisibilityMap`` and ``autoRefreshEnabled`` (the browser's own). Ours sets:

- ``selectedColumns``: the objective and results, the space's searched params
  (``params.`name```), the model and status tags, Dataset, Source, Models;
- ``orderByKey`` = ``attributes.start_time`` (ascending): the UI nests child runs under the run
  their ``mlflow.parentRunId`` names only when the table is ordered by start time (or neither
  ordered nor filtered); ordered by a metric it lists the parent among its children. A view
  cannot open the parent expanded (``runsExpanded`` is dropped): one click on its ``+``;
- ``compareRunCharts`` / ``compareRunSections``: the chart view's "Model metrics" section
  starts with a bar per run of the objective (``best_val_ppl``), ``val_ppl`` by epoch and a
  parallel-coordinates chart of the searched params against the objective; the section is
  marked reordered, so that the UI appends the other metrics after them instead of sorting
  them in alphabetically. "System metrics" is named too: a view's sections that lack it make
  the UI (3.17.2) drop the section it adds for system/... metrics;
- ``runsHiddenMode`` = ``SHOW_ALL``: charts plot every run, not the first 10.

The charts plot the table's visible rows, so the trials once the parent is expanded. The parent
run draws nothing in the val_ppl chart and is left out of the parallel coordinates (it has
neither a val_ppl nor the searched params) but keeps its bar in the objective's: hiding one run
(``runsHidden``, ``runsVisibilityMap``) is not something a view can carry. Nor can anything
set the Compare page's parallel coordinates: it takes the runs and experiments from its URL and
starts on the first three differing params (alphabetically) and the first metric, whatever the
view says.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import urllib.parse
from collections.abc import Mapping, Sequence
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


ORDER_BY_START = "attributes.start_time"  # the only order under which the UI nests child runs
RUNS_HIDDEN_MODE = "SHOW_ALL"  # the UI's default plots the first 10 runs only
CHART_SECTION = "Model metrics"  # the UI's section of the metrics without a "/" in their name
CHART_SECTION_ID = "awdsearch-model-metrics"
SYSTEM_SECTION = "System metrics"  # the UI's section of system/...: named, or the UI drops it
SYSTEM_SECTION_ID = "awdsearch-system-metrics"
PARALLEL_CHART_ID = "awdsearch-parallel"


def _chart(kind: str, uuid: str, name: str, **fields: Any) -> dict[str, Any]:
    """A chart card as the 3.17 UI serializes its own (``RunsChartsCardConfig`` and the
    subclass of ``kind``)."""
    return {"uuid": uuid, "type": kind, "runsCountToCompare": 10,
            "metricSectionId": CHART_SECTION_ID, "deleted": False, "isGenerated": False,
            "displayName": name, **fields}


def _metric_chart(metric: str) -> dict[str, Any]:
    """The objective as a bar per run (its lowest value), the others as lines by epoch."""
    uuid = f"awdsearch-{metric}"
    if metric == schema.BEST_VAL_PPL:
        return _chart("BAR", uuid, metric, metricKey=metric)
    return _chart("LINE", uuid, metric, metricKey=metric, lineSmoothness=0,
                  xAxisScaleType="linear", scaleType="linear", range={}, xAxisKey="step",
                  selectedXAxisMetricKey="", yAxisKey="metric", yAxisExpressions=[],
                  ignoreOutliers=False, useGlobalXaxisKey=True, useGlobalLineSmoothing=True)


def chart_cards(compared: Sequence[str]) -> list[dict[str, Any]]:
    """The view's first charts: `schema.RUNS_VIEW_CHARTS`, then the ``compared`` params against
    the objective in parallel coordinates (none without such params). The UI leaves a run
    lacking one of them out of that chart: the parent run, and a trial of another model if
    ``compared`` named a param its model does not log."""
    cards = [_metric_chart(m) for m in schema.RUNS_VIEW_CHARTS]
    if compared:
        cards.append(_chart("PARALLEL", PARALLEL_CHART_ID, "Parallel Coordinates",
                            selectedParams=list(compared),
                            selectedMetrics=[schema.BEST_VAL_PPL], showAllRuns=False))
    return cards


def runs_view_state(searched: Sequence[str] = (),
                    compared: Sequence[str] | None = None) -> dict[str, Any]:
    """The state of our saved view (the keys: the module docstring); ``searched``: the space's
    searched parameter names, in its order (columns); ``compared``: those every trial run logs
    whatever its model (the parallel coordinates; default ``searched``)."""
    columns = ([f"metrics.`{m}`" for m in schema.RUNS_VIEW_METRICS]
               + [f"params.`{p}`" for p in searched]
               + [f"tags.`{t}`" for t in schema.RUNS_VIEW_TAGS]
               + [f"attributes.`{a}`" for a in ("Dataset", "Source", "Models")])
    sections = [{"uuid": uuid, "name": name, "display": True, "isReordered": reordered,
                 "deleted": False, "isGenerated": True}
                for uuid, name, reordered in ((CHART_SECTION_ID, CHART_SECTION, True),
                                              (SYSTEM_SECTION_ID, SYSTEM_SECTION, False))]
    return {"selectedColumns": columns, "orderByKey": ORDER_BY_START, "orderByAsc": True,
            "runsHiddenMode": RUNS_HIDDEN_MODE,
            "compareRunCharts": chart_cards(searched if compared is None else compared),
            "compareRunSections": sections}


def runs_view(created_ms: int, searched: Sequence[str] = (),
              compared: Sequence[str] | None = None) -> str:
    """The saved view, in the envelope the 3.17 UI writes: the objective, results and searched
    params as columns, the trials nested under the search's run, the objective's charts first."""
    return json.dumps({"name": RUNS_VIEW_NAME, "createdAt": created_ms, "updatedAt": created_ms,
                       "state": json.dumps(runs_view_state(searched, compared))})


def experiment_tags(created_ms: int, searched: Sequence[str] = (),
                    compared: Sequence[str] | None = None) -> dict[str, str]:
    """An experiment of model training (not GenAI), minimising best_val_ppl, with our view
    (`runs_view_state`)."""
    return {schema.EXPERIMENT_KIND: schema.EXPERIMENT_KIND_ML,
            MLFLOW_EXPERIMENT_PRIMARY_METRIC_NAME: schema.BEST_VAL_PPL,
            MLFLOW_EXPERIMENT_PRIMARY_METRIC_GREATER_IS_BETTER: "False",
            RUNS_VIEW_TAG: runs_view(created_ms, searched, compared)}


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


def run_page_url(server: str, experiment_id: str, run_id: str) -> str:
    """The link to a run's page, under the Model training sidebar (not GenAI's) whatever the
    browser's toggle says."""
    server = without_credentials(server)
    return (f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
            f"?workflowType={schema.WORKFLOW_TYPE_ML}")


def inherited_tags(parent_tags: Mapping[str, Any]) -> dict[str, str]:
    """A child run's source tags: its parent's."""
    return {k: str(parent_tags[k]) for k in SOURCE_TAGS if k in parent_tags}
