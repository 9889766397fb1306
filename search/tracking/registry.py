"""The best model of a search as an MLflow model, registered in the Model Registry.

Stored once: the best trial's export (`awd.trainer.Trainer.export_checkpoint`: weights, config
and vocabulary in a file read with ``weights_only``) is logged with MLflow's PyTorch flavour on
the best trial's run, as the model `schema.LOGGED_MODEL_NAME` (``runs:/<run id>/model``), the
export inside it as ``extra_files/best_model.pt``: what ``python -m search.evaluate`` downloads
and `awd.evaluate` reads, never MLflow's loader. The flavour's own copy is a ``torch.export``
program (pt2: no pickle) of `NextWordLogProbs`, so that ``mlflow.pytorch.load_model`` and pyfunc
serving work too. Each search then adds one version to ``awdsearch-<space>``, tagged with its
numbers and origin.

Offline by construction: explicit pip requirements (MLflow infers none, so no pip runs) and
no network but the tracking store. Ray-free.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import mlflow
import mlflow.artifacts
import numpy as np
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from torch import nn

from awd.ensemble import Ensemble
from awd.errors import first_line
from awd.evaluate import EXPORT_FILE, EXPORT_IN_MODEL, ModelNotFoundError
from awd.trainer import ExportedModel, load_exported
from search import schema
from search.uris import sqlite_path

log = logging.getLogger(__name__)

CONTEXT = 35  # tokens per sequence in the pt2 program's signature (torch.export fixes it)
REGISTRATION_WAIT_S = 60  # how long a registry may take to make a version READY
WARM_UP_EXIT_WAIT_S = 60  # how long the interpreter's exit waits for a warm-up still running
_EXPORTING = threading.Lock()  # torch.export is not thread-safe: one program at a time


def quiet_export_notes() -> None:
    """torch.export notes that nn.LSTM caches its weight list: harmless, not ours. Silenced
    for the whole process (on the main thread, before `warm_up_export` starts)."""
    warnings.filterwarnings("ignore", message="The tensor attributes", category=UserWarning)


def start_export_warm_up() -> threading.Thread:
    """`warm_up_export` in a daemon thread, joined when the interpreter exits: a process whose
    main thread ends while this thread is inside torch.export aborts (SIGABRT in torch's Python
    dispatcher during finalization), as a resume with nothing left to train did. Daemon, so a
    Ctrl-C is not held up by it; the exit waits at most `WARM_UP_EXIT_WAIT_S`."""
    thread = threading.Thread(target=warm_up_export, name="export-warm-up", daemon=True)
    thread.start()
    atexit.register(thread.join, WARM_UP_EXIT_WAIT_S)
    return thread


def warm_up_export() -> None:
    """Import MLflow's PyTorch flavour and export a tiny model once, so that logging the best
    model at the end of a search is quick: that import takes about 2 s, and torch.export's first
    call in a process loads and warms its tracing machinery (3-4 s on 2 cores; the next call of
    another model takes under 1 s). A search runs this in a background thread while its trials
    train. Best effort: a failure here changes nothing.

    No ``warnings.catch_warnings`` here: the filters are the whole process's, and a thread that
    saves and restores them can undo another thread's; `quiet_export_notes` is called on the
    main thread instead. The root logger is restored from this thread after the import (see
    `_root_logging_kept`): the driver sets up no logging while a search runs, so nothing of the
    main thread's is overwritten."""
    try:
        from awd.config import from_flat
        from awd.models import build_model

        with _EXPORTING, _root_logging_kept():
            import mlflow.pytorch  # noqa: F401  (see `_root_logging_kept`)
        with _EXPORTING:
            model = build_model(from_flat({"model": "awd_lstm", "emsize": 4, "nhid": 4,
                                           "nlayers": 1}), 8).eval()
            torch.export.export(NextWordLogProbs(model),
                                (torch.zeros(2, CONTEXT, dtype=torch.long),))
    except Exception as e:  # the real export says what is wrong, if anything is
        log.debug("torch.export warm-up failed: %s", first_line(e))


