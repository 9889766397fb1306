"""Command line: evaluate an exported model and sample text from it:
``python -m awd.evaluate --model-uri best_model.pt --data ptb --generate 50``.

The model is an export (`awd.trainer.Trainer.export_best`: weights, config, vocabulary) at a
local path: the .pt file, or a folder holding one such as a downloaded MLflow model. It is read
with ``torch.load(weights_only=True)`` (`awd.trainer.load_exported`): nothing in it can run code.
A search's model in MLflow (``models:/NAME/latest``, ``runs:/<run id>/model``) is resolved by
``python -m search.evaluate``, which downloads the export and hands it here: ``awd`` knows
nothing of MLflow.

The perplexities are the trainer's own (`Trainer.final_metrics` with the split slices, bptt and
batch sizes of the model's config: test at ``test_batch_size``, 1 unless the config says
otherwise), so a search's best model gives its trial's final_val_ppl and final_test_ppl.

``--cache W,θ,λ`` adds the continuous cache pointer (`awd.cache`), and an ensemble's file
(`awd.ensemble`) evaluates as its weighted average: both score the splits sequentially at batch
1 (`awd.posthoc`), so their plain test perplexity is the trainer's and their validation one is
at batch 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import torch

from awd.cache import CacheParams
from awd.data import Corpus, load_corpus
from awd.data.corpus import EOS
from awd.ensemble import Ensemble, is_ensemble_file, load_ensemble
from awd.errors import ConfigError, DataError, UserError, first_line
from awd.models import LanguageModel
from awd.posthoc import outputs_of, score
from awd.progress import TokenBars
from awd.trainer import ExportedModel, Trainer, load_exported, pick_device

EXPORT_FILE = "best_model.pt"
EXPORT_IN_MODEL = f"extra_files/{EXPORT_FILE}"  # where MLflow's extra_files puts the export
MLFLOW_SCHEMES = ("models:/", "runs:/")
UNK = "<unk>"
MAX_GENERATE = 100_000  # words one --generate samples (one model step each)
TUNED = "tuned"  # --cache tuned: the values stored with the model
Loaded = ExportedModel | Ensemble


class ModelNotFoundError(UserError):
    """The model URI names no model: unknown registered model or version, run, or path."""


class VocabularyMismatchError(DataError):
    """The dataset's vocabulary is not the one the model was trained with."""


# --- finding the export ----------------------------------------------------------------------


def local_export(path: Path) -> Path:
    """The export file at ``path``: the file itself, or the export inside a model folder."""
    if path.is_file():
        return path
    for candidate in (path / EXPORT_IN_MODEL, path / EXPORT_FILE):
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(f"{path} holds no exported model (looked for {EXPORT_IN_MODEL} "
                             f"and {EXPORT_FILE})")


def load_model(uri: str) -> Loaded:
    """The exported model (or ensemble) at a local path (the .pt file, or a folder holding
    one)."""
    if uri.startswith(MLFLOW_SCHEMES):
        raise ModelNotFoundError(f"{uri} is an MLflow model URI: python -m search.evaluate "
                                 "--model-uri URI downloads it from the tracking store")
    path = Path(uri).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"{uri}: no such file (an MLflow model URI, models:/NAME/latest "
                                 "or runs:/<run id>/model, goes to python -m search.evaluate)")
    return read_export(local_export(path))


def read_export(path: Path) -> Loaded:
    """A single model's export, or an ensemble's file (`awd.ensemble`)."""
    return load_ensemble(path) if is_ensemble_file(path) else load_exported(path)


# --- evaluation and sampling -----------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """Validation and test loss and perplexity, and how many tokens each split scored."""

    num_params: int
    val_loss: float
    val_ppl: float
    test_loss: float
    test_ppl: float
    val_tokens: int
    test_tokens: int


def check_vocabulary(exported: Loaded, corpus: Corpus, data: str) -> None:
    """Token ids mean nothing under another vocabulary: refuse instead of printing nonsense."""
    if corpus.vocab != exported.vocab:
        dataset = exported.run.dataset if isinstance(exported, ExportedModel) else \
            exported.dataset
        raise VocabularyMismatchError(
            f"the model's vocabulary ({len(exported.vocab):,} words) is not that of {data} "
            f"({corpus.ntokens:,} words): the model was trained on {dataset}")


