"""Training-step benchmark: throughput and peak memory of one full training step, and the cost
of weight drop.

For each model (AWD-LSTM, AWD-GRU, Zaremba medium, at their paper presets) it times the same ops
as ``Trainer.train_epoch`` does per window: detach the hidden state, ``zero_grad``, forward,
cross-entropy (times the window length for Zaremba), AR + TAR (AWD models), backward,
``clip_grad_norm_`` and the NT-ASGD optimiser's SGD step (with weight decay), plus the running
loss sum. It also times a *plain* AWD-LSTM of the same shapes (same embedding and embedding
dropout, same locked dropouts, same tied decoder, but plain ``nn.LSTM`` layers with no weight
drop) side by side with the real one, and reports the ratio of their step times.

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

Data: random token ids (uniform over the vocabulary), fixed-length windows of ``--bptt`` (the
Trainer's variable-length windows average about the same length); loss values are meaningless,
the arithmetic is the real one.

Targets (stated here, checked in the output): weight-drop ratio <= 1.15 on CPU and on GPU; on an
H100, an AWD-LSTM PTB epoch (929,589 tokens) at batch 20, bptt 70 in under 10 s.

Examples::

    python benchmarks/train_step.py                       # paper sizes, batch 20 and 80
    python benchmarks/train_step.py --batch-sizes 20      # the CPU run in benchmarks/README.md
    python benchmarks/train_step.py --small               # seconds-long smoke test
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from awd.config import RunConfig, from_flat
from awd.models import AWDModel, ModelOutput, build_model, count_parameters, detach_hidden
from awd.ntasgd import NTASGD
from awd.regularizers import (
    LockedDropout,
    activation_regularization,
    embedding_dropout,
    temporal_activation_regularization,
)

PTB_TRAIN_TOKENS = 929_589
PTB_VOCAB = 10_000
TARGET_RATIO = 1.15
TARGET_H100_EPOCH_B20_S = 10.0
MIN_REPS = 5
RESULTS_DIR = Path(__file__).resolve().parent / "results"

MODELS = ("awd_lstm", "awd_gru", "zaremba")
PLAIN = "awd_lstm_plain"
FLAT = {"awd_lstm": {"model": "awd_lstm"}, "awd_gru": {"model": "awd_gru"},
        "zaremba": {"model": "zaremba", "preset": "medium"}}
# --small: every size shrunk so that the whole run takes seconds on a laptop CPU.
SMALL = {"vocab": 1000, "batch_sizes": [8], "bptt": 20,
         "arch": {"awd_lstm": {"emsize": 64, "nhid": 256}, "awd_gru": {"emsize": 64, "nhid": 256},
                  "zaremba": {"nhid": 128}}}
DESCRIPTION = {
    "awd_lstm": "AWD-LSTM (3 x WeightDropRNN(nn.LSTM), wdrop on)",
    PLAIN: "AWD-LSTM shapes, plain nn.LSTM layers, no weight drop",
    "awd_gru": "AWD-GRU (3 x WeightDropRNN(nn.GRU), wdrop on)",
    "zaremba": "Zaremba medium (2-layer nn.LSTM 650, untied)",
}


# --- models ------------------------------------------------------------------------------
class PlainAWDLSTM(nn.Module):
    """``AWDModel.forward`` with the weight-dropped layers replaced by their plain ``nn.LSTM``s.

    Built from an ``AWDModel`` (a deep copy: same weights, tied decoder, same dropouts)."""

    def __init__(self, awd: AWDModel) -> None:
        super().__init__()
        awd = copy.deepcopy(awd)
        self.cfg = awd.cfg
        self.encoder = awd.encoder
        self.rnns = nn.ModuleList(layer.rnn for layer in awd.rnns)
        self.decoder = awd.decoder  # still tied to self.encoder.weight (deepcopy keeps the tie)
        self.lockdrop_in = LockedDropout(awd.cfg.dropouti)
        self.lockdrop_hid = LockedDropout(awd.cfg.dropouth)
        self.lockdrop_out = LockedDropout(awd.cfg.dropout)

    def init_hidden(self, batch_size: int) -> list[Any]:
        weight = self.encoder.weight
        hidden = []
        for rnn in self.rnns:
            h = weight.new_zeros(1, batch_size, rnn.hidden_size)
            hidden.append((h, h.clone()))
        return hidden

    def forward(self, words: torch.Tensor, hidden: list[Any]) -> ModelOutput:
        x = embedding_dropout(self.encoder, words, self.cfg.dropoute, self.training)
        x = self.lockdrop_in(x)
        new_hidden = []
        for i, rnn in enumerate(self.rnns):
            raw, h = rnn(x, hidden[i])
            new_hidden.append(h)
            x = self.lockdrop_hid(raw) if i < len(self.rnns) - 1 else self.lockdrop_out(raw)
        return ModelOutput(self.decoder(x), new_hidden, raw, x)


def run_config(model: str, small: bool) -> RunConfig:
    flat = dict(FLAT[model])
    if small:
        flat.update(SMALL["arch"][model])
    return from_flat(flat)


def build_variant(variant: str, vocab: int, small: bool, seed: int) -> tuple[nn.Module, RunConfig]:
    """The model of a variant (on CPU) and the RunConfig whose training settings it uses."""
    torch.manual_seed(seed)
    run = run_config("awd_lstm" if variant == PLAIN else variant, small)
    model = build_model(run, vocab)
    if variant == PLAIN:
        model = PlainAWDLSTM(model)
    return model, run


# --- one training step, as in Trainer.train_epoch ----------------------------------------
class StepRunner:
    """A model, its optimiser, a few windows of random data and the carried hidden state."""

    def __init__(self, variant: str, vocab: int, batch: int, bptt: int, device: torch.device,
                 small: bool, seed: int, n_windows: int = 8) -> None:
        model, run = build_variant(variant, vocab, small, seed)
        self.variant = variant
        self.cfg = run.train
        self.model = model.to(device).train()
        self.device = device
        self.vocab, self.batch, self.bptt = vocab, batch, bptt
        self.num_params = count_parameters(self.model)
        self.state_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.opt = NTASGD(list(self.model.parameters()), self.cfg.lr, self.cfg.wdecay,
                          self.cfg.nonmono)
        gen = torch.Generator().manual_seed(seed + 1)
        self.data = torch.randint(0, vocab, (n_windows * bptt + 1, batch), generator=gen)
        self.data = self.data.to(device)
        self.n_windows = n_windows
        self.window = 0
        self.hidden = self.model.init_hidden(batch)
        self.total = torch.zeros((), device=device, dtype=torch.float64)
        self.cpu_per_wall: list[float] = []  # process CPU seconds per wall second, per block

    def step(self) -> None:
        cfg, model = self.cfg, self.model
        i = self.window * self.bptt
        self.window = (self.window + 1) % self.n_windows
        inputs = self.data[i : i + self.bptt]
        targets = self.data[i + 1 : i + 1 + self.bptt]
        self.hidden = detach_hidden(self.hidden)
        self.opt.zero_grad()
        out = model(inputs, self.hidden)
        self.hidden = out.hidden
        loss = F.cross_entropy(out.logits.view(-1, self.vocab), targets.reshape(-1))
        objective = loss * self.bptt if cfg.loss_sum_over_time else loss
        if cfg.alpha:
            objective = objective + activation_regularization(out.dropped_output, cfg.alpha)
        if cfg.beta:
            objective = objective + temporal_activation_regularization(out.raw_output, cfg.beta)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        self.opt.step(cfg.lr)
        self.total += loss.detach().double() * targets.numel()

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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- measurement -------------------------------------------------------------------------
def measure_interleaved(runners: dict[str, StepRunner], reps: int, warmup: int, steps: int,
                        deadline: float, log) -> dict[str, list[float]]:
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
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
    return {"median_s": statistics.median(ts), "min_s": min(ts), "q1_s": q[0], "q3_s": q[2],
            "all_s": ts}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Run in a fresh process: peak memory of one (variant, batch) training step."""
    variant, batch = args.child_memory, args.batch_sizes[0]
    if device.type == "cuda":
        runner = StepRunner(variant, args.vocab, batch, args.bptt, device, args.small, args.seed)
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
    runner = StepRunner(variant, args.vocab, batch, args.bptt, device, args.small, args.seed)
    rss_before = _status_kb("VmRSS")
    runner.step()
    runner.step()
    hwm = _status_kb("VmHWM")
    return {"method": "Linux VmHWM (peak RSS of the whole process) after 2 steps in a fresh "
                      "process; step_extra = VmHWM - VmRSS just before the first step",
            "peak_mib": hwm / 1024, "before_step_mib": rss_before / 1024,
            "step_extra_mib": (hwm - rss_before) / 1024,
            "params_mib": runner.state_bytes / 2**20}


