"""MLflow's own conventions on what a search writes: every config key as a param, the dataset
input, source tags, system metrics under MLflow's names, the experiment's kind and saved view
(only keys MLflow's UI bundle reads), and (slow) the MLflow UI in a real browser: the runs table
with the searched params, the trials nested under the search, the objective's charts first, a
run link under Model training. Real SQLite stores throughout.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
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
    runs_view,
    runs_view_state,
    split_digest,
)
from search.tracking.records import RunSpec, RunWriter, epoch_record, finish_record
from search.tracking.store import ensure_experiment, start_parent_run
from search.tune.trainable import system_metrics
from tests.conftest import real_data

CONFIG = {"model": "awd_lstm", "dataset": "ptb", "lr": 20.0, "dropout": 0.3}  # a space's trial
SEARCHED = ["lr", "dropout"]  # what that space searches


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
    exp = ensure_experiment(client, "conventions", uri, SEARCHED)
    parent = start_parent_run(client, exp, "smoke-search", {schema.SPACE: "smoke"},
                              {"metric": schema.BEST_VAL_PPL}, dataset="ptb",
                              git_commit="0123abc")
    return uri, client, exp, parent


def write_trial(uri: str, exp: str, parent: str, trial_id: str = "t1", epochs: int = 2,
                config: dict | None = None) -> None:
    spec = RunSpec(exp, parent, "smoke", extra_params={"gpus_per_trial": 0})
    writer = RunWriter(uri)  # a fresh writer: what it knows comes from MLflow
    writer(spec.start(trial_id, config or CONFIG, {}))
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
    assert state == runs_view_state(SEARCHED)
    assert state["selectedColumns"][0] == f"metrics.`{schema.BEST_VAL_PPL}`"
    assert {"params.`lr`", "params.`dropout`"} <= set(state["selectedColumns"])
    assert state["orderByKey"] == "attributes.start_time"  # the one order MLflow nests under
    client.delete_experiment(exp)
    assert ensure_experiment(client, "conventions", uri, SEARCHED) == exp  # restored, same tags
    assert client.get_experiment(exp).tags == tags


BUNDLE = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"


@functools.cache
def _bundle() -> str:
    return "\n".join(js.read_text() for js in sorted(BUNDLE.glob("*.js")))


def _bundle_arrays(first: str) -> list[list[str]]:
    """The string-array literals of MLflow's UI bundle that start with ``first``."""
    return [json.loads(f"[{literal}]")
            for literal in re.findall(r'\[("' + first + r'"(?:,"\w+")*)\]', _bundle())]


def test_the_saved_view_uses_only_what_mlflows_ui_reads_from_one():
    """The keys of our view's state are those the installed UI takes from a saved view (its
    search facets and UI state), none of those it drops (expanded, pinned, hidden runs)."""
    facets = [a for a in _bundle_arrays("searchFilter") if "orderByKey" in a]
    ui_state = [a for a in _bundle_arrays("selectedColumns") if "compareRunCharts" in a]
    dropped = [a for a in _bundle_arrays("runsExpanded") if "runsHidden" in a]
    assert len(facets) == len(ui_state) == len(dropped) == 1, (facets, ui_state, dropped)
    readable = (set(facets[0]) | set(ui_state[0])) - set(dropped[0])
    state = runs_view_state(SEARCHED)
    assert set(state) <= readable, set(state) - readable
    assert "runsExpanded" in dropped[0]  # why a view cannot open the parent expanded


