"""``python -m awd.data {fetch,verify,list}``: get the corpora into the data cache.

Failures print one ``error: ...`` line to stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from awd.data.corpus import find_split_files
from awd.data.fetch import DEFAULT_TIMEOUT, fetch, import_local, verify
from awd.data.registry import DATASETS, data_root, dataset_spec
from awd.errors import DataError, UserError, first_line

EXIT_DATA_ERROR = 2


def _say(message: str) -> None:
    """Progress goes to stderr so stdout stays clean for scripting."""
    print(message, file=sys.stderr)


def _cmd_fetch(args: argparse.Namespace) -> int:
    """Download (or with --from, import) one dataset."""
    if args.source is not None:
        path = import_local(args.name, args.source, args.dest, args.force, log=_say)
    else:
        try:
            path = fetch(args.name, args.url, args.dest, args.force, timeout=args.timeout,
                         log=_say)
        except DataError as e:
            if "cannot download" not in str(e):
                raise
            raise DataError(f"{e}; on a machine without internet, copy the archive (or a "
                            f"folder of its splits) here and import it: python -m awd.data "
                            f"fetch {args.name} --from PATH") from None
    print(path)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """Check existing files against the registry's checksums."""
    spec = dataset_spec(args.name)
    folder = Path(args.dir).expanduser() if args.dir else data_root() / spec.name
    verify(spec.name, folder)
    print(f"ok: {spec.name} at {folder} matches the registry checksums")
    return 0


def _status(folder: Path) -> str:
    """Cheap presence check (no hashing): ``verify`` is the thorough one."""
    try:
        find_split_files(folder)
    except DataError:
        return "missing"
    return "present"


def _cmd_list(args: argparse.Namespace) -> int:
    """One line per known dataset: name, aliases, cache folder, presence, source URL."""
    print(f"data root: {data_root()}")
    for spec in DATASETS.values():
        folder = data_root() / spec.name
        aliases = ",".join(spec.aliases) or "-"
        print(f"{spec.name:<12} {aliases:<24} {_status(folder):<8} {folder}  <- {spec.url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The CLI; every subcommand has its own --help."""
    parser = argparse.ArgumentParser(
        prog="python -m awd.data", description="Download, import and verify the corpora."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fetch", help="download a dataset (or import a local copy) and verify it")
    p.add_argument("name", help="dataset name or alias, e.g. ptb, wikitext-2")
    origin = p.add_mutually_exclusive_group()
    origin.add_argument("--url", help="download from this URL instead of the registry's (a mirror)")
    origin.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        help="import a local copy: a folder with the three splits, or the archive file",
    )
    p.add_argument("--dest", metavar="DIR", help="target folder (default: DATA_ROOT/NAME)")
    p.add_argument("--force", action="store_true", help="replace files even if already verified")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"network timeout in seconds (default {DEFAULT_TIMEOUT:g})",
    )
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("verify", help="check a dataset's files against the registry checksums")
    p.add_argument("name", help="dataset name or alias")
    p.add_argument("--dir", metavar="DIR", help="folder to check (default: DATA_ROOT/NAME)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("list", help="known datasets and where they live")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a `UserError` becomes ``error: ...`` on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return EXIT_DATA_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
