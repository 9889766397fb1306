"""One search from start (or resume) to summary: Ray, Tune, the MLflow parent run, the end."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.tracking import MlflowClient

from awd.config import MODELS
from awd.data.corpus import verify_data
from awd.errors import CheckpointError, DataError, first_line
from search import diskspace, schema, storage
from search.errors import SearchError, Terminated, forget_terminations, terminate
from search.lock import DriverLock
from search.options import SearchOptions, resumed
from search.plan import concurrency_here, make_plan
from search.results import TrialSummary, pick_best
from search.stages import ablate, confirm
from search.stages.after import AfterTraining, after_training
from search.state import SearchState
from search.tracking.backfill import backfill, trial_results
from search.tracking.pareto import front_trial_ids, tag_front
from search.tracking.records import replay, spool_path
from search.tracking.registry import quiet_export_notes, start_export_warm_up
from search.tracking.store import (
    check_tracking_location,
    close_open_trials,
    ensure_experiment,
    interrupt_open_trials,
    open_store,
    prune_child_runs,
    reopen_interrupted_trials,
    start_parent_run,
    write_summary,
)
from search.tracking.transfer import best_configurations
from search.trust import verified
from search.tune import session
from search.tune.callback import MLflowTrialLogger, close_all
from search.tune.console import SearchConsole
from search.tune.grid import summarize
from search.tune.searcher import default_study_storage, searcher_for
from search.tune.signing import StateSigner
from search.tune.trainable import export_best_model
from search.uris import fail_fast_http, resolve_tracking_uri

if TYPE_CHECKING:
    from ray.tune import Tuner
    from ray.tune.result_grid import ResultGrid

    from spaces import Space

log = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    """What a finished (or ended) search leaves: its trials, the best, and where it all is."""

    trials: list[TrialSummary]
    best: TrialSummary | None
    parent_run_id: str
    tracking_uri: str
    experiment_dir: str  # a local path or a storage URI
    best_config_path: Path | None
    confirmation: confirm.Confirmation | None = None  # with --confirm-top
    stopped_by: int | None = None  # the signal (SIGINT, SIGTERM) that stopped it before its end
    experiment_id: str | None = None  # the MLflow experiment (for the link to its runs)
    after: AfterTraining | None = None  # with --cache-trials / --ensemble
    unsynced: tuple[str, ...] = ()  # spools MLflow has not taken yet: --resume must finish
    study: tuple[str, str] | None = None  # the Optuna study: (storage URL, study name)
    model_uri: str | None = None  # the winner's registered version (models:/NAME/VERSION)
    ablation: ablate.Ablation | None = None  # with --ablate
    pareto: list[str] | None = None  # with --objectives: the front's trial ids
    no_space: str | None = None  # a folder ran short of space: why the search stopped

    @property
    def produced_results(self) -> bool:
        """Whether any trial got as far as a validation perplexity."""
        return self.best is not None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_data(dataset: str) -> None:
    """Every trial would fail without its corpus, or with an edited one: say so before
    starting any."""
    try:
        verify_data(dataset)
    except DataError as e:
        fetch = f"python -m awd.data fetch {dataset}"
        hint = "" if fetch in str(e) else f" (fetch it with `{fetch}`)"
        raise SearchError(f"{e}{hint}") from None


def _console(opts: SearchOptions) -> SearchConsole:
    """The search's console output; Tune's own reporters are silenced (``verbose=0``)."""
    space = opts.space_spec
    return SearchConsole(space.metric, space.mode,
                         stopper="ASHA" if opts.scheduler == "asha" else "the scheduler")


def view_params(space: Space) -> tuple[list[str], list[str]]:
    """The space's searched params as MLflow's saved view shows them: all of them (columns),
    and those every trial run logs whatever its model (parallel coordinates, which leave out a
    run lacking one): a trial run's params are its model's full flat config."""
    from spaces.spec import searched_names, spec_of
    from spaces.spec_check import config_fields

    names = searched_names(space)
    spec = spec_of(space)
    if spec is not None and spec.model_param is not None:
        models = [str(m) for m in spec.model_param.choices or ()]
    else:
        models = list(MODELS) if space.model == "mixed" else [space.model]
    return names, [n for n in names if all(n in config_fields(m) for m in models)]


def _start_new(opts: SearchOptions, client: MlflowClient, uri: str, gpus: float,
               concurrency: int) -> tuple[Tuner, SearchState, StateSigner]:
    """The parent run, the saved state and the Tuner of a new search."""
    space = opts.space_spec
    if session.can_restore(opts.experiment_dir):
        raise SearchError(f"a search already exists at {opts.experiment_dir}; pass --resume to "
                          "continue it, or --experiment NAME to start another")
    warm_starts = (best_configurations(client, opts.warm_start_from, opts.top)
                   if opts.warm_start_from else [])
    # The study first: a storage that cannot be opened fails before anything is written.
    study_storage = opts.study_storage or default_study_storage(uri)
    study_name = f"{opts.experiment_name}-{uuid.uuid4().hex[:8]}"
    searcher = searcher_for(opts, study_storage, study_name, concurrency, warm_starts)
    exp_id = ensure_experiment(client, opts.experiment_name, uri, *view_params(space))
    params = {**opts.as_params(), "gpus_per_trial": gpus, "concurrency": concurrency,
              "max_epochs": opts.epochs, "grace_period": opts.grace, "metric": space.metric,
              "study_storage": study_storage}
    commit = git_commit()
    tags = {schema.SPACE: space.name, schema.MODEL: space.model, schema.DATASET: space.dataset,
            schema.GIT_COMMIT: commit, schema.SEED: str(opts.seed),
            schema.RAY_ADDRESS: session.gcs_address(),
            schema.STORAGE: opts.experiment_dir, schema.STUDY_STORAGE: study_storage,
            schema.STUDY_NAME: study_name}
    if opts.warm_start_from:
        tags[schema.WARM_START_FROM] = opts.warm_start_from
    parent = start_parent_run(client, exp_id, f"{space.name}-search", tags, params,
                              dataset=space.dataset, git_commit=commit)
    state = SearchState(parent_run_id=parent, experiment_id=exp_id, tracking_uri=uri,
                        options=opts, gpus_per_trial=gpus,
                        study_storage=study_storage, study_name=study_name)
    state.save(opts.experiment_dir)
    logger = MLflowTrialLogger(uri, exp_id, parent, space.name, {"gpus_per_trial": gpus},
                               experiment_dir=opts.experiment_dir)
    signer = StateSigner(opts.experiment_dir)
    tuner = session.new_tuner(opts, gpus, searcher, [logger, _console(opts), signer])
    signer.sign_changed()  # tuner.pkl, written as the Tuner was made: signed before a kill can
    return tuner, state, signer


def _write_best_config(opts: SearchOptions, best: TrialSummary) -> Path:
    path = Path(opts.best_config_path)
    path.write_text(json.dumps(best.full_config, indent=2, sort_keys=True))
    return path


def _confirm(opts: SearchOptions, state: SearchState, client: MlflowClient,
             trials: list[TrialSummary], ended: bool) -> confirm.Confirmation | None:
    """With --confirm-top (or a confirmation of this search to continue): re-train the best
    configurations and the paper configuration with new seeds (`search.stages.confirm`). Not after
    an interrupted search (``ended`` False): its winners are not known yet."""
    if not opts.confirm_top and not confirm.resumable(opts, state.parent_run_id):
        return None
    if not ended:
        log.warning("the search was interrupted: no confirmation now (--resume finishes the "
                    "search, then confirms its best configurations)")
        return None
    gpus = state.gpus_per_trial
    runs = (opts.confirm_top + 1) * opts.seeds
    return confirm.confirm_search(
        opts, trials, client, tracking_uri=state.tracking_uri,
        experiment_id=state.experiment_id, parent_run_id=state.parent_run_id,
        cpus=opts.cpus_per_trial, gpus=gpus,
        concurrency=session.default_concurrency(replace(opts, num_samples=max(runs, 1)), gpus))


def _ablate(opts: SearchOptions, state: SearchState, client: MlflowClient,
            best: TrialSummary | None, confirmation: confirm.Confirmation | None
            ) -> ablate.Ablation | None:
    """With --ablate (or an ablation of this search to continue): the winner re-trained with
    each of Table 4's removals (`search.stages.ablate`). Only after a search that ended."""
    if not opts.ablate and not ablate.resumable(opts, state.parent_run_id):
        return None
    if best is None:
        log.warning("--ablate: the search has no winner; no ablation")
        return None
    gpus = state.gpus_per_trial
    runs = (len(ablate.ROWS) + 1) * opts.seeds
    return ablate.ablate_search(
        opts, best, confirmation, client, tracking_uri=state.tracking_uri,
        experiment_id=state.experiment_id, parent_run_id=state.parent_run_id,
        cpus=opts.cpus_per_trial, gpus=gpus,
        concurrency=session.default_concurrency(replace(opts, num_samples=runs), gpus))


