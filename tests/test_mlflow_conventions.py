"""MLflow's own conventions on what a search writes: every config key as a param, the dataset
input, source tags, system metrics under MLflow's names, the experiment's kind and saved view,
and (slow) the MLflow UI opening the runs table in a real browser. Real SQLite stores throughout.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow.system_metrics.metrics import cpu_monitor, gpu_monitor
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME
from processes import start_mlflow_server, stop

from awd.config import from_flat
from awd.data.registry import DATASETS
from search import schema
from search.tracking.backfill import backfill
from search.tracking.conventions import (
    RUNS_VIEW_TAG,
    SOURCE_TAGS,
    dataset_ref,
    experiment_url,
    split_digest,
)
from search.tracking.records import RunSpec, RunWriter, epoch_record, finish_record
from search.tracking.store import ensure_experiment, start_parent_run
from search.tune.trainable import system_metrics
from tests.conftest import real_data

CONFIG = {"model": "awd_lstm", "dataset": "ptb", "lr": 20.0, "dropout": 0.3}  # a space's trial


def result(epoch: int) -> dict:
    """A Tune result as `search.tune.trainable.epoch_result` makes it (lr under Tune's name)."""
    return {"epoch": epoch, "val_ppl": 100.0 - epoch, "best_val_ppl": 100.0 - epoch,
            "lr": 20.0 / epoch, "num_params": 1000.0, "epochs_run": epoch,
            **system_metrics(torch.device("cpu"))}


@pytest.fixture
def search_store(tmp_path, new_mlflow_store):
    """A store with the project's experiment and parent run, as `search.driver` makes them."""
    uri = new_mlflow_store(tmp_path / "mlflow")
    client = MlflowClient(uri)
    exp = ensure_experiment(client, "conventions", uri)
    parent = start_parent_run(client, exp, "smoke-search", {schema.SPACE: "smoke"},
                              {"metric": schema.BEST_VAL_PPL}, dataset="ptb",
                              git_commit="0123abc")
    return uri, client, exp, parent


def write_trial(uri: str, exp: str, parent: str, trial_id: str = "t1", epochs: int = 2) -> None:
    spec = RunSpec(exp, parent, "smoke", extra_params={"gpus_per_trial": 0})
    writer = RunWriter(uri)  # a fresh writer: what it knows comes from MLflow
    writer(spec.start(trial_id, CONFIG, {}))
    for epoch in range(1, epochs + 1):
        record = epoch_record(spec, trial_id, result(epoch))
        assert record is not None
        writer(record)


def only_child(client: MlflowClient, exp: str):
    (run,) = client.search_runs([exp], filter_string=f"tags.`{schema.ROLE}` = 'trial'")
    return run


def test_a_trial_run_has_every_config_key_its_dataset_source_and_system_metrics(search_store):
    uri, client, exp, parent = search_store
    write_trial(uri, exp, parent)
    run = only_child(client, exp)
    full = from_flat(CONFIG).to_flat()
    assert len(full) > 2 * len(CONFIG)
    assert run.data.params == {**{k: str(v) for k, v in full.items()}, "gpus_per_trial": "0"}
    assert run.data.params["lr"] == "20.0"  # the initial rate; the per-epoch one is a metric
    assert "lr" not in run.data.metrics
    history = client.get_metric_history(run.info.run_id, schema.EPOCH_LR)
    assert [(m.step, m.value) for m in history] == [(1, 20.0), (2, 10.0)]
    for name in schema.SYSTEM_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2]
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "ptb"
    assert dataset_input.dataset.digest == split_digest(DATASETS["ptb"].sha256)
    assert dataset_input.dataset.source == DATASETS["ptb"].url
    assert {t.key: t.value for t in dataset_input.tags} == {MLFLOW_DATASET_CONTEXT: "training"}
    parent_run = client.get_run(parent)
    assert parent_run.inputs.dataset_inputs == run.inputs.dataset_inputs
    assert parent_run.data.params["metric"] == schema.BEST_VAL_PPL
    assert {k: run.data.tags[k] for k in SOURCE_TAGS} == {
        k: parent_run.data.tags[k] for k in SOURCE_TAGS}
    assert run.data.tags[MLFLOW_SOURCE_NAME] == "python -m search.run"
    assert run.data.tags[MLFLOW_GIT_COMMIT] == "0123abc"


def test_writing_a_trial_again_adds_nothing(search_store):
    uri, client, exp, parent = search_store
    write_trial(uri, exp, parent)
    run_id = only_child(client, exp).info.run_id

    def snapshot():
        run = client.get_run(run_id)
        return (run.data.params, len(run.inputs.dataset_inputs),
                {k: len(client.get_metric_history(run_id, k)) for k in run.data.metrics})

    before = snapshot()
    assert before[2][schema.EPOCH_LR] == 2
    write_trial(uri, exp, parent)  # a replayed spool, a request retried after a timeout
    assert only_child(client, exp).info.run_id == run_id and snapshot() == before


def test_backfill_from_rays_results_logs_lr_as_epoch_lr_once(search_store, tmp_path):
    uri, client, exp, parent = search_store
    trial_dir = tmp_path / "exp" / "trial_t9"
    trial_dir.mkdir(parents=True)
    rows = [{**result(e), "trial_id": "t9", "timestamp": time.time(), "config": CONFIG}
            for e in (1, 2, 3)]
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert backfill(uri, str(tmp_path / "exp"), exp, parent, "smoke").written == 3
    assert backfill(uri, str(tmp_path / "exp"), exp, parent, "smoke").written == 0
    run = only_child(client, exp)
    assert [m.value for m in client.get_metric_history(run.info.run_id, schema.EPOCH_LR)] == [
        20.0, 10.0, 20.0 / 3]
    assert len(run.data.params) == len(from_flat(CONFIG).to_flat())
    assert len(run.inputs.dataset_inputs) == 1