def evaluate(exported: ExportedModel, corpus: Corpus, device: str = "auto",
             progress: TokenBars | None = None) -> tuple[Evaluation, LanguageModel]:
    """The trainer's final evaluation of the exported weights on ``corpus`` (checked to have
    the model's vocabulary), and the model it evaluated (on ``device``)."""
    trainer = Trainer(exported.run, corpus, device=device)
    trainer.model.load_state_dict(exported.state_dict)
    trainer.on_progress = progress
    final = trainer.final_metrics()  # no best weights in this trainer: evaluates both splits
    tokens = {s: (d.size(0) - 1) * d.size(1) for s, d in
              (("valid", trainer.val_data), ("test", trainer.test_data))}
    result = Evaluation(num_params=trainer.num_params, val_loss=final["val_loss"],
                        val_ppl=final["val_ppl"], test_loss=final["test_loss"],
                        test_ppl=final["test_ppl"], val_tokens=tokens["valid"],
                        test_tokens=tokens["test"])
    return result, trainer.model


def prompt_ids(prompt: str, vocab: list[str]) -> list[int]:
    """The prompt's words as token ids (unknown words as <unk> when the vocabulary has it); an
    empty prompt starts a sentence (<eos>)."""
    index = {w: i for i, w in enumerate(vocab)}
    words = prompt.split() or [EOS]
    unknown = [w for w in words if w not in index]
    if unknown and UNK not in index:
        raise ConfigError(f"--prompt: {', '.join(repr(w) for w in unknown[:5])} not in the "
                          "model's vocabulary")
    return [index.get(w, index.get(UNK, 0)) for w in words]


