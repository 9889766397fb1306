"""``python -m search.run --space NAME``: run a search and print what it found."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from math import isnan, nan
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awd.errors import UserError
from search import schema
from search.diskspace import NoSpaceError
from search.errors import Terminated, forget_terminations, terminate
from search.options import SearchOptions, build_parser, options_from_args
from search.results import status_counts
from search.uris import is_server

if TYPE_CHECKING:  # Ray, MLflow, torch and pandas load once a search starts, not for --help
    import pandas as pd

    from search.driver import SearchOutcome
    from search.stages.ablate import Ablation
    from search.stages.after import AfterTraining
    from search.stages.confirm import Confirmation
    from spaces import Space

NOT_APPLICABLE = "—"


def list_spaces() -> str:
    from spaces import SPACES

    width = max(map(len, SPACES))
    return "\n".join(f"{name:<{width}}  {space.description} [{space.max_epochs} epochs]"
                     for name, space in SPACES.items())


def shown_value(value: Any) -> str:
    """A parameter as a newcomer reads it: integers as integers, floats to 3 significant
    digits, — where it does not apply."""
    if value is None or (isinstance(value, float) and isnan(value)):
        return NOT_APPLICABLE
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def results_table(outcome: SearchOutcome, space: Space, top: int = 10) -> pd.DataFrame:
    """The best trial (by `search.results.pick_best`) first, then the rest by best_val_ppl;
    every searched parameter of the space, — where one does not apply to a trial."""
    import pandas as pd

    from spaces.spec import searched, searched_names

    names = searched_names(space)
    rows = []
    for t in outcome.trials:
        values = searched(space, t.config)
        row = {"trial": t.trial_id, "status": t.status,
               "epochs": shown_value(t.metrics.get(schema.EPOCHS_RUN)),
               schema.BEST_VAL_PPL: t.metrics.get(schema.BEST_VAL_PPL),
               schema.FINAL_VAL_PPL: t.metrics.get(schema.FINAL_VAL_PPL),
               schema.FINAL_TEST_PPL: t.metrics.get(schema.FINAL_TEST_PPL),
               "_rank": 0 if t is outcome.best else 1}
        row.update({k: shown_value(values.get(k)) for k in names})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.sort_values(["_rank", schema.BEST_VAL_PPL], na_position="last")
    for col in (schema.BEST_VAL_PPL, schema.FINAL_VAL_PPL, schema.FINAL_TEST_PPL):
        frame[col] = frame[col].map(lambda v: NOT_APPLICABLE if v is None or isnan(v)
                                    else f"{v:.2f}")
    return frame.drop(columns="_rank").head(top)


def _pm(mean: float, std: float) -> str:
    if isnan(mean):  # no completed run
        return "—"
    return f"{mean:.2f}" + ("" if isnan(std) else f" ± {std:.2f}")


def confirmation_table(c: Confirmation) -> pd.DataFrame:
    """Each confirmed configuration: the original trial, then mean ± std over the new seeds."""
    import pandas as pd

    rows = []
    for s in c.configs:
        r = s.row()
        rows.append({"trial": s.trial_id, "rank": s.rank or "—",
                     "paper": "yes" if s.paper else "", "original val": _pm(s.original_val, nan),
                     "val mean ± std": _pm(r["val_ppl_mean"], r["val_ppl_std"]),
                     "test mean ± std": _pm(r["test_ppl_mean"], r["test_ppl_std"]),
                     "seeds done": f"{r['completed']}/{r['runs']}",
                     "p vs paper": "—" if isnan(s.p_vs_paper) else f"{s.p_vs_paper:.3g}"})
    return pd.DataFrame(rows)


def pareto_lines(outcome: SearchOutcome, metrics: tuple[str, ...]) -> str:
    """The front of a multi-objective search, one trial a line with its objectives."""
    by_id = {t.trial_id: t for t in outcome.trials}
    lines = [f"\nPareto front of ({', '.join(metrics)}; Optuna's best_trials, tagged "
             f"awdsearch.pareto in MLflow): {len(outcome.pareto or [])} trials"]
    for trial_id in outcome.pareto or []:
        m = by_id[trial_id].metrics if trial_id in by_id else {}
        lines.append(f"  {trial_id}: " + ", ".join(f"{name} {_number(m.get(name))}"
                                                     for name in metrics))
    return "\n".join(lines)


def _number(value: Any) -> str:
    if not isinstance(value, (int, float)) or isnan(value):
        return "?"
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.2f}"


def ablation_table(a: Ablation) -> pd.DataFrame:
    """Each row of the winner's ablation: mean ± std over the seeds, the change, the paper's."""
    import pandas as pd

    rows = []
    for r in a.rows_dicts():
        full = r["row"] == "full"
        rows.append({"removed": r["label"], "val mean ± std": _pm(r["val_ppl_mean"],
                                                                   r["val_ppl_std"]),
                     "test mean ± std": _pm(r["test_ppl_mean"], r["test_ppl_std"]),
                     "Δ val": "" if full or isnan(r["delta_val"]) else f"{r['delta_val']:+.2f}",
                     "paper Δ val": "" if r["paper_delta_val"] is None
                     else f"{r['paper_delta_val']:+.1f}",
                     "beyond noise": r["verdict"],
                     "seeds done": f"{r['completed']}/{r['runs']}"})
    return pd.DataFrame(rows)


def after_table(after: AfterTraining) -> pd.DataFrame:
    """The best single model, + cache, the ensemble, ensemble + cache: val and test."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    if after.cache is not None:
        c, t = after.cache, after.cache.tuning
        rows += [{"model": "best trial", "val ppl": t.val_ppl, "test ppl": c.test_ppl,
                  "detail": ""},
                 {"model": "best trial + cache", "val ppl": t.cache_val_ppl,
                  "test ppl": c.cache_test_ppl,
                  "detail": f"{t.chosen.shown()} ({len(t.trials)} trials)"}]
    if after.ensemble is not None:
        e = after.ensemble
        members = ", ".join(f"{n} {w:.2f}" for n, w in zip(e.members, e.weights, strict=True))
        if after.cache is None:
            rows.append({"model": f"best single ({e.best_single})",
                         "val ppl": e.best_single_val_ppl, "test ppl": e.best_single_test_ppl,
                         "detail": ""})
        rows.append({"model": f"ensemble of {len(e.members)}", "val ppl": e.val_ppl,
                     "test ppl": e.test_ppl, "detail": members})
        if e.cache is not None:
            rows.append({"model": "ensemble + cache", "val ppl": e.cache_val_ppl,
                         "test ppl": e.cache_test_ppl, "detail": e.cache.shown()})
        if e.model_uri:
            rows[-1]["detail"] += f" -> {e.model_uri}"
    frame = pd.DataFrame(rows)
    for col in ("val ppl", "test ppl"):
        frame[col] = frame[col].map(lambda v: f"{v:.2f}")
    return frame


