"""CLI: ``python -m reports --experiment NAME [NAME ...] [--tracking-uri URI] [--out DIR]``."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from awd.errors import UserError
from reports.errors import ReportError
from search.options import CONTROL, OneLineParser, tracking_uri_problem, tracking_uri_source
from search.storage import folder_problem

EXIT_BAD_INPUT = 2


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m reports",
        description="Report on one or more awdsearch searches from MLflow: best trials against "
        "published perplexities, each search's best configuration and every trial ranked, "
        "learning curves, search progress, hyperparameter importance, ablations. Writes "
        "report.html (self-contained), report.md, summary.csv, trials.csv and PNGs, and logs "
        "them on each search's parent run under report/.",
        epilog="Exit status: 0 ok; 2 bad input (unknown experiment, no finished runs, missing "
        "metrics: a partial report is still written where there is something to show); "
        "1 with a traceback: a bug.")
    p.add_argument("--experiment", "-e", nargs="+", required=True, metavar="NAME",
                   help="MLflow experiment name(s); several are compared side by side")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow.db in the working folder: the store a search writes to)")
    p.add_argument("--out", type=Path, default=Path("report"), metavar="DIR",
                   help="output folder (default: report/)")
    p.add_argument("--no-log", action="store_true",
                   help="do not log the report as artifacts of the search runs")
    p.add_argument("--debug", action="store_true", help="show the libraries' warnings and logs")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every argument's form, before the store is opened: a `ReportError` (one line) if one
    cannot work. Whether the experiments exist is the store's to say (`reports.load`)."""
    for name in args.experiment:
        if not name.strip() or CONTROL.search(name):
            raise ReportError(f"--experiment needs MLflow experiment names, got {name!r}")
    source, uri = tracking_uri_source(args.tracking_uri)
    problem = tracking_uri_problem(uri) if uri is not None else None
    if problem:
        raise ReportError(f"{source} {uri!r}: {problem}")
    problem = folder_problem(args.out) if not CONTROL.search(str(args.out)) \
        else "contains a control character"
    if problem:
        raise ReportError(f"--out {str(args.out)!r}: {problem}")


def _quiet() -> None:
    """Keep stderr to our own lines: library warnings and INFO logs are noise here."""
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    for name in ("mlflow", "alembic", "optuna", "matplotlib"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.debug:
        _quiet()
    try:
        check_args(args)
        from reports.build import build
        from search.uris import resolve_tracking_uri

        uri = resolve_tracking_uri(args.tracking_uri)
        result = build(uri, args.experiment, args.out, log_artifacts=not args.no_log)
    except UserError as e:  # anything else is a bug: its traceback is the report
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"report: {result.out_dir / 'report.html'} and report.md "
          f"({len(result.files)} files)")
    if result.logged_to:
        print(f"logged under report/ on run(s) {', '.join(result.logged_to)}")
    if result.problems:
        print(f"error: {'; '.join(result.problems)}; partial report written to {result.out_dir}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
