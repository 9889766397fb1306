"""Command line: train one model, e.g. ``python -m awd.train --model awd_lstm --data ptb``.

Every field of the model's config and of ``TrainConfig`` is a flag; defaults are the paper
preset of the chosen model and dataset. ``--config FILE.json`` reads a flat run config (a
search's ``best_config_<experiment>.json``, a run's ``config.json`` artifact, or a file written
by hand with any subset of the fields) and flags override it: re-running a search's winner is
``python -m awd.train --config best_config_smoke.json``. Errors in the input print one line,
not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from awd.config import MODELS, AWDLSTMConfig, TrainConfig, ZarembaConfig, from_flat
from awd.errors import CheckpointError, ConfigError, UserError, first_line
from awd.files import check_writable_file


def _field_flag(group: argparse._ArgumentGroup, name: str, default: object, help: str) -> None:
    """``--batch-size`` (shown) and ``--batch_size`` (the config field's own spelling, hidden)
    both set field ``batch_size``."""
    metavar = type(default).__name__
    group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar=metavar,
                       help=help)
    if "_" in name:
        group.add_argument(f"--{name}", dest=name, default=None, help=argparse.SUPPRESS)


def _field_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per config field; the help shows the awd_lstm/PTB preset default."""
    arch = parser.add_argument_group("model fields (AWD: awd_lstm/awd_gru; Zaremba: zaremba)")
    seen: set[str] = set()
    for cls in (AWDLSTMConfig, ZarembaConfig):
        for f in fields(cls):
            if f.init and f.name not in seen:
                seen.add(f.name)
                owner = "zaremba" if cls is ZarembaConfig else "awd"
                _field_flag(arch, f.name, f.default, f"{owner} preset default: {f.default}")
    train = parser.add_argument_group("training fields (defaults: AWD-LSTM PTB preset)")
    for f in fields(TrainConfig):
        _field_flag(train, f.name, f.default, f"default: {f.default}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m awd.train",
        description="Train AWD-LSTM, AWD-GRU or Zaremba's LSTM with NT-ASGD. Unset fields take "
        "the paper preset of the chosen model and dataset.",
    )
    parser.add_argument("--config", type=Path, default=None, metavar="FILE.json",
                        help="a flat run config (e.g. a search's best_config_*.json); flags "
                        "override its values")
    parser.add_argument("--model", default=None,
                        help=f"one of: {', '.join(MODELS)} (required without --config)")
    parser.add_argument("--data", default=None,
                        help="dataset name (ptb, wikitext-2) under $AWD_DATA_DIR, or a folder "
                        "(default: the config file's dataset, else ptb)")
    parser.add_argument("--preset", default=None,
                        help="zaremba size: small, medium (default), large")
    parser.add_argument("--save", type=Path, default=None, help="write the trainer checkpoint here")
    parser.add_argument("--resume", type=Path, default=None, help="resume from a checkpoint")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no epoch lines: only the final summary")
    _field_flags(parser)
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    skip = {"config", "model", "data", "preset", "save", "resume", "quiet"}
    return {k: v for k, v in vars(args).items() if k not in skip and v is not None}


MAX_CONFIG_BYTES = 1 << 20


def read_config_file(path: Path) -> dict[str, Any]:
    """A flat run config from a JSON file: one object of field names to values."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is {path.stat().st_size:,} bytes: a run "
                              f"config is a few hundred (limit {MAX_CONFIG_BYTES:,})")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}): save it "
                          "as UTF-8 JSON") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e.msg} at line {e.lineno}, "
                          f"column {e.colno}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply: a run config is one flat "
                          "object of field names to values") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold one JSON object of config fields, "
                          f"not a {type(data).__name__}")
    return data


def run_config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The flat config to train: the file's fields, then the flags set on the command line.
    A dataset given as a folder (``--data DIR``) is named by the folder's name."""
    fields_ = read_config_file(args.config) if args.config is not None else {}
    for name in ("model", "preset"):
        if getattr(args, name) is not None:
            fields_[name] = getattr(args, name)
    if args.data is not None:
        fields_["dataset"] = _dataset_name(args.data)
    if "model" not in fields_:
        raise ConfigError("no model: pass --model (awd_lstm, awd_gru, zaremba) or --config "
                          "FILE.json")
    fields_.setdefault("dataset", "ptb")
    fields_.setdefault("preset", "")
    return {**fields_, **_overrides(args)}


def _data_location(args: argparse.Namespace, dataset: str) -> str:
    """Where to load the data from: ``--data`` as given (a name or a folder), else the
    config's dataset name."""
    return args.data if args.data is not None else dataset


def _dataset_name(data: str) -> str:
    return Path(data).name if Path(data).exists() else data


def _check_paths(args: argparse.Namespace) -> None:
    """Output and resume paths are checked before the data is loaded: a typo must not cost an
    epoch. (``--save`` is then rewritten atomically after every epoch, so it always holds the
    last complete checkpoint.)"""
    if args.save is not None:
        problem = check_writable_file(args.save)
        if problem:
            raise CheckpointError(f"cannot save to {args.save}: {problem}")
    if args.resume is not None and not args.resume.is_file():
        raise CheckpointError(f"cannot resume from {args.resume}: no such file")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm  # torch and the rest once the flags parse: --help starts at once

    from awd.data import load_corpus
    from awd.progress import TokenBars, epoch_line, final_line
    from awd.trainer import Trainer, pick_device

    try:
        run = from_flat(run_config_fields(args))
        _check_paths(args)
        pick_device(run.train.device)
        corpus = load_corpus(_data_location(args, run.dataset))
        trainer = Trainer(run, corpus)
        if args.resume:
            trainer.load(args.resume)
        print(f"{run.model} on {run.dataset}: {trainer.num_params:,} parameters, "
              f"{trainer.device}", flush=True)
        bars = TokenBars()
        if not args.quiet:
            trainer.on_progress = bars
        for m in trainer.run():
            bars.close()
            if not args.quiet:
                tqdm.write(epoch_line(m))
            if args.save:
                trainer.save(args.save)
        final = trainer.final_metrics()
        bars.close()
        print(final_line(final))
        print(json.dumps({"num_params": trainer.num_params, **final}))
    except UserError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
