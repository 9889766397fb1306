"""What the cache and model averaging buy on real models, and what they cost:
``python -m benchmarks.after_training --models A.ckpt B.ckpt ... --cache-trials 40``.

Each model (a trainer checkpoint of ``python -m awd.train --save``, or an export) is run once
over validation and test, sequentially at batch 1 (`awd.posthoc.model_outputs`). Then, as a
search's stages do (`search.stages.cache.tune_cache`, `awd.ensemble.greedy_selection`): the best
single model on validation, its cache tuned on validation (the paper's values first, then TPE),
the ensemble of the models, and the ensemble with a cache of its own; test evaluated once each.

Costs, on the validation split (medians of ``--reps``): one plain evaluation (the model's
forward at batch 1, the trainer's own loop), the pass that keeps the outputs, and one cache trial
(a (W, θ, λ) scored from the stored outputs): a cached evaluation costs that pass plus one trial.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch

from awd.cache import CacheParams, cached_loss
from awd.data import load_corpus
from awd.ensemble import greedy_selection
from awd.posthoc import ensemble_outputs, model_outputs
from awd.trainer import ExportedModel, Trainer, load_exported, perplexity
from benchmarks.machine import RESULTS_DIR, load_snapshot, machine_info
from search.stages.cache import tune_cache


def load_any(path: Path, workdir: Path) -> tuple[ExportedModel, dict[str, Any]]:
    """An export, or a trainer checkpoint (exported first); and what is known of its training."""
    try:
        return load_exported(path), {}
    except Exception:
        saved = torch.load(path, weights_only=True, map_location="cpu")
        history = saved.get("history") or []
        out = Trainer.export_checkpoint(path, workdir / (path.stem + ".pt"))
        info = {"epochs_trained": int(saved.get("epoch", 0)),
                "epochs_planned": int(saved["config"].get("epochs", 0)),
                "train_seconds": sum(h["epoch_seconds"] for h in history),
                "val_ppl_per_epoch": [round(h["val_ppl"], 3) for h in history]}
        return load_exported(out), info


def plain_eval_seconds(model: ExportedModel, corpus: Any, reps: int) -> float:
    """The trainer's own evaluation loop over validation at batch 1 (median of ``reps``)."""
    run = model.run
    flat = {**run.to_flat(), "eval_batch_size": 1, "test_batch_size": 1, "device": "cpu"}
    trainer = Trainer(flat, corpus)
    trainer.model.load_state_dict(model.state_dict)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        trainer.evaluate("valid")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def study(seed: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="minimize",
                               sampler=optuna.samplers.TPESampler(seed=seed))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.after_training",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", type=Path, required=True)
    p.add_argument("--cache-trials", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=3, help="timed plain evaluations")
    p.add_argument("--train-command", default="", help="how the models were trained (recorded)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    before = load_snapshot()
    with tempfile.TemporaryDirectory() as d:
        loaded = [load_any(path, Path(d)) for path in args.models]
    models = [m for m, _ in loaded]
    names = [path.stem for path in args.models]
    corpus = load_corpus(models[0].run.dataset)
    dataset = models[0].run.dataset

    outputs, per_model = [], []
    for name, (model, info) in zip(names, loaded, strict=True):
        start = time.perf_counter()
        out = model_outputs(model, corpus, device="cpu")
        pass_s = time.perf_counter() - start
        outputs.append(out)
        per_model.append({"name": name, "model": model.run.model, "preset": model.run.preset,
                          "val_ppl": perplexity(out["valid"].loss()),
                          "test_ppl": perplexity(out["test"].loss()),
                          "outputs_pass_seconds_valid_and_test": pass_s, **info})
        print(f"{name}: val {per_model[-1]['val_ppl']:.2f} test {per_model[-1]['test_ppl']:.2f} "
              f"({pass_s:.0f} s for both splits)", flush=True)
    best = min(range(len(models)), key=lambda i: outputs[i]["valid"].loss())
    plain_s = plain_eval_seconds(models[best], corpus, args.reps)
    outputs_s = []
    for _ in range(args.reps):  # the pass that keeps the outputs, on the same split
        start = time.perf_counter()
        model_outputs(models[best], corpus, ["valid"], device="cpu")
        outputs_s.append(time.perf_counter() - start)
    outputs_valid_s = statistics.median(outputs_s)
    tokens = outputs[best]["valid"].tokens

    # the best single model's cache
    tuning = tune_cache(outputs[best]["valid"], study(args.seed), args.cache_trials,
                        CacheParams.paper(dataset))
    start = time.perf_counter()
    cache_test = perplexity(cached_loss(outputs[best]["test"], tuning.chosen))
    cached_test_s = time.perf_counter() - start
    paper = CacheParams.paper(dataset)
    paper_val = perplexity(cached_loss(outputs[best]["valid"], paper))

    # the ensemble over every model, and its own cache
    selection = greedy_selection(torch.stack([o["valid"].logprob for o in outputs]),
                                 len(models))
    chosen = selection.members
    weights = [selection.weights[i] for i in chosen]
    heaviest = max(range(len(chosen)), key=lambda k: (weights[k], -k))
    order = [heaviest] + [k for k in range(len(chosen)) if k != heaviest]
    ens = {s: ensemble_outputs([outputs[chosen[k]][s] for k in order],
                               [weights[k] for k in order], 0) for s in ("valid", "test")}
    ens_tuning = tune_cache(ens["valid"], study(args.seed), args.cache_trials, paper)
    ens_val, ens_test = perplexity(ens["valid"].loss()), perplexity(ens["test"].loss())
    helps = ens_tuning.cache_val_ppl < ens_val
    ens_cache_test = perplexity(cached_loss(ens["test"], ens_tuning.chosen)) if helps \
        else math.nan

    single = per_model[best]
    rows = [
        {"what": f"best single ({names[best]})", "val_ppl": single["val_ppl"],
         "test_ppl": single["test_ppl"]},
        {"what": "best single + cache", "val_ppl": tuning.cache_val_ppl,
         "test_ppl": cache_test, "cache": tuning.chosen.as_dict()},
        {"what": f"ensemble of {len(chosen)}", "val_ppl": ens_val, "test_ppl": ens_test,
         "members": {names[i]: selection.weights[i] for i in chosen}},
        {"what": "ensemble + cache", "val_ppl": ens_tuning.cache_val_ppl if helps else math.nan,
         "test_ppl": ens_cache_test, "cache": ens_tuning.chosen.as_dict() if helps else None,
         "pointer_over": names[chosen[heaviest]]},
    ]
    trial_s = tuning.seconds_per_trial
    result = {
        "benchmark": "after_training",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.after_training",
                             *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
        "train_command": args.train_command,
        "machine": machine_info(torch.device("cpu")),
        "load": {"before": before, "after": load_snapshot()},
        "dataset": dataset, "valid_tokens": tokens, "test_tokens": outputs[best]["test"].tokens,
        "models": per_model,
        "table": rows,
        "cache_trials": args.cache_trials,
        "cache_tuning": [{**p.as_dict(), "val_ppl": v} for p, v in tuning.trials],
        "paper_cache_values_val_ppl": paper_val,
        "costs": {
            "plain_eval_valid_seconds": plain_s,
            "outputs_pass_valid_seconds": outputs_valid_s,
            "cached_eval_valid_seconds": outputs_valid_s + trial_s,
            "cached_eval_over_plain": (outputs_valid_s + trial_s) / plain_s,
            "cache_trial_seconds_median": trial_s,
            "cache_trials_per_second": 1 / trial_s if trial_s > 0 else math.nan,
            "cache_trials_per_plain_eval": plain_s / trial_s if trial_s > 0 else math.nan,
            "cached_test_eval_seconds_beyond_outputs": cached_test_s,
            "note": "a cached evaluation of a split = the outputs pass (a plain evaluation that "
                    "also keeps the last layer's outputs) + one cache computation",
        },
        "gains": {
            "cache_test_ppl_change": cache_test - single["test_ppl"],
            "ensemble_test_ppl_change": ens_test - single["test_ppl"],
            "ensemble_cache_test_ppl_change": ens_cache_test - single["test_ppl"],
        },
    }
    for r in rows:
        print(f"{r['what']:<28} val {r['val_ppl']:8.2f} test {r['test_ppl']:8.2f}")
    print(f"plain evaluation of valid {plain_s:.1f} s; the pass keeping the outputs "
          f"{outputs_valid_s:.1f} s; a cache trial {trial_s:.2f} s ({plain_s / trial_s:.0f} "
          f"trials per plain evaluation); a cached evaluation "
          f"{(outputs_valid_s + trial_s) / plain_s:.2f}x a plain one")
    out = args.out or RESULTS_DIR / f"after_training-{dataset}-cpu-{datetime.now():%Y-%m-%d}.json"
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
