"""A table of real learning curves over the benchmark space, recorded once and replayed many
times (`benchmarks.replay`): ``python -m benchmarks.curves``.

What is trained: ``--configs`` configurations of ``spaces.bench_ptb`` from a scrambled Sobol
design (space-filling over the unit cube of the space's parameters, each coordinate mapped
through the parameter's range and log scale; the model is the first coordinate), plus the
space's warm start (its first trial), each at the space's training seed; then the first
``--noise-configs`` of them again at ``--noise-seeds`` more seeds, which measures the seed noise
the replay adds and that the objective's structure must stand out from. Every epoch's validation
perplexity, training perplexity and seconds are kept (the real `awd.trainer.Trainer`, NT-ASGD
and all).

It resumes: each finished run is one line of ``--work`` (JSON lines), and a restarted command
skips the runs that file holds. ``--workers`` processes train at once (one CPU thread each, or
sharing one GPU with ``--device cuda``); ``--budget-s`` stops starting runs after that many
seconds, so that a short lease keeps what it measured. At the end the table is packed, with the
command, the machine and the summary (seed noise against the spread across configurations),
into ``--out`` (gzip JSON).

    python -m benchmarks.curves                                 # the table, ~3 h on 2 cores
    python -m benchmarks.curves --device cuda --workers 16      # the same on one GPU
    python -m benchmarks.curves --configs 4 --noise-configs 1 --epochs 2 --train-tokens 2000 \\
        --work /tmp/w.jsonl --out /tmp/t.json.gz                # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spaces import spec_of
from spaces.bench_ptb import SPACE
from spaces.spec import ParamSpec, SpaceSpec

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS_DIR / "curves-bench_ptb.json.gz"
DEFAULT_WORK = RESULTS_DIR / "curves-bench_ptb.work.jsonl"
# A diverged run's epochs from the divergence on: the perplexity of a uniform guess over PTB's
# 10,000 words (what the replay's surrogate is fitted to for them).
DIVERGED_PPL = 10_000.0
FORMAT = 1


def spec() -> SpaceSpec:
    found = spec_of(SPACE)
    assert found is not None
    return found


def design_params(spec: SpaceSpec) -> list[ParamSpec]:
    """The searched parameters in the design's coordinate order (the model first)."""
    model = spec.model_param
    return [*([model] if model is not None else []), *spec.parameters]


def value_at(p: ParamSpec, u: float) -> Any:
    """The value of ``p`` at ``u`` in [0, 1): its range mapped linearly, or log-linearly when
    ``p.log``; an int rounded (to its step); a categorical by equal shares."""
    if p.type == "categorical":
        return p.choices[min(int(u * len(p.choices)), len(p.choices) - 1)]
    assert p.low is not None and p.high is not None
    if p.log:
        x = math.exp(math.log(p.low) + u * (math.log(p.high) - math.log(p.low)))
    else:
        x = p.low + u * (p.high - p.low)
    if p.type == "int":
        step = int(p.step or 1)
        return int(min(max(round((x - p.low) / step) * step + p.low, p.low), p.high))
    return float(x)


