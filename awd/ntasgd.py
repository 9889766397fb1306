"""NT-ASGD: SGD that switches to averaged SGD when validation stops improving.

The trigger is the reference code's rule (awd-lstm-lm #13, #47, #73): after epoch e, switch when
``len(history) > nonmono and val_loss > min(history[:-nonmono])``, i.e. when this epoch is worse
than the best of all checks except the last ``nonmono``; the history stops growing after the
switch, so it happens once. After the switch each step is plain SGD with weight decay at the
window's own (length-scaled) lr, followed by a running mean of the iterates. Unlike
``torch.optim.ASGD`` there is no one-window lag in the lr and the first post-trigger iterate is
included in the mean.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from awd.errors import CheckpointError


def should_trigger(history: Sequence[float], val_loss: float, nonmono: int) -> bool:
    """The non-monotone condition: worse than the best check before the last ``nonmono``."""
    return len(history) > nonmono and val_loss > min(history[:-nonmono])


class NTASGD:
    """SGD with weight decay, plus iterate averaging from the trigger on."""

    def __init__(self, params: Sequence[torch.nn.Parameter], lr: float, wdecay: float,
                 nonmono: int = 5) -> None:
        self.params = list(params)
        self.optimizer = torch.optim.SGD(self.params, lr=lr, weight_decay=wdecay)
        self.nonmono = nonmono
        self.history: list[float] = []
        self.trigger_epoch: int | None = None
        self.average: list[torch.Tensor] | None = None
        self.n_averaged = 0

    @property
    def averaging(self) -> bool:
        return self.average is not None

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if self.average is not None:
            self.n_averaged += 1
            weight = 1.0 / self.n_averaged
            for avg, p in zip(self.average, self.params, strict=True):
                avg.lerp_(p, weight)

    def start_averaging(self) -> None:
        """Start (or restart, for fine-tuning) the mean of the iterates from the next step."""
        self.average = [p.detach().clone() for p in self.params]
        self.n_averaged = 0

    def observe(self, val_loss: float, epoch: int) -> bool:
        """Record a validation check; returns True when it triggers averaging."""
        if self.averaging:
            return False
        if should_trigger(self.history, val_loss, self.nonmono):
            self.trigger_epoch = epoch
            self.start_averaging()
            return True
        self.history.append(val_loss)
        return False

    @contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Swap the averaged weights into the model (no-op before the trigger)."""
        if self.average is None or self.n_averaged == 0:
            yield
            return
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for p, avg in zip(self.params, self.average, strict=True):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "history": list(self.history),
            "trigger_epoch": self.trigger_epoch,
            "average": None if self.average is None else [a.clone() for a in self.average],
            "n_averaged": self.n_averaged,
        }

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise `CheckpointError` unless ``state`` (read from a file) fits these parameters:
        run before `load_state_dict`, which then cannot fail half-way."""
        opt = state.get("optimizer")
        if not isinstance(opt, dict):
            raise CheckpointError("the checkpoint has no optimiser state")
        groups, ours = opt.get("param_groups"), self.optimizer.param_groups
        if not (isinstance(groups, list) and len(groups) == len(ours)
                and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                        and len(g["params"]) == len(o["params"])
                        for g, o in zip(groups, ours, strict=True))
                and isinstance(opt.get("state"), dict)):
            raise CheckpointError("the checkpoint's optimiser state does not fit this model")
        for saved, own in zip(groups, ours, strict=True):  # lr is set at every step
            if any(saved[k] != v for k, v in own.items() if k not in ("params", "lr")
                   and k in saved):
                raise CheckpointError("the checkpoint's optimiser settings differ from the run's")
        history = state.get("history")
        if not isinstance(history, list) or not all(isinstance(v, float | int) for v in history):
            raise CheckpointError("the checkpoint's NT-ASGD history is not a list of numbers")
        trigger, n = state.get("trigger_epoch"), state.get("n_averaged")
        if not (trigger is None or isinstance(trigger, int)) or not isinstance(n, int) or n < 0:
            raise CheckpointError("the checkpoint's NT-ASGD trigger or average count is invalid")
        avg = state.get("average")
        if avg is not None and not (
                isinstance(avg, list) and len(avg) == len(self.params)
                and all(isinstance(a, torch.Tensor) and a.shape == p.shape
                        for a, p in zip(avg, self.params, strict=True))):
            raise CheckpointError("the checkpoint's averaged weights do not fit this model")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.trigger_epoch = state["trigger_epoch"]
        avg = state["average"]
        self.average = None if avg is None else [
            a.to(p.device).clone() for a, p in zip(avg, self.params, strict=True)
        ]
        self.n_averaged = state["n_averaged"]


def finetune_should_stop(history: Sequence[float], val_loss: float, patience: int = 5) -> bool:
    """The fine-tuning stage stops once validation is worse than the best before the last 5."""
    return should_trigger(history, val_loss, patience)


def zaremba_lr(base_lr: float, epoch: int, decay: float, decay_start: int) -> float:
    """Zaremba's schedule: lr constant for ``decay_start`` epochs, then divided by ``decay``
    per epoch (epochs count from 1)."""
    return base_lr / decay ** max(0, epoch - decay_start)
