"""The search command's options: one validated dataclass, the one source of their defaults.

`SearchOptions` is what the command line builds (`build_parser` takes every default from the
dataclass), what a search's saved state keeps (`to_json` / `from_json`) and what ``--resume``
compares against (`resume_conflicts`, `resumed`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import MISSING, asdict, dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from awd.ablation import ROWS as ABLATION_ROWS
from awd.ablation import parse_rows
from awd.config import MODELS, from_flat
from awd.errors import UserError, first_line
from search import schema, storage
from search.results import parse_param
from search.uris import ENV_TRACKING_URI, SQLITE

if TYPE_CHECKING:
    from spaces import Space

SCHEDULERS = ("asha", "none")
SAMPLERS = ("tpe", "random")
# --objectives' names -> the result metrics Optuna minimises (`search.schema`)
OBJECTIVES = {"val_ppl": schema.BEST_VAL_PPL, "num_params": schema.NUM_PARAMS,
              "train_seconds": schema.TRAIN_SECONDS}
MAX_SEED = 2**32 - 1  # numpy's (and so Optuna's) largest seed
MAX_CACHE_TRIALS = 10_000  # each a pass over the stored validation outputs
MAX_ENSEMBLE = 1000  # greedy steps (awd.ensemble.MAX_SIZE)
MAX_NAME = 200
# An MLflow experiment name that is also one folder under --storage.
EXPERIMENT_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9_.-]{{0,{MAX_NAME - 1}}}")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
SQL_DIALECTS = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle")


class OptionError(UserError):
    """A flag value that cannot work; the message names the flag."""


@dataclass(frozen=True)
class SearchOptions:
    space: str = "smoke"
    num_samples: int = 20
    max_epochs: int | None = None  # None: the space's default
    grace_period: int | None = None
    concurrency: int | None = None  # None: as many as the cluster's resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 if the cluster has GPUs, else 0
    address: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    storage: str = "ray_results"
    scheduler: str = "asha"
    seed: int = 0
    resume: bool = False
    time_budget: float | None = None
    max_failures: int = 2
    best_config: str | None = None
    fixed: tuple[str, ...] = ()  # "KEY=VALUE": a config value fixed for every trial
    study_storage: str | None = None  # Optuna storage URL; None: optuna.db beside mlflow.db
    sampler: str = "tpe"
    warm_start_from: str | None = None  # an earlier search's MLflow experiment
    top: int = 3  # how many of its best configurations to enqueue
    confirm_top: int = 0  # re-train this many best configurations with new seeds at the end
    seeds: int = 3  # seeds per confirmed configuration (and per ablation row)
    ablate: str = ""  # after the search, Table 4's removals of the winner: "all", "ROW,ROW" or off
    objectives: str = ""  # "val_ppl,num_params": a multi-objective search ("": val_ppl alone)
    cache_trials: int = 0  # tune the continuous cache of the winner with this many trials
    ensemble: int = 0  # greedy ensemble selection of up to this many members at the end
    report_intermediate: bool = True  # every epoch's objective reaches Optuna (off: ablation)
    space_file: str | None = None  # a YAML space (absolute path); then `space` is its name
    space_sha256: str | None = None  # the file's space when the search started (`spec_digest`)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (``fixed`` as a list): how a search's state file keeps them."""
        return {**asdict(self), "fixed": list(self.fixed)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchOptions:
        """Back from `to_json`; a key this version does not know raises TypeError."""
        return cls(**{**data, "fixed": tuple(data.get("fixed", ()))})

    def as_params(self) -> dict[str, Any]:
        """The options as MLflow params: ``fixed`` as a JSON list, so that a reader parses it
        with ``json.loads`` (MLflow stores every param as a string)."""
        return {**asdict(self), "fixed": json.dumps(list(self.fixed))}

    @property
    def fixed_values(self) -> dict[str, Any]:
        """``fixed`` as a dict; values that spell JSON numbers or booleans become them, so
        that Tune's config and MLflow's params carry the same types as searched values."""
        return {key: parse_param(value) for key, value in (i.split("=", 1) for i in self.fixed)}

    @cached_property
    def space_spec(self) -> Space:
        """The registered space, or the space file's: read once per options, and refused if
        it is no longer the space the search started with (a resumed search's saved digest)."""
        from spaces import SPACES, get_space, load_space_file, spec_digest, spec_of  # optuna

        if self.space_file is None:
            return get_space(self.space)
        spec = load_space_file(self.space_file)
        if self.space_sha256 is not None and spec_digest(spec) != self.space_sha256:
            raise OptionError(f"--space-file {self.space_file}: the space changed since the "
                              "search started; put the file back as it was, or start a new "
                              "search with --experiment NAME")
        if spec.name != self.space:
            raise OptionError(f"--space-file {self.space_file} declares the space "
                              f"{spec.name!r}, not {self.space!r}")
        builtin = SPACES.get(spec.name)
        if builtin is not None and spec_of(builtin) != spec:
            raise OptionError(f"--space-file {self.space_file}: {spec.name!r} is a built-in "
                              "space's name; give the changed space a name of its own")
        return spec.to_space()

    @property
    def epochs(self) -> int:
        return self.max_epochs or self.space_spec.max_epochs

    @property
    def grace(self) -> int:
        return min(self.grace_period or self.space_spec.grace_period, self.epochs)

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.space

    @property
    def storage_path(self) -> str:
        """Ray's storage: an absolute local path, or a URI (s3://, gs://, ...) left as it is."""
        return storage.absolute(self.storage)

    @property
    def experiment_dir(self) -> str:
        return storage.join(self.storage_path, self.experiment_name)

    @property
    def best_config_path(self) -> str:
        """Where the best configuration is written when the search ends."""
        return self.best_config or f"best_config_{self.experiment_name}.json"

    def validate(self) -> SearchOptions:
        """Every flag checked, with no Ray, no tracking store and no training: a value that
        cannot work raises `OptionError` (one line, naming the flag) before anything starts."""
        self.space_spec  # noqa: B018 - raises for an unknown space or a bad space file
        for flag, value in self._texts():
            _check_text(flag, value)
        self._check_numbers()
        self._check_names()
        self._check_locations()
        self._check_fixed()
        self._check_ablate()
        self._check_objectives()
        return self

    def _texts(self) -> list[tuple[str, str | None]]:
        return [("--space", self.space), ("--space-file", self.space_file),
                ("--address", self.address),
                ("--tracking-uri", self.tracking_uri), ("--experiment", self.experiment),
                ("--storage", self.storage), ("--scheduler", self.scheduler),
                ("--best-config", self.best_config), ("--study-storage", self.study_storage),
                ("--sampler", self.sampler), ("--warm-start-from", self.warm_start_from),
                *[("--set", item) for item in self.fixed]]

    def _check_numbers(self) -> None:
        _check_int("--num-samples", self.num_samples, 1)
        _check_int("--max-epochs", self.max_epochs, 1, optional=True)
        _check_int("--grace-period", self.grace_period, 1, optional=True)
        _check_int("--concurrency", self.concurrency, 1, optional=True)
        _check_int("--seed", self.seed, 0, MAX_SEED)
        _check_int("--max-failures", self.max_failures, 0)
        _check_int("--top", self.top, 1)
        _check_int("--confirm-top", self.confirm_top, 0)
        _check_int("--seeds", self.seeds, 1)
        _check_int("--cache-trials", self.cache_trials, 0, MAX_CACHE_TRIALS)
        _check_int("--ensemble", self.ensemble, 0, MAX_ENSEMBLE)
        _check_float("--cpus-per-trial", self.cpus_per_trial, above=0)
        _check_float("--gpus-per-trial", self.gpus_per_trial, at_least=0, optional=True)
        _check_float("--time-budget", self.time_budget, above=0, optional=True)
        if self.gpus_per_trial is not None and self.gpus_per_trial > 1 \
                and not float(self.gpus_per_trial).is_integer():
            raise OptionError("--gpus-per-trial above 1 must be a whole number")

    def _check_names(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise OptionError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, "
                              f"got {self.scheduler!r}")
        if self.sampler not in SAMPLERS:
            raise OptionError(f"--sampler must be one of {', '.join(SAMPLERS)}, "
                              f"got {self.sampler!r}")
        if self.experiment is not None and not EXPERIMENT_NAME.fullmatch(self.experiment):
            raise OptionError(f"--experiment must be a plain name (letters, digits, '-', '_', "
                              f"'.'; not starting with '.'; at most {MAX_NAME} characters), "
                              f"got {self.experiment!r}")
        if self.warm_start_from is not None and not self.warm_start_from.strip():
            raise OptionError("--warm-start-from needs an experiment name")
        if self.address is not None:
            problem = address_problem(self.address)
            if problem:
                raise OptionError(f"--address {self.address!r}: {problem}")

    def _check_locations(self) -> None:
        source, uri = tracking_uri_source(self.tracking_uri)
        if uri is not None and (self.tracking_uri is not None or not self.resume):
            problem = tracking_uri_problem(uri)  # a resumed search keeps its saved store
            if problem:
                raise OptionError(f"{source} {uri!r}: {problem}")
        if self.study_storage is not None:
            problem = study_storage_problem(self.study_storage)
            if problem:
                raise OptionError(f"--study-storage {self.study_storage!r}: {problem}")
        if not self.storage.strip():
            raise OptionError("--storage needs a folder or a URI")
        if storage.is_uri(self.storage):
            problem = _uri_problem(self.storage)
            if problem:
                raise OptionError(f"--storage {self.storage!r}: {problem}")
        else:
            try:
                folder = Path(self.experiment_dir)
            except RuntimeError:  # expanduser of ~name for an unknown user
                raise OptionError(f"--storage {self.storage!r}: unknown home folder") from None
            problem = storage.folder_problem(folder)
            if problem:
                raise OptionError(f"--storage {self.storage!r}: {problem}")
        if self.best_config is not None and not self.best_config.strip():
            raise OptionError("--best-config needs a file name")
        problem = storage.file_problem(Path(self.best_config_path))
        if problem:
            flag = "--best-config" if self.best_config else "--best-config (default)"
            raise OptionError(f"{flag} {self.best_config_path!r}: {problem}")

    def _check_fixed(self) -> None:
        keys: set[str] = set()
        for item in self.fixed:
            key = item.split("=", 1)[0]
            if "=" not in item or not key.strip():
                raise OptionError(f"--set takes KEY=VALUE, got {item!r}")
            if key in keys:
                raise OptionError(f"--set {key} given twice")
            if key == "epochs":
                raise OptionError("--set epochs: the epoch budget is --max-epochs")
            keys.add(key)
        if not self.fixed:
            return
        try:  # on the space's first configuration: an unknown key or bad value fails here
            config = from_flat(self.space_spec.paper_config(**self.fixed_values)).to_flat()
        except UserError as e:
            raise OptionError(f"--set: {first_line(e)}") from None
        for key in keys:
            value = config.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise OptionError(f"--set: {key} must be a finite number, got {value}")

    def _check_ablate(self) -> None:
        if not self.ablate:
            return
        model = self.space_spec.model
        models = MODELS if model == "mixed" else (model,)
        problems = []
        for name in models:  # a mixed space: a row must apply to one of its models at least
            try:
                parse_rows(self.ablate, name)
                return
            except UserError as e:
                problems.append(first_line(e))
        raise OptionError(problems[0])


    def _check_objectives(self) -> None:
        if not self.objectives:
            return
        names = [n.strip() for n in self.objectives.split(",")]
        for name in names:
            if name not in OBJECTIVES:
                raise OptionError(f"--objectives: unknown metric {name!r}; known: "
                                  f"{', '.join(OBJECTIVES)}")
            if names.count(name) > 1:
                raise OptionError(f"--objectives: {name} is given twice")
        if "val_ppl" not in names:
            raise OptionError("--objectives: val_ppl must be one of them (a search for the "
                              "smallest or fastest model alone finds an untrained one)")
        if self.scheduler == "asha" and names[0] != "val_ppl":
            raise OptionError(f"--objectives {self.objectives}: ASHA stops trials on the first "
                              "objective, which must be val_ppl (num_params and train_seconds "
                              "say nothing early); put val_ppl first, or pass --scheduler none")

    @property
    def objective_metrics(self) -> tuple[str, ...]:
        """The result metrics Optuna minimises, val_ppl's first with ASHA; one: the space's."""
        metric = self.space_spec.metric
        if not self.objectives:
            return (metric,)
        return tuple(metric if n.strip() == "val_ppl" else OBJECTIVES[n.strip()]
                     for n in self.objectives.split(","))


# --- resuming a saved search --------------------------------------------------------------
# Flags a resumed search takes from the command line; every other one is the saved search's.
RESUME_OVERRIDES = frozenset({"resume", "address", "best_config", "confirm_top", "seeds", "ablate",
                              "storage", "experiment", "cache_trials", "ensemble"})
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(SearchOptions)
                            if f.default is not MISSING}