class NextWordLogProbs(nn.Module):
    """A language model as one tensor in, one out: token ids (batch, time) -> log-probabilities
    of the next word (batch, time, vocabulary), from the zero state. Causal, so a sequence
    shorter than `CONTEXT` right-padded with any ids has the same values at its positions."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        init_hidden: Any = self.model.init_hidden
        out = self.model(token_ids.t(), init_hidden(token_ids.size(0)))
        return torch.log_softmax(out.logits, dim=-1).transpose(0, 1)


def registered_model_name(space: str) -> str:
    """One registered model per space: each search of it adds a version."""
    return f"{schema.REGISTERED_MODEL_PREFIX}{space}"


@dataclass(frozen=True)
class BestModel:
    """A search's best trial and what its registered version says about it."""

    export_file: Path  # `Trainer.export_checkpoint`'s file
    run_id: str  # the run that owns the model: the best trial's
    parent_run_id: str
    experiment_name: str
    space: str
    trial_id: str
    val_ppl: float
    test_ppl: float | None  # None: the trial did not finish (no test evaluation)

    def tags(self, exported: ExportedModel) -> dict[str, str]:
        tags = {schema.MODEL_VAL_PPL: repr(self.val_ppl),
                schema.MODEL_PARENT_RUN_ID: self.parent_run_id, schema.TRIAL_ID: self.trial_id,
                schema.MODEL: exported.run.model, schema.DATASET: exported.run.dataset,
                schema.SPACE: self.space, schema.EXPERIMENT: self.experiment_name}
        if self.test_ppl is not None:
            tags[schema.MODEL_TEST_PPL] = repr(self.test_ppl)
        return tags

    def description(self) -> str:
        test = "n/a" if self.test_ppl is None else f"{self.test_ppl:.2f}"
        return (f"best trial {self.trial_id} of search {self.experiment_name} (parent run "
                f"{self.parent_run_id}): val ppl {self.val_ppl:.2f}, test ppl {test}")


def signature(vocab_size: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.int64), (-1, CONTEXT))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, CONTEXT, vocab_size))]))


def input_example(vocab_size: int) -> np.ndarray:
    """Two sequences of token ids (two: torch.export keeps a batch of 1 static)."""
    return np.arange(2 * CONTEXT, dtype=np.int64).reshape(2, CONTEXT) % vocab_size


def pip_requirements() -> list[str]:
    """What loading the pt2 program needs (MLflow adds itself); the release, not a local build
    tag such as +cpu that no index serves."""
    return [f"torch=={torch.__version__.split('+')[0]}"]


@contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """``mlflow.pytorch.log_model`` writes to MLflow's global tracking URI, and so does the
    registry when it looks up a ``models:/<model id>`` source (else it opens ./mlflow.db);
    setting that URI also sets ``$MLFLOW_TRACKING_URI``: both are put back as they were."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = getattr(tracking_utils, "_tracking_uri", None)  # what a caller set, if anything
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None: from env again
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env
        else:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


@contextmanager
def _root_logging_kept() -> Iterator[None]:
    """Importing ``mlflow.pytorch`` runs ``logging.basicConfig(level=ERROR)`` (its Lightning
    autolog module): in a process without logging set up, that would silence every warning of
    the search from then on. The root logger's level and handlers are put back."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def log_model(client: MlflowClient, best: BestModel, exported: ExportedModel) -> str:
    """Log the export as an MLflow PyTorch model on ``best.run_id``; returns its model id. A
    model that an earlier driver logged there already (killed before it registered it) is
    reused; one whose logging fails is marked FAILED, so that ``runs:/`` URIs skip it."""
    run = client.get_run(best.run_id)
    for logged in client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{best.run_id}' AND name = "
                          f"'{schema.LOGGED_MODEL_NAME}'"):
        if logged.status == LoggedModelStatus.READY:
            return str(logged.model_id)
    model = client.create_logged_model(  # in the run's experiment (log_model's own would not)
        run.info.experiment_id, name=schema.LOGGED_MODEL_NAME, source_run_id=best.run_id,
        tags=best.tags(exported), params=dict(run.data.params))
    try:
        _log_pytorch_model(client, best, exported, str(model.model_id))
    except Exception:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    return str(model.model_id)