DRAIN_S = 120.0  # at the end, how long to wait for MLflow to take what is still queued
NO_SPACE_DRAIN_S = 5.0  # the same, when a full disk stopped the search: --resume writes it


def run_search(opts: SearchOptions) -> SearchOutcome:
    """Run (or resume) a search and write its summary to MLflow; returns what happened. One
    driver per search: a second one fails at once (`search.lock`)."""
    opts.validate()
    fail_fast_http()
    state = _saved_state(opts.experiment_dir) if opts.resume else None
    uri = state.tracking_uri if state else resolve_tracking_uri(opts.tracking_uri)
    check_data((resumed(opts, state.options) if state else opts).space_spec.dataset)
    check_tracking_location(uri)  # the store itself is opened while Ray starts (`_run`)
    if (opts.address is None or opts.address == "local") and state is None:
        check_local_resources(opts)  # before Ray starts and before the lock
    disks = _disk_folders(resumed(opts, state.options) if state else opts, uri, state)
    diskspace.check(disks)
    with DriverLock(opts.experiment_dir):  # nothing is written to a search before this
        if state is None:
            return _run(opts, uri, None, disks)
        state = _saved_state(opts.experiment_dir)  # as the lock holder sees it
        return _run(resumed(opts, state.options), uri, state, disks)


