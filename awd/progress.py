"""How a training run shows itself: the one-line epoch summary (the same in ``awd.train`` and in
a search trial's log) and progress bars counted in tokens, for training and evaluation alike."""

from __future__ import annotations

from tqdm import tqdm

from awd.trainer import EpochMetrics

STAGE_TITLES = {"train": "train", "valid": "validate", "test": "test"}


def epoch_line(m: EpochMetrics) -> str:
    """One epoch in one line: perplexities, lr, speed and whether NT-ASGD is averaging."""
    return (f"epoch {m.epoch:3d} ({m.phase}) | train ppl {m.train_ppl:8.2f} | val ppl "
            f"{m.val_ppl:8.2f} | best {m.best_val_ppl:8.2f} | lr {m.lr:.3g} | "
            f"{m.epoch_seconds:.1f}s | {m.tokens_per_s:,.0f} tok/s | "
            f"averaging {'on' if m.averaging else 'off'}")


def final_line(final: dict[str, float]) -> str:
    """The run's end: validation and test perplexity of its best weights."""
    return f"final | val ppl {final['val_ppl']:.2f} | test ppl {final['test_ppl']:.2f}"


class TokenBars:
    """`Trainer.on_progress` drawn as tqdm bars in tokens: one bar per stage (an epoch's
    training, its validation, the final test), closed when the next stage starts. Drawn only
    on a terminal: stderr sent to a file or a pipe (a log, CI) gets no bars (tqdm's
    ``disable=None``), where each redraw would be a line of its own."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.bar is None or stage != self.stage or done < self.bar.n:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, unit="tok", unit_scale=True, leave=False,
                            desc=STAGE_TITLES.get(stage, stage), disable=None)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
