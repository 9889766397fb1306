"""Configurations carried from an earlier search into a new one (``--warm-start-from``).

The earlier search's trial runs are read from MLflow and ranked by the same rule that names a
search's best trial (`search.results.ranking`); the best ``top`` configurations are enqueued on
the new study after the paper configuration. A parameter the new space does not sample is
ignored by Optuna; one it samples keeps the earlier value (e.g. the dropouts of a PTB search
start a WikiText-2 one, the shared parameters of an LSTM search start a GRU one).
"""

from __future__ import annotations

from typing import Any

from mlflow.tracking import MlflowClient

from search import schema
from search.errors import SearchError
from search.results import parse_param, ranking


def best_configurations(client: MlflowClient, experiment: str, top: int) -> list[dict[str, Any]]:
    """The ``top`` best trial configurations of every search in MLflow experiment
    ``experiment``, best first, as typed values."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage == "deleted":
        raise SearchError(f"--warm-start-from: no MLflow experiment {experiment!r} in this "
                          "tracking store")
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`{schema.ROLE}` = '{schema.ROLE_TRIAL}'",
                              max_results=50_000)
    records = [{"status": r.data.tags.get(schema.STATUS), **r.data.metrics} for r in runs]
    order = ranking(records)
    if not order:
        raise SearchError(f"--warm-start-from: experiment {experiment!r} has no trial with a "
                          "result")
    configs = []
    for i in order:
        params = {k: parse_param(v) for k, v in runs[i].data.params.items()
                  if k != "gpus_per_trial"}
        if params not in configs:
            configs.append(params)
        if len(configs) == top:
            break
    return configs