@pytest.mark.parametrize("space_name", ["smoke", "awd_ptb", "compare_ptb"])
def test_the_saved_view_shows_a_spaces_searched_params_and_charts_the_objective_first(
        space_name):
    from search.driver import view_params
    from spaces import get_space

    names, compared = view_params(get_space(space_name))
    assert names and compared
    state = runs_view_state(names, compared)
    params = [c for c in state["selectedColumns"] if c.startswith("params.")]
    assert params == [f"params.`{n}`" for n in names]  # every searched param, in its order
    assert state["selectedColumns"][:len(schema.RUNS_VIEW_METRICS)] == [
        f"metrics.`{m}`" for m in schema.RUNS_VIEW_METRICS]  # the objective first
    assert state["orderByKey"] == "attributes.start_time" and "searchFilter" not in state
    charts = state["compareRunCharts"]
    assert [(c["type"], c.get("metricKey")) for c in charts] == [
        ("BAR", schema.BEST_VAL_PPL), ("LINE", schema.VAL_PPL), ("PARALLEL", None)]
    assert charts[2]["selectedParams"] == compared
    assert charts[2]["selectedMetrics"] == [schema.BEST_VAL_PPL]
    model, system = state["compareRunSections"]
    assert (model["name"], model["isReordered"]) == ("Model metrics", True)  # others appended
    assert system["name"] == "System metrics"
    assert {c["metricSectionId"] for c in charts} == {model["uuid"]}
    assert state["runsHiddenMode"] == "SHOW_ALL"
    assert len(runs_view(0, names, compared)) < 20_000  # what MLflow keeps of an experiment tag


def test_the_parallel_coordinates_compare_the_params_every_trial_logs(search_store):
    """A trial run logs its model's config: a parameter only one model of a mixed space has
    would leave the other model's trials out of the chart (MLflow's parallel coordinates drop a
    run without a value on one of its axes)."""
    from search.driver import view_params
    from spaces import get_space

    names, compared = view_params(get_space("compare_ptb"))  # zaremba and the AWD models
    assert {"init_range", "dropouth", "wdrop"} <= set(names)  # searched for one of them
    assert {"model", "dropout", "nhid", "lr"} <= set(compared) < set(names)
    uri, client, exp, parent = search_store
    for i, model in enumerate(("zaremba", "awd_lstm", "awd_gru")):
        write_trial(uri, exp, parent, f"t{i}", epochs=1, config={**CONFIG, "model": model})
    runs = client.search_runs([exp], filter_string=f"tags.`{schema.ROLE}` = 'trial'")
    assert len(runs) == 3
    for run in runs:
        assert set(compared) <= set(run.data.params), run.data.tags[schema.MODEL]
        assert not set(names) <= set(run.data.params)  # every run misses a column's param
    names, compared = view_params(get_space("awd_ptb"))
    assert compared == names


# --- slow: the smoke search, and the MLflow UI in a browser -------------------------------
@pytest.mark.slow
def test_smoke_search_runs_follow_mlflows_conventions(smoke_search):
    _, _, uri = smoke_search
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke")
    assert exp.tags[schema.EXPERIMENT_KIND] == "custom_model_development"
    from search.driver import view_params
    from spaces import get_space

    names, compared = view_params(get_space("smoke"))  # the driver gave the view the space's
    assert json.loads(json.loads(exp.tags[RUNS_VIEW_TAG])["state"]) == runs_view_state(
        names, compared)
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
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="chromium is not on PATH (apt-get install chromium)")


class Page:
    """One tab of headless Chromium driven over its DevTools pipe (``--remote-debugging-pipe``:
    commands read from fd 3, replies written to fd 4, each JSON message ended by a NUL), for
    what ``--dump-dom`` cannot do: click, then read the page again."""

    def __init__(self, profile: Path, timeout: float = 90.0) -> None:
        assert CHROMIUM is not None
        their_in, self._out = os.pipe()
        self._in, their_out = os.pipe()

        def on_fds_3_and_4() -> None:  # in the child, before it runs Chromium
            into, out_of = os.dup(their_in), os.dup(their_out)
            os.dup2(into, 3)
            os.dup2(out_of, 4)

        self.timeout = timeout
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=3200,1000",  # the table renders
             "--remote-debugging-pipe", "about:blank"],  # only the columns in view
            preexec_fn=on_fds_3_and_4, pass_fds=(3, 4),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(their_in)
        os.close(their_out)
        self._buffer, self._id = b"", 0
        tab = next(t for t in self._call("Target.getTargets")["targetInfos"]
                   if t["type"] == "page")
        self.session = self._call("Target.attachToTarget", targetId=tab["targetId"],
                                  flatten=True)["sessionId"]

    def _call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buffer:
                if not select.select([self._in], [], [], deadline - time.monotonic())[0]:
                    raise TimeoutError(f"Chromium did not answer {method}")
                chunk = os.read(self._in, 1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def js(self, expression: str) -> Any:
        result = self._call("Runtime.evaluate", self.session, expression=expression,
                            returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str) -> Any:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"{expression}: {self.text()[:1500]}")

    def open(self, url: str) -> None:
        """A fresh load of ``url`` (about:blank between: a link that differs from the page's
        only after its # would not reload the app)."""
        for address in ("about:blank", url):
            self._call("Page.navigate", self.session, url=address)
            self.wait_for(f"document.readyState === 'complete' && location.href === {address!r}")

    def text(self) -> str:
        return str(self.js("document.body ? document.body.innerText : ''"))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call("Browser.close")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._in)
        os.close(self._out)


