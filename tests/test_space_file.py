"""Spaces declared as data: the built-in spaces sample exactly what their hand-written functions
did, print as YAML files that read back as the same space, and a bad file fails on one line
naming the field; a file space survives what a search does with it (options, resume, pickle)."""

from __future__ import annotations

import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest

from awd.config import MODELS, preset
from awd.errors import UserError
from search.options import OptionError, build_parser, options_from_args, resume_conflicts
from search.run import main
from search.tune.searcher import AWDOptunaSearch, make_searcher
from spaces import (
    SPACES,
    SpaceFileError,
    dump_spec,
    get_space,
    load_space_file,
    show_space,
    spec_of,
)
from spaces.spec_file import parse_space

EXAMPLES = Path(__file__).resolve().parent.parent / "spaces" / "examples"


# --- the hand-written define functions the declared spaces replaced (as they were) -------------
def _old_awd(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {
        "dropout": trial.suggest_float("dropout", 0.2, 0.6),
        "dropouth": trial.suggest_float("dropouth", 0.1, 0.45),
        "dropouti": trial.suggest_float("dropouti", 0.2, 0.7),
        "dropoute": trial.suggest_float("dropoute", 0.0, 0.2),
        "wdrop": trial.suggest_float("wdrop", 0.2, 0.7),
        "emsize": trial.suggest_int("emsize", 200, 800, step=50),
        "nhid": trial.suggest_int("nhid", 600, 1500, step=50),
        "lr": trial.suggest_float("lr", 10.0, 40.0),
        "alpha": trial.suggest_float("alpha", 0.0, 3.0),
        "beta": trial.suggest_float("beta", 0.0, 2.0),
        "nonmono": trial.suggest_int("nonmono", 3, 8),
    }


def _old_zaremba(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {
        "dropout": trial.suggest_float("dropout", 0.3, 0.7),
        "nhid": trial.suggest_int("nhid", 400, 1000, step=50),
        "init_range": trial.suggest_float("init_range", 0.02, 0.1),
        "lr": trial.suggest_float("lr", 0.5, 2.0),
    }


def _old_fixed(model: str, dataset: str, size: str = "") -> dict[str, Any]:
    return {"model": model, "dataset": dataset, "preset": size, "optimizer": "ntasgd"}


def _old_compare(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    model = trial.suggest_categorical("model", MODELS)
    if model == "zaremba":
        return {**_old_fixed(model, "ptb", "medium"), **_old_zaremba(trial)}
    return {**_old_fixed(model, "ptb"), **_old_awd(trial)}


OLD_SLICE = {"train_tokens": 20_000, "eval_tokens": 3_000, "batch_size": 20,
             "bptt": 35, "eval_batch_size": 10, "test_batch_size": 10}


def _old_smoke(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    model = trial.suggest_categorical("model", MODELS)
    if model == "zaremba":
        sampled = {
            "nhid": trial.suggest_int("nhid", 32, 96, step=16),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "lr": trial.suggest_float("lr", 0.5, 2.0, log=True),
        }
        return {**_old_fixed(model, "ptb", "small"), "init_range": 0.1, **OLD_SLICE, **sampled}
    sampled = {
        "emsize": trial.suggest_int("emsize", 16, 64, step=16),
        "nhid": trial.suggest_int("nhid", 32, 96, step=16),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "dropouth": trial.suggest_float("dropouth", 0.0, 0.4),
        "dropouti": trial.suggest_float("dropouti", 0.0, 0.5),
        "dropoute": trial.suggest_float("dropoute", 0.0, 0.2),
        "wdrop": trial.suggest_float("wdrop", 0.0, 0.5),
        "lr": trial.suggest_float("lr", 2.0, 20.0, log=True),
    }
    return {**_old_fixed(model, "ptb"), "nlayers": 2, "clip": 0.25, **OLD_SLICE, **sampled}


def _old_paper(model: str, dataset: str, names: tuple[str, ...], size: str = "") -> dict:
    flat = preset(model, dataset, size).to_flat()
    return {n: flat[n] for n in names}


AWD_NAMES = ("dropout", "dropouth", "dropouti", "dropoute", "wdrop", "emsize", "nhid", "lr",
             "alpha", "beta", "nonmono")
OLD = {  # name: (define, warm start, model, dataset, max_epochs, grace_period)
    **{name: (lambda t, m=m, d=d: {**_old_fixed(m, d), **_old_awd(t)},
              _old_paper(m, d, AWD_NAMES), m, d, 100, 30)
       for name, m, d in (("awd_ptb", "awd_lstm", "ptb"), ("awd_wt2", "awd_lstm", "wikitext-2"),
                          ("gru_ptb", "awd_gru", "ptb"), ("gru_wt2", "awd_gru", "wikitext-2"))},
    "zaremba_ptb": (lambda t: {**_old_fixed("zaremba", "ptb", "medium"), **_old_zaremba(t)},
                    _old_paper("zaremba", "ptb", ("dropout", "nhid", "init_range", "lr"),
                               "medium"), "zaremba", "ptb", 39, 10),
    "compare_ptb": (_old_compare, {"model": "awd_lstm", **_old_paper("awd_lstm", "ptb",
                                                                     AWD_NAMES)},
                    "mixed", "ptb", 100, 30),
    "smoke": (_old_smoke, {"model": "awd_lstm", "emsize": 32, "nhid": 64, "dropout": 0.4,
                           "dropouth": 0.25, "dropouti": 0.4, "dropoute": 0.1, "wdrop": 0.5,
                           "lr": 10.0}, "mixed", "ptb", 3, 1),
}


def _sampled(define: Any, sampler: optuna.samplers.BaseSampler, n: int = 20,
             enqueue: dict[str, Any] | None = None) -> list[tuple[dict, dict, dict]]:
    """Each trial's config, params and distributions from a study that learns (a made-up
    objective), so that TPE's later suggestions depend on the earlier configs."""
    study = optuna.create_study(sampler=sampler)
    if enqueue:
        study.enqueue_trial(enqueue)
    out = []
    for _ in range(n):
        trial = study.ask()
        config = define(trial)
        out.append((config, trial.params, trial.distributions))
        study.tell(trial, sum(v for v in trial.params.values() if isinstance(v, float)))
    return out


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          n_startup_trials=5)


BORN_DECLARED = {"bench_ptb"}  # spaces that never had a hand-written define function


def test_every_old_space_is_compared():
    assert set(OLD) == set(SPACES) - BORN_DECLARED


@pytest.mark.parametrize("name", sorted(OLD))
def test_declared_space_samples_what_the_hand_written_one_did(name):
    """Same parameter names, distributions (stored studies compare them), configs and order
    of suggestions (a seeded sampler's sequence depends on it), warm start and budgets."""
    define, warm, model, dataset, epochs, grace = OLD[name]
    space = SPACES[name]
    assert (space.model, space.dataset, space.max_epochs, space.grace_period) == \
        (model, dataset, epochs, grace)
    assert space.warm_start == warm
    assert space.define(optuna.trial.FixedTrial(warm)) == define(optuna.trial.FixedTrial(warm))
    models = set()
    for sampler, n in ((lambda: optuna.samplers.RandomSampler(seed=5), 30),
                       (lambda: _tpe(5), 10)):
        old = _sampled(define, sampler(), n)
        new = _sampled(space.define, sampler(), n)
        assert new == old
        models |= {config["model"] for config, _, _ in old}
    assert models == (set(MODELS) if model == "mixed" else {model})  # every branch compared


@pytest.mark.parametrize("name", sorted(SPACES))
def test_printed_space_reads_back_as_the_same_space(name, tmp_path, capsys):
    assert main(["--show-space", name]) == 0
    path = tmp_path / f"{name}.yaml"
    path.write_text(capsys.readouterr().out)
    spec = load_space_file(path)
    assert spec == spec_of(SPACES[name])
    assert dump_spec(spec) == show_space(name)


def test_smoke_from_its_file_samples_the_same_trials(tmp_path):
    """The round trip through Optuna: same seeded samplers, same trial sequence and configs,
    the warm start enqueued first as a search does."""
    path = tmp_path / "s.yaml"
    path.write_text(show_space("smoke"))
    from_file, builtin = load_space_file(path).to_space(), get_space("smoke")
    for sampler in (lambda: optuna.samplers.RandomSampler(seed=3), lambda: _tpe(3)):
        assert _sampled(from_file.define, sampler(), enqueue=from_file.warm_start) == \
            _sampled(builtin.define, sampler(), enqueue=builtin.warm_start)


def _readme_space(tmp_path: Path) -> Path:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "readme_space.yaml").write_text(block)
    return tmp_path / "readme_space.yaml"


def test_example_files_are_valid_spaces_that_a_study_can_sample(tmp_path):
    """Every example (the folder's and the README's) through a real study: Optuna refuses a
    parameter whose distribution changes between trials, which a file check must catch."""
    paths = [*sorted(EXAMPLES.glob("*.yaml")), _readme_space(tmp_path)]
    assert len(paths) >= 2
    for path in paths:
        space = load_space_file(path).to_space()
        assert space.paper_config()["model"] in MODELS
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        study.enqueue_trial(space.warm_start)
        for _ in range(12):
            trial = study.ask()
            space.define(trial)
            study.tell(trial, 1.0)


# --- bad files ------------------------------------------------------------------------------------
GOOD = """\
name: tiny
model: [awd_lstm, zaremba]
dataset: ptb
max_epochs: 2
fixed: {train_tokens: 5000}
parameters:
  dropout: {type: float, low: 0.1, high: 0.5}
  tie: {type: categorical, choices: [a, b]}
conditions:
  - when: {model: awd_lstm}
    fixed: {nlayers: 2}
    parameters:
      lr: {type: float, low: 1.0, high: 20.0, log: true}
      emsize: {type: int, low: 16, high: 64, step: 16}
  - when: {model: [zaremba]}
    fixed: {preset: small}
warm_start: {model: awd_lstm, dropout: 0.3, lr: 10.0, emsize: 32}
"""
# The categorical `tie` is not a config field: each case below fixes one thing of a file
# whose only problem is that, or replaces GOOD's text.
BASE = GOOD.replace("  tie: {type: categorical, choices: [a, b]}\n", "")

BAD = {  # label: (text replaced -> by, the field named, words of the message)
    "unknown top key": ("max_epochs: 2", "max_epoch: 2",
                        "max_epoch: unknown key (did you mean 'max_epochs'?)"),
    "two unknown keys": ("max_epochs: 2", "max_epoch: 2\ngrace_perod: 1",
                         "max_epoch: unknown key (did you mean 'max_epochs'?); also unknown: "
                         "'grace_perod' (did you mean 'grace_period'?)"),
    "missing key": ("dataset: ptb\n", "", "dataset: missing"),
    "wrong type": ("max_epochs: 2", "max_epochs: two", "max_epochs: must be a whole number"),
    "low >= high": ("low: 0.1, high: 0.5", "low: 0.7, high: 0.5",
                    "parameters.dropout.high: must be greater than low (0.5 <= 0.7)"),
    "log with low 0": ("low: 1.0, high: 20.0, log", "low: 0.0, high: 20.0, log",
                       "conditions[0].parameters.lr.low: must be > 0 with log"),
    "step with log": ("log: true}", "log: true, step: 1.0}",
                      "conditions[0].parameters.lr.step: cannot be used with log"),
    "off-grid high": ("high: 64, step: 16", "high: 70, step: 16",
                      "conditions[0].parameters.emsize.high: must be low plus a multiple"),
    "int with a float": ("low: 16, high", "low: 16.5, high",
                         "conditions[0].parameters.emsize.low: must be a whole number"),
    "unknown param key": ("{type: float, low: 0.1, high: 0.5}",
                          "{type: float, low: 0.1, high: 0.5, choices: [1]}",
                          "parameters.dropout.choices: unknown key"),
    "unknown type": ("type: float, low: 0.1", "type: uniform, low: 0.1",
                     "parameters.dropout.type: must be one of float, int, categorical"),
    "unknown model": ("[awd_lstm, zaremba]", "[awd_lstm, lstm]", "model: unknown model 'lstm'"),
    "misspelt model": ("[awd_lstm, zaremba]", "[awd_lstm, zarembа]",
                       "model: unknown model 'zarembа' (did you mean 'zaremba'?)"),
    "unknown dataset": ("dataset: ptb", "dataset: imdb", "dataset: unknown dataset 'imdb';"),
    "misspelt dataset": ("dataset: ptb", "dataset: ptbb",
                         "dataset: unknown dataset 'ptbb' (did you mean 'ptb'?)"),
    "warm start outside": ("lr: 10.0", "lr: 50.0", "warm_start.lr: 50.0 is outside [1.0, 20.0]"),
    "warm start not sampled": ("{model: awd_lstm,", "{model: zaremba,",
                               "warm_start.lr: not a parameter this warm start samples"),
    "condition on unknown": ("when: {model: awd_lstm}", "when: {layers: 2}",
                             "conditions[0].when.layers: unknown parameter"),
    "condition value": ("when: {model: awd_lstm}", "when: {model: awd_gru}",
                        "conditions[0].when.model: 'awd_gru' is not one of"),
    "unknown config key": ("train_tokens: 5000", "train_token: 5000",
                           "fixed.train_token: not a config field of awd_lstm (did you mean "
                           "'train_tokens'?)"),
    "config key of one model": ("fixed: {nlayers: 2}", "fixed: {wdrop: 0.2}\n  - when: "
                                "{model: zaremba}\n    fixed: {wdrop: 0.2}",
                                "conditions[1].fixed.wdrop: not a config field of zaremba"),
    "epochs": ("train_tokens: 5000", "epochs: 5", "fixed.epochs: set by max_epochs"),
    "fixed and searched": ("train_tokens: 5000", "dropout: 0.2",
                           "fixed.dropout: also a parameter"),
    "global and conditional": ("fixed: {preset: small}", "parameters: {dropout: {type: float, "
                               "low: 0.1, high: 0.2}}",
                               "conditions[1].parameters.dropout: also in parameters"),
    "two conditions": ("when: {model: [zaremba]}\n    fixed: {preset: small}",
                       "when: {model: [awd_lstm, zaremba]}\n    parameters: {lr: {type: float, "
                       "low: 0.1, high: 0.2}}",
                       "conditions[1].parameters.lr: also set by conditions[0], which can apply"),
    "two kinds of one parameter": ("fixed: {preset: small}", "fixed: {preset: small}\n"
                                   "    parameters: {lr: {type: float, low: 0.5, high: 2.0}}",
                                   "conditions[1].parameters.lr: must have the same type, log "
                                   "scale and choices as in conditions[0]"),
    "warm start incomplete": ("dropout: 0.3, lr", "lr", "warm_start: missing dropout"),
    "invalid config": ("high: 0.5}", "high: 1.0}", "config (model=awd_lstm, parameters at "
                       "their high ends): dropout must be in [0, 1), got 1.0"),
    "grace above budget": ("max_epochs: 2", "max_epochs: 2\ngrace_period: 3",
                           "grace_period: must be from 1 to max_epochs (2)"),
    "bad name": ("name: tiny", "name: ../x", "name: a plain name"),
    "yaml syntax": ("max_epochs: 2", "max_epochs: [2", "YAML syntax error at line"),
    "duplicate key": ("max_epochs: 2", "max_epochs: 2\nmax_epochs: 3",
                      "key 'max_epochs' given twice"),
    "not a mapping": (BASE, "- a\n- b\n", "top level: must be a mapping"),
}


def test_the_base_file_is_good(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(BASE)
    spec = load_space_file(path)
    assert spec.warm_start == {"model": "awd_lstm", "dropout": 0.3, "lr": 10.0, "emsize": 32}
    config = spec.to_space().paper_config()
    assert config["nlayers"] == 2 and config["lr"] == 10.0 and config["train_tokens"] == 5000
    zaremba = spec.sample(optuna.trial.FixedTrial({"model": "zaremba", "dropout": 0.2}))
    assert zaremba == {"model": "zaremba", "dataset": "ptb", "train_tokens": 5000,
                       "preset": "small", "dropout": 0.2}


@pytest.mark.parametrize("label", sorted(BAD))
def test_bad_file_fails_on_one_line_naming_the_field(label, tmp_path):
    old, new, expected = BAD[label]
    assert old in BASE, label
    path = tmp_path / "space.yaml"
    path.write_text(BASE.replace(old, new))
    with pytest.raises(SpaceFileError, match=f"^{re.escape(str(path))}: .*{re.escape(expected)}"
                       ) as err:
        load_space_file(path)
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def _all_problems(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceFileError, match=rf"^{re.escape(str(path))}: \d+ problems:\n") as err:
        load_space_file(path)
    head, *lines = str(err.value).split("\n")
    assert head == f"{path}: {len(lines)} problems:"
    assert all(line.startswith("  ") for line in lines), lines
    return [line.strip() for line in lines]


def test_a_files_mistakes_in_different_fields_come_all_at_once(tmp_path):
    """Read: every field's mistake together (a misspelt key is not also 'missing')."""
    text = (BASE.replace("max_epochs: 2", "max_epoch: ten\ngrace_period: one")
            .replace("{type: float, low: 0.1, high: 0.5}", "{type: flaot, low: 0.1}")
            .replace("{type: int, low: 16, high: 64, step: 16}", "{type: int, low: 16}")
            .replace("{type: float, low: 1.0, high: 20.0, log: true}", "{type: float}"))
    problems = _all_problems(text, tmp_path)
    assert [p.split(":")[0] for p in problems] == [  # a condition's own two: one line each
        "max_epoch", "grace_period", "parameters.dropout.type",
        "conditions[0].parameters.lr.low", "conditions[0].parameters.emsize.high"], problems
    assert "did you mean 'max_epochs'?" in problems[0]
    assert "did you mean 'float'?" in problems[2]
    assert problems[3].endswith(": missing") and problems[4].endswith(": missing")
    # checked: every field that can be judged on its own, together
    text = (BASE.replace("dataset: ptb", "dataset: ptbb").replace("max_epochs: 2",
                                                                  "max_epochs: 0")
            .replace("{type: float, low: 0.1, high: 0.5}", "{type: float, low: 0.5, high: 0.1}")
            .replace("fixed: {train_tokens: 5000}", "fixed: {train_token: 5000}"))
    problems = _all_problems(text, tmp_path)
    assert [p.split(":")[0] for p in problems] == [
        "dataset", "max_epochs", "parameters.dropout.high", "fixed.train_token"], problems
    assert "did you mean 'ptb'?" in problems[0]
    assert "did you mean 'train_tokens'?" in problems[3]
    # a misspelt parameter: its name's problem, not a condition's that names the right one
    text = GOOD.replace("  tie: {type: categorical, choices: [a, b]}\n",
                        "  optimiser: {type: categorical, choices: [ntasgd, sgd_schedule]}\n")
    text = text.replace("  - when: {model: [zaremba]}", "  - when: {optimizer: ntasgd}")
    path = tmp_path / "one.yaml"
    path.write_text(text.replace("max_epochs: 2", "max_epochs: 0"))
    with pytest.raises(SpaceFileError) as err:
        load_space_file(path)
    assert "parameters.optimiser: not a config field" in str(err.value)
    assert "conditions[1]" not in str(err.value)


def test_a_categorical_that_is_not_a_config_field_is_refused():
    with pytest.raises(SpaceFileError, match=r"parameters\.tie: not a config field"):
        parse_space(GOOD, "g.yaml")


def test_missing_file_and_bad_command_lines_fail_on_one_line(tmp_path, capsys):
    assert main(["--space-file", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'nope.yaml'}: cannot read it: "
                                       "No such file or directory\n")
    assert main(["--show-space", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown space 'nope'")
    assert main(["--show-space", "smok"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: unknown space 'smok' (did you mean 'smoke'?); known spaces: ")
    with pytest.raises(SystemExit, match=r"^2$") as exit_:
        build_parser().parse_args(["--space", "awd_ptb", "--space-file", "s.yaml"])
    assert exit_.value.code == 2
    assert "not allowed with argument --space" in capsys.readouterr().err


def test_a_builtin_name_is_only_for_the_builtin_space(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(show_space("smoke").replace("max_epochs: 3", "max_epochs: 4"))
    args = build_parser().parse_args(["--space-file", str(path)])
    with pytest.raises(OptionError, match="a built-in space's name"):
        options_from_args(args)


# --- a file space in a search: options, resume, pickling -----------------------------------------
def _file_options(path: Path, *extra: str) -> Any:
    return options_from_args(build_parser().parse_args(["--space-file", str(path), *extra]))


def test_space_file_options_name_the_search_and_keep_its_digest(tmp_path, monkeypatch):
    path = tmp_path / "space.yaml"
    path.write_text(BASE)
    monkeypatch.chdir(tmp_path)
    opts = _file_options(Path("space.yaml"), "--storage", str(tmp_path / "rr"))
    assert (opts.space, opts.space_file) == ("tiny", str(path.resolve()))
    assert opts.experiment_name == "tiny" and opts.epochs == 2 and opts.grace == 1
    assert opts.space_spec.define == load_space_file(path).to_space().define
    assert len(opts.space_sha256) == 64
    # the same file with other comments and layout is the same space
    path.write_text("# a comment\n" + BASE.replace("dataset: ptb", "dataset:   ptb  # PTB"))
    assert _file_options(path).space_sha256 == opts.space_sha256


def test_resume_refuses_a_changed_space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(BASE)
    saved = _file_options(path)  # what the search's state file keeps
    assert resume_conflicts(_file_options(path, "--resume"), saved) == []
    path.write_text(BASE.replace("high: 20.0", "high: 30.0"))
    changed = _file_options(path, "--resume")
    assert [c.split(" ")[0] for c in resume_conflicts(changed, saved)] == ["--space-file:"]
    # re-read from the saved path with the saved digest (what a resume without the flag does)
    again = replace(changed, space_sha256=saved.space_sha256)
    with pytest.raises(OptionError, match="the space changed since the search started"):
        again.validate()


def test_file_space_and_its_searcher_pickle(tmp_path):
    """Tune pickles the searcher with its space on every snapshot and restores it on --resume;
    the file is not read again for that."""
    path = tmp_path / "space.yaml"
    path.write_text(BASE)
    space = _file_options(path).space_spec
    copy = pickle.loads(pickle.dumps(space))
    trial = optuna.trial.FixedTrial({"model": "awd_lstm", "dropout": 0.3, "lr": 3.0,
                                     "emsize": 32})
    assert copy.config(trial, epochs=2) == space.config(trial, epochs=2)
    searcher = make_searcher(space, {"epochs": 2}, seed=0, study_name="f",
                             concurrency=1).searcher
    searcher.save(str(tmp_path / "searcher.pkl"))
    path.unlink()
    restored = AWDOptunaSearch()
    restored.restore(str(tmp_path / "searcher.pkl"))
    first = restored.suggest("t0")
    assert {k: first[k] for k in space.warm_start} == space.warm_start
    assert first["epochs"] == 2 and first["train_tokens"] == 5000


def test_set_model_in_a_mixed_space_samples_that_models_own_parameters():
    """``--set model=awd_lstm`` on the smoke space: never Zaremba's preset and parameters
    under an AWD-LSTM (a run that cannot be built)."""
    from awd.config import from_flat

    space = get_space("smoke")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        config = space.config(study.ask(), model="awd_lstm", epochs=2)
        assert config["model"] == "awd_lstm" and "emsize" in config and "init_range" not in config
        from_flat(config)
