"""The search command's options as one validated dataclass."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from awd.config import from_flat
from awd.errors import ConfigError, UserError
from search import storage
from search.results import parse_param
from spaces import Space, get_space

SCHEDULERS = ("asha", "none")
SAMPLERS = ("tpe", "random")


class OptionError(UserError):
    """A flag value that cannot work; the message names the flag."""


@dataclass(frozen=True)
class SearchOptions:
    space: str
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
    seeds: int = 3  # seeds per confirmed configuration
    report_intermediate: bool = True  # every epoch's objective reaches Optuna (off: ablation)

    @property
    def fixed_values(self) -> dict[str, Any]:
        """``fixed`` as a dict; values that spell JSON numbers or booleans become them, so
        that Tune's config and MLflow's params carry the same types as searched values."""
        return {key: parse_param(value) for key, value in (i.split("=", 1) for i in self.fixed)}

    @property
    def space_spec(self) -> Space:
        return get_space(self.space)

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

    def validate(self) -> SearchOptions:
        get_space(self.space)
        checks = [
            (self.num_samples >= 1, "--num-samples must be >= 1"),
            (self.max_epochs is None or self.max_epochs >= 1, "--max-epochs must be >= 1"),
            (self.grace_period is None or self.grace_period >= 1, "--grace-period must be >= 1"),
            (self.concurrency is None or self.concurrency >= 1, "--concurrency must be >= 1"),
            (self.cpus_per_trial > 0, "--cpus-per-trial must be > 0"),
            (self.gpus_per_trial is None or self.gpus_per_trial >= 0,
             "--gpus-per-trial must be >= 0"),
            (self.gpus_per_trial is None or self.gpus_per_trial <= 1
             or float(self.gpus_per_trial).is_integer(),
             "--gpus-per-trial above 1 must be a whole number"),
            (self.scheduler in SCHEDULERS, f"--scheduler must be one of {', '.join(SCHEDULERS)}"),
            (self.time_budget is None or self.time_budget > 0, "--time-budget must be > 0"),
            (self.max_failures >= 0, "--max-failures must be >= 0"),
            (self.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}"),
            (self.top >= 1, "--top must be >= 1"),
            (self.confirm_top >= 0, "--confirm-top must be >= 0"),
            (self.seeds >= 1, "--seeds must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise OptionError(message)
        bad = [item for item in self.fixed if "=" not in item or not item.split("=", 1)[0]]
        if bad:
            raise OptionError(f"--set takes KEY=VALUE, got {bad[0]!r}")
        if self.fixed:
            try:  # on the space's first configuration: an unknown key or bad value fails here
                from_flat(self.space_spec.paper_config(**self.fixed_values))
            except ConfigError as e:
                raise OptionError(f"--set: {e}") from None
        return self


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.run",
        description="Run a distributed hyperparameter search (Ray Tune + Optuna TPE + ASHA) "
        "over one of the spaces; every trial is logged to MLflow.",
    )
    p.add_argument("--space", default="smoke",
                   help="search space name (see --list-spaces; default smoke, a CPU demo)")
    p.add_argument("--list-spaces", action="store_true", help="list the spaces and exit")
    p.add_argument("--num-samples", type=int, default=20, help="trials to run (default 20)")
    p.add_argument("--max-epochs", type=int, help="epoch budget per trial (default: the space's)")
    p.add_argument("--grace-period", type=int,
                   help="ASHA's first rung in epochs (default: the space's; NT-ASGD needs time)")
    p.add_argument("--concurrency", type=int,
                   help="trials at once (default: as many as resources allow)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="default 1")
    p.add_argument("--gpus-per-trial", type=float,
                   help="fractions pack trials on one GPU (default: 1 if GPUs, else 0)")
    p.add_argument("--address", help="existing Ray cluster ('auto' on a head node); default: "
                   "start Ray locally")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                   "else sqlite:///mlflow.db in the working folder)")
    p.add_argument("--experiment", help="MLflow experiment and Ray run name (default: the space)")
    p.add_argument("--storage", default="ray_results",
                   help="where Ray keeps results and checkpoints; shared (NFS or s3://) on a "
                   "multi-node cluster (default ./ray_results)")
    p.add_argument("--scheduler", default="asha", help="asha (default) or none")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search")
    p.add_argument("--time-budget", type=float, help="stop the search after this many seconds")
    p.add_argument("--max-failures", type=int, default=2,
                   help="restarts of a trial whose worker died, from its last checkpoint")
    p.add_argument("--best-config", help="where to write the best configuration "
                   "(default best_config_<experiment>.json)")
    p.add_argument("--study-storage", metavar="URL",
                   help="Optuna storage of the search's study, e.g. sqlite:///optuna.db or "
                   "postgresql://... (default: optuna.db beside the MLflow SQLite file, else in "
                   "the working folder); open it with optuna-dashboard URL")
    p.add_argument("--sampler", default="tpe", help="tpe (default) or random")
    p.add_argument("--warm-start-from", metavar="EXPERIMENT",
                   help="first try the best configurations of an earlier search (its MLflow "
                   "experiment, same tracking store), after the paper configuration")
    p.add_argument("--top", type=int, default=3,
                   help="how many configurations --warm-start-from takes (default 3)")
    p.add_argument("--confirm-top", type=int, default=0, metavar="K",
                   help="after the search, re-train the K best configurations and the paper "
                   "configuration with --seeds new seeds each (default 0: off)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per confirmed configuration")
    p.add_argument("--set", dest="fixed", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config field for every trial, e.g. --set train_tokens=200000 "
                   "(repeatable; any field of `python -m awd.train --help`)")
    return p


def options_from_args(args: argparse.Namespace) -> SearchOptions:
    values = {k: v for k, v in vars(args).items() if k != "list_spaces"}
    values["fixed"] = tuple(values.get("fixed") or ())
    return SearchOptions(**values).validate()