def ui_hint(outcome: SearchOutcome) -> str:
    """How to see the search's runs: the link that opens its runs table (MLflow 3 opens an
    experiment on its GenAI pages otherwise), after starting ``mlflow ui`` for a local store."""
    from search.tracking.conventions import experiment_url, without_credentials

    uri = outcome.tracking_uri
    experiment_id = outcome.experiment_id
    if is_server(uri):
        return (experiment_url(uri, experiment_id) if experiment_id
                else f"open {without_credentials(uri)}")
    start = f"mlflow ui --backend-store-uri {uri}"
    if experiment_id is None:
        return start
    return f"{start}\n  then open {experiment_url(schema.LOCAL_UI, experiment_id)}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_spaces:
        print(list_spaces())
        return 0
    # MLflow's per-download progress bar (the best model at the end) is noise in a search's log
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    opts: SearchOptions | None = None
    try:
        if args.show_space is not None:
            from spaces import show_space

            print(show_space(args.show_space), end="")
            return 0
        opts = options_from_args(args)
        if args.dry_run:
            return dry_run(opts)
        from search.driver import run_search  # Ray, MLflow, torch: once the options are good

        with _sigterm_interrupts():
            outcome = run_search(opts)
    except Terminated:
        return _interrupted(signal.SIGTERM, opts, argv if argv is not None else sys.argv[1:])
    except KeyboardInterrupt:
        return _interrupted(signal.SIGINT, opts, argv if argv is not None else sys.argv[1:])
    except NoSpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NO_SPACE
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if outcome.no_space is not None:
        return _no_space(outcome, argv if argv is not None else sys.argv[1:])
    if outcome.stopped_by is not None:
        return _stopped(outcome, argv if argv is not None else sys.argv[1:])
    if outcome.unsynced:
        return _unsynced(outcome, argv if argv is not None else sys.argv[1:])
    if not outcome.produced_results:
        failed = [t for t in outcome.trials if t.error]
        reason = f"; the first failure: {failed[0].error}" if failed else ""
        print(f"error: no trial produced a result ({len(outcome.trials)} trials, "
              f"{len(failed)} failed{reason})".splitlines()[0], file=sys.stderr)
        print(f"See the runs: {ui_hint(outcome)}", file=sys.stderr)
        return 1
    import pandas as pd

    print("\nBest trials:")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(results_table(outcome, opts.space_spec).to_string(index=False))
    if outcome.pareto is not None:
        print(pareto_lines(outcome, opts.objective_metrics))
    if outcome.confirmation is not None:
        print("\nConfirmation (new seeds; final perplexities, mean ± sample std):")
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(confirmation_table(outcome.confirmation).to_string(index=False))
        print(f"Best vs paper: {outcome.confirmation.verdict.text}")
    if outcome.ablation is not None:
        print(f"\nAblation of the winner (trial {outcome.ablation.winner}; one technique removed, "
              "new seeds; beyond noise: one-sided Welch's t-test p < 0.05, either way):")
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(ablation_table(outcome.ablation).to_string(index=False))
    if outcome.after is not None and (outcome.after.cache or outcome.after.ensemble):
        print("\nAfter training (sequential evaluation at batch 1; cache values and members "
              "chosen on validation, test evaluated once):")
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(after_table(outcome.after).to_string(index=False))
    print(f"\nBest configuration written to {outcome.best_config_path}")
    if outcome.model_uri:
        print(winner_line(outcome.model_uri, opts.experiment_name))
    if outcome.study is not None:
        storage, name = outcome.study
        print(f"Optuna study: optuna.load_study(study_name={name!r}, storage={storage!r})")
    print(f"Compare the runs: {ui_hint(outcome)}")
    return 0