def resume_conflicts(given: SearchOptions, saved: SearchOptions) -> list[str]:
    """The flags given with --resume (set to other than their defaults) that differ from the
    saved search's: Tune's restore would silently ignore them."""
    conflicts = []
    for name, value in asdict(given).items():
        was = getattr(saved, name)
        if name in RESUME_OVERRIDES or value == DEFAULTS[name] or value == was:
            continue
        if name == "space_sha256":  # not a flag: the file's space, by content
            conflicts.append("--space-file: the space in the file changed since the search "
                             "started")
            continue
        flag = "--set" if name == "fixed" else "--" + name.replace("_", "-")
        conflicts.append(f"{flag} {_shown(value)} (saved: {_shown(was)})")
    return conflicts


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def resumed(given: SearchOptions, saved: SearchOptions) -> SearchOptions:
    """The options a resumed search runs with: the saved ones, but for the flags a resume may
    change (`RESUME_OVERRIDES`); a confirmation asked for at the start is kept unless one is
    asked for now. Flags that conflict with the saved search raise `OptionError`."""
    conflicts = resume_conflicts(given, saved)
    if conflicts:
        raise OptionError("--resume continues the saved search as it was started; these flags "
                          f"differ from it: {'; '.join(conflicts)}. Leave them out, or start a "
                          "new search with --experiment NAME")
    kept = {name: getattr(given, name) for name in RESUME_OVERRIDES}
    if not given.confirm_top:
        kept.update(confirm_top=saved.confirm_top)
    if not given.confirm_top and not given.ablate:
        kept.update(seeds=saved.seeds)
    if not given.ablate:
        kept.update(ablate=saved.ablate)
    if not given.cache_trials:
        kept.update(cache_trials=saved.cache_trials)
    if not given.ensemble:
        kept.update(ensemble=saved.ensemble)
    return replace(saved, **kept)