@torch.no_grad()
def generate(model: LanguageModel, vocab: list[str], words: int, prompt: str = "",
             seed: int = 0, temperature: float = 1.0) -> list[str]:
    """``words`` words sampled one at a time after ``prompt``, each from the model's next-word
    distribution at ``temperature`` (below 1: more likely words; above: more varied), with a
    generator of its own seeded by ``seed``: the same arguments give the same text."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"--temperature must be a finite number > 0, got {temperature}")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    inputs = torch.tensor(prompt_ids(prompt, vocab), device=device).view(-1, 1)
    hidden = model.init_hidden(1)
    sampled: list[str] = []
    for _ in range(words):
        out = model(inputs, hidden)
        hidden = out.hidden
        probs = torch.softmax(out.logits[-1, 0].double() / temperature, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
        sampled.append(vocab[token])
        inputs = torch.tensor([[token]], device=device)
    return sampled


def as_text(words: list[str]) -> str:
    """Words joined by spaces, a line per sentence (<eos>)."""
    return "\n".join(line.strip() for line in " ".join(words).split(EOS))


# --- the command line -----------------------------------------------------------------------


def build_parser(prog: str = "python -m awd.evaluate",
                 model_help: str = "an exported .pt file or a model folder"
                 ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Validation and test perplexity of a trained model, and text sampled from it.")
    parser.add_argument("--model-uri", required=True, help=model_help)
    parser.add_argument("--data", default=None,
                        help="dataset name (ptb, wikitext-2) or folder (default: the model's)")
    parser.add_argument("--generate", type=int, default=0, metavar="N",
                        help="also sample N words of text")
    parser.add_argument("--prompt", default="", help="text the sample continues")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature (default 1: the model's distribution)")
    parser.add_argument("--no-eval", action="store_true",
                        help="only sample text (no dataset needed)")
    parser.add_argument("--cache", default=None, metavar="W,THETA,LAMBDA",
                        help="also evaluate with the continuous cache pointer (e.g. 2000,1.0,0.1"
                        "; 'tuned': the values tuned for this model); both splits are then "
                        "scored sequentially at batch 1")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Bad flags are refused before any model is read or downloaded."""
    if not 0 <= args.generate <= MAX_GENERATE:
        raise ConfigError(f"--generate must be 0 to {MAX_GENERATE:,} words, got "
                          f"{args.generate:,}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ConfigError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if args.no_eval and not args.generate:
        raise ConfigError("--no-eval without --generate N leaves nothing to do")
    if args.cache is not None and args.cache != TUNED:
        CacheParams.parse(args.cache)
    if args.cache is not None and args.no_eval:
        raise ConfigError("--cache with --no-eval: the cache needs an evaluation")
    pick_device(args.device)


def cache_values(args: argparse.Namespace, loaded: Loaded) -> CacheParams | None:
    """``--cache``'s values: given, or ``tuned`` (an ensemble file keeps its own; a search's
    registered version keeps its model's, which `search.evaluate` puts in ``args.cache``)."""
    if args.cache is None:
        return None
    if args.cache != TUNED:
        return CacheParams.parse(args.cache)
    if isinstance(loaded, Ensemble) and loaded.cache is not None:
        return loaded.cache
    raise ConfigError("--cache tuned: no tuned cache values are stored with this model (a "
                      "search's --cache-trials keeps them with its registered version: python "
                      "-m search.evaluate --model-uri models:/NAME/VERSION --cache tuned)")


def describe(loaded: Loaded) -> str:
    if isinstance(loaded, ExportedModel):
        return loaded.run.model
    members = ", ".join(f"{n} ({w:.2f})" for n, w in zip(loaded.names, loaded.weights,
                                                          strict=True))
    return f"ensemble of {len(loaded.members)} [{members}]"


def evaluate_sequential(loaded: Loaded, corpus: Corpus, data: str, cache: CacheParams | None,
                        device: str, quiet: bool) -> dict[str, float | int | str]:
    """Both splits at batch 1 (`awd.posthoc`), and with the cache if given: what an ensemble
    and the cache report. Prints the lines; returns the JSON record."""
    bars = None if quiet else TokenBars()
    try:
        outputs = outputs_of(loaded, corpus, device=device, progress=bars)
    finally:
        if bars is not None:
            bars.close()
    val, test = score(outputs["valid"], cache), score(outputs["test"], cache)
    print(f"{describe(loaded)} on {data}: valid {val.tokens:,} tokens | test {test.tokens:,} "
          "tokens (sequential, batch 1)")
    print(f"val ppl {val.ppl:.2f} | test ppl {test.ppl:.2f}")
    record: dict[str, float | int | str] = {
        "val_ppl": val.ppl, "test_ppl": test.ppl, "val_tokens": val.tokens,
        "test_tokens": test.tokens}
    if cache is not None:
        assert val.cache_ppl is not None and test.cache_ppl is not None
        print(f"with cache {cache.shown()}: val ppl {val.cache_ppl:.2f} | test ppl "
              f"{test.cache_ppl:.2f}")
        record.update({"cache": cache.as_text(), "cache_val_ppl": val.cache_ppl,
                       "cache_test_ppl": test.cache_ppl})
    return record


def run(args: argparse.Namespace, loaded: Loaded) -> None:
    """Evaluate ``loaded`` on its dataset (or ``--data``) and sample from it, as asked."""
    if isinstance(loaded, Ensemble) and args.generate:
        raise ConfigError("--generate samples from a single model, not an ensemble (evaluate "
                          "the ensemble, or sample from one of its members)")
    cache = cache_values(args, loaded)
    model: LanguageModel | None = None
    if not args.no_eval:
        data = args.data or (loaded.run.dataset if isinstance(loaded, ExportedModel)
                             else loaded.dataset)
        corpus = load_corpus(data)
        check_vocabulary(loaded, corpus, data)
        if cache is not None or isinstance(loaded, Ensemble):
            record = evaluate_sequential(loaded, corpus, data, cache, args.device, args.quiet)
            print(json.dumps(record), flush=True)
        else:
            model = _evaluate_plain(loaded, corpus, data, args)
    if args.generate:
        assert isinstance(loaded, ExportedModel)
        if model is None:
            model = cast(LanguageModel, loaded.build(pick_device(args.device)))
        words = generate(model, loaded.vocab, args.generate, args.prompt, args.seed,
                         args.temperature)
        print(as_text([*args.prompt.split(), *words]))


def _evaluate_plain(exported: ExportedModel, corpus: Corpus, data: str,
                    args: argparse.Namespace) -> LanguageModel:
    bars = None if args.quiet else TokenBars()
    try:
        result, model = evaluate(exported, corpus, args.device, bars)
    finally:
        if bars is not None:
            bars.close()
    train = exported.run.train
    print(f"{exported.run.model} on {data}: {result.num_params:,} parameters | valid "
          f"{result.val_tokens:,} tokens (batch {train.eval_batch_size}) | test "
          f"{result.test_tokens:,} tokens (batch {train.test_batch_size})")
    print(f"val ppl {result.val_ppl:.2f} | test ppl {result.test_ppl:.2f}")
    print(json.dumps(asdict(result)), flush=True)
    return model


def _load_file(args: argparse.Namespace) -> Loaded:
    return load_model(args.model_uri)


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None,
         load: Callable[[argparse.Namespace], Loaded] = _load_file) -> int:
    """The command line; ``parser`` and ``load`` let `search.evaluate` add MLflow model URIs."""
    args = (parser or build_parser()).parse_args(argv)
    try:
        check_args(args)
        run(args, load(args))
    except UserError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