def _disk_folders(opts: SearchOptions, uri: str, state: SearchState | None
                  ) -> list[diskspace.Folder]:
    """The folders the search writes to and the free space each needs (`search.diskspace`):
    room for the running trials' checkpoints of the space's paper-sized model."""
    gpus = state.gpus_per_trial if state else opts.gpus_per_trial
    if gpus is None:  # as `session.default_gpus_per_trial` will: one each where there is a GPU
        import torch

        gpus = 1.0 if torch.cuda.is_available() and torch.cuda.device_count() >= 1 else 0.0
    concurrency = concurrency_here(opts, gpus)
    params = make_plan(opts, concurrency, gpus).params
    study = state.study_storage if state else opts.study_storage or default_study_storage(uri)
    return diskspace.folders(opts.experiment_dir, uri, spool_path(opts.experiment_dir, "").parent,
                             params, concurrency, study)


def check_local_resources(opts: SearchOptions) -> None:
    """A local search runs on this machine, whose CPUs and GPUs are known before Ray starts:
    a trial it cannot hold is refused in a second, not after Ray's start (issue 21)."""
    import torch

    cpus = os.cpu_count() or 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if opts.cpus_per_trial > cpus:
        raise SearchError(f"--cpus-per-trial {opts.cpus_per_trial:g}: this machine has {cpus} "
                          "CPUs (a local search runs here; --address joins a cluster)")
    if opts.gpus_per_trial and opts.gpus_per_trial > gpus:
        raise SearchError(f"--gpus-per-trial {opts.gpus_per_trial:g}: this machine has "
                          f"{gpus or 'no'} GPU{'s' if gpus != 1 else ''} (a local search runs "
                          "here; --address joins a cluster with GPUs)")


def _saved_state(experiment_dir: str) -> SearchState:
    """The saved search to resume: ours (`search.state`) and Tune's must both be there, and
    Tune's files must be signed, or have a signed copy (`search.trust`; checked, not repaired:
    a refusal here changes nothing)."""
    state = SearchState.load(experiment_dir)
    if not session.can_restore(experiment_dir):
        raise SearchError(f"nothing to resume at {experiment_dir} (no saved search there)")
    verified(experiment_dir, repair=False)
    return state


def _authenticated(experiment_dir: str) -> None:
    """Right before Tune reads its files: each verified (one that fails is put aside and its
    last signed copy used, `search.trust`), then each checked whole."""
    verified(experiment_dir)
    damaged = storage.damaged_tune_state(experiment_dir)
    if damaged is not None:  # Tune would restart the search from zero: refused, nothing changed
        raise SearchError(f"the search's saved state at {experiment_dir} is damaged: {damaged}; "
                          "nothing was changed. Put back a copy of that file, or start a new "
                          "search with --experiment NAME")


