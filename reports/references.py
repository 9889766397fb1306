"""Published perplexities (``references.json``, the only numbers not read from MLflow)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from awd.data.registry import canonical_dataset

REFERENCES_FILE = Path(__file__).with_name("references.json")


@dataclass(frozen=True)
class Reference:
    """One published result: validation and test perplexity, and where it comes from."""

    model: str
    dataset: str
    preset: str
    finetuned: bool
    val_ppl: float
    test_ppl: float
    citation: str


@dataclass(frozen=True)
class Match:
    """The reference for a (model, dataset, preset), or why there is none; ``not_comparable``:
    why a run cannot be set against it at all (no gap is shown), "" when it can."""

    reference: Reference | None
    note: str = ""
    not_comparable: str = ""

    @property
    def comparable(self) -> bool:
        return self.reference is not None and not self.not_comparable


def normalize_dataset(name: str) -> str:
    """The registry's name of a dataset (``wt2`` -> ``wikitext-2``): one alias list."""
    return canonical_dataset(str(name).strip())


@cache
def load(path: Path = REFERENCES_FILE) -> tuple[tuple[Reference, ...], dict[str, str]]:
    """All references and the per-model notes of models that have none."""
    data = json.loads(Path(path).read_text())
    refs = tuple(
        Reference(model=r["model"], dataset=normalize_dataset(r["dataset"]),
                  preset=r.get("preset", ""), finetuned=bool(r.get("finetuned", False)),
                  val_ppl=float(r["val_ppl"]), test_ppl=float(r["test_ppl"]),
                  citation=r["citation"])
        for r in data["references"]
    )
    return refs, dict(data.get("none", {}))


def slice_reason(train_tokens: float = 0, eval_tokens: float = 0) -> str:
    """Why a run on a prefix of the splits is not comparable with a published number (which is
    on the whole splits), "" for a run on the whole splits."""
    parts = [f"trained on a {int(train_tokens):,}-token slice" if train_tokens > 0 else "",
             f"evaluated on {int(eval_tokens):,}-token slices" if eval_tokens > 0 else ""]
    what = " and ".join(p for p in parts if p)
    return f"{what}: not comparable with the published number" if what else ""


def match(model: str, dataset: str, preset: str = "", finetuned: bool = False,
          train_tokens: float = 0, eval_tokens: float = 0,
          path: Path = REFERENCES_FILE) -> Match:
    """The published number a run of ``model`` on ``dataset`` is compared with, and whether it
    can be: only a run on the whole splits of the same dataset can (``train_tokens`` and
    ``eval_tokens`` are the run's slice sizes, 0 or NaN for the whole split)."""
    found = _match(model, dataset, preset, finetuned, path)
    why = slice_reason(train_tokens, eval_tokens)
    if found.reference is None or not why:
        return found
    return Match(found.reference, found.note, why)


def _match(model: str, dataset: str, preset: str, finetuned: bool, path: Path) -> Match:
    refs, none = load(path)
    if model in none:
        return Match(None, "no published number (see below)")
    dataset = normalize_dataset(dataset)
    same = [r for r in refs if r.model == model and r.dataset == dataset]
    if not same:
        return Match(None, f"no published number for {model} on {dataset}")
    if any(r.preset for r in same):
        same = [r for r in same if r.preset == preset]
        if not same:
            return Match(None, f"no published number for {model} preset {preset or '(none)'!r}")
    exact = [r for r in same if r.finetuned == finetuned]
    if exact:
        return Match(exact[0])
    ref = same[0]
    if ref.finetuned:
        return Match(ref, "published with fine-tuning; the run was not fine-tuned")
    return Match(ref, "published without fine-tuning; the run was fine-tuned")


@dataclass(frozen=True)
class AfterTraining:
    """A published number of what comes after training: the cache, model averaging."""

    model: str
    dataset: str
    what: str
    val_ppl: float
    test_ppl: float
    citation: str


@cache
def after_training(path: Path = REFERENCES_FILE) -> tuple[AfterTraining, ...]:
    data = json.loads(Path(path).read_text())
    return tuple(AfterTraining(r["model"], normalize_dataset(r["dataset"]), r["what"],
                               float(r["val_ppl"]), float(r["test_ppl"]), r["citation"])
                 for r in data.get("after_training", []))
