"""A search's winner is re-runnable: ``python -m awd.train --config best_config_<exp>.json``
trains the best trial again and gets the same numbers, epoch by epoch (same seed, CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from search import schema

pytestmark = pytest.mark.slow

EPOCH_LINE = re.compile(r"^epoch +(\d+) \(\w+\) \| train ppl +([\d.]+) \| val ppl +([\d.]+) \|",
                        re.MULTILINE)


def _trial_results(exp_dir, trial_id: str) -> list[dict]:
    (folder,) = [d for d in exp_dir.iterdir() if d.is_dir() and d.name.endswith(trial_id)]
    return [json.loads(x) for x in (folder / "result.json").read_text().splitlines() if x]


def test_best_config_file_retrains_the_best_trial_to_the_same_numbers(smoke_search):
    cwd, _, uri = smoke_search
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke")
    (parent,) = client.search_runs([exp.experiment_id],
                                   f"tags.`{schema.ROLE}` = '{schema.ROLE_SEARCH}'")
    best_id = parent.data.tags[schema.BEST_TRIAL_ID]
    results = [r for r in _trial_results(cwd / "ray_results" / "smoke", best_id)
               if schema.VAL_PPL in r]

    # trials run with one intra-op thread (cpus_per_trial 1): so does the re-run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "awd.train", "--config",
                           str(cwd / "best_config_smoke.json"), "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    epochs = EPOCH_LINE.findall(proc.stdout)
    assert len(epochs) >= len(results) >= 1
    for (epoch, train_ppl, val_ppl), trial in zip(epochs, results, strict=False):
        assert int(epoch) == trial[schema.EPOCH]
        assert train_ppl == f"{trial['train_ppl']:.2f}", (epoch, proc.stdout)
        assert val_ppl == f"{trial[schema.VAL_PPL]:.2f}", (epoch, proc.stdout)
    if results[-1].get(schema.FINISHED):  # a completed trial: the same final numbers too
        final = json.loads(proc.stdout.strip().splitlines()[-1])
        assert final["val_ppl"] == pytest.approx(results[-1][schema.FINAL_VAL_PPL], rel=1e-6)
        assert final["test_ppl"] == pytest.approx(results[-1][schema.FINAL_TEST_PPL], rel=1e-6)
