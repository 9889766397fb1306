"""The best model in the Model Registry and ``python -m search.evaluate`` on it: a tiny model
trained here, closed as a search's best trial into a real SQLite store, then evaluated back
to the trainer's own numbers; the smoke search's registered model (slow tier)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import pattern_text, reversed_text, write_corpus
from mlflow.tracking import MlflowClient

import search.evaluate
from awd import evaluate
from awd.config import from_flat
from awd.data import load_corpus
from awd.trainer import Trainer, load_exported
from search import schema
from search.results import TrialSummary, pick_best
from search.tracking.registry import (
    CONTEXT,
    BestModel,
    NextWordLogProbs,
    publish_best_model,
    register,
    search_alias,
    set_aliases,
)
from search.tracking.store import ensure_experiment, start_parent_run, write_summary

TINY = {"model": "awd_lstm", "emsize": 16, "nhid": 16, "nlayers": 2, "batch_size": 8,
        "eval_batch_size": 4, "test_batch_size": 1, "bptt": 10, "device": "cpu", "seed": 3,
        "epochs": 1}
SPACE = "tiny"
NAME = f"awdsearch-{SPACE}"


def close_search(client: MlflowClient, uri: str, experiment: str, trainer: Trainer,
                 final: dict, export) -> tuple[str, str]:
    """A search of one completed trial, closed as the driver closes one: (parent, trial run)."""
    exp = ensure_experiment(client, experiment, uri)
    parent = start_parent_run(client, exp, f"{SPACE}-search", {schema.SPACE: SPACE}, {})
    config = trainer.run_config.to_flat()
    child = client.create_run(exp, tags={schema.PARENT_RUN_ID: parent, schema.ROLE: "trial",
                                         schema.TRIAL_ID: "t1"})
    client.set_terminated(child.info.run_id)
    trial = TrialSummary("t1", schema.STATUS_COMPLETED, config, {
        schema.FINISHED: True, schema.BEST_VAL_PPL: final["val_ppl"],
        schema.FINAL_VAL_PPL: final["val_ppl"], schema.FINAL_TEST_PPL: final["test_ppl"]},
        None, None)
    write_summary(client, parent, 0.0, {"t1": child}, [trial], pick_best([trial]), export)
    return parent, child.info.run_id


@pytest.fixture(scope="module")
def registered(tmp_path_factory, new_mlflow_store):
    """A tiny AWD-LSTM trained one epoch, exported, and closed as the best trial of a search
    in a fresh store: (work folder, store URI, client, trainer's final metrics, parent run,
    trial run)."""
    work = tmp_path_factory.mktemp("registry")
    data = write_corpus(work / "data", pattern_text(20), pattern_text(4), pattern_text(3))
    trainer = Trainer(TINY, load_corpus(data, use_cache=False))
    trainer.fit()
    final = trainer.final_metrics()
    export = trainer.export_best(work / "best_model.pt")
    uri = new_mlflow_store(work / "store")
    client = MlflowClient(uri)
    parent, child = close_search(client, uri, "tiny-search", trainer, final, export)
    return work, uri, client, final, parent, child


def run_evaluate(capsys, *args: str) -> tuple[int, str, str]:
    code = search.evaluate.main(["--quiet", *args])
    out, err = capsys.readouterr()
    return code, out, err


def printed_metrics(out: str) -> dict:
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def test_evaluating_the_registered_model_gives_the_trainers_own_numbers(registered, capsys,
                                                                        monkeypatch):
    from search.tracking.registry import PROGRESS_BAR

    monkeypatch.setenv(PROGRESS_BAR, "x")
    monkeypatch.delenv(PROGRESS_BAR)  # unset, as for a user (undone after the test)
    work, uri, _, final, _, _ = registered
    code, out, err = run_evaluate(capsys, "--model-uri", f"models:/{NAME}/latest", "--data",
                                  str(work / "data"), "--tracking-uri", uri)
    assert code == 0, err
    printed = printed_metrics(out)
    assert printed["val_ppl"] == final["val_ppl"] and printed["test_ppl"] == final["test_ppl"]
    assert f"val ppl {final['val_ppl']:.2f} | test ppl {final['test_ppl']:.2f}" in out
    assert "Downloading artifacts" not in err  # MLflow's bar: noise on the console
    # the same model by its run, by version number, and from the store named in the environment
    code, again, err = run_evaluate(capsys, "--model-uri", f"runs:/{registered[5]}/model",
                                    "--data", str(work / "data"), "--tracking-uri", uri)
    assert code == 0, err
    assert printed_metrics(again) == printed


def test_the_version_is_tagged_and_the_model_stored_once(registered):
    _, _, client, final, parent, child = registered
    (version,) = client.search_model_versions(f"name = '{NAME}'")
    assert str(version.version) == "1" and version.run_id == child
    tags = version.tags
    assert float(tags[schema.MODEL_VAL_PPL]) == final["val_ppl"]
    assert float(tags[schema.MODEL_TEST_PPL]) == final["test_ppl"]
    assert tags[schema.MODEL_PARENT_RUN_ID] == parent and tags[schema.TRIAL_ID] == "t1"
    assert tags[schema.MODEL] == "awd_lstm" and tags[schema.EXPERIMENT] == "tiny-search"
    assert tags[schema.DATASET] == "ptb" and tags[schema.SPACE] == SPACE
    for run_id in (parent, child):
        run = client.get_run(run_id)
        assert run.data.tags[schema.MODEL_URI] == f"models:/{NAME}/1"
        assert [a.path for a in client.list_artifacts(run_id)] == ["config.json"]
    assert client.get_run(parent).info.status == "FINISHED"
    (model,) = client.search_logged_models(
        experiment_ids=[client.get_run(child).info.experiment_id])
    assert model.source_run_id == child and model.name == "model"


def test_the_mlflow_model_is_a_pt2_program_with_the_export_inside(registered, tmp_path):
    """MLflow's own loader reads the pt2 program (no pickle), whose log-probabilities are the
    model's; the export rides along and needs no MLflow to load."""
    import mlflow.artifacts
    import mlflow.pytorch

    work, uri, client, *_ = registered
    model_id = client.get_model_version(NAME, "1").source.removeprefix("models:/")
    folder = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_logged_model(model_id).artifact_location,
        dst_path=str(tmp_path), tracking_uri=uri))
    requirements = (folder / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") for r in requirements)  # given: nothing was inferred
    exported = load_exported(folder / evaluate.EXPORT_IN_MODEL)
    assert exported.vocab == load_exported(work / "best_model.pt").vocab
    program = mlflow.pytorch.load_model(str(folder))
    ids = torch.randint(0, len(exported.vocab), (3, CONTEXT))
    with torch.no_grad():
        expected = NextWordLogProbs(exported.build())(ids)
    assert torch.allclose(program(ids), expected, atol=1e-5)
    assert evaluate.load_model(str(folder)).vocab == exported.vocab  # a downloaded folder


def test_generation_samples_words_of_the_vocabulary_reproducibly(registered, capsys):
    work = registered[0]
    model = str(work / "best_model.pt")
    code, out, err = run_evaluate(capsys, "--model-uri", model, "--no-eval", "--generate", "30",
                                  "--seed", "5", "--prompt", "the cat")
    assert code == 0, err
    vocab = set(load_exported(model).vocab)
    words = out.split()
    assert words[:2] == ["the", "cat"] and set(words) <= vocab
    sampled = evaluate.generate(load_exported(model).build(), load_exported(model).vocab, 30,
                                "the cat", seed=5)
    assert len(sampled) == 30 and evaluate.as_text(["the", "cat", *sampled]) == out.rstrip("\n")
    assert run_evaluate(capsys, "--model-uri", model, "--no-eval", "--generate", "30", "--seed",
                        "5", "--prompt", "the cat")[1] == out
    cold = evaluate.generate(load_exported(model).build(), load_exported(model).vocab, 30,
                             seed=5, temperature=0.05)
    assert cold != sampled  # the temperature matters


def test_each_search_adds_a_version_with_its_own_tags(registered):
    _, _, client, _, parent, child = registered
    exported = load_exported(registered[0] / "best_model.pt")
    best = BestModel(registered[0] / "best_model.pt", child, "another-parent", "again", SPACE,
                     "t9", 12.5, None)
    model_id = client.get_model_version(NAME, "1").source.removeprefix("models:/")
    version = register(client, best, exported, model_id)
    assert str(version.version) == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags[schema.MODEL_PARENT_RUN_ID] == "another-parent" and tags[schema.TRIAL_ID] == "t9"
    assert tags[schema.MODEL_VAL_PPL] == "12.5" and schema.MODEL_TEST_PPL not in tags
    assert client.get_model_version(NAME, "1").tags[schema.MODEL_PARENT_RUN_ID] == parent


def test_each_search_has_an_alias_and_the_space_a_best_one(registered, capsys):
    """Issue 21: `latest` is whichever search ran last; the search's alias and `best` are
    handles that mean something."""
    work, uri, client, final, _, _ = registered
    assert str(client.get_model_version_by_alias(NAME, "tiny-search").version) == "1"
    aliases = set_aliases(client, NAME, "1", "tiny-search")  # as a search's end sets them
    scored = {str(v.version): float(v.tags[schema.MODEL_VAL_PPL])
              for v in client.search_model_versions(f"name = '{NAME}'")}
    best = min(scored, key=lambda v: scored[v])
    assert str(client.get_model_version_by_alias(NAME, "best").version) == best
    assert aliases == ["tiny-search"] + (["best"] if best == "1" else [])
    code, out, err = run_evaluate(capsys, "--model-uri", f"models:/{NAME}@tiny-search",
                                  "--data", str(work / "data"), "--tracking-uri", uri)
    assert code == 0, err
    assert printed_metrics(out)["test_ppl"] == pytest.approx(final["test_ppl"])
    assert search_alias("a.b c") == "a_b_c" and search_alias("latest") == "search-latest"
    assert search_alias("v12") == "search-v12" and search_alias("best") == "search-best"


def test_closing_a_search_again_registers_nothing_more(registered, caplog):
    """--resume of a finished search closes it again; a driver killed after logging the model
    left it unregistered: neither adds a second model or version."""
    work, _, client, final, parent, child = registered
    trial_run = client.get_run(child)
    exp = trial_run.info.experiment_id

    def counts() -> tuple[int, set[str]]:
        models = client.search_logged_models(experiment_ids=[exp],
                                             filter_string=f"source_run_id = '{child}'")
        versions = {v.version for v in client.search_model_versions(f"name = '{NAME}'")
                    if v.tags.get(schema.MODEL_PARENT_RUN_ID) == parent}
        return len(models), versions

    before = counts()
    assert before[0] == 1 and len(before[1]) == 1
    config = from_flat(TINY).to_flat()
    trial = TrialSummary("t1", schema.STATUS_COMPLETED, config, {
        schema.FINISHED: True, schema.BEST_VAL_PPL: final["val_ppl"],
        schema.FINAL_VAL_PPL: final["val_ppl"], schema.FINAL_TEST_PPL: final["test_ppl"]},
        None, None)
    write_summary(client, parent, 0.0, {"t1": trial_run}, [trial], pick_best([trial]),
                  work / "best_model.pt")
    assert counts() == before
    # killed between logging and registering: no tags, the version not there, the model is
    client.delete_tag(parent, schema.MODEL_URI)
    best = BestModel(work / "best_model.pt", child, parent, "tiny-search", "tiny-killed", "t1",
                     final["val_ppl"], final["test_ppl"])
    uri = publish_best_model(client, best)
    assert uri == "models:/awdsearch-tiny-killed/1"
    assert counts()[0] == 1  # the logged model was reused


def test_a_model_that_cannot_be_logged_costs_only_the_model(registered, tmp_path, caplog):
    _, uri, client, _, _, _ = registered
    exp = ensure_experiment(client, "broken", uri)
    parent = start_parent_run(client, exp, "broken-search", {schema.SPACE: "broken"}, {})
    bogus = tmp_path / "best_model.pt"
    bogus.write_bytes(b"not a model")
    best = BestModel(bogus, parent, parent, "broken", "broken", "t1", 10.0, 9.0)
    assert publish_best_model(client, best) is None
    assert "the best model is not logged" in caplog.text
    assert schema.MODEL_URI not in client.get_run(parent).data.tags
    assert not client.search_registered_models("name = 'awdsearch-broken'")


@pytest.mark.parametrize("args, message", [
    (["--model-uri", "models:/nope/latest"], "models:/nope/latest: Registered Model with name"),
    (["--model-uri", f"models:/{NAME}/99"], f"models:/{NAME}/99: "),
    (["--model-uri", "models:/empty/latest"], "registered model 'empty' has no versions"),
    (["--model-uri", "runs:/0123456789abcdef/model"], "runs:/0123456789abcdef/model: Run"),
    (["--model-uri", "no/such/file.pt"], "no such file"),
    (["--model-uri", "BOGUS"], "is not a model exported by awdsearch"),
    (["--model-uri", "MODEL", "--data", "REVERSED"], "the model's vocabulary (49 words) is not"),
    (["--model-uri", "MODEL", "--generate", "3", "--temperature", "0"], "--temperature"),
])
def test_errors_are_one_line_with_status_2(registered, capsys, args, message):
    work, uri, client, *_ = registered
    if not client.search_registered_models("name = 'empty'"):
        client.create_registered_model("empty")
    bogus = work / "bogus.pt"
    bogus.write_bytes(b"\x00not a checkpoint")
    reversed_dir = write_corpus(work / "reversed", reversed_text(20), reversed_text(4),
                                reversed_text(3))
    names = {"MODEL": str(work / "best_model.pt"), "BOGUS": str(bogus),
             "REVERSED": str(reversed_dir)}
    code, out, err = run_evaluate(capsys, *[names.get(a, a) for a in args],
                                  "--tracking-uri", uri)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_an_sqlite_store_that_does_not_exist_is_an_error_not_a_new_store(tmp_path, capsys):
    code, _, err = run_evaluate(capsys, "--model-uri", f"models:/{NAME}/latest",
                                "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert code == 2 and "no MLflow store at" in err and not (tmp_path / "none.db").exists()


def test_awd_evaluate_reads_files_and_sends_mlflow_uris_to_search_evaluate(registered, capsys):
    work = registered[0]
    assert evaluate.main(["--quiet", "--model-uri", str(work / "best_model.pt"), "--no-eval",
                          "--generate", "3"]) == 0
    assert len(capsys.readouterr().out.split()) == 3
    assert evaluate.main(["--model-uri", f"models:/{NAME}/latest", "--no-eval",
                          "--generate", "3"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"error: models:/{NAME}/latest is an MLflow model URI: python -m "
                   "search.evaluate --model-uri URI downloads it from the tracking store\n")


# --- the smoke search's model (slow) ------------------------------------------------------------
@pytest.mark.slow
def test_the_smoke_search_registers_its_best_model_once(smoke_search, capsys):
    _, _, uri = smoke_search
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke")
    (parent,) = client.search_runs([exp.experiment_id],
                                   filter_string=f"tags.`{schema.ROLE}` = 'search'")
    # Other searches in the same folder (the warm-start test's) register their own versions.
    (version,) = [v for v in client.search_model_versions("name = 'awdsearch-smoke'")
                  if v.tags.get(schema.MODEL_PARENT_RUN_ID) == parent.info.run_id]
    tags = version.tags
    assert tags[schema.MODEL_PARENT_RUN_ID] == parent.info.run_id
    assert tags[schema.TRIAL_ID] == parent.data.tags[schema.BEST_TRIAL_ID]
    assert float(tags[schema.MODEL_VAL_PPL]) == parent.data.metrics[schema.BEST_VAL_PPL]
    assert float(tags[schema.MODEL_TEST_PPL]) == parent.data.metrics[schema.BEST_TEST_PPL]
    assert parent.data.tags[schema.MODEL_URI] == f"models:/awdsearch-smoke/{version.version}"
    for run in client.search_runs([exp.experiment_id]):  # the weights are in the model only
        assert "checkpoint" not in {a.path for a in client.list_artifacts(run.info.run_id)}
    code = search.evaluate.main(["--quiet", "--model-uri",
                                 f"models:/awdsearch-smoke/{version.version}",
                                 "--tracking-uri", uri])
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = printed_metrics(out)
    assert printed["val_ppl"] == pytest.approx(parent.data.metrics[schema.BEST_VAL_PPL], rel=1e-6)
    assert printed["test_ppl"] == pytest.approx(parent.data.metrics[schema.BEST_TEST_PPL],
                                                rel=1e-6)


@pytest.fixture(scope="module")
def fresh_interpreter() -> subprocess.CompletedProcess:
    """One fresh interpreter for the two checks below that need one (each would import torch
    and MLflow anew): it starts the export warm-up, imports mlflow.pytorch under the registry's
    guard, logs a search warning, and at exit says whether the warm-up thread had ended. The
    warm-up starts last, so that the main thread ends while it runs."""
    code = ("import atexit, logging, search.run\n"
            "from search.tracking import registry\n"
            "with registry._root_logging_kept():\n"
            "    import mlflow.pytorch\n"
            "logging.getLogger('search.tracking.outbox')"
            ".warning('MLflow at x unreachable since y')\n"
            "threads = []\n"
            "atexit.register(lambda: print('alive' if threads[0].is_alive() else 'done'))\n"
            "threads.append(registry.start_export_warm_up())\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


def test_a_search_keeps_its_warnings_after_mlflow_pytorch_is_imported(fresh_interpreter):
    """Importing mlflow.pytorch runs logging.basicConfig(level=ERROR): without the registry's
    guard, a search's warnings (an MLflow outage among them) would vanish after the first
    model was logged."""
    assert fresh_interpreter.returncode == 0, fresh_interpreter.stderr[-2000:]
    assert "MLflow at x unreachable since y" in fresh_interpreter.stderr


def test_the_interpreter_exit_waits_for_the_export_warm_up(fresh_interpreter):
    """A process whose main thread ended while the warm-up thread was inside torch.export
    aborted (SIGABRT in torch's dispatcher during finalization): a resume with nothing left to
    train did, in CI. The exit now joins the thread; the handler registered first runs last
    (atexit is LIFO) and sees it finished."""
    assert fresh_interpreter.returncode == 0, fresh_interpreter.stderr[-2000:]
    assert fresh_interpreter.stdout.strip() == "done"
