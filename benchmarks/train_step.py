"""Training-step benchmark: throughput and peak memory of one full training step, and the cost
of weight drop.

The step timed is ``awd.trainer.Trainer.train_step`` itself, the one training step the trainer
runs per window: ``zero_grad``, forward, cross-entropy (times the window length for Zaremba),
AR + TAR (AWD models), backward, ``clip_grad_norm_`` and the NT-ASGD optimiser's SGD step (with
weight decay); the loop around it carries the hidden state over and keeps the running loss sum,
as ``Trainer.train_epoch`` does. For each model (AWD-LSTM, AWD-GRU, Zaremba medium, at their paper
presets) a ``Trainer`` is built on a synthetic corpus. The *plain* baseline is the same AWD-LSTM
``Trainer`` with ``wdrop=0`` and nothing else changed (same seed, so the same initial weights,
checked before timing): its ``WeightDropRNN`` layers then call their plain ``nn.LSTM`` directly.
It is timed side by side with the real one, and the ratio of their step times is reported.

Timing: all variants of one batch size live in one process and are timed interleaved: after
``--warmup`` rounds, each of ``--reps`` rounds times every variant once (``--steps`` consecutive
steps each; the order reverses every other round), so drifting machine noise hits all variants
alike. Reported: the median seconds per step; tokens/s = batch x bptt / median; the weight-drop
ratio is the median over rounds of (AWD-LSTM time / plain time) of the two adjacent
measurements of that round (the ratio of the two medians is reported too). On CUDA every timed
block is bracketed by ``torch.cuda.synchronize``.

Memory: measured per (model, batch) in a fresh child process, so allocations of the other
variants and allocator caching from earlier steps cannot blur it.
  * CUDA: ``torch.cuda.max_memory_allocated`` over one training step after one warm-up step
    (``reset_peak_memory_stats`` in between); it includes the parameters, gradients, optimiser
    state, activations, hidden state and data of that model only.
  * CPU: the Linux peak resident set size (``VmHWM`` of /proc/self/status) after two steps, and
    that peak minus the resident size just before the first step (``VmRSS``, with the model,
    optimiser, data and hidden state already built): the extra memory a training step needs.
    ``VmHWM`` counts the whole process (Python, torch's libraries); RSS is not torch's allocator
    view, and glibc may keep freed memory resident, which is why a fresh process is used.

Data: a ``Corpus`` of random token ids (uniform over a vocabulary of ``--vocab`` words), batchified
by the ``Trainer``, cut into fixed-length windows of ``--bptt`` (the Trainer's variable-length
windows average about the same length); loss values are meaningless, the arithmetic is the real
one.

Targets (stated here, checked in the output): weight-drop ratio <= 1.15 on CPU and on GPU; on an
H100, an AWD-LSTM PTB epoch (929,589 tokens) at batch 20, bptt 70 in under 10 s.

Examples (from the repository root)::

    python -m benchmarks.train_step                       # paper sizes, batch 20 and 80
    python -m benchmarks.train_step --batch-sizes 20      # the CPU run in benchmarks/README.md
    python -m benchmarks.train_step --small               # seconds-long smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from awd.config import MODELS, RunConfig, from_flat
from awd.data import Corpus, Window, train_windows
from awd.trainer import Trainer
from benchmarks.machine import RESULTS_DIR, device_tag, load_snapshot, machine_info

PTB_TRAIN_TOKENS = 929_589
PTB_VOCAB = 10_000
TARGET_RATIO = 1.15
TARGET_H100_EPOCH_B20_S = 10.0
MIN_REPS = 5
N_WINDOWS = 8  # distinct training windows per variant, cycled through
REPO_ROOT = Path(__file__).resolve().parents[1]

PLAIN = "awd_lstm_plain"
FLAT = {"awd_lstm": {"model": "awd_lstm"}, "awd_gru": {"model": "awd_gru"},
        "zaremba": {"model": "zaremba", "preset": "medium"}}
# --small: every size shrunk so that the whole run takes seconds on a laptop CPU.
SMALL = {"vocab": 1000, "batch_sizes": [8], "bptt": 20,
         "arch": {"awd_lstm": {"emsize": 64, "nhid": 256}, "awd_gru": {"emsize": 64, "nhid": 256},
                  "zaremba": {"nhid": 128}}}
DESCRIPTION = {
    "awd_lstm": "AWD-LSTM (3 x WeightDropRNN(nn.LSTM), wdrop on)",
    PLAIN: "AWD-LSTM with wdrop=0 (WeightDropRNN calls its plain nn.LSTM), same initial weights",
    "awd_gru": "AWD-GRU (3 x WeightDropRNN(nn.GRU), wdrop on)",
    "zaremba": "Zaremba medium (2-layer nn.LSTM 650, untied)",
}

Log = Callable[[str], None]


# --- what is trained -----------------------------------------------------------------------
def run_config(variant: str, batch: int, bptt: int, small: bool, seed: int) -> RunConfig:
    """The variant's paper preset at this batch size and window length (``--small``: shrunk);
    the plain baseline is the AWD-LSTM's config with ``wdrop=0``."""
    model = "awd_lstm" if variant == PLAIN else variant
    flat: dict[str, Any] = {**FLAT[model], "batch_size": batch, "bptt": bptt, "seed": seed}
    if small:
        flat.update(SMALL["arch"][model])
    if variant == PLAIN:
        flat["wdrop"] = 0.0
    return from_flat(flat)