def design(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` configurations' searched values, scrambled Sobol (the first ``n`` points; a power
    of two keeps the sequence balanced)."""
    import warnings

    from scipy.stats import qmc

    params = design_params(spec())
    sampler = qmc.Sobol(d=len(params), scramble=True, seed=seed)
    with warnings.catch_warnings():  # "balance properties" when n is not a power of two
        warnings.simplefilter("ignore", UserWarning)
        points = sampler.random(n)
    return [{p.name: value_at(p, float(u)) for p, u in zip(params, row, strict=True)}
            for row in points]


@dataclass(frozen=True)
class Job:
    """One training run of the table: design point ``index`` (-1: the space's warm start, its
    first trial) at training seed ``seed``."""

    key: str
    index: int
    seed: int
    params: dict[str, Any]


@dataclass(frozen=True)
class Settings:
    configs: int
    noise_configs: int
    noise_seeds: int
    design_seed: int
    epochs: int
    train_tokens: int
    eval_tokens: int


def jobs(s: Settings) -> list[Job]:
    """The space's warm start, the design at the space's seed, then the noise re-runs."""
    base_seed = int(spec().fixed["seed"])
    points = design(s.configs, s.design_seed)
    out = [Job("warm", -1, base_seed, dict(spec().warm_start))]
    out += [Job(f"d{i}", i, base_seed, p) for i, p in enumerate(points)]
    for k in range(1, s.noise_seeds + 1):
        out += [Job(f"d{i}-s{base_seed + k}", i, base_seed + k, points[i])
                for i in range(min(s.noise_configs, s.configs))]
    return out


def flat_config(job: Job, s: Settings) -> dict[str, Any]:
    """The trial's full config, as the search would build it from these values."""
    import optuna

    flat = SPACE.config(optuna.trial.FixedTrial(job.params), epochs=s.epochs)
    flat.update(seed=job.seed, train_tokens=s.train_tokens, eval_tokens=s.eval_tokens)
    return flat


# --- one run, in a worker process ------------------------------------------------------------
_CORPUS: Any = None


def _init_worker(device: str) -> None:
    import torch

    torch.set_num_threads(1)
    global _CORPUS
    from awd.data import load_corpus

    _CORPUS = load_corpus(spec().dataset)


def train_one(job: Job, s: Settings, device: str) -> dict[str, Any]:
    """Train ``job`` to the end (or to its divergence); its row of the table."""
    import torch

    from awd.errors import TrainingDiverged
    from awd.trainer import Trainer

    started = time.perf_counter()
    trainer = Trainer(flat_config(job, s), _CORPUS, torch.device(device))
    epochs: list[dict[str, float]] = []
    diverged: int | None = None
    try:
        for m in trainer.run():
            epochs.append({"val_ppl": m.val_ppl, "train_ppl": m.train_ppl,
                           "seconds": m.epoch_seconds})
    except TrainingDiverged as e:
        diverged = e.epoch
    return {"key": job.key, "index": job.index, "seed": job.seed, "params": job.params,
            "num_params": trainer.num_params, "epochs": epochs, "diverged_at": diverged,
            "wall_s": round(time.perf_counter() - started, 2), "device": device}


def _work(args: tuple[Job, Settings, str]) -> dict[str, Any]:
    job, s, device = args
    try:
        return train_one(job, s, device)
    except Exception as e:  # recorded, not fatal: the table says which run failed and why
        return {"key": job.key, "index": job.index, "seed": job.seed, "params": job.params,
                "error": f"{type(e).__name__}: {e}"}


def run_jobs(todo: Sequence[Job], s: Settings, device: str, workers: int,
             budget_s: float | None) -> Iterator[dict[str, Any]]:
    """Rows as runs finish; no run starts after ``budget_s`` (the ones running finish)."""
    started = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(device,),
                  maxtasksperchild=None) as pool:
        pending = list(todo)
        running: list[Any] = []
        while pending or running:
            while pending and len(running) < workers and (
                    budget_s is None or time.perf_counter() - started < budget_s):
                job = pending.pop(0)
                running.append(pool.apply_async(_work, ((job, s, device),)))
            if not running:
                break
            done = [r for r in running if r.ready()]
            for r in done:
                running.remove(r)
                yield r.get()
            if not done:
                time.sleep(0.05)


# --- the table and its summary ------------------------------------------------------------
def read_work(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: that run is run again
                continue
    return rows


def curve(row: dict[str, Any], epochs: int) -> list[float]:
    """The run's validation perplexity per epoch, ``epochs`` long: a diverged run's epochs
    from its divergence on are `DIVERGED_PPL` (as are non-finite values)."""
    vals = [e["val_ppl"] for e in row["epochs"]]
    vals = [v if math.isfinite(v) and v < DIVERGED_PPL else DIVERGED_PPL for v in vals]
    return (vals + [DIVERGED_PPL] * epochs)[:epochs]


def summarize(rows: list[dict[str, Any]], s: Settings) -> dict[str, Any]:
    """Seed noise against the spread across configurations, both on the search's objective
    (the best validation perplexity of the run) and on its log."""
    ok = [r for r in rows if "error" not in r]
    base_seed = int(spec().fixed["seed"])
    best = {(r["index"], r["seed"]): min(curve(r, s.epochs)) for r in ok}
    across = [v for (i, seed), v in best.items() if seed == base_seed and i >= 0]
    groups: dict[int, list[float]] = {}
    for (i, _), v in best.items():
        groups.setdefault(i, []).append(v)
    noisy = {i: v for i, v in groups.items() if len(v) >= 2 and i >= 0}
    seed_sd = [statistics.stdev(v) for v in noisy.values()]
    seed_sd_log = [statistics.stdev(math.log(x) for x in v) for v in noisy.values()]
    out: dict[str, Any] = {
        "runs": len(rows), "failed": len(rows) - len(ok),
        "diverged": sum(1 for r in ok if r.get("diverged_at")),
        "runs_by_device": {d: sum(1 for r in ok if r.get("device") == d)
                           for d in sorted({str(r.get("device")) for r in ok})},
        "configs": len(across),
        "epoch_seconds_median": statistics.median(
            [e["seconds"] for r in ok for e in r["epochs"]] or [0.0]),
        "run_wall_s_total": round(sum(r.get("wall_s", 0.0) for r in ok), 1),
    }
    if across:
        q = statistics.quantiles(across, n=100, method="inclusive") if len(across) > 1 else [
            across[0]] * 99
        out["objective_across_configs"] = {
            "min": min(across), "p1": q[0], "p5": q[4], "p25": q[24], "median": q[49],
            "p75": q[74], "max": max(across),
            "sd": statistics.stdev(across) if len(across) > 1 else 0.0,
            "sd_log": statistics.stdev(math.log(x) for x in across) if len(across) > 1 else 0.0,
        }
    if noisy:
        out["seed_noise"] = {
            "configs": len(noisy), "seeds_each": min(len(v) for v in noisy.values()),
            "sd_mean": statistics.mean(seed_sd), "sd_max": max(seed_sd),
            "sd_log_mean": statistics.mean(seed_sd_log), "sd_log_max": max(seed_sd_log),
            # the noise is larger for poor configurations that sometimes fail to learn; the
            # median is a typical (and a good) configuration's
            "sd_log_median": statistics.median(seed_sd_log),
            "per_config": {str(i): v for i, v in sorted(noisy.items())},
        }
        if across and len(across) > 1:
            out["spread_over_noise_log"] = (out["objective_across_configs"]["sd_log"]
                                            / max(out["seed_noise"]["sd_log_mean"], 1e-12))
    return out


def pack(rows: list[dict[str, Any]], s: Settings, out: Path, meta: dict[str, Any]) -> dict:
    """Write the table: one row per run (finished runs only, in job order), gzip JSON."""
    order = {j.key: n for n, j in enumerate(jobs(s))}
    latest = {r["key"]: r for r in rows if r["key"] in order}  # a re-run replaces a failure
    kept = sorted(latest.values(), key=lambda r: order[r["key"]])
    table = {"format": FORMAT, "space": SPACE.name, "settings": asdict(s),
             "diverged_ppl": DIVERGED_PPL, **meta,
             "summary": summarize(kept, s), "rows": kept}
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt") as f:
        json.dump(table, f, separators=(",", ":"))
    return table


def previous_history(out: Path) -> list[dict[str, Any]]:
    """The commands that built the table at ``out`` so far (none if there is none)."""
    if not out.exists():
        return []
    try:
        with gzip.open(out, "rt") as f:
            return list(json.load(f).get("history", []))
    except (OSError, ValueError):
        return []


def load_table(path: Path) -> dict[str, Any]:
    """A packed table (`pack`), refused in one line if it is not one this code reads."""
    try:
        with gzip.open(path, "rt") as f:
            table: dict[str, Any] = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot read the curve table {path}: {e}") from None
    if table.get("format") != FORMAT:
        raise SystemExit(f"{path} is a curve table of format {table.get('format')}, this code "
                         f"reads format {FORMAT}: rebuild it with python -m benchmarks.curves")
    return table


# --- the command line ------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.curves",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", type=int, default=256, help="design points (a power of 2)")
    p.add_argument("--noise-configs", type=int, default=8,
                   help="design points also trained at --noise-seeds more seeds")
    p.add_argument("--noise-seeds", type=int, default=2, help="extra seeds of those")
    p.add_argument("--design-seed", type=int, default=0, help="the Sobol scrambling seed")
    p.add_argument("--epochs", type=int, default=SPACE.max_epochs)
    p.add_argument("--train-tokens", type=int, default=int(spec().fixed["train_tokens"]))
    p.add_argument("--eval-tokens", type=int, default=int(spec().fixed["eval_tokens"]))
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="runs at once (processes)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no run after this many seconds")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="finished runs (JSON lines)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the packed table")
    args = p.parse_args(argv)
    if min(args.configs, args.epochs, args.train_tokens, args.eval_tokens, args.workers) < 1:
        p.error("counts must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from benchmarks.machine import load_snapshot, machine_info

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks.curves: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    s = Settings(args.configs, args.noise_configs, args.noise_seeds, args.design_seed,
                 args.epochs, args.train_tokens, args.eval_tokens)
    rows = read_work(args.work)
    done = {r["key"] for r in rows if "error" not in r}
    todo = [j for j in jobs(s) if j.key not in done]
    print(f"[curves] {len(todo)} runs to go ({len(done)} in {args.work}); {args.workers} "
          f"workers on {args.device}", file=sys.stderr, flush=True)
    from awd.data import load_corpus

    load_corpus(spec().dataset)  # checked and cached once, before the workers read it
    started = time.perf_counter()
    args.work.parent.mkdir(parents=True, exist_ok=True)
    with args.work.open("a") as f:
        for n, row in enumerate(run_jobs(todo, s, args.device, args.workers, args.budget_s), 1):
            f.write(json.dumps(row) + "\n")
            f.flush()
            rows.append(row)
            best = min(curve(row, s.epochs)) if "error" not in row else row["error"]
            print(f"[curves] {n}/{len(todo)} {row['key']}: best {best} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    device = torch.device(args.device)
    this = {"command": " ".join(["python", "-m", "benchmarks.curves", *sys.argv[1:]]),
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(device), "load_after": load_snapshot(),
            "workers": args.workers, "runs_added": len(rows) - len(done)}
    # Every command that added runs, with its machine: a table may be built on several.
    history = previous_history(args.out)
    if this["runs_added"] or not history:
        history.append(this)
    complete = not [j for j in jobs(s) if j.key not in {r["key"] for r in rows
                                                         if "error" not in r}]
    table = pack(rows, s, args.out, {"history": history, "complete": complete})
    print(json.dumps({k: v for k, v in table["summary"].items() if k != "seed_noise"},
                     indent=1))
    if "seed_noise" in table["summary"]:
        sn = table["summary"]["seed_noise"]
        print(f"seed noise: sd {sn['sd_mean']:.2f} ppl (log {sn['sd_log_mean']:.4f}) over "
              f"{sn['configs']} configs x {sn['seeds_each']} seeds")
    print(f"wrote {args.out} ({len(table['rows'])} runs, complete: {complete})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
