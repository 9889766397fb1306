"""Command line: train one model, e.g. ``python -m awd.train --model awd_lstm --data ptb``.

Every field of the model's config and of ``TrainConfig`` is a flag; defaults are the paper
preset of the chosen model and dataset. Errors in the input print one line, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from tqdm import tqdm

from awd.config import MODELS, AWDLSTMConfig, TrainConfig, ZarembaConfig, from_flat
from awd.data import load_corpus
from awd.errors import CheckpointError, UserError, first_line
from awd.files import check_writable_file
from awd.trainer import EpochMetrics, Trainer, pick_device


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
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(MODELS)}")
    parser.add_argument("--data", default="ptb",
                        help="dataset name (ptb, wikitext-2) under $AWD_DATA_DIR, or a folder")
    parser.add_argument("--preset", default="", help="zaremba size: small, medium (default), large")
    parser.add_argument("--save", type=Path, default=None, help="write the trainer checkpoint here")
    parser.add_argument("--resume", type=Path, default=None, help="resume from a checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _field_flags(parser)
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    skip = {"model", "data", "preset", "save", "resume", "quiet"}
    return {k: v for k, v in vars(args).items() if k not in skip and v is not None}


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
    try:
        run = from_flat({"model": args.model, "dataset": _dataset_name(args.data),
                         "preset": args.preset, **_overrides(args)})
        _check_paths(args)
        pick_device(run.train.device)
        corpus = load_corpus(args.data)
        trainer = Trainer(run, corpus)
        if args.resume:
            trainer.load(args.resume)
        print(f"{run.model} on {run.dataset}: {trainer.num_params:,} parameters, "
              f"{trainer.device}", flush=True)
        for m in _epochs_with_bars(trainer, args.quiet):
            tqdm.write(_line(m)) if not args.quiet else None
            if args.save:
                trainer.save(args.save)
        final = trainer.final_metrics()
        print(f"final | val ppl {final['val_ppl']:.2f} | test ppl {final['test_ppl']:.2f}")
        print(json.dumps({"num_params": trainer.num_params, **final}))
    except UserError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    return 0


class _EpochBar:
    """One tqdm bar per epoch over the training stream's rows."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def advance(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, unit="row", leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _epochs_with_bars(trainer: Trainer, quiet: bool) -> Iterator[EpochMetrics]:
    """Run the trainer, drawing a progress bar for each epoch unless quiet."""
    bar = _EpochBar()
    if not quiet:
        trainer.on_window = bar.advance
    for m in trainer.run():
        bar.close()
        yield m


def _line(m: EpochMetrics) -> str:
    return (f"epoch {m.epoch:3d} ({m.phase}) | train ppl {m.train_ppl:8.2f} | val ppl "
            f"{m.val_ppl:8.2f} | lr {m.lr:.3g} | {m.epoch_seconds:.1f}s | "
            f"{m.tokens_per_s:,.0f} tok/s | averaging {'on' if m.averaging else 'off'}")


if __name__ == "__main__":
    sys.exit(main())