@contextlib.contextmanager
def chromium_page(profile: Path) -> Iterator[Page]:
    page = Page(profile)
    try:
        yield page
    finally:
        page.close()


RUN_NAME = "attributes.`Run Name`"
ROWS = """(() => {  // the runs table's rows by run id: each column's text, and the run name's cell
  const rows = {};
  for (const cell of document.querySelectorAll('[role="row"][row-id] [role="gridcell"][col-id]')) {
    const tr = cell.closest('[role="row"]');
    const row = rows[tr.getAttribute('row-id')] ??= {index: +tr.getAttribute('row-index')};
    const column = cell.getAttribute('col-id');
    row[column] = cell.innerText.trim();
    if (column === 'attributes.`Run Name`') {
      const link = cell.querySelector('a[href]'), pad = cell.querySelector('div[style*="width"]');
      row.name = link.innerText.trim();
      row.href = link.getAttribute('href');
      row.indent = pad ? parseInt(pad.style.width) : 0;  // MLflow indents a child run's name
      row.expander = pad !== null && pad.querySelector('button') !== null;
    }
  }
  return rows;
})()"""
EXPAND = """(() => {  // click the expander of the run named %r
  const link = [...document.querySelectorAll('[role="gridcell"] a[href]')].find(
    a => a.innerText.trim() === %r);
  link.closest('[role="gridcell"]').querySelector('button').click();
  return true;
})()"""
HEADERS = """[...document.querySelectorAll('[role="columnheader"][col-id]')].map(
  h => h.getAttribute('col-id'))"""
CARDS = """[...document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]')].map(
  c => c.innerText.split('\\n').map(line => line.trim()).filter(Boolean))"""


def lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines()}


