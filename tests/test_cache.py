"""The continuous cache and model averaging (awd.cache, awd.ensemble, awd.posthoc) on tiny
trained models: the cache's math against a per-token implementation written here, λ = 0 and a
one-member ensemble against the plain evaluation, greedy selection, the ensemble file, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import pattern_text, write_corpus

from awd.cache import CacheParams, SplitOutputs, cache_prob, cached_loss
from awd.data import load_corpus
from awd.ensemble import (
    Ensemble,
    greedy_selection,
    is_ensemble_file,
    load_ensemble,
    mixture_logprob,
    write_ensemble,
)
from awd.errors import CheckpointError, ConfigError
from awd.posthoc import ensemble_outputs, model_outputs, outputs_of, score
from awd.trainer import Trainer, load_exported, perplexity

TRAIN = {"batch_size": 8, "eval_batch_size": 1, "test_batch_size": 1, "bptt": 15,
         "device": "cpu", "seed": 3}
AWD = {"model": "awd_lstm", "emsize": 24, "nhid": 32, "nlayers": 2, "dropout": 0.1,
       "dropouth": 0.1, "dropouti": 0.1, "dropoute": 0.05, "wdrop": 0.1, "lr": 30.0}
ZAREMBA = {"model": "zaremba", "preset": "small", "nhid": 24, "nlayers": 2, "dropout": 0.0,
           "lr": 0.3, "optimizer": "ntasgd"}


def bursty_text(blocks: int) -> str:
    """Each block repeats a few sentences with rare words: what a cache should catch."""
    lines = []
    for b in range(blocks):
        rare = [f"name{b}x{i}" for i in range(3)]
        for r in range(4):
            lines.append(f" the cat sat on {rare[r % 3]} mat \n")
            lines.append(f" a dog ran in {rare[(r + 1) % 3]} park \n")
    return "".join(lines)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bursty")
    return load_corpus(write_corpus(folder, pattern_text(20) + bursty_text(12), bursty_text(6),
                                    bursty_text(6)), use_cache=False)


def trained(corpus, overrides: dict, epochs: int = 2, seed: int = 3, tmp_path=None):
    trainer = Trainer({**TRAIN, **overrides, "epochs": epochs, "seed": seed}, corpus)
    trainer.fit()
    path = trainer.export_best(tmp_path / f"{overrides['model']}-{seed}.pt")
    return trainer, load_exported(path)


@pytest.fixture(scope="module")
def awd_model(corpus, tmp_path_factory):
    return trained(corpus, AWD, tmp_path=tmp_path_factory.mktemp("awd"))


@pytest.fixture(scope="module")
def zaremba_files(corpus, tmp_path_factory):
    """Two exports of Zaremba LSTMs trained with different seeds."""
    d = tmp_path_factory.mktemp("zaremba")
    for s in (1, 2):
        trained(corpus, ZAREMBA, epochs=3, seed=s, tmp_path=d)
    return [d / f"zaremba-{s}.pt" for s in (1, 2)]


@pytest.fixture(scope="module")
def zaremba_models(zaremba_files):
    return [load_exported(p) for p in zaremba_files]


def plain_cached_loss(outputs: SplitOutputs, window: int, theta: float, lam: float) -> float:
    """The cache as Grave et al. write it, one position at a time."""
    h, y = outputs.hidden.double(), outputs.targets.tolist()
    total = 0.0
    for t in range(len(y)):
        p = math.exp(float(outputs.logprob[t]))
        past = range(max(0, t - window), t)
        if past:
            scores = [theta * float(h[t] @ h[i]) for i in past]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            p_cache = sum(w for w, i in zip(weights, past, strict=True) if y[i] == y[t]) / sum(
                weights)
            p = (1 - lam) * p + lam * p_cache
        total -= math.log(p)
    return total / len(y)


def test_outputs_at_lambda_zero_are_the_plain_evaluation(awd_model, corpus):
    trainer, exported = awd_model
    outputs = model_outputs(exported, corpus, device="cpu")
    final = trainer.final_metrics()  # test at batch 1, the same windows
    assert score(outputs["test"]).ppl == pytest.approx(final["test_ppl"], rel=1e-6)
    trainer.model.load_state_dict(exported.state_dict)
    assert outputs["valid"].loss() == pytest.approx(trainer.evaluate("valid"), rel=1e-6)
    lam0 = score(outputs["test"], CacheParams(50, 1.0, 0.0))
    assert lam0.cache_ppl == pytest.approx(final["test_ppl"], rel=1e-6)
    assert outputs["test"].hidden.shape == (outputs["test"].tokens, 24)  # the last layer's


@pytest.mark.parametrize("window,theta,lam", [(7, 0.5, 0.3), (40, 2.0, 0.1), (1, 0.0, 0.9),
                                              (2000, 1.0, 0.25)])
def test_cache_matches_a_per_token_implementation(awd_model, corpus, window, theta, lam):
    outputs = model_outputs(awd_model[1], corpus, ["test"], device="cpu")["test"]
    expected = plain_cached_loss(outputs, window, theta, lam)
    got = cached_loss(outputs, CacheParams(window, theta, lam))
    assert perplexity(got) == pytest.approx(perplexity(expected), rel=1e-5)


def test_blocks_do_not_change_the_result(awd_model, corpus):
    outputs = model_outputs(awd_model[1], corpus, ["test"], device="cpu")["test"]
    whole = cache_prob(outputs.hidden, outputs.targets, 30, 1.5, chunk=10_000)
    for chunk in (1, 7, 64):
        assert torch.allclose(cache_prob(outputs.hidden, outputs.targets, 30, 1.5, chunk),
                              whole, rtol=1e-9, atol=1e-12)
    assert whole[0] == 0  # the first word has no cache


def test_the_cache_helps_on_bursty_text(awd_model, corpus):
    """Rare names repeat within a block: the cache predicts them, the weak model cannot."""
    outputs = model_outputs(awd_model[1], corpus, ["test"], device="cpu")["test"]
    plain = score(outputs).ppl
    assert score(outputs, CacheParams(100, 0.0, 0.3)).cache_ppl < 0.9 * plain


def test_one_member_ensemble_is_the_model(zaremba_models, corpus, tmp_path):
    model = zaremba_models[0]
    plain = model_outputs(model, corpus, device="cpu")
    one = Ensemble([model], [1.0], ["a"])
    assert load_ensemble(write_ensemble(one, tmp_path / "one.pt")).weights == [1.0]
    alone = outputs_of(one, corpus, device="cpu")
    for split in ("valid", "test"):
        assert alone[split].loss() == pytest.approx(plain[split].loss(), rel=1e-12)


def test_two_member_average_and_its_file(zaremba_models, corpus, tmp_path):
    a, b = zaremba_models
    oa, ob = (model_outputs(m, corpus, device="cpu") for m in (a, b))
    mixed = ensemble_outputs([oa["test"], ob["test"]], [0.25, 0.75], pointer=1)
    expected = torch.log(0.25 * oa["test"].logprob.exp() + 0.75 * ob["test"].logprob.exp())
    assert torch.allclose(mixed.logprob, expected, rtol=1e-12)
    assert mixed.hidden is ob["test"].hidden

    ens = Ensemble([a, b], [0.25, 0.75], ["a", "b"], CacheParams(20, 0.5, 0.2))
    path = write_ensemble(ens, tmp_path / "ens.pt")
    assert is_ensemble_file(path) and not is_ensemble_file(tmp_path / "nothing.pt")
    back = load_ensemble(path)
    assert back.weights == [0.25, 0.75] and back.names == ["a", "b"]
    assert back.cache == CacheParams(20, 0.5, 0.2) and back.pointer_member == 1
    again = outputs_of(back, corpus, ["test"], device="cpu")["test"]
    assert torch.equal(again.logprob, mixed.logprob)


def test_greedy_selection_known_answer():
    # three candidates over four tokens: c0 is good on tokens 0-1, c1 on 2-3, c2 is mediocre
    p = torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.9, 0.9], [0.4, 0.4, 0.4, 0.4]])
    sel = greedy_selection(p.log(), 4)
    # step 1: c2 (loss 0.916 < 1.204); step 2: adding c0 or c1 ties, the first is kept: c0;
    # step 3: c1 (the three together); step 4 is worse than step 3 for every pick
    assert sel.losses[0] == pytest.approx(-math.log(0.4))
    assert sel.best_step == 2
    assert sel.weights == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert sel.losses[sel.best_step] == pytest.approx(-math.log(1.4 / 3))
    assert sel.members == [0, 1, 2] and sel.picks[:3] == [2, 0, 1]
    # the chosen weights give the loss selection says
    got = -mixture_logprob(p.log(), sel.weights).mean()
    assert float(got) == pytest.approx(sel.losses[sel.best_step])


def test_greedy_selection_picks_a_candidate_twice_when_that_is_best():
    # A is right on two tokens of three, B on the third: 2 x A + 1 x B beats A + B and A alone
    p = torch.tensor([[0.9, 0.9, 0.05], [0.05, 0.05, 0.9]])
    sel = greedy_selection(p.log(), 3)
    assert sel.picks == [0, 1, 0] and sel.best_step == 2
    assert sel.weights == pytest.approx([2 / 3, 1 / 3])
    expected = -torch.log(torch.tensor([1.85, 1.85, 1.0], dtype=torch.float64) / 3).mean()
    assert sel.losses[2] == pytest.approx(float(expected))
    assert sel.losses[2] < sel.losses[1] < sel.losses[0]


def test_greedy_selection_with_replacement_repeats_the_best():
    p = torch.tensor([[0.5, 0.5, 0.5], [0.01, 0.01, 0.02]])
    sel = greedy_selection(p.log(), 3)
    assert sel.weights == [1.0, 0.0] and sel.best_step == 0  # adding anything only hurts


@pytest.mark.parametrize("text,message", [
    ("0,1,0.1", "window"), ("-5,1,0.1", "window"), ("2.5,1,0.1", "whole number"),
    ("100,-1,0.1", "theta"), ("100,nan,0.1", "theta"), ("100,1,1.5", "lambda"),
    ("100,1,-0.1", "lambda"), ("100,1,nan", "lambda"), ("100,1", "W,theta,lambda"),
    ("a,b,c", "three numbers"), ("100,inf,0.1", "theta"), ("100,1e5,0.1", "theta")])
def test_bad_cache_values_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        CacheParams.parse(text)


def test_ensemble_refuses_other_vocabularies_and_slices(zaremba_models, awd_model, tmp_path):
    a = zaremba_models[0]
    other = type(a)(a.run, [*a.vocab[:-1], "zzz"], a.state_dict)
    with pytest.raises(ConfigError, match="another vocabulary"):
        Ensemble([a, other], [0.5, 0.5], ["a", "other"])
    from dataclasses import replace
    sliced = type(a)(replace(a.run, train=replace(a.run.train, eval_tokens=100)), a.vocab,
                     a.state_dict)
    with pytest.raises(ConfigError, match="share the dataset"):
        Ensemble([a, sliced], [0.5, 0.5], ["a", "sliced"])
    with pytest.raises(ConfigError, match="weights"):
        mixture_logprob(torch.zeros(2, 3), [0.0, 0.0])


def test_a_single_model_file_is_not_an_ensemble(zaremba_models, tmp_path, corpus):
    trainer = Trainer({**TRAIN, **ZAREMBA, "epochs": 1}, corpus)
    path = trainer.export_best(tmp_path / "single.pt")
    assert not is_ensemble_file(path)
    with pytest.raises(CheckpointError, match="not an ensemble written by awdsearch"):
        load_ensemble(path)


# --- the command line: python -m awd.evaluate --cache ---------------------------------------
def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    from awd import evaluate

    code = evaluate.main(["--quiet", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_evaluate_with_cache_prints_both_and_matches_the_api(zaremba_models, zaremba_files,
                                                            corpus, capsys, monkeypatch):
    import json

    import awd.evaluate as cli
    model = zaremba_models[0]
    monkeypatch.setattr(cli, "load_corpus", lambda data: corpus)
    code, out, err = _cli(["--model-uri", str(zaremba_files[0]), "--cache", "30,0.5,0.2"],
                          capsys)
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    expected = model_outputs(model, corpus, device="cpu")
    assert record["test_ppl"] == pytest.approx(score(expected["test"]).ppl, rel=1e-12)
    assert record["cache_test_ppl"] == pytest.approx(
        score(expected["test"], CacheParams(30, 0.5, 0.2)).cache_ppl, rel=1e-12)
    assert CacheParams.parse(record["cache"]) == CacheParams(30, 0.5, 0.2)


@pytest.mark.parametrize("args,message", [
    (["--cache", "0,1,0.1"], "window"),
    (["--cache", "100,-1,0.1"], "theta"),
    (["--cache", "100,1,2"], "lambda"),
    (["--cache", "100,1,nan"], "lambda"),
    (["--cache", "tuned"], "no tuned cache values are stored with this model"),
    (["--cache", "100,1,0.1", "--no-eval", "--generate", "3"], "--cache with --no-eval"),
])
def test_bad_cache_input_is_one_line_and_writes_nothing(args, message, zaremba_files, corpus,
                                                        capsys, monkeypatch):
    import awd.evaluate as cli
    monkeypatch.setattr(cli, "load_corpus", lambda data: corpus)
    folder = zaremba_files[0].parent
    before = sorted(folder.iterdir())
    code, _, err = _cli(["--model-uri", str(zaremba_files[0]), *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(folder.iterdir()) == before


def test_an_ensemble_file_evaluates_and_refuses_to_sample(zaremba_models, corpus, tmp_path,
                                                         capsys, monkeypatch):
    import json

    import awd.evaluate as cli
    monkeypatch.setattr(cli, "load_corpus", lambda data: corpus)
    a, b = zaremba_models
    path = write_ensemble(Ensemble([a, b], [0.5, 0.5], ["a", "b"], CacheParams(20, 0.5, 0.2)),
                          tmp_path / "ens.pt")
    code, out, err = _cli(["--model-uri", str(path), "--cache", "tuned"], capsys)
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert record["cache"] == CacheParams(20, 0.5, 0.2).as_text()
    assert "ensemble of 2" in out
    code, _, err = _cli(["--model-uri", str(path), "--generate", "5"], capsys)
    assert code == 2 and "not an ensemble" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    code, _, err = _cli(["--model-uri", str(junk)], capsys)
    assert code == 2 and "not a model exported by awdsearch" in err


def test_greedy_selection_keeps_the_first_of_candidates_equal_up_to_rounding():
    """Two candidates with the same tokens' probabilities in another order have the same mean
    loss, up to the summation order's rounding (which differs between CPUs): the first is
    picked, on any machine."""
    p = torch.tensor([[0.3, 0.7, 0.1, 0.9, 0.2], [0.9, 0.2, 0.7, 0.1, 0.3]], dtype=torch.float64)
    for order in ([0, 1], [1, 0]):
        sel = greedy_selection(p[order].log(), 1)
        assert sel.picks == [0]


def test_a_ctrl_c_while_optuna_records_a_trial_stays_a_ctrl_c(monkeypatch):
    """Optuna's `_run_trial` turns a KeyboardInterrupt that lands in its tell into an
    UnboundLocalError (seen in CI: the cache stage then 'failed' and the driver exited 0, not
    130); `search.stages.cache.optimize` raises the interrupt again."""
    import optuna
    import optuna.study._optimize as optuna_optimize

    from search.errors import Terminated
    from search.stages.cache import optimize

    def interrupted(**kwargs):
        raise Terminated

    monkeypatch.setattr(optuna_optimize, "_tell_with_warning", interrupted)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    with pytest.raises(UnboundLocalError):  # what Optuna itself does with it
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(Terminated):
        optimize(study, lambda t: t.suggest_float("x", 0, 1), 1)
