"""ASHA whose rungs survive `Tuner.restore`.

On restore, Tune re-creates the scheduler as it was when the experiment started, so plain ASHA
forgets every rung recorded before the interruption and a resumed search would let trials pass
rungs they had already lost. This subclass writes the rungs, and the trials it stopped, to a
file after every decision (Tune's own snapshot may be older) and reads them back the first time
it is used after a restore.
"""

from __future__ import annotations

import json
from typing import Any

from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from search import storage


class PersistentASHA(ASHAScheduler):
    def __init__(self, state_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state_path = str(state_path)
        self._stopped: set[str] = set()  # trials ASHA stopped: they stay stopped after a restore
        self._state_loaded = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._state_loaded = False  # unpickled by Tuner.restore: reload the saved rungs

    def _load_rungs(self) -> None:
        if self._state_loaded:
            return
        self._state_loaded = True
        text = storage.read_text(self.state_path)
        if text is None:
            return
        saved = json.loads(text)
        self._stopped = set(saved["stopped"])
        # ASHA keeps, per bracket, a list of (milestone, {trial_id: score}) pairs.
        for bracket, rungs in zip(self._brackets, saved["rungs"], strict=True):
            bracket._rungs = [(milestone, dict(recorded)) for milestone, recorded in rungs]

    def _save_rungs(self) -> None:
        state = {"rungs": [b._rungs for b in self._brackets], "stopped": sorted(self._stopped)}
        storage.write_text(self.state_path, json.dumps(state))

    def rungs(self) -> list[list[tuple[float, dict[str, float]]]]:
        self._load_rungs()
        return [list(b._rungs) for b in self._brackets]

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        self._load_rungs()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: TuneController, trial: Trial,
                        result: dict[str, Any]) -> str:
        self._load_rungs()
        if trial.trial_id in self._stopped:  # stopped before the driver died, restored live
            return self.STOP
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP:
            self._stopped.add(trial.trial_id)
        self._save_rungs()
        return action

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial,
                          result: dict[str, Any]) -> None:
        self._load_rungs()
        super().on_trial_complete(tune_controller, trial, result)
        self._save_rungs()