def measure_memory(args: argparse.Namespace, variant: str, batch: int, log) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-memory", variant,
           "--batch-sizes", str(batch), "--bptt", str(args.bptt), "--vocab", str(args.vocab),
           "--device", args.device, "--seed", str(args.seed)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.small:
        cmd.append("--small")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        log(f"  memory child for {variant} at batch {batch} failed:\n{proc.stderr[-2000:]}")
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- machine and output ------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "device": str(device),
    }
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({
            "gpu": torch.cuda.get_device_name(device),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        })
    return info


def load_snapshot() -> dict[str, Any]:
    """System load now: other processes on the machine inflate the absolute times."""
    snap: dict[str, Any] = {"loadavg_1_5_15": list(os.getloadavg())}
    try:
        with open("/proc/pressure/cpu") as f:
            snap["cpu_pressure_some_avg10"] = float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return snap


def device_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower().replace("nvidia", "")
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def print_table(results: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> None:
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
    p = argparse.ArgumentParser(
        description="Time a full training step (forward, CE + AR/TAR, backward, clip, SGD) of "
                    "AWD-LSTM, AWD-GRU and Zaremba medium, measure peak memory, and the ratio of "
                    "AWD-LSTM (weight drop on) to a plain-nn.LSTM model of the same shapes.",
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
    p.add_argument("--no-ratio", action="store_true", help="skip the plain-nn.LSTM model")
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
        runners = {v: StepRunner(v, args.vocab, batch, args.bptt, device, args.small, args.seed)
                   for v in variants}
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
        "command": " ".join(["python", *sys.argv]),
        "machine": machine,
        "load": {"before": load_before, "after": load_snapshot()},
        "settings": {
            "models": args.models, "variants": variants, "batch_sizes": args.batch_sizes,
            "bptt": args.bptt, "vocab": args.vocab, "small": args.small, "reps": reps,
            "warmup": warmup, "steps_per_rep": steps, "budget_s": args.budget_s, "seed": args.seed,
            "ptb_train_tokens": PTB_TRAIN_TOKENS,
            "step": "detach hidden, zero_grad, forward, cross-entropy (x bptt for Zaremba), "
                    "AR + TAR (AWD), backward, clip_grad_norm_, NT-ASGD SGD step, loss sum",
            "timing": "interleaved rounds (order reversed every other round), median s/step; "
                      "ratio = median over rounds of awd_lstm / awd_lstm_plain"
                      + ("; torch.cuda.synchronize around each block" if cuda else ""),
            "cpu_per_wall": "process CPU seconds / wall seconds per timed block, median: about "
                            "the thread count on an idle machine, lower when other processes "
                            "take the cores (the absolute times are then inflated)",
            "data": "uniform random token ids, fixed-length bptt windows, hidden carried over",
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