def _log_pytorch_model(client: MlflowClient, best: BestModel, exported: ExportedModel,
                       model_id: str) -> None:
    _log_module(client, best.run_id, model_id, NextWordLogProbs(exported.build()).eval(),
                best.export_file, len(exported.vocab))


def _log_module(client: MlflowClient, run_id: str, model_id: str, module: nn.Module,
                export_file: Path, vocab: int) -> None:
    """``module`` as MLflow's pt2 program, with ``export_file`` as the file `awd.evaluate`
    reads (extra_files/best_model.pt)."""
    with tempfile.TemporaryDirectory() as d:
        export = export_file
        if export.name != EXPORT_FILE:  # the name `awd.evaluate` looks for
            export = Path(shutil.copyfile(export, Path(d) / EXPORT_FILE))
        with _EXPORTING, _fluent_tracking_uri(client.tracking_uri), \
                warnings.catch_warnings(), _root_logging_kept():
            import mlflow.pytorch  # here, not at import: see `_root_logging_kept`

            # torch.export notes that nn.LSTM caches its weight list: harmless, not ours
            warnings.filterwarnings("ignore", message="The tensor attributes", category=UserWarning)
            mlflow.pytorch.log_model(
                module, name=schema.LOGGED_MODEL_NAME, run_id=run_id, model_id=model_id,
                serialization_format="pt2", signature=signature(vocab),
                input_example=input_example(vocab), extra_files=[str(export)],
                pip_requirements=pip_requirements())


def register(client: MlflowClient, best: BestModel, exported: ExportedModel,
             model_id: str) -> Any:
    """A new version of the space's registered model (created on first use); returns it."""
    return _new_version(client, registered_model_name(best.space),
                        f"the best model of each awdsearch search of space {best.space}",
                        model_id, best.run_id, best.tags(exported), best.description())


def _new_version(client: MlflowClient, name: str, model_description: str, model_id: str,
                 run_id: str, tags: dict[str, str], description: str) -> Any:
    """A new version of registered model ``name`` (created on first use) for the logged
    model ``model_id``; returns it."""
    try:
        client.create_registered_model(name, description=model_description)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    with _fluent_tracking_uri(client.tracking_uri):
        return client.create_model_version(
            name, source=f"models:/{model_id}", run_id=run_id, tags=tags,
            description=description, await_creation_for=REGISTRATION_WAIT_S,
            model_id=model_id)


def publish_best_model(client: MlflowClient, best: BestModel) -> str | None:
    """Log and register the best model; returns its URI (the registered version's, or the
    logged model's if only registration failed) and tags the best trial's and the parent's runs
    with it. Never raises: the search's results are written already, and a store that refuses
    the model costs only the model (a warning says why). Once per search: a search closed
    again (``--resume`` of a finished search, a driver killed after registering) finds its
    version instead of adding another."""
    try:
        published = _published_uri(client, best)
    except Exception as e:
        log.warning("cannot tell whether the best model is registered already (%s)",
                    first_line(e))
        return None
    if published is not None:
        _tag_runs(client, best, published)
        return published
    try:
        exported = load_exported(best.export_file)
        model_id = log_model(client, best, exported)
    except Exception as e:  # any failure, MLflow's or torch.export's: the summary stands
        log.warning("the best model is not logged to MLflow (%s: %s)", type(e).__name__,
                    first_line(e))
        return None
    uri = f"models:/{model_id}"
    try:
        version = register(client, best, exported, model_id)
        uri = f"models:/{version.name}/{version.version}"
    except Exception as e:
        log.warning("the best model is logged (%s) but not registered (%s: %s)", uri,
                    type(e).__name__, first_line(e))
    else:
        try:
            set_aliases(client, str(version.name), str(version.version), best.experiment_name)
        except Exception as e:
            log.warning("the best model %s has no aliases (%s)", uri, first_line(e))
    _tag_runs(client, best, uri)
    return uri


BEST_ALIAS = "best"  # the version with the lowest validation perplexity of a registered model