def _run(opts: SearchOptions, uri: str, state: SearchState | None,
         disks: list[diskspace.Folder]) -> SearchOutcome:
    with ThreadPoolExecutor(1, thread_name_prefix="mlflow-store") as pool:
        store = pool.submit(open_store, uri)  # a new SQLite store's tables, meanwhile
        session.connect_ray(opts.address)
        try:
            store.result()
        except BaseException:
            session.disconnect()  # a store that fails leaves no Ray behind
            raise
    client = MlflowClient(uri)
    if state is None:
        gpus = session.default_gpus_per_trial(opts)
        session.check_resources(opts, opts.cpus_per_trial, gpus)
        concurrency = session.default_concurrency(opts, gpus)
        for line in make_plan(opts, concurrency, gpus).lines():
            print(line, flush=True)
        tuner, state, signer = _start_new(opts, client, uri, gpus, concurrency)
        try:
            _warm_up_export()
            return _finish(opts, client, state, *_fit(tuner, signer, disks))
        except BaseException:  # stopped before Tune ran it (a signal, an error): not RUNNING
            _mark_killed(client, state, unless_ended=True)
            raise
    session.check_resources(opts, opts.cpus_per_trial, state.gpus_per_trial)
    previous = client.get_run(state.parent_run_id).info.status
    try:  # a resume that fails leaves the search as it found it
        client.update_run(state.parent_run_id, status="RUNNING")
        _catch_up(opts, state)
        reopen_interrupted_trials(client, state.experiment_id, state.parent_run_id)
        signer = StateSigner(opts.experiment_dir)
        _authenticated(opts.experiment_dir)
        tuner = session.restore_tuner(opts.experiment_dir, opts.cpus_per_trial,
                                      state.gpus_per_trial)
        signer.sign_changed()
        _warm_up_export()
        return _finish(opts, client, state, *_fit(tuner, signer, disks))
    except BaseException:
        _put_back(client, state.parent_run_id, previous)
        raise


def _put_back(client: MlflowClient, parent_run_id: str, status: str) -> None:
    """The parent's status as a failed or stopped resume found it; best effort, like
    `_mark_killed`: a store that refuses it now (away, or its SQLite file locked) costs a
    warning, never the signal's exit status or the error's own message."""
    try:
        client.update_run(parent_run_id, status=status)
    except Exception as e:
        log.warning("the parent run's status is not put back to %s (%s); --resume sets it",
                    status, first_line(e)[:200])


def _fit(tuner: Tuner, signer: StateSigner, disks: list[diskspace.Folder]
         ) -> tuple[ResultGrid, int | None, diskspace.DiskWatch]:
    """`session.fit` while the free space is watched (a folder that runs short stops it as
    Ctrl-C does: `search.diskspace`), then the session's last state files signed
    (`search.trust`), even when Tune fails. Returns the grid, the stopping signal and, when
    the watch (`DiskWatch.reason`: why the disk stopped it, if it did)."""
    watch = diskspace.DiskWatch(disks)
    try:
        with watch.watching() if session.catches_sigint() else nullcontext():
            grid, stopped_by = session.fit(tuner)
    finally:
        signer.sign_changed()
    return grid, stopped_by, watch


def _warm_up_export() -> None:
    """While the trials train, torch.export's first (slow) call, so that exporting the best
    model at the end is quick (`search.tracking.registry.start_export_warm_up`)."""
    quiet_export_notes()
    start_export_warm_up()


def _catch_up(opts: SearchOptions, state: SearchState) -> None:
    """What MLflow missed before: the spool an earlier driver left (in order, once), then any
    epoch Ray has and MLflow still lacks (Ray's results are the source of truth)."""
    for spool in (spool_path(opts.experiment_dir, state.parent_run_id),
                  spool_path(None, state.parent_run_id)):
        replay(spool, state.tracking_uri)
    backfill(state.tracking_uri, opts.experiment_dir, state.experiment_id, state.parent_run_id,
             opts.space, {"gpus_per_trial": state.gpus_per_trial})


def _finish(opts: SearchOptions, client: MlflowClient, state: SearchState, grid: ResultGrid,
            stopped_by: int | None, disks: diskspace.DiskWatch | None = None) -> SearchOutcome:
    """`_close`, stoppable: a Ctrl-C or SIGTERM while the search is being closed (the winner's
    export, the stages after it) ends the driver at once, the parent KILLED and partial, with
    the signal's exit status; --resume finishes what was left (issue 21). A disk that fills
    while the search runs or closes (`search.diskspace`) ends it the same way."""
    no_space = disks.reason if disks is not None else None

    def on_sigterm(signum: int, frame: object) -> None:
        terminate()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    try:
        drain_s = DRAIN_S if no_space is None else NO_SPACE_DRAIN_S
        return replace(_close(opts, client, state, grid, stopped_by, drain_s), no_space=no_space)
    except KeyboardInterrupt as e:
        forget_terminations()  # caught here: not one a callback swallowed
        signum = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        return _killed(opts, client, state, grid, int(signum), no_space)
    except Exception as e:  # a disk filled as the search was closed: what is saved stays saved
        if not diskspace.is_disk_full(e):
            raise
        return _killed(opts, client, state, grid, stopped_by or int(signal.SIGINT),
                       no_space or diskspace.enospc_message(e, disks.wanted if disks else []))
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _killed(opts: SearchOptions, client: MlflowClient, state: SearchState, grid: ResultGrid,
            signum: int, no_space: str | None) -> SearchOutcome:
    """A search whose closing was cut short: the parent KILLED and partial, the trial runs still
    open interrupted (best effort: with the store away, --resume closes them); nothing else is
    written."""
    _mark_killed(client, state)
    return SearchOutcome(summarize(grid), None, state.parent_run_id, state.tracking_uri,
                         opts.experiment_dir, None, None, signum, state.experiment_id,
                         no_space=no_space)


