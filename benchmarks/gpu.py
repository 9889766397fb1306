"""Every GPU figure the README promises, in one call: ``python -m benchmarks.gpu``.

GPU time is lent in short leases, so the first minutes on a card go to one prepared run that
measures, on real Penn Treebank where it matters:

1. ``train_step``: ``Trainer.train_step`` of AWD-LSTM, AWD-GRU and Zaremba medium at batch 20
   and 80 through cuDNN, the weight-drop ratio (AWD-LSTM / the same model with ``wdrop=0``)
   and each step's peak CUDA memory (``benchmarks/train_step.py``, its own JSON too);
2. ``epochs``: whole PTB epochs of the paper AWD-LSTM and AWD-GRU (``Trainer.step_epoch``:
   929,589 training tokens, then validation), seconds per epoch, the first and a warm one;
3. ``zaremba``: a short Zaremba-medium run with its own SGD schedule (val ppl per epoch, test
   ppl at the end), to check the baseline learns at the published pace, and its cost;
4. ``packing``: 1 training process on the GPU against 4 at once (what ``--gpus-per-trial 0.25``
   makes Ray do: separate worker processes sharing the card), for Zaremba medium and AWD-LSTM:
   aggregate tokens/s, each trial's slowdown and each process's peak CUDA memory. Ray itself
   is not needed for this: its scheduling cost is measured on CPU by ``search_overhead``.

Each part is timed and written as soon as it ends (``benchmarks/results/gpu-<card>-<date>.json``),
so a lease that runs out keeps what was measured; parts that would start past ``--budget-s``
are skipped and say so. Without CUDA it refuses in one line (exit status 2).

    python -m benchmarks.gpu                      # everything, about 6 minutes on an H200
    python -m benchmarks.gpu --parts epochs packing --budget-s 240
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PARTS = ("train_step", "epochs", "zaremba", "packing")
# Seconds each part takes on an H200 (measured 2026-12-04, rounded up); a part is skipped when
# fewer than these remain of --budget-s.
EXPECTED_S = {"train_step": 150, "epochs": 60, "zaremba": 40, "packing": 100}


@dataclass(frozen=True)
class Sizes:
    """How much each part trains. ``full()`` is the real benchmark; ``tiny()`` runs every code
    path in seconds (on CPU too: the tests use it), and its numbers mean nothing."""

    dataset: str = "ptb"
    epoch_models: tuple[str, ...] = ("awd_lstm", "awd_gru")
    epochs_per_model: int = 2  # the first pays cuDNN's and the allocator's warm-up
    zaremba_epochs: int = 3
    pack_models: tuple[str, ...] = ("zaremba", "awd_lstm")
    pack_counts: tuple[int, ...] = (1, 4)
    pack_train_tokens: dict[str, int] | None = None  # per model; 0 or missing: the whole split
    overrides: dict[str, Any] | None = None  # extra config fields for every run (tiny models)
    train_step_args: tuple[str, ...] = ("--batch-sizes", "20", "80", "--reps", "20",
                                        "--budget-s", "90")
    expected_s: dict[str, float] | None = None  # per part; None: EXPECTED_S

    @staticmethod
    def full() -> Sizes:
        return Sizes(pack_train_tokens={"zaremba": 0, "awd_lstm": 300_000})

    @staticmethod
    def tiny() -> Sizes:
        return Sizes(epochs_per_model=1, zaremba_epochs=1, pack_counts=(1, 2),
                     expected_s=dict.fromkeys(PARTS, 0.0),
                     pack_train_tokens={"zaremba": 4000, "awd_lstm": 4000},
                     overrides={"train_tokens": 4000, "eval_tokens": 2000, "emsize": 32,
                                "nhid": 64, "test_batch_size": 10},
                     train_step_args=("--small", "--reps", "5", "--warmup", "1", "--steps", "1"))

    def config(self, model: str, **fields: Any) -> dict[str, Any]:
        """The flat run config of one run: the paper preset, these sizes, then ``fields``."""
        flat: dict[str, Any] = {"model": model, "dataset": self.dataset}
        if model == "zaremba":
            flat["preset"] = "medium"
        for key, value in (self.overrides or {}).items():
            if model == "zaremba" and key == "emsize":
                continue  # Zaremba's embedding is nhid wide
            flat[key] = value
        return {**flat, **fields}


class NoCuda(RuntimeError):
    """This machine has no CUDA device: the benchmark has nothing to measure."""


def require_cuda() -> None:
    """Refuse in one line when torch sees no CUDA device (a CPU build, or no visible GPU)."""
    import torch

    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else " (a CPU build)")
        raise NoCuda(f"python -m benchmarks.gpu needs a CUDA GPU and {build} sees none; "
                     "run it on a GPU machine (CPU figures: python -m benchmarks.train_step)")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# --- part 1: Trainer.train_step through cuDNN ------------------------------------------------
def part_train_step(sizes: Sizes, device: Any, out_dir: Path) -> dict[str, Any]:
    """``benchmarks.train_step`` on this device; its JSON beside ours, its figures in ours."""
    from benchmarks import train_step

    path = out_dir / f"train_step-{_tag(device)}-{dt.date.today()}.json"
    code = train_step.main([*sizes.train_step_args, "--device", str(device), "--out", str(path)])
    if code != 0:
        raise RuntimeError(f"benchmarks.train_step exited {code}")
    data = json.loads(path.read_text())
    return {
        "json": path.name,
        "steps": [{"model": r["model"], "batch": r["batch"], "params": r["params"],
                   "ms_per_step": r["step"]["median_s"] * 1e3,
                   "tokens_per_s": r["tokens_per_s"], "ptb_epoch_s": r["ptb_epoch_s"],
                   "peak_mib": (r.get("memory") or {}).get("peak_mib")}
                  for r in data["results"]],
        "weight_drop_ratio": {str(q["batch"]): q["ratio"] for q in data["weight_drop_ratio"]},
        "targets": data["targets"],
    }


# --- part 2: whole PTB epochs of the paper AWD models ------------------------------------
def _epoch_record(m: Any, val_s: float, device: Any) -> dict[str, Any]:
    return {"epoch": m.epoch, "epoch_s": m.epoch_seconds, "validation_s": val_s,
            "train_s": m.epoch_seconds - val_s, "train_tokens_per_s": None,
            "train_ppl": m.train_ppl, "val_ppl": m.val_ppl, "peak_mib": _peak_mib(device)}


def _timed_validation(trainer: Any, device: Any) -> float:
    """Seconds of one validation pass (the part of ``epoch_seconds`` that is not training)."""
    _sync(device)
    start = time.perf_counter()
    trainer.evaluate("valid")
    _sync(device)
    return time.perf_counter() - start


def part_epochs(sizes: Sizes, device: Any, corpus: Any) -> dict[str, Any]:
    """``Trainer.step_epoch`` on the whole PTB training split, ``epochs_per_model`` times per
    model: seconds per epoch (training and validation apart), tokens/s, peak memory."""
    from awd.config import from_flat
    from awd.trainer import Trainer

    out: dict[str, Any] = {}
    for model in sizes.epoch_models:
        trainer = Trainer(from_flat(sizes.config(model)), corpus, device)
        tokens = (trainer.train_data.size(0) - 1) * trainer.train_data.size(1)
        _reset_peak(device)
        epochs = []
        for _ in range(sizes.epochs_per_model):
            m = trainer.step_epoch()
            _sync(device)
            rec = _epoch_record(m, _timed_validation(trainer, device), device)
            rec["train_tokens_per_s"] = tokens / rec["train_s"]
            epochs.append(rec)
        out[model] = {"params": trainer.num_params, "train_tokens": tokens, "epochs": epochs,
                      "warm_epoch_s": epochs[-1]["epoch_s"]}
        del trainer
        _empty_cache(device)
    return out


# --- part 3: Zaremba medium with its own schedule ----------------------------------------
def part_zaremba(sizes: Sizes, device: Any, corpus: Any) -> dict[str, Any]:
    """A few epochs of Zaremba medium exactly as published (SGD lr 1, summed loss, clip 5), then
    the test perplexity of the best weights."""
    from awd.config import from_flat
    from awd.trainer import Trainer

    trainer = Trainer(from_flat(sizes.config("zaremba", epochs=sizes.zaremba_epochs)), corpus,
                      device)
    _reset_peak(device)
    epochs = [{"epoch": m.epoch, "epoch_s": m.epoch_seconds, "train_ppl": m.train_ppl,
               "val_ppl": m.val_ppl, "lr": m.lr} for m in trainer.run()]
    _sync(device)
    start = time.perf_counter()
    final = trainer.final_metrics()
    _sync(device)
    result = {"params": trainer.num_params, "optimizer": trainer.cfg.optimizer,
              "epochs": epochs, "final_val_ppl": final["val_ppl"],
              "final_test_ppl": final["test_ppl"],
              "test_eval_s": time.perf_counter() - start, "peak_mib": _peak_mib(device),
              "published": "Zaremba et al. 2014, medium: 86.2 val / 82.7 test after 39 epochs"}
    del trainer
    _empty_cache(device)
    return result


# --- part 4: trials packed on one GPU ------------------------------------------------------
def _pack_worker(flat: dict[str, Any], device_name: str, barrier: Any, queue: Any) -> None:
    """One packed 'trial' in its own process: build the trainer, wait for the others, train one
    epoch (training only, no validation) and report tokens/s and peak memory."""
    try:
        import torch

        from awd.config import from_flat
        from awd.data import load_corpus
        from awd.trainer import Trainer

        device = torch.device(device_name)
        trainer = Trainer(from_flat(flat), load_corpus(flat["dataset"]), device)
        _sync(device)  # built: now wait until every process is
        barrier.wait(timeout=300)
        _reset_peak(device)
        start = time.perf_counter()
        _, tokens = trainer.train_epoch()
        _sync(device)
        seconds = time.perf_counter() - start
        queue.put({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                   "peak_mib": _peak_mib(device)})
    except BaseException as e:  # the parent must hear of it, not wait for a result
        queue.put({"error": f"{type(e).__name__}: {e}"})
        barrier.abort()


def _packed(flat: dict[str, Any], count: int, device: Any) -> dict[str, Any]:
    """``count`` worker processes training the same config on one GPU at the same time."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(count), ctx.Queue()
    procs = [ctx.Process(target=_pack_worker, args=(flat, str(device), barrier, queue))
             for _ in range(count)]
    for p in procs:
        p.start()
    rows = [queue.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        raise RuntimeError(f"packed worker failed: {errors[0]}")
    per = [r["tokens_per_s"] for r in rows]
    return {"processes": count, "tokens_per_trial": rows[0]["tokens"],
            "per_trial_tokens_per_s": per, "aggregate_tokens_per_s": sum(per),
            "mean_trial_seconds": statistics.mean(r["seconds"] for r in rows),
            "peak_mib_per_process": max((r["peak_mib"] or 0.0) for r in rows) or None}


def part_packing(sizes: Sizes, device: Any) -> dict[str, Any]:
    """Per model: 1 process against ``pack_counts[-1]`` at once; throughput gain = aggregate
    tokens/s packed / alone, slowdown = tokens/s alone / mean tokens/s of a packed trial."""
    out: dict[str, Any] = {}
    for model in sizes.pack_models:
        tokens = (sizes.pack_train_tokens or {}).get(model, 0)
        flat = sizes.config(model, epochs=1, device=str(device))
        if tokens:
            flat["train_tokens"] = tokens
        runs = {str(n): _packed(flat, n, device) for n in sizes.pack_counts}
        alone, packed = runs[str(sizes.pack_counts[0])], runs[str(sizes.pack_counts[-1])]
        out[model] = {
            "runs": runs,
            "throughput_gain": packed["aggregate_tokens_per_s"] / alone["aggregate_tokens_per_s"],
            "slowdown_per_trial": (alone["aggregate_tokens_per_s"]
                                   / statistics.mean(packed["per_trial_tokens_per_s"])),
        }
    return out


# --- the run -----------------------------------------------------------------------------
def _empty_cache(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()


def _tag(device: Any) -> str:
    from benchmarks.machine import device_tag

    return device_tag(device)


def run(parts: list[str], sizes: Sizes, device: Any, out: Path, budget_s: float,
        log: Any = print) -> dict[str, Any]:
    """Run the parts in order on ``device``, rewriting ``out`` after each; a failing part is
    recorded with its error and the others still run."""
    from awd.data import load_corpus
    from benchmarks.machine import load_snapshot, machine_info

    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "gpu",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "benchmarks.gpu", *sys.argv[1:]]),
        "machine": machine_info(device), "load_before": load_snapshot(),
        "sizes": asdict(sizes), "budget_s": budget_s, "parts": {},
    }
    corpus = None
    for part in parts:
        left = budget_s - (time.perf_counter() - started)
        expected = (sizes.expected_s or EXPECTED_S)[part]
        if left < expected:
            report["parts"][part] = {"skipped": f"{left:.0f} s of the budget left, the part "
                                                f"takes about {expected:.0f} s"}
            log(f"[gpu] {part}: skipped ({left:.0f} s left)")
            continue
        log(f"[gpu] {part}: starting ({left:.0f} s of the budget left)")
        t0 = time.perf_counter()
        try:
            if part in ("epochs", "zaremba") and corpus is None:
                corpus = load_corpus(sizes.dataset)
            if part == "train_step":
                result = part_train_step(sizes, device, out.parent)
            elif part == "epochs":
                result = part_epochs(sizes, device, corpus)
            elif part == "zaremba":
                result = part_zaremba(sizes, device, corpus)
            else:
                result = part_packing(sizes, device)
        except Exception as e:  # recorded; the next part may still measure something
            result = {"error": f"{type(e).__name__}: {e}"}
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        report["parts"][part] = result
        report["wall_s"] = round(time.perf_counter() - started, 1)
        out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"[gpu] {part}: {'FAILED ' + result['error'] if 'error' in result else 'done'} "
            f"in {result['wall_s']} s")
    report["wall_s"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The figures to read, one line each."""
    p, lines = report["parts"], []
    ts = p.get("train_step", {})
    for r in ts.get("steps", []):
        peak = f"{r['peak_mib']:.0f} MiB" if r.get("peak_mib") else "-"
        lines.append(f"step  {r['model']:<15} batch {r['batch']:>3}: {r['ms_per_step']:7.2f} ms, "
                     f"{r['tokens_per_s']:>9,.0f} tok/s, {r['ptb_epoch_s']:6.1f} s/PTB epoch, "
                     f"peak {peak}")
    for batch, ratio in ts.get("weight_drop_ratio", {}).items():
        lines.append(f"weight-drop ratio at batch {batch}: {ratio:.3f}")
    for model, r in p.get("epochs", {}).items():
        if isinstance(r, dict) and "epochs" in r:
            e = r["epochs"][-1]
            lines.append(f"epoch {model:<9} {r['params'] / 1e6:.1f} M: {e['epoch_s']:.1f} s "
                         f"(train {e['train_s']:.1f} s, {e['train_tokens_per_s']:,.0f} tok/s; "
                         f"val {e['validation_s']:.1f} s), val ppl {e['val_ppl']:.1f} after "
                         f"epoch {e['epoch']}")
    z = p.get("zaremba", {})
    if "epochs" in z:
        curve = ", ".join(f"{e['val_ppl']:.1f}" for e in z["epochs"])
        lines.append(f"zaremba medium: val ppl by epoch {curve}; test {z['final_test_ppl']:.1f}; "
                     f"{statistics.mean(e['epoch_s'] for e in z['epochs']):.1f} s/epoch")
    for model, r in p.get("packing", {}).items():
        if isinstance(r, dict) and "runs" in r:
            lines.append(f"packing {model}: throughput x{r['throughput_gain']:.2f}, each trial "
                         f"x{r['slowdown_per_trial']:.2f} slower")
    lines += [f"{name}: {r['error'] if 'error' in r else r['skipped']}"
              for name, r in p.items() if "error" in r or "skipped" in r]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="skip parts that would start later than this (default 9 minutes)")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default benchmarks/results/gpu-<card>-<date>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        require_cuda()
    except NoCuda as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    from benchmarks.machine import RESULTS_DIR

    device = torch.device(args.device)
    out = args.out or RESULTS_DIR / f"gpu-{_tag(device)}-{dt.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = run(args.parts, Sizes.full(), device, out, args.budget_s)
    for line in summary_lines(report):
        print(line)
    print(f"wrote {out} ({report['wall_s']} s)")
    return 1 if any("error" in r for r in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