def search_alias(experiment: str) -> str:
    """The alias of a search's version: its experiment's name, in the characters MLflow takes
    (`models:/awdsearch-smoke@my_search`); never a reserved name."""
    alias = re.sub(r"[^\w-]", "_", experiment)[:200] or "search"
    if alias.lower() in ("latest", BEST_ALIAS) or re.fullmatch(r"[vV]\d+", alias):
        alias = f"search-{alias}"
    return alias


def set_aliases(client: MlflowClient, name: str, version: str, experiment: str) -> list[str]:
    """The search's own alias on its version, and `BEST_ALIAS` on the version of ``name`` with
    the lowest validation perplexity (its ``awdsearch.val_ppl`` tag); returns the version's."""
    own = search_alias(experiment)
    client.set_registered_model_alias(name, own, version)
    scored = []
    for v in client.search_model_versions(f"name = '{name}'"):
        try:
            scored.append((float(v.tags[schema.MODEL_VAL_PPL]), int(v.version)))
        except (KeyError, ValueError):
            continue
    aliases = [own]
    if scored:
        best = min(scored)[1]
        client.set_registered_model_alias(name, BEST_ALIAS, str(best))
        if str(best) == str(version):
            aliases.append(BEST_ALIAS)
    return aliases


def _published_uri(client: MlflowClient, best: BestModel) -> str | None:
    """The URI of the model this search registered already: the parent's tag, or a version
    of the space's registered model that names this parent run."""
    tags = client.get_run(best.parent_run_id).data.tags
    if schema.MODEL_URI in tags:
        return str(tags[schema.MODEL_URI])
    name = registered_model_name(best.space)
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get(schema.MODEL_PARENT_RUN_ID) == best.parent_run_id:
            return f"models:/{name}/{version.version}"
    return None


def _tag_runs(client: MlflowClient, best: BestModel, uri: str) -> None:
    try:
        for run_id in (best.run_id, best.parent_run_id):
            client.set_tag(run_id, schema.MODEL_URI, uri)
    except Exception as e:
        log.warning("the runs are not tagged with the best model %s (%s)", uri, first_line(e))


# --- an ensemble (`search.stages.ensemble`) -------------------------------------------------
class EnsembleLogProbs(nn.Module):
    """An ensemble as one tensor in, one out: log Σ_m w_m·p_m(next word), each member from the
    zero state (`NextWordLogProbs` of each)."""

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.members = nn.ModuleList(NextWordLogProbs(m.build()) for m in ensemble.members)
        weights = torch.tensor(ensemble.weights, dtype=torch.float32)
        self.register_buffer("log_weights", torch.log(weights / weights.sum()))

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        per_member = torch.stack([m(token_ids) for m in self.members])
        log_weights = cast(torch.Tensor, self.log_weights)
        return torch.logsumexp(per_member + log_weights.view(-1, 1, 1, 1), dim=0)


def publish_ensemble(client: MlflowClient, run_id: str, space: str, ensemble_file: Path,
                     ensemble: Ensemble, tags: dict[str, str], description: str) -> str | None:
    """Log the ensemble on its stage's run and register it as a version of
    ``awdsearch-<space>-ensemble``; returns its URI (None, with a warning, if the store refuses:
    the stage's numbers are logged already). Once per run: a resumed stage finds its version."""
    name = registered_model_name(space) + schema.ENSEMBLE_MODEL_SUFFIX
    try:
        for version in client.search_model_versions(f"name = '{name}'"):
            if version.run_id == run_id:
                return f"models:/{name}/{version.version}"
        experiment_id = client.get_run(run_id).info.experiment_id
        model = client.create_logged_model(experiment_id, name=schema.LOGGED_MODEL_NAME,
                                           source_run_id=run_id, tags=tags)
        try:
            _log_module(client, run_id, str(model.model_id), EnsembleLogProbs(ensemble).eval(),
                        ensemble_file, len(ensemble.vocab))
        except Exception:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        version = _new_version(client, name,
                               f"the ensemble of each awdsearch search of space {space}",
                               str(model.model_id), run_id, tags, description)
        return f"models:/{name}/{version.version}"
    except Exception as e:
        log.warning("the ensemble is not registered in MLflow (%s: %s)", type(e).__name__,
                    first_line(e))
        return None


