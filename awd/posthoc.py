"""After training: a model's (or an ensemble's) outputs on validation and test, with the cache.

Everything here scores a split sequentially at batch 1, as the cache needs and as the papers
report test perplexity: one pass per model and split (`model_outputs`), after which the cache
(`awd.cache`) and model averaging (`awd.ensemble`) are arithmetic on the stored outputs. At batch
1, the test perplexity is the trainer's (``test_batch_size`` 1 is every preset's); the validation
perplexity may differ slightly from the trainer's, which validates at ``eval_batch_size``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from awd.cache import CacheParams, SplitOutputs, cached_loss, collect_outputs
from awd.data import Corpus, batchify
from awd.ensemble import Ensemble, check_aligned, mixture_logprob
from awd.trainer import ExportedModel, perplexity, pick_device

SPLITS = ("valid", "test")
Progress = Callable[[str, int, int], None]  # (split, tokens done, tokens in the split)


def model_outputs(exported: ExportedModel, corpus: Corpus, splits: Sequence[str] = SPLITS,
                  device: str = "auto", progress: Progress | None = None
                  ) -> dict[str, SplitOutputs]:
    """One sequential pass per split of the model's own evaluation slice (its config's
    ``eval_tokens``), at batch 1 with its bptt."""
    run = exported.run
    sliced = corpus.truncated(None, run.train.eval_tokens or None)
    target = pick_device(device)
    model = exported.build(target)
    result = {}
    for split in splits:
        data = batchify(getattr(sliced, split), 1, split).to(target)

        def step(done: int, total: int, split: str = split) -> None:
            if progress is not None:
                progress(split, done, total)

        result[split] = collect_outputs(model, data, run.train.bptt, step)
    return result


def ensemble_outputs(members: Sequence[SplitOutputs], weights: Sequence[float],
                     pointer: int, names: Sequence[str] | None = None) -> SplitOutputs:
    """The weighted average's outputs on a split: its log-probability of every target, and the
    last-layer outputs of member ``pointer`` (those the cache attends over)."""
    check_aligned(members, names or [f"member {i + 1}" for i in range(len(members))])
    logprob = mixture_logprob(torch.stack([m.logprob for m in members]), weights)
    return SplitOutputs(members[pointer].hidden, members[pointer].targets, logprob)


def outputs_of(model: ExportedModel | Ensemble, corpus: Corpus, splits: Sequence[str] = SPLITS,
               device: str = "auto", progress: Progress | None = None
               ) -> dict[str, SplitOutputs]:
    """`model_outputs` of a model, or of an ensemble (every member's, then averaged)."""
    if isinstance(model, ExportedModel):
        return model_outputs(model, corpus, splits, device, progress)
    per_member = [model_outputs(m, corpus, splits, device, progress) for m in model.members]
    return {s: ensemble_outputs([o[s] for o in per_member], model.weights,
                                model.pointer_member, model.names) for s in splits}


@dataclass(frozen=True)
class Scored:
    """Perplexity of a split without and with the cache."""

    tokens: int
    ppl: float
    cache_ppl: float | None = None


def score(outputs: SplitOutputs, cache: CacheParams | None = None) -> Scored:
    """The split's perplexity, and with ``cache`` its perplexity under the cache."""
    plain = perplexity(outputs.loss())
    if cache is None:
        return Scored(outputs.tokens, plain)
    return Scored(outputs.tokens, plain, perplexity(cached_loss(outputs, cache)))