@pytest.mark.slow
@needs_chromium
def test_mlflow_ui_nests_the_trials_under_the_search_with_their_searched_params(
        search_store, tmp_path):
    """The link a search prints opens the runs table with our view: the search's run, its
    trials nested under it (one click on its expander: a view cannot open it expanded), each
    with the searched params and results; the charts open on the objective; a trial's link
    opens its run page under the Model training sidebar, where a bare link opens GenAI's."""
    from reports.trials import run_url

    uri, client, exp, parent = search_store
    configs = {"t1": CONFIG, "t2": {**CONFIG, "lr": 15.0, "dropout": 0.45}}
    for trial_id, config in configs.items():
        write_trial(uri, exp, parent, trial_id, epochs=1, config=config)
        RunWriter(uri)(finish_record(
            RunSpec(exp, parent, "smoke"), trial_id,
            {"epochs_run": 1, "finished": True, "final_val_ppl": 98.5, "final_test_ppl": 95.25},
            schema.STATUS_COMPLETED, None))
    trials = {r.data.tags[schema.TRIAL_ID]: r.info.run_id for r in client.search_runs(
        [exp], filter_string=f"tags.`{schema.ROLE}` = 'trial'")}
    server = start_mlflow_server(tmp_path / "server", store=uri)
    try:
        base = server.wait(timeout=90)
        with chromium_page(tmp_path / "profile") as page:
            page.open(experiment_url(base, exp))
            page.wait_for("document.body.innerText.includes('smoke-search')")
            assert page.js("document.title").startswith("Runs - ")  # not GenAI's Overview
            rows = page.js(ROWS)
            assert list(rows) == [parent] and rows[parent]["expander"], rows  # trials inside
            page.js(EXPAND % ("smoke-search", "smoke-search"))
            page.wait_for(f"Object.keys({ROWS}).length === 3")
            rows, headers, text = page.js(ROWS), page.js(HEADERS), " ".join(page.text().split())

            by_name = {r["name"]: r for r in sorted(rows.values(), key=lambda r: r["index"])}
            assert list(by_name) == ["smoke-search", "smoke-t1", "smoke-t2"]  # by start time
            top = by_name["smoke-search"]
            for trial_id, config in configs.items():
                row = by_name[f"smoke-{trial_id}"]
                assert row["indent"] > top["indent"] and not row["expander"], (row, top)
                for name in SEARCHED:  # the searched params, with the trial's values
                    assert row[f"params.`{name}`"] == str(config[name]), (name, row)
                assert row[f"metrics.`{schema.BEST_VAL_PPL}`"] == "99"
                assert row.get(f"tags.`{schema.STATUS}`") == "completed", " ".join(sorted(row))
                assert row["href"].endswith(f"/runs/{trials[trial_id]}")
            assert top[f"params.`{SEARCHED[0]}`"] in ("", "-")  # the parent has none
            for column in (*(f"metrics.`{m}`" for m in schema.RUNS_VIEW_METRICS),
                           *(f"params.`{n}`" for n in SEARCHED),
                           *(f"tags.`{t}`" for t in schema.RUNS_VIEW_TAGS)):
                assert column in headers, (column, headers)
            digest = dataset_ref("ptb").digest  # type: ignore[union-attr]
            assert f"ptb ({digest})" in text  # the Dataset column
            assert "python -m search.run" in text  # the Source column

            page.open(experiment_url(base, exp) + "&compareRunsMode=CHART")
            page.wait_for("document.body.innerText.includes('smoke-search')")
            page.js(EXPAND % ("smoke-search", "smoke-search"))
            with contextlib.suppress(TimeoutError):  # the third chart drawn: its axes
                page.wait_for(f"(({CARDS})[2] || []).filter(line => "
                              f"{json.dumps(SEARCHED)}.includes(line)).length === "
                              f"{len(SEARCHED)}")
            cards = page.js(CARDS)
            assert [c[0] for c in cards[:3]] == [
                schema.BEST_VAL_PPL, schema.VAL_PPL, "Parallel Coordinates"], cards
            assert set(SEARCHED) <= set(cards[2]), cards[2]  # the searched params' axes

            link = run_url(base, exp, trials["t1"])
            assert link is not None
            page.open(link)
            page.wait_for("document.body.innerText.includes('smoke-t1')")
            training = lines(page.text())
            runs_link = page.js(f"""document.querySelector(
                'a[href="#/experiments/{exp}/runs?workflowType=machine_learning"]') !== null""")
            page.open(link.split("?")[0])  # the bare link, as MLflow's own pages make them
            page.wait_for("document.body.innerText.includes('smoke-t1')")
            genai = lines(page.text())
    finally:
        stop(server.proc, grace=30)
    assert runs_link and "Model registry" in training  # the Model training sidebar
    assert not {"Judges", "Sessions"} & training, training
    assert {"Judges", "Sessions"} <= genai  # what a bare link opens on: GenAI's sidebar


def test_links_never_carry_the_tracking_uris_credentials():
    from reports.trials import run_url
    from search.tracking.conventions import experiment_url, without_credentials

    secret = "https://alice:s3cr3t-token@mlflow.example.org:8443"
    for link in (without_credentials(secret), experiment_url(secret, "4"),
                 run_url(secret, "4", "abc")):
        assert link is not None and "s3cr3t" not in link and "alice" not in link
        assert link.startswith("https://mlflow.example.org:8443")
    assert without_credentials("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