def tuned_cache(uri: str, tracking_uri: str) -> str | None:
    """The cache values (`schema.CACHE_VALUES`, "W,θ,λ") kept with the MLflow model ``uri``
    names: its registered version's tag, else its run's; None if it has none."""
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    kind, _, rest = uri.partition(":/")
    rest = rest.strip("/")
    try:
        if kind == "runs":
            return client.get_run(rest.partition("/")[0]).data.tags.get(schema.CACHE_VALUES)
        name, _, version = rest.partition("/")
        if name.startswith("m-") and not version:  # a logged model: its run's
            run_id = client.get_logged_model(name).source_run_id
            return client.get_run(run_id).data.tags.get(schema.CACHE_VALUES) if run_id else None
        name, _, alias = name.partition("@")
        if alias:
            found = client.get_model_version_by_alias(name, alias)
        elif version == "latest":
            versions = client.search_model_versions(
                f"name = '{name}'", order_by=["version_number DESC"], max_results=1)
            if not versions:
                return None
            found = versions[0]
        elif version.isdigit():
            found = client.get_model_version(name, version)
        else:
            return None
        return found.tags.get(schema.CACHE_VALUES)
    except MlflowException as e:
        raise ModelNotFoundError(f"{uri}: {first_line(e)}") from None


# --- reading a model back: `python -m search.evaluate` -------------------------------------
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # MLflow's per-download bar, unless set


def download_export(uri: str, tracking_uri: str, dest: Path) -> Path:
    """Download the export inside the MLflow model ``uri`` (``models:/...`` or ``runs:/...``)
    into ``dest``: the file `awd.evaluate` reads, and nothing else of the model."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():  # MLflow would create an empty store, find nothing
        raise ModelNotFoundError(f"no MLflow store at {db} (pass --tracking-uri, or set "
                                     "$MLFLOW_TRACKING_URI)")
    os.environ.setdefault(PROGRESS_BAR, "false")  # one bar per file: noise on the console
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        root = _model_location(client, uri)
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{root.rstrip('/')}/{EXPORT_IN_MODEL}", dst_path=str(dest),
            tracking_uri=tracking_uri)
    except MlflowException as e:
        raise ModelNotFoundError(f"{uri}: {first_line(e)}") from None
    return Path(path)


def _model_location(client: MlflowClient, uri: str) -> str:
    """The artifact location of the MLflow model ``uri`` names."""
    kind, _, rest = uri.partition(":/")
    rest = rest.strip("/")
    if kind == "runs":
        run_id, _, name = rest.partition("/")
        run = client.get_run(run_id)
        name = name or "model"
        models = client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
        ready = [m for m in models if str(m.status) == "READY"]
        if not ready:  # (a model whose logging failed is FAILED, one being logged PENDING)
            raise ModelNotFoundError(f"{uri}: run {run_id} has no MLflow model named {name!r}")
        return str(ready[0].artifact_location)
    name, _, version = rest.partition("/")
    if name.startswith("m-") and not version:  # a logged model's own id
        return str(client.get_logged_model(name).artifact_location)
    name, _, alias = name.partition("@")
    if alias:
        found = client.get_model_version_by_alias(name, alias)
    elif version == "latest":
        client.get_registered_model(name)  # an unknown name says so
        versions = client.search_model_versions(
            f"name = '{name}'", order_by=["version_number DESC"], max_results=1)
        if not versions:
            raise ModelNotFoundError(f"{uri}: registered model {name!r} has no versions")
        found = versions[0]
    elif version.isdigit():
        found = client.get_model_version(name, version)
    else:
        raise ModelNotFoundError(f"{uri}: expected models:/NAME/latest, models:/NAME/<version> "
                                 "or models:/NAME@alias")
    source = str(found.source)
    if source.startswith("models:/m-"):  # MLflow 3: the version points at a logged model
        model_id = source[len("models:/"):].strip("/")
        return str(client.get_logged_model(model_id).artifact_location)
    return source