def synthetic_corpus(vocab: int, batch: int, bptt: int, runs: list[RunConfig],
                     seed: int) -> Corpus:
    """Uniform random token ids: ``N_WINDOWS`` windows of ``bptt`` rows at ``batch`` for training,
    and validation/test splits just long enough for the runs' evaluation batch sizes (never
    used, but the ``Trainer`` batchifies them)."""
    gen = torch.Generator().manual_seed(seed + 1)
    train = torch.randint(0, vocab, ((N_WINDOWS * bptt + 1) * batch,), generator=gen)
    held_out = 2 * max(max(r.train.eval_batch_size, r.train.test_batch_size) for r in runs)
    valid = torch.randint(0, vocab, (held_out,), generator=gen)
    test = torch.randint(0, vocab, (held_out,), generator=gen)
    return Corpus(vocab=[f"w{i}" for i in range(vocab)], train=train, valid=valid, test=test)


# --- the training step: Trainer.train_step ------------------------------------------------
class StepRunner:
    """A ``Trainer`` on the synthetic corpus, its fixed-length windows, the hidden state carried
    from window to window and the running loss sum: what ``Trainer.train_epoch`` keeps around
    ``Trainer.train_step``."""

    def __init__(self, variant: str, run: RunConfig, corpus: Corpus,
                 device: torch.device) -> None:
        self.variant = variant
        self.trainer = Trainer(run, corpus, device)  # seeds with run.train.seed, then builds
        self.trainer.model.train()
        cfg = self.trainer.cfg
        self.variable_bptt, self.lr = cfg.variable_bptt, self.trainer.epoch_lr()
        self.windows: list[Window] = [w for _, w in
                                      train_windows(self.trainer.train_data, cfg.bptt, None)]
        self.device = self.trainer.device
        self.num_params = self.trainer.num_params
        self.state_bytes = sum(p.numel() * p.element_size()
                               for p in self.trainer.model.parameters())
        self.window = 0
        self.hidden = self.trainer.model.init_hidden(cfg.batch_size)
        self.total = torch.zeros((), device=self.device, dtype=torch.float64)
        self.cpu_per_wall: list[float] = []  # process CPU seconds per wall second, per block

    def step(self) -> None:
        """One ``Trainer.train_step`` on the next window, and the loss sum, as the trainer does."""
        w = self.windows[self.window]
        self.window = (self.window + 1) % len(self.windows)
        lr = self.lr * w.lr_scale if self.variable_bptt else self.lr  # lr_scale is 1 here
        self.hidden, loss = self.trainer.train_step(w, self.hidden, lr)
        self.total += loss.double() * w.targets.numel()

    def timed(self, steps: int) -> float:
        """Seconds per step over ``steps`` consecutive steps."""
        sync(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        sync(self.device)
        wall = time.perf_counter() - start
        self.cpu_per_wall.append((time.process_time() - cpu_start) / wall)
        return wall / steps


def build_runners(variants: list[str], vocab: int, batch: int, bptt: int, small: bool,
                  seed: int, device: torch.device) -> dict[str, StepRunner]:
    """One ``StepRunner`` per variant, all on the same synthetic corpus."""
    runs = {v: run_config(v, batch, bptt, small, seed) for v in variants}
    corpus = synthetic_corpus(vocab, batch, bptt, list(runs.values()), seed)
    return {v: StepRunner(v, runs[v], corpus, device) for v in variants}


def check_plain_baseline(awd: StepRunner, plain: StepRunner) -> None:
    """Before any step: the plain baseline is the AWD-LSTM with weight drop off and nothing else
    changed (config, initial weights, data)."""
    a, b = awd.trainer.run_config.to_flat(), plain.trainer.run_config.to_flat()
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if differ != ["wdrop"] or b["wdrop"] != 0:
        raise RuntimeError(f"plain baseline differs from awd_lstm in {differ} (expected wdrop)")
    sa, sb = awd.trainer.model.state_dict(), plain.trainer.model.state_dict()
    if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
        raise RuntimeError("plain baseline's initial weights differ from awd_lstm's")
    if not torch.equal(awd.trainer.train_data, plain.trainer.train_data):
        raise RuntimeError("plain baseline trains on other data than awd_lstm")


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- measurement -------------------------------------------------------------------------
def measure_interleaved(runners: dict[str, StepRunner], reps: int, warmup: int, steps: int,
                        deadline: float, log: Log) -> dict[str, list[float]]:
    """Per-step seconds of every runner, ``reps`` interleaved rounds (fewer, but at least
    ``MIN_REPS``, once ``time.perf_counter()`` passes ``deadline``)."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name].timed(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(runners[name].timed(steps))
        log(f"  round {r + 1}/{reps}: "
            + ", ".join(f"{n} {times[n][-1] * 1e3:.1f} ms" for n in names))
        if r + 1 >= MIN_REPS and time.perf_counter() > deadline:
            log(f"  time budget spent: stopping after {r + 1} rounds")
            break
    return times


def summarize(ts: list[float]) -> dict[str, Any]:
    """Median, minimum, quartiles and every time of one variant."""
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
    return {"median_s": statistics.median(ts), "min_s": min(ts), "q1_s": q[0], "q3_s": q[2],
            "all_s": ts}


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Run in a fresh process: peak memory of one (variant, batch) training step."""
    variant, batch = args.child_memory, args.batch_sizes[0]
    runner = build_runners([variant], args.vocab, batch, args.bptt, args.small, args.seed,
                           device)[variant]
    if device.type == "cuda":
        runner.step()
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        runner.step()
        sync(device)
        mib = 2**20
        return {"method": "torch.cuda.max_memory_allocated over 1 step after 1 warm-up step",
                "peak_mib": torch.cuda.max_memory_allocated(device) / mib,
                "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / mib,
                "before_step_mib": before / mib,
                "step_extra_mib": (torch.cuda.max_memory_allocated(device) - before) / mib,
                "params_mib": runner.state_bytes / mib}
    rss_before = _status_kb("VmRSS")
    runner.step()
    runner.step()
    hwm = _status_kb("VmHWM")
    return {"method": "Linux VmHWM (peak RSS of the whole process) after 2 steps in a fresh "
                      "process; step_extra = VmHWM - VmRSS just before the first step",
            "peak_mib": hwm / 1024, "before_step_mib": rss_before / 1024,
            "step_extra_mib": (hwm - rss_before) / 1024,
            "params_mib": runner.state_bytes / 2**20}


def measure_memory(args: argparse.Namespace, variant: str, batch: int,
                   log: Log) -> dict[str, Any]:
    """Peak memory of one (variant, batch) step, from a fresh ``-m benchmarks.train_step``
    process started in the repository root."""
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--child-memory", variant,
           "--batch-sizes", str(batch), "--bptt", str(args.bptt), "--vocab", str(args.vocab),
           "--device", args.device, "--seed", str(args.seed)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.small:
        cmd.append("--small")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    if proc.returncode != 0:
        log(f"  memory child for {variant} at batch {batch} failed:\n{proc.stderr[-2000:]}")
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- output --------------------------------------------------------------------------------
def print_table(results: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> None:
    """The results as a table on stdout, then the weight-drop ratios."""
    head = (f"{'model':<15} {'batch':>5} {'bptt':>4} {'ms/step':>9} {'IQR ms':>13} {'min ms':>8} "
            f"{'tokens/s':>10} {'s/PTB epoch':>11} {'peak MiB':>9} {'step MiB':>9} {'cpu/wall':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        t = r["step"]
        mem = r.get("memory") or {}
        peak = f"{mem['peak_mib']:.0f}" if "peak_mib" in mem else "-"
        extra = f"{mem['step_extra_mib']:.0f}" if "step_extra_mib" in mem else "-"
        print(f"{r['model']:<15} {r['batch']:>5} {r['bptt']:>4} {t['median_s'] * 1e3:>9.1f} "
              f"{t['q1_s'] * 1e3:>6.1f}-{t['q3_s'] * 1e3:<6.1f} {t['min_s'] * 1e3:>8.1f} "
              f"{r['tokens_per_s']:>10.0f} "
              f"{r['ptb_epoch_s']:>11.1f} {peak:>9} {extra:>9} {r['cpu_per_wall_median']:>8.2f}")
    for q in ratios:
        print(f"weight-drop ratio at batch {q['batch']}: {q['ratio']:.3f} (median of "
              f"{q['rounds']} paired rounds; ratio of medians {q['ratio_of_medians']:.3f}, "
              f"of minima {q['ratio_of_mins']:.3f}; target <= {TARGET_RATIO})")


def check_targets(device: torch.device, machine: dict[str, Any], results: list[dict[str, Any]],
                  ratios: list[dict[str, Any]]) -> dict[str, Any]:
    """The stated targets, the measured values and whether they are met (None: not measured)."""
    kind = "gpu" if device.type == "cuda" else "cpu"
    out: dict[str, Any] = {
        f"weight_drop_ratio_{kind}": {
            "target": f"<= {TARGET_RATIO}",
            "measured": {str(q["batch"]): round(q["ratio"], 4) for q in ratios},
            "met": all(q["ratio"] <= TARGET_RATIO for q in ratios) if ratios else None,
        }
    }
    epoch = next((r["ptb_epoch_s"] for r in results
                  if r["model"] == "awd_lstm" and r["batch"] == 20), None)
    on_h100 = "h100" in machine.get("gpu", "").lower()
    out["h100_awd_lstm_ptb_epoch_batch20_s"] = {
        "target": f"< {TARGET_H100_EPOCH_B20_S}",
        "measured": epoch if on_h100 else None,
        "met": (epoch < TARGET_H100_EPOCH_B20_S) if (on_h100 and epoch is not None) else None,
        "note": None if on_h100 else "not an H100 run",
    }
    return out


# --- main --------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--small``'s and the paper's sizes filled in."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step",
        description="Time Trainer.train_step (forward, CE + AR/TAR, backward, clip, SGD) of "
                    "AWD-LSTM, AWD-GRU and Zaremba medium, measure peak memory, and the ratio of "
                    "AWD-LSTM (weight drop on) to the same AWD-LSTM with wdrop=0.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                   help="models to time (the weight-drop ratio needs awd_lstm)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                   help="batch sizes (default: 20 80, the paper's PTB and WT2 batches)")
    p.add_argument("--bptt", type=int, default=None, help="window length (default 70)")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary (default 10000, PTB)")
    p.add_argument("--small", action="store_true",
                   help="smoke-test sizes: vocab 1000, batch 8, bptt 20, AWD emsize 64 / nhid 256,"
                        " Zaremba nhid 128 (explicit --batch-sizes/--bptt/--vocab still win)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed rounds per batch size; the median is reported "
                        "(default 15 on CPU, 30 on CUDA)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds first (default 2 on CPU, 5 on CUDA)")
    p.add_argument("--steps", type=int, default=None,
                   help="consecutive steps per timed block (default 1 on CPU, 20 on CUDA)")
    p.add_argument("--budget-s", type=float, default=0,
                   help="stop timing rounds (after at least 5) once this many seconds have "
                        "passed since the start, shared evenly by the batch sizes (0: no limit)")
    p.add_argument("--no-ratio", action="store_true", help="skip the wdrop=0 AWD-LSTM baseline")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--seed", type=int, default=141)
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default benchmarks/results/train_step-<device>-<date>.json)")
    p.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.small:
        args.vocab = args.vocab or SMALL["vocab"]
        args.batch_sizes = args.batch_sizes or SMALL["batch_sizes"]
        args.bptt = args.bptt or SMALL["bptt"]
    args.vocab = args.vocab or PTB_VOCAB
    args.batch_sizes = args.batch_sizes or [20, 80]
    args.bptt = args.bptt or 70
    return args


def main(argv: list[str] | None = None) -> int:
    """Time every variant per batch size, measure memory, print the table and write the JSON."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.child_memory:
        print(json.dumps(memory_child(args, device)))
        return 0

    cuda = device.type == "cuda"
    reps = args.reps or (30 if cuda else 15)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    steps = args.steps or (20 if cuda else 1)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    machine = machine_info(device)
    variants = list(args.models)
    if "awd_lstm" in variants and not args.no_ratio:
        variants.insert(variants.index("awd_lstm") + 1, PLAIN)  # adjacent: paired rounds
    log(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"variants {variants}; batch {args.batch_sizes}, bptt {args.bptt}, vocab {args.vocab}; "
        f"{warmup} warm-up + {reps} rounds x {steps} steps")
    started = time.perf_counter()
    load_before = load_snapshot()
    results: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    for bi, batch in enumerate(args.batch_sizes):
        log(f"batch {batch}: building {len(variants)} models")
        runners = build_runners(variants, args.vocab, batch, args.bptt, args.small, args.seed,
                                device)
        if PLAIN in runners:
            check_plain_baseline(runners["awd_lstm"], runners[PLAIN])
        deadline = (started + args.budget_s * (bi + 1) / len(args.batch_sizes)
                    if args.budget_s else float("inf"))
        times = measure_interleaved(runners, reps, warmup, steps, deadline, log)
        for v in variants:
            tokens = batch * args.bptt
            step = summarize(times[v])
            loss = runners[v].total.item()
            results.append({
                "model": v, "description": DESCRIPTION[v], "batch": batch, "bptt": args.bptt,
                "vocab": args.vocab, "params": runners[v].num_params, "step": step,
                "tokens_per_s": tokens / step["median_s"],
                "tokens_per_s_best": tokens / step["min_s"],
                "ptb_epoch_s": PTB_TRAIN_TOKENS / (tokens / step["median_s"]),
                "cpu_per_wall_median": statistics.median(runners[v].cpu_per_wall[warmup:]),
                "loss_finite": bool(torch.isfinite(torch.tensor(loss))),
            })
        if PLAIN in variants:
            paired = [a / b for a, b in zip(times["awd_lstm"], times[PLAIN], strict=True)]
            ratios.append({
                "batch": batch, "bptt": args.bptt, "ratio": statistics.median(paired),
                "ratio_of_medians": (statistics.median(times["awd_lstm"])
                                     / statistics.median(times[PLAIN])),
                "ratio_of_mins": min(times["awd_lstm"]) / min(times[PLAIN]),
                "rounds": len(paired),
                "paired_rounds": paired,
            })
        del runners
        if cuda:
            torch.cuda.empty_cache()
        if not args.no_memory:
            for v in variants:
                log(f"  memory: {v} at batch {batch} (fresh process)")
                mem = measure_memory(args, v, batch, log)
                next(r for r in results if r["model"] == v and r["batch"] == batch)["memory"] = mem

    report = {
        "benchmark": "train_step",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "benchmarks.train_step", *sys.argv[1:]]),
        "machine": machine,
        "load": {"before": load_before, "after": load_snapshot()},
        "settings": {
            "models": args.models, "variants": variants, "batch_sizes": args.batch_sizes,
            "bptt": args.bptt, "vocab": args.vocab, "small": args.small, "reps": reps,
            "warmup": warmup, "steps_per_rep": steps, "budget_s": args.budget_s, "seed": args.seed,
            "ptb_train_tokens": PTB_TRAIN_TOKENS,
            "step": "Trainer.train_step: zero_grad, forward, cross-entropy (x bptt for "
                    "Zaremba), AR + TAR (AWD), backward, clip_grad_norm_, NT-ASGD SGD step; "
                    "detached hidden carried over, loss sum",
            "timing": "interleaved rounds (order reversed every other round), median s/step; "
                      "ratio = median over rounds of awd_lstm / awd_lstm_plain (wdrop=0)"
                      + ("; torch.cuda.synchronize around each block" if cuda else ""),
            "cpu_per_wall": "process CPU seconds / wall seconds per timed block, median: about "
                            "the thread count on an idle machine, lower when other processes "
                            "take the cores (the absolute times are then inflated)",
            "data": "Corpus of uniform random token ids batchified by the Trainer, "
                    "fixed-length bptt windows, hidden carried over",
            "memory": "fresh child process per (model, batch); "
                      + ("torch.cuda.max_memory_allocated" if cuda
                         else "Linux VmHWM and VmHWM - VmRSS before the first step"),
        },
        "results": results,
        "weight_drop_ratio": ratios,
        "targets": check_targets(device, machine, results, ratios),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = args.out or RESULTS_DIR / (f"train_step-{device_tag(device)}-{dt.date.today()}"
                                     + ("-small" if args.small else "") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results, ratios)
    print(f"targets: {json.dumps(report['targets'])}")
    print(f"wrote {out} ({report['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