def dry_run(opts: SearchOptions) -> int:
    """The plan and its cost on this machine; nothing starts, nothing is written."""
    from search.plan import concurrency_here, make_plan

    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else _local_gpus()
    plan = make_plan(opts, concurrency_here(opts, gpus), gpus, measure=True)
    print("\n".join(plan.lines()))
    if plan.epoch_seconds is None:
        print("  (no timing: the dataset is not there yet; python -m awd.data fetch "
              f"{plan.dataset})")
    return 0


def _local_gpus() -> float:
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def winner_line(model_uri: str, experiment: str) -> str:
    """Where the winner is registered, its search's alias, and the command that loads it."""
    from search.tracking.registry import search_alias

    if model_uri.count("/") != 2:  # logged, not registered
        return f"Winner: {model_uri}: python -m search.evaluate --model-uri {model_uri}"
    name = model_uri[len("models:/"):].split("/")[0]
    by_alias = f"models:/{name}@{search_alias(experiment)}"
    return (f"Winner: {model_uri} (alias {by_alias}; models:/{name}@best is the best of all "
            f"searches of the space): python -m search.evaluate --model-uri {by_alias}")


EXIT_UNSYNCED = 75  # sysexits' EX_TEMPFAIL: the search ran, MLflow has not got all of it yet


def _resume_command(argv: list[str]) -> str:
    return " ".join(["python -m search.run", *map(shlex.quote, argv)]
                    + ([] if "--resume" in argv else ["--resume"]))


def _unsynced(outcome: SearchOutcome, argv: list[str]) -> int:
    """A search that ended while MLflow could not take its last results: they are on disk,
    the summary and the model wait for --resume; not a success (exit `EXIT_UNSYNCED`)."""
    where = outcome.best_config_path or "no best configuration yet"
    print(f"\nerror: the search ended but MLflow ({outcome.tracking_uri}) has not taken all its "
          f"results; they are kept in {', '.join(outcome.unsynced)} ({where}). Once MLflow is "
          f"back, finish it with:\n  {_resume_command(argv)}", file=sys.stderr)
    return EXIT_UNSYNCED


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    def on_sigterm(signum: int, frame: object) -> None:
        terminate()

    forget_terminations()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _interrupted(signum: int, opts: SearchOptions | None, argv: list[str]) -> int:
    """A signal before the search ran on (Ray starting, the saved state being verified or
    restored, Tune's first steps): one line, the shell's status for it; what the search saved
    is kept (a resume puts the parent back as it was: `search.driver._run`)."""
    name = signal.Signals(signum).name
    if opts is not None and _resumable(opts.experiment_dir):
        print(f"\nSearch stopped by {name} before it ran on; what it saved is kept. Continue "
              f"it with:\n  {_resume_command(argv)}", file=sys.stderr)
    else:
        print(f"\nSearch stopped by {name} before it started; run the command again.",
              file=sys.stderr)
    return 128 + int(signum)


def _resumable(experiment_dir: str) -> bool:
    """Whether a search is saved there that --resume can continue (ours and Tune's state)."""
    from search import storage  # light: a signal's answer takes no Ray import
    from search.state import SearchState

    try:
        SearchState.load(experiment_dir)
    except Exception:
        return False
    return storage.is_uri(experiment_dir) or \
        (Path(storage.absolute(experiment_dir)) / storage.TUNER_FILE).is_file()


EXIT_NO_SPACE = 74  # sysexits' EX_IOERR: a folder of the search ran short of space


def _no_space(outcome: SearchOutcome, argv: list[str]) -> int:
    """A search stopped because a folder ran short of space (`search.diskspace`): where, how
    much, how to go on once there is room."""
    print(f"\nerror: {outcome.no_space}. The search stopped with its state saved; once there "
          f"is space, continue it with:\n  {_resume_command(argv)}", file=sys.stderr)
    return EXIT_NO_SPACE


def _stopped(outcome: SearchOutcome, argv: list[str]) -> int:
    """A search stopped by a signal: how far it got, how to go on; the shell's exit status
    for that signal (130 for SIGINT, 143 for SIGTERM)."""
    signum = outcome.stopped_by or signal.SIGINT
    counts = status_counts(t.status for t in outcome.trials)
    done = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    again = _resume_command(argv)
    print(f"\nSearch stopped by {signal.Signals(signum).name} before its end ({done or 'no trials'}"
          f"); no best configuration written. Continue it with:\n  {again}", file=sys.stderr)
    print(f"Compare the runs so far: {ui_hint(outcome)}", file=sys.stderr)
    return 128 + int(signum)


if __name__ == "__main__":
    sys.exit(main())