def test_system_metrics_are_measured_under_mlflows_names():
    metrics = system_metrics(torch.device("cpu"))
    assert set(metrics) == set(schema.SYSTEM_METRICS)
    assert 0 <= metrics[schema.SYSTEM_CPU] <= 100
    assert metrics[schema.SYSTEM_MEMORY_MB] > metrics[schema.SYSTEM_PROCESS_RSS_MB] > 10
    # MLflow's monitors (what its "System metrics" tab is made for) use the same names
    cpu_source = Path(cpu_monitor.__file__).read_text()
    for name in (schema.SYSTEM_CPU, schema.SYSTEM_MEMORY_MB, schema.SYSTEM_MEMORY_PCT):
        assert f'"{name.removeprefix(schema.SYSTEM_PREFIX)}"' in cpu_source, name
    gpu_source = Path(gpu_monitor.__file__).read_text()
    for template in (schema.SYSTEM_GPU_MEMORY_MB, schema.SYSTEM_GPU_UTILIZATION):
        mlflows = template.removeprefix(schema.SYSTEM_PREFIX).replace("{index}", "{i}")
        assert f'f"{mlflows}"' in gpu_source, template


def test_a_folder_holding_a_registry_dataset_has_the_registry_digest():
    folder = real_data("ptb")
    ref = dataset_ref(str(folder))
    assert ref is not None and ref.digest == dataset_ref("ptb").digest  # type: ignore[union-attr]
    assert ref.source == str(folder.resolve()) and ref.source_type == "local"
    assert dataset_ref(str(folder / "missing")) is None


def test_the_experiment_is_model_training_minimising_best_val_ppl_with_a_saved_view(
        search_store):
    uri, client, exp, _ = search_store
    tags = client.get_experiment(exp).tags
    assert tags[schema.EXPERIMENT_KIND] == "custom_model_development"
    assert tags["mlflow.experiment.primaryMetric.name"] == schema.BEST_VAL_PPL
    view = json.loads(tags[RUNS_VIEW_TAG])
    state = json.loads(view["state"])
    assert state["selectedColumns"][0] == f"metrics.`{schema.BEST_VAL_PPL}`"
    assert state["orderByKey"] == f"metrics.`{schema.BEST_VAL_PPL}`" and state["orderByAsc"]
    client.delete_experiment(exp)
    assert ensure_experiment(client, "conventions", uri) == exp  # restored, tags unchanged
    assert client.get_experiment(exp).tags == tags


# --- slow: the smoke search, and the MLflow UI in a browser -------------------------------
@pytest.mark.slow
def test_smoke_search_runs_follow_mlflows_conventions(smoke_search):
    _, _, uri = smoke_search
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke")
    assert exp.tags[schema.EXPERIMENT_KIND] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH]
    children = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_TRIAL]
    assert children and parent.inputs.dataset_inputs
    for child in children:
        params = child.data.params
        full = from_flat({k: v for k, v in params.items() if k != "gpus_per_trial"}).to_flat()
        assert set(params) == {*full, "gpus_per_trial"}
        assert child.inputs.dataset_inputs == parent.inputs.dataset_inputs
        assert {k: child.data.tags[k] for k in SOURCE_TAGS} == {
            k: parent.data.tags[k] for k in SOURCE_TAGS}
        assert {schema.EPOCH_LR, *schema.SYSTEM_METRICS} <= set(child.data.metrics)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")



def page_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (apt-get install chromium)")
def test_mlflow_ui_opens_the_experiment_on_its_runs_table(search_store, tmp_path):
    uri, _, exp, parent = search_store
    write_trial(uri, exp, parent, epochs=1)
    RunWriter(uri)(finish_record(
        RunSpec(exp, parent, "smoke"), "t1", {"epochs_run": 1, "finished": True,
                                              "final_val_ppl": 98.5, "final_test_ppl": 95.25},
        schema.STATUS_COMPLETED, None))
    server = start_mlflow_server(tmp_path / "server", store=uri)
    try:
        base = server.wait(timeout=90)
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
             "--window-size=2400,1000",  # the table renders only the columns in view
             "--dump-dom", experiment_url(base, exp)],
            capture_output=True, text=True, timeout=120).stdout
    finally:
        stop(server.proc, grace=30)
    text = page_text(dom)
    assert re.search(r"<title>Runs - ", dom), text[:500]  # not "Overview" (GenAI, traces)
    assert "smoke-search" in text and "smoke-t1" in text
    for column in (schema.BEST_VAL_PPL, schema.FINAL_TEST_PPL, schema.STATUS):  # the saved view
        assert f" {column} " in text, column
    assert " 95.25 " in text and " completed " in text
    digest = dataset_ref("ptb").digest  # type: ignore[union-attr]
    assert f"ptb ({digest}) training" in text  # the Dataset column
    assert " python -m search.run " in text  # the Source column


def test_links_never_carry_the_tracking_uris_credentials():
    from reports.trials import run_url
    from search.tracking.conventions import experiment_url, without_credentials

    secret = "https://alice:s3cr3t-token@mlflow.example.org:8443"
    for link in (without_credentials(secret), experiment_url(secret, "4"),
                 run_url(secret, "4", "abc")):
        assert link is not None and "s3cr3t" not in link and "alice" not in link
        assert link.startswith("https://mlflow.example.org:8443")
    assert without_credentials("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