def _mark_killed(client: MlflowClient, state: SearchState, unless_ended: bool = False) -> None:
    """The parent KILLED and partial, its open trial runs interrupted; best effort (with the
    store away, --resume closes them). ``unless_ended``: a parent that ended stays as it is."""
    try:
        if unless_ended and client.get_run(state.parent_run_id).info.status != "RUNNING":
            return
        interrupt_open_trials(client, state.experiment_id, state.parent_run_id)
        client.set_tag(state.parent_run_id, schema.PARTIAL, "true")
        client.set_terminated(state.parent_run_id, "KILLED")
    except Exception as e:
        log.warning("the parent run is not marked KILLED (%s); --resume closes it",
                    first_line(e)[:200])


def _close(opts: SearchOptions, client: MlflowClient, state: SearchState, grid: ResultGrid,
           stopped_by: int | None, drain_s: float = DRAIN_S) -> SearchOutcome:
    """The end of a search, or of its part before a signal stopped it: close every trial's run
    (and drop runs of trials Ray never kept), then the parent's summary. A stopped search is
    KILLED, has no best trial yet and writes no best configuration: --resume goes on."""
    stopped = stopped_by is not None
    if stopped:  # Tune's saved state is read again here: authenticated first
        verified(opts.experiment_dir)
    unfinished = session.unfinished_trials(opts.experiment_dir) if stopped else frozenset()
    trials = summarize(grid, unfinished)
    left = close_all(drain_s)
    if left:  # MLflow is away: what it lacks is on disk, and the summary waits for it
        log.warning("MLflow unreachable at the end of the search: results kept in %s; they are "
                    "written, and the summary too, by --resume", ", ".join(map(str, left)))
        best = None if stopped else pick_best(trials)
        best_path = _write_best_config(opts, best) if best is not None else None
        return SearchOutcome(trials, best, state.parent_run_id, state.tracking_uri,
                             opts.experiment_dir, best_path, None, stopped_by,
                             state.experiment_id, unsynced=tuple(map(str, left)),
                             study=(state.study_storage, state.study_name))
    backfill(state.tracking_uri, opts.experiment_dir, state.experiment_id, state.parent_run_id,
             opts.space, {"gpus_per_trial": state.gpus_per_trial})
    on_disk = {trial_id for trial_id, _ in trial_results(opts.experiment_dir)}
    runs = prune_child_runs(client, state.experiment_id, state.parent_run_id,
                            {t.trial_id for t in trials}, on_disk)
    close_open_trials(client, runs, trials)
    best = None if stopped else pick_best(trials)
    confirmation = _confirm(opts, state, client, trials, ended=not stopped)
    after, ablation, pareto = None, None, None
    with tempfile.TemporaryDirectory() as d:
        model = None
        if best is not None and best.checkpoint is not None:
            try:
                model = export_best_model(best.checkpoint, Path(d) / "best_model.pt")
            except CheckpointError as e:
                log.warning("the best trial's model is not logged: %s", e)
        write_summary(client, state.parent_run_id, state.gpus_per_trial, runs, trials, best,
                      model, stopped=stopped)
        model_uri = client.get_run(state.parent_run_id).data.tags.get(schema.MODEL_URI)
        best_path = _write_best_config(opts, best) if best is not None else None
        if not stopped and len(opts.objective_metrics) > 1:
            pareto = front_trial_ids(state.study_storage, state.study_name)
            tag_front(client, state.parent_run_id, runs, pareto)
        if not stopped:  # the ablation, the winner's cache, the ensemble: after the results
            ablation = _ablate(opts, state, client, best, confirmation)  # are safe
            after = after_training(opts, state, client, trials, best, runs, confirmation,
                                   model, Path(d))
    return SearchOutcome(trials, best, state.parent_run_id, state.tracking_uri,
                         opts.experiment_dir, best_path, confirmation, stopped_by,
                         state.experiment_id, after, study=(state.study_storage, state.study_name),
                         model_uri=model_uri, ablation=ablation, pareto=pareto)
