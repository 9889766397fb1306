"""The AWD-LSTM paper's ablation (Merity et al. 2018, Table 4): one technique removed at a time.

What each row changes is written here once; the search's ``--ablate`` stage, its checks and the
report all read it. A row is a change of a flat run config (`awd.config.RunConfig.to_flat`):

| row | change |
|---|---|
| fine-tuning | ``finetune_epochs = 0`` |
| NT-ASGD | plain SGD at the same constant lr: no averaging, no decay, no fine-tuning |
| variable sequence lengths | ``variable_bptt = False`` (fixed windows of ``bptt``) |
| embedding dropout | ``dropoute = 0`` |
| weight decay | ``wdecay = 0`` |
| AR/TAR | ``alpha = beta = 0`` |
| full sized embedding | ``emsize = nhid`` |
| weight-dropping | ``wdrop = 0`` |

A row applies to a model when the model has what it removes (Zaremba's LSTM has no embedding
dropout, no separate embedding size, no weight drop); it changes a configuration only when that
configuration uses the technique (``wdrop`` already 0: nothing to remove).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from awd.config import ConfigError, from_flat, preset, shown

Flat = Mapping[str, Any]


@dataclass(frozen=True)
class Row:
    """One of Table 4's rows: its name on the command line, the paper's label, what it does."""

    name: str
    label: str  # as the paper prints it, after "–"
    change: str  # what it changes, in words (README, report)
    needs: tuple[str, ...]  # the model config fields it acts on (model-level applicability)
    uses: Callable[[Flat], bool]  # does this configuration use the technique?
    remove: Callable[[Flat], dict[str, Any]]  # the overrides that remove it


def _number(flat: Flat, key: str) -> float:
    return float(flat.get(key, 0) or 0)


ROWS: dict[str, Row] = {r.name: r for r in (
    Row("finetune", "fine-tuning", "finetune_epochs = 0", (),
        lambda f: _number(f, "finetune_epochs") > 0, lambda f: {"finetune_epochs": 0}),
    Row("ntasgd", "NT-ASGD", "plain SGD at the same constant lr: no averaging, no decay, "
        "no fine-tuning", (),
        lambda f: f.get("optimizer", "ntasgd") == "ntasgd",
        lambda f: {"optimizer": "sgd_schedule", "lr_decay": 1.0, "decay_start": 0,
                   "finetune_epochs": 0}),
    Row("variable_bptt", "variable sequence lengths", "variable_bptt = false (fixed bptt)", (),
        lambda f: bool(f.get("variable_bptt", True)), lambda f: {"variable_bptt": False}),
    Row("embedding_dropout", "embedding dropout", "dropoute = 0", ("dropoute",),
        lambda f: _number(f, "dropoute") > 0, lambda f: {"dropoute": 0.0}),
    Row("weight_decay", "weight decay", "wdecay = 0", (),
        lambda f: _number(f, "wdecay") > 0, lambda f: {"wdecay": 0.0}),
    Row("ar_tar", "AR/TAR", "alpha = beta = 0", (),
        lambda f: _number(f, "alpha") > 0 or _number(f, "beta") > 0,
        lambda f: {"alpha": 0.0, "beta": 0.0}),
    Row("full_embedding", "full sized embedding", "emsize = nhid", ("emsize",),
        lambda f: int(f.get("emsize", 0)) != int(f.get("nhid", 0)),
        lambda f: {"emsize": int(f["nhid"])}),
    Row("weight_drop", "weight-dropping", "wdrop = 0", ("wdrop",),
        lambda f: _number(f, "wdrop") > 0, lambda f: {"wdrop": 0.0}),
)}


# Table 4's numbers (val, test): the full model, fine-tuned, then each removal.
PAPER_FULL = {"ptb": (60.0, 57.3), "wikitext-2": (68.6, 65.8)}
PAPER = {
    "finetune": {"ptb": (60.7, 58.8), "wikitext-2": (69.1, 66.0)},
    "ntasgd": {"ptb": (66.3, 63.7), "wikitext-2": (73.3, 69.7)},
    "variable_bptt": {"ptb": (61.3, 58.9), "wikitext-2": (69.3, 66.2)},
    "embedding_dropout": {"ptb": (65.1, 62.7), "wikitext-2": (71.1, 68.1)},
    "weight_decay": {"ptb": (63.7, 61.0), "wikitext-2": (71.9, 68.7)},
    "ar_tar": {"ptb": (62.7, 60.3), "wikitext-2": (73.2, 70.1)},
    "full_embedding": {"ptb": (68.0, 65.6), "wikitext-2": (73.7, 70.7)},
    "weight_drop": {"ptb": (71.1, 68.9), "wikitext-2": (78.4, 74.9)},
}


def paper_change(name: str, dataset: str) -> tuple[float, float] | None:
    """Table 4's change of (val, test) perplexity when row ``name`` is removed (None: the paper
    has no such dataset)."""
    full, row = PAPER_FULL.get(dataset), PAPER[name].get(dataset)
    if full is None or row is None:
        return None
    return round(row[0] - full[0], 2), round(row[1] - full[1], 2)


def applies_to(row: Row, model: str) -> bool:
    """Whether ``model``'s architecture has what ``row`` removes."""
    have = {f.name for f in fields(preset(model).arch) if f.init}
    return all(name in have for name in row.needs)


def rows_for(model: str) -> list[Row]:
    """The rows that apply to ``model``, in the paper's order."""
    return [r for r in ROWS.values() if applies_to(r, model)]


def parse_rows(text: str, model: str) -> tuple[str, ...]:
    """``--ablate``'s value: ``all`` (every row that applies to ``model``) or names separated
    by commas; an unknown name, a repeated one or one that does not apply is a ConfigError."""
    if text.strip() == "all":
        return tuple(r.name for r in rows_for(model))
    names = [n.strip() for n in text.split(",")]
    known = ", ".join(ROWS)
    seen: set[str] = set()
    for name in names:
        if name not in ROWS:
            raise ConfigError(f"--ablate: unknown row {shown(name)}; known: {known} (or all)")
        if name in seen:
            raise ConfigError(f"--ablate: row {name} is given twice")
        if not applies_to(ROWS[name], model):
            raise ConfigError(f"--ablate: row {name} ({ROWS[name].change}) does not apply to "
                              f"{model}: it has no {', '.join(ROWS[name].needs)}")
        seen.add(name)
    return tuple(names)


def rows_of(text: str, model: str) -> tuple[list[str], list[str]]:
    """``--ablate``'s rows (checked by `parse_rows` for some model of the space) split into
    those that apply to ``model`` (the winner's) and those that do not."""
    names = [r.name for r in ROWS.values()] if text.strip() == "all" \
        else [n.strip() for n in text.split(",")]
    return ([n for n in names if applies_to(ROWS[n], model)],
            [n for n in names if not applies_to(ROWS[n], model)])


def ablated(flat: Flat, name: str) -> dict[str, Any]:
    """The full run config of ``flat`` (preset values filled in: a search trial's config names
    only what it sets) with row ``name``'s technique removed, validated; a ConfigError if the
    configuration does not use it (nothing to remove)."""
    row = ROWS[name]
    full = from_flat(dict(flat)).to_flat()
    if not row.uses(full):
        raise ConfigError(f"{row.label}: the configuration does not use it (nothing to remove)")
    out = {**full, **row.remove(full)}
    from_flat(dict(out))  # a removal that makes an invalid run says so here, not in a trial
    return out
