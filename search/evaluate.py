"""``python -m search.evaluate --model-uri models:/awdsearch-smoke/latest``: `awd.evaluate` on a
search's model in MLflow.

The URI names an MLflow model: ``models:/NAME/latest``, ``models:/NAME/<version>``,
``models:/NAME@alias``, ``runs:/<run id>/model`` or a logged model's ``models:/m-<id>``; a local
file or folder works too. Only the export inside the MLflow model is downloaded
(`search.tracking.registry.download_export`), then read with ``weights_only`` by `awd.evaluate`:
nothing from the store can run code here. Every other flag is `awd.evaluate`'s;
``--cache tuned`` takes the values a search's ``--cache-trials`` stored with the version (or
run), and an ensemble's version carries its own.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from awd import evaluate
from awd.errors import CheckpointError, first_line

MODEL_HELP = ("models:/NAME/latest, models:/NAME/<version>, models:/NAME@alias, "
              "runs:/<run id>/model, an exported .pt file or a model folder")


def build_parser() -> argparse.ArgumentParser:
    parser = evaluate.build_parser("python -m search.evaluate", MODEL_HELP)
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store of models:/ and runs:/ URIs (default: "
                        "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    return parser


def load(args: argparse.Namespace) -> evaluate.Loaded:
    """The export an MLflow model URI names (downloaded, then read), or a local file's; with
    ``--cache tuned``, the tuned values stored with it go into ``args.cache``."""
    if not args.model_uri.startswith(evaluate.MLFLOW_SCHEMES):
        return evaluate.load_model(args.model_uri)
    from search.tracking.registry import download_export, tuned_cache
    from search.uris import (
        HEALTH_TIMEOUT_S,
        fail_fast_http,
        is_server,
        resolve_tracking_uri,
        server_problem,
    )

    fail_fast_http()
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    problem = server_problem(tracking_uri, HEALTH_TIMEOUT_S) if is_server(tracking_uri) else None
    if problem is not None:  # in seconds, not after MLflow's retries
        raise evaluate.ModelNotFoundError(f"cannot reach the MLflow tracking server at "
                                          f"{tracking_uri} ({problem})")
    with tempfile.TemporaryDirectory() as d:
        path = download_export(args.model_uri, tracking_uri, Path(d))
        if args.cache == evaluate.TUNED:
            args.cache = tuned_cache(args.model_uri, tracking_uri) or evaluate.TUNED
        try:
            return evaluate.read_export(path)
        except CheckpointError as e:  # its message names a temporary file
            raise CheckpointError(f"{args.model_uri}: {first_line(e).split(': ', 1)[-1]}"
                                  ) from None


def main(argv: list[str] | None = None) -> int:
    return evaluate.main(argv, build_parser(), load)


if __name__ == "__main__":
    sys.exit(main())