def _check_text(flag: str, value: str | None) -> None:
    if value is not None and CONTROL.search(value):
        raise OptionError(f"{flag} contains a control character: {value!r}")


def _check_int(flag: str, value: int | None, minimum: int, maximum: int | None = None,
               optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise OptionError(f"{flag} must be a whole number, got {value!r}")
    if value < minimum:
        raise OptionError(f"{flag} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise OptionError(f"{flag} must be <= {maximum}, got {value}")


def _check_float(flag: str, value: float | None, above: float | None = None,
                 at_least: float | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) \
            or not math.isfinite(value):
        raise OptionError(f"{flag} must be a finite number, got {value!r}")
    if above is not None and not value > above:
        raise OptionError(f"{flag} must be > {above:g}, got {value:g}")
    if at_least is not None and not value >= at_least:
        raise OptionError(f"{flag} must be >= {at_least:g}, got {value:g}")


def _scheme(location: str) -> str | None:
    """A URI's scheme, lower-cased; None for a plain path (a Windows drive letter included)."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", location)
    return match.group(1).lower() if match else None


def _uri_problem(uri: str) -> str | None:
    """A ``scheme://rest`` URI with something after the ``//``."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return "not a URI (scheme://...)"
    if not rest.strip("/"):
        return "nothing after the scheme"
    return None


def _http_problem(uri: str) -> str | None:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as e:
        return str(e)
    if not parts.hostname:
        return "no host (http(s)://HOST[:PORT])"
    return None


def _sqlite_form_problem(uri: str) -> str | None:
    if not uri.startswith(SQLITE) or not uri[len(SQLITE):].strip():
        return "a SQLite store is sqlite:///PATH (sqlite:////ABS/PATH for an absolute one)"
    return None


def tracking_uri_problem(uri: str) -> str | None:
    """What is wrong with an MLflow tracking URI's form (None: nothing); whether the store can be
    reached is checked later: a server's health and a SQLite file's folder before Ray starts,
    the store itself while Ray starts (`search.tracking.store`).
    Accepted: sqlite:///PATH, http(s)://HOST[:PORT], file:PATH, a folder, a database URL
    (postgresql://, mysql://, mssql://) or databricks."""
    if not uri.strip():
        return "empty (leave the flag out for the default store)"
    if CONTROL.search(uri):
        return "contains a control character"
    scheme = _scheme(uri)
    if scheme is None:
        return None  # a local folder: MLflow's file store
    if scheme in ("http", "https"):
        return _http_problem(uri)
    if scheme == "sqlite":  # its folder is checked with the store, before Ray starts
        return _sqlite_form_problem(uri)
    if scheme == "file":
        return None if uri[len("file:"):].strip("/") else "file: needs a path"
    if scheme.split("+", 1)[0] in SQL_DIALECTS[1:]:
        return _uri_problem(uri)
    if scheme in ("databricks", "databricks-uc"):
        return None
    return (f"unknown scheme {scheme!r}; use sqlite:///PATH, http(s)://HOST[:PORT], file:PATH, "
            "a folder, or a database URL")


def tracking_uri_source(flag: str | None) -> tuple[str, str | None]:
    """Where the tracking URI comes from (the flag, else the environment) and its value; None
    for the default store (`search.uris.resolve_tracking_uri` decides the same way)."""
    if flag is not None:
        return "--tracking-uri", flag
    env = os.environ.get(ENV_TRACKING_URI, "")
    return f"${ENV_TRACKING_URI}", env if env.strip() else None


def study_storage_problem(url: str) -> str | None:
    """What is wrong with an Optuna (SQLAlchemy) storage URL (None: nothing): a known dialect,
    and for SQLite a file whose folder exists (SQLite does not create folders)."""
    if not url.strip():
        return "empty (leave the flag out for optuna.db beside the MLflow store)"
    scheme = _scheme(url)
    if scheme is None or scheme.split("+", 1)[0] not in SQL_DIALECTS:
        return "not a database URL; use sqlite:///PATH, postgresql://... or mysql://..."
    if scheme.split("+", 1)[0] == "sqlite":
        return _sqlite_form_problem(url) or storage.file_problem(Path(url[len(SQLITE):]))
    return _uri_problem(url)


def address_problem(address: str) -> str | None:
    """What is wrong with a Ray address's form (None: nothing): auto, local, HOST:PORT or
    ray://HOST[:PORT]."""
    if address in ("auto", "local"):
        return None
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    host, sep, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not host or re.search(r"[\s/]", host) or (not sep and not client):
        return "use auto, local, HOST:PORT or ray://HOST[:PORT]"
    if sep and not (port.isdigit() and 1 <= int(port) <= 65535):
        return "the port must be a number from 1 to 65535"
    return None


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one ``error: ...`` line (exit 2), like every `UserError`."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        sys.stderr.write(f"error: {text} (see {self.prog} --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m search.run",
        description="Run a distributed hyperparameter search (Ray Tune + Optuna TPE + ASHA) "
        "over one of the spaces; every trial is logged to MLflow.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--space", default=DEFAULTS["space"],
                       help="search space name (see --list-spaces; default %(default)s, a CPU "
                       "demo)")
    which.add_argument("--space-file", metavar="FILE",
                       help="a search space declared in YAML (see --show-space, and "
                       "spaces/examples/); its name names the experiment")
    p.add_argument("--list-spaces", action="store_true", help="list the spaces and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="print the search's plan and its estimated time on this machine (a "
                   "few timed training windows), then exit: nothing starts, nothing is written")
    p.add_argument("--show-space", metavar="NAME",
                   help="print a built-in space as a --space-file file and exit")
    p.add_argument("--num-samples", type=int, default=DEFAULTS["num_samples"],
                   help="trials to run (default %(default)s)")
    p.add_argument("--max-epochs", type=int, help="epoch budget per trial (default: the space's)")
    p.add_argument("--grace-period", type=int,
                   help="ASHA's first rung in epochs (default: the space's; NT-ASGD needs time)")
    p.add_argument("--concurrency", type=int,
                   help="trials at once (default: as many as resources allow)")
    p.add_argument("--cpus-per-trial", type=float, default=DEFAULTS["cpus_per_trial"],
                   help="default %(default)s")
    p.add_argument("--gpus-per-trial", type=float,
                   help="fractions pack trials on one GPU (default: 1 if GPUs, else 0)")
    p.add_argument("--address", help="existing Ray cluster ('auto' on a head node); default: "
                   "start Ray locally")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                   "else sqlite:///mlflow.db in the working folder)")
    p.add_argument("--experiment", help="MLflow experiment and Ray run name (default: the space)")
    p.add_argument("--storage", default=DEFAULTS["storage"],
                   help="where Ray keeps results and checkpoints; shared (NFS or s3://) on a "
                   "multi-node cluster (default ./%(default)s)")
    p.add_argument("--scheduler", default=DEFAULTS["scheduler"],
                   help="early stopping: asha or none (default %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seed of the TPE sampler (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search")
    p.add_argument("--time-budget", type=float, help="stop the search after this many seconds")
    p.add_argument("--max-failures", type=int, default=DEFAULTS["max_failures"],
                   help="restarts of a trial whose worker died, from its last checkpoint "
                   "(default %(default)s)")
    p.add_argument("--best-config", help="where to write the best configuration "
                   "(default best_config_<experiment>.json)")
    p.add_argument("--study-storage", metavar="URL",
                   help="Optuna storage of the search's study, e.g. sqlite:///optuna.db or "
                   "postgresql://... (default: optuna.db beside the MLflow SQLite file, else in "
                   "the working folder); open it with optuna-dashboard URL")
    p.add_argument("--sampler", default=DEFAULTS["sampler"],
                   help="tpe or random (default %(default)s)")
    p.add_argument("--warm-start-from", metavar="EXPERIMENT",
                   help="first try the best configurations of an earlier search (its MLflow "
                   "experiment, same tracking store), after the paper configuration")
    p.add_argument("--top", type=int, default=DEFAULTS["top"],
                   help="how many configurations --warm-start-from takes (default %(default)s)")
    p.add_argument("--confirm-top", type=int, default=DEFAULTS["confirm_top"], metavar="K",
                   help="after the search, re-train the K best configurations and the paper "
                   "configuration with --seeds new seeds each (default 0: off)")
    p.add_argument("--seeds", type=int, default=DEFAULTS["seeds"],
                   help="seeds per confirmed configuration (default %(default)s)")
    p.add_argument("--ablate", nargs="?", const="all", default=DEFAULTS["ablate"],
                   metavar="ROW,...",
                   help="after the search, re-train the winner with each of the AWD-LSTM "
                   "paper's ablations (Table 4: one technique removed), --seeds seeds each, "
                   f"the same seeds as --confirm-top's; rows: {', '.join(ABLATION_ROWS)} "
                   "(default: all that apply to the model)")
    p.add_argument("--objectives", default=DEFAULTS["objectives"], metavar="METRIC,...",
                   help="a multi-objective search: Optuna's TPE minimises each of them and "
                   f"the Pareto front is tagged in MLflow; of {', '.join(OBJECTIVES)}, "
                   "val_ppl first with ASHA (it stops on it alone), e.g. val_ppl,num_params "
                   "(default: val_ppl alone)")
    p.add_argument("--cache-trials", type=int, default=DEFAULTS["cache_trials"], metavar="N",
                   help="after the search, tune the winner's continuous cache (window, theta, "
                   "lambda) with N trials on validation, the paper's values first; test is "
                   "evaluated once (default 0: off)")
    p.add_argument("--ensemble", type=int, default=DEFAULTS["ensemble"], metavar="K",
                   help="after the search, average up to K of its completed models (greedy "
                   "selection with replacement on validation) and register the ensemble "
                   "(default 0: off)")
    p.add_argument("--set", dest="fixed", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config field for every trial, e.g. --set train_tokens=200000 "
                   "(repeatable; any field of `python -m awd.train --help`)")
    return p


def options_from_args(args: argparse.Namespace) -> SearchOptions:
    from spaces import load_space_file, spec_digest

    values = {k: v for k, v in vars(args).items()
              if k not in ("list_spaces", "show_space", "dry_run")}
    values["fixed"] = tuple(values.get("fixed") or ())
    if values.get("space_file") is not None:
        # Absolute: a resumed search re-reads it from wherever it is started.
        path = Path(values["space_file"]).expanduser().resolve()
        spec = load_space_file(values["space_file"])
        values.update(space=spec.name, space_file=str(path), space_sha256=spec_digest(spec))
    return SearchOptions(**values).validate()
