"""Bad configuration values are refused at once, with one line, before any data or training.

Examples: each bad value the issue lists, through ``from_flat`` and through ``awd.train``.
Properties (hypothesis): every flat config or CLI argument list is either refused with a
one-line `ConfigError` or trains a step; no other exception escapes.
"""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch
from conftest import pattern_text, write_corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import awd.train
import awd.trainer
from awd.config import (
    MAX_LAYERS,
    MAX_PARAMS,
    MAX_SEED,
    MAX_WIDTH,
    MODELS,
    AWDLSTMConfig,
    TrainConfig,
    ZarembaConfig,
    from_flat,
)
from awd.data import load_corpus, train_windows
from awd.errors import ConfigError, UserError
from awd.models import count_parameters
from awd.trainer import Trainer

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A corpus long enough for batch sizes up to 4 and bptt up to 12 (train 1,120 tokens)."""
    folder = tmp_path_factory.mktemp("tiny")
    return load_corpus(write_corpus(folder, pattern_text(20), pattern_text(2), pattern_text(2)),
                       use_cache=False)


@pytest.fixture
def no_data(monkeypatch):
    """``awd.train`` may not load any data: a refused value must fail before that."""
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("data loaded before the config was checked")

    monkeypatch.setattr("awd.data.corpus.load_corpus", refuse)  # awd.train imports it late


def assert_one_line_config_error(flat: dict) -> str:
    with pytest.raises(ConfigError, match=r"\A[^\n]+\Z") as info:  # one line, not empty
        from_flat(flat)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# --- the examples --------------------------------------------------------------------

BAD = {
    # name: (flat overrides, word the message names)
    "negative_seed": ({"model": "awd_lstm", "seed": -1}, "seed"),
    "seed_over_32_bits": ({"model": "awd_lstm", "seed": MAX_SEED + 1}, "seed"),
    "absurd_emsize": ({"model": "awd_lstm", "emsize": 1_000_000_000}, "emsize"),
    "absurd_nhid": ({"model": "zaremba", "nhid": 10**12}, "nhid"),
    "absurd_layers": ({"model": "awd_gru", "nlayers": 10_000}, "nlayers"),
    "too_many_params": ({"model": "awd_lstm", "nhid": MAX_WIDTH, "nlayers": 3}, "nhid"),
    "nan_lr": ({"model": "awd_lstm", "lr": math.nan}, "lr"),
    "inf_lr": ({"model": "awd_lstm", "lr": "inf"}, "lr"),
    "nan_wdecay": ({"model": "awd_lstm", "wdecay": "nan"}, "wdecay"),
    "inf_alpha": ({"model": "awd_lstm", "alpha": math.inf}, "alpha"),
    "nan_beta": ({"model": "awd_lstm", "beta": "NaN"}, "beta"),
    "inf_clip": ({"model": "awd_lstm", "clip": "inf"}, "clip"),
    "nan_dropout": ({"model": "awd_lstm", "dropouti": "nan"}, "dropouti"),
    "nan_init_range": ({"model": "zaremba", "init_range": "nan"}, "init_range"),
    "preset_on_awd": ({"model": "awd_lstm", "preset": "small"}, "preset"),
    "negative_decay_start": ({"model": "zaremba", "decay_start": -5}, "decay_start"),
    "lr_decay_below_1": ({"model": "zaremba", "lr_decay": 0.5}, "lr_decay"),
    "min_seq_len_over_bptt": ({"model": "awd_lstm", "bptt": 10, "min_seq_len": 11},
                              "min_seq_len"),
    "max_seq_len_under_min": ({"model": "awd_lstm", "max_seq_len": 3}, "max_seq_len"),
    "finetune_with_sgd_schedule": ({"model": "zaremba", "finetune_epochs": 3}, "finetune_epochs"),
    "nonmono_0": ({"model": "awd_lstm", "nonmono": 0}, "nonmono"),
    "malformed_device": ({"model": "awd_lstm", "device": "cudax"}, "device"),
    "empty_dataset": ({"model": "awd_lstm", "dataset": ""}, "dataset"),
    "huge_int_for_float": ({"model": "awd_lstm", "lr": 10**400}, "lr"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_value_is_a_one_line_config_error_naming_the_field(case):
    flat, word = BAD[case]
    assert word in assert_one_line_config_error(flat)


@pytest.mark.parametrize("case", list(BAD))
def test_awd_train_refuses_bad_value_with_one_error_line_before_loading_data(
        case, no_data, capsys):
    flat, word = BAD[case]
    argv = [f"--{'data' if k == 'dataset' else k}={v}" for k, v in flat.items()]
    assert awd.train.main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and word in err


@pytest.mark.parametrize("device", ["cuda:99", *([] if torch.cuda.is_available() else ["cuda"])])
def test_missing_cuda_device_is_one_error_line_before_loading_data(device, no_data, capsys):
    assert awd.train.main(["--model", "awd_lstm", "--device", device, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device") and len(err.strip().splitlines()) == 1


def test_save_into_a_missing_folder_fails_before_loading_data(tmp_path, no_data, capsys):
    target = tmp_path / "nowhere" / "run.pt"
    assert awd.train.main(["--model", "awd_lstm", "--save", str(target), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot save to") and "does not exist" in err


def test_min_seq_len_longer_than_the_data_is_refused_at_trainer_start(tiny):
    # 1,120 train tokens in 4 streams: 280 steps
    with pytest.raises(ConfigError, match="min_seq_len"):
        Trainer({"model": "awd_lstm", "emsize": 4, "nhid": 4, "nlayers": 1, "batch_size": 4,
                 "bptt": 400, "min_seq_len": 300, "device": "cpu"}, tiny)


def test_model_larger_than_device_memory_is_refused_before_allocating(tiny, monkeypatch):
    monkeypatch.setattr(awd.trainer, "device_memory", lambda device: 1 << 20)
    with pytest.raises(ConfigError, match="model too large"):
        Trainer({"model": "awd_lstm", "emsize": 256, "nhid": 256, "device": "cpu"}, tiny)


@pytest.mark.parametrize("flat", [
    {"model": "awd_lstm", "emsize": 6, "nhid": 5, "nlayers": 3},
    {"model": "awd_lstm", "emsize": 6, "nhid": 5, "nlayers": 1, "tie_weights": False},
    {"model": "awd_gru", "emsize": 3, "nhid": 7, "nlayers": 2, "tie_weights": False},
    {"model": "zaremba", "nhid": 9, "nlayers": 2},
])
def test_estimated_params_is_the_exact_parameter_count(flat, tiny):
    trainer = Trainer({**flat, "device": "cpu", "batch_size": 2, "bptt": 5}, tiny)
    assert trainer.run_config.arch.estimated_params(tiny.ntokens) == trainer.num_params
    assert count_parameters(trainer.model) == trainer.num_params


def test_bounds_are_far_above_the_published_models():
    assert MAX_WIDTH >= 1500 * 4 and MAX_LAYERS >= 3 * 4
    assert AWDLSTMConfig(emsize=1500, nhid=3000, nlayers=4).estimated_params(0) < MAX_PARAMS


# --- properties: from_flat -------------------------------------------------------------------

FIELDS = sorted({f.name for cls in (AWDLSTMConfig, ZarembaConfig, TrainConfig)
                 for f in fields(cls) if f.init})
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                      st.text(max_size=6), st.sampled_from(["nan", "inf", "-1", "1e400", "0.5"]))


@SETTINGS
@given(model=st.sampled_from([*MODELS, "gpt"]),
       overrides=st.dictionaries(st.sampled_from([*FIELDS, "preset", "bogus"]), ANY_VALUE,
                                 max_size=4))
def test_any_flat_config_is_valid_or_a_one_line_config_error(model, overrides):
    try:
        run = from_flat({"model": model, **overrides})
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert run.validate() is run and from_flat(run.to_flat()) == run


def _small_valid(draw: st.DrawFn) -> dict:
    """A small valid flat config: tiny sizes, batch sizes and windows the tiny corpus holds."""
    model = draw(st.sampled_from(MODELS))
    rate = st.floats(0.0, 0.9)
    optimizer = draw(st.sampled_from(["ntasgd", "sgd_schedule"]))
    bptt = draw(st.integers(2, 12))
    flat: dict = {"model": model, "device": "cpu", "epochs": 1, "optimizer": optimizer,
                  "batch_size": draw(st.integers(1, 4)), "eval_batch_size": draw(st.integers(1, 4)),
                  "test_batch_size": draw(st.integers(1, 4)), "bptt": bptt,
                  "min_seq_len": draw(st.integers(1, bptt)),
                  "variable_bptt": draw(st.booleans()), "lr": draw(st.floats(0.01, 30.0)),
                  "clip": draw(st.floats(0.01, 10.0)), "wdecay": draw(st.floats(0.0, 1e-3)),
                  "alpha": draw(st.floats(0.0, 3.0)), "beta": draw(st.floats(0.0, 3.0)),
                  "nonmono": draw(st.integers(1, 10)), "lr_decay": draw(st.floats(1.0, 4.0)),
                  "decay_start": draw(st.integers(0, 5)),
                  "loss_sum_over_time": draw(st.booleans()),
                  "finetune_epochs": draw(st.integers(0, 2)) if optimizer == "ntasgd" else 0,
                  "seed": draw(st.integers(0, MAX_SEED))}
    if model == "zaremba":
        flat.update(preset=draw(st.sampled_from(["", "small", "medium", "large"])),
                    nhid=draw(st.integers(1, 12)), nlayers=draw(st.integers(1, 2)),
                    dropout=draw(rate), init_range=draw(st.floats(0.01, 0.5)))
    else:
        flat.update(emsize=draw(st.integers(1, 12)), nhid=draw(st.integers(1, 12)),
                    nlayers=draw(st.integers(1, 3)), tie_weights=draw(st.booleans()),
                    **{k: draw(rate) for k in ("dropout", "dropouth", "dropouti", "dropoute",
                                               "wdrop")})
    return flat


small_valid = st.composite(_small_valid)

# One bad value per field, each of a kind the validation must catch.
BAD_VALUES: dict[str, st.SearchStrategy] = {
    **{k: st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0),
                    st.sampled_from([math.nan, "nan", "inf"]))
       for k in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop")},
    **{k: st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_WIDTH + 1),
                    st.sampled_from(["x", 2.5, "1e400"]))
       for k in ("emsize", "nhid")},
    "nlayers": st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_LAYERS + 1)),
    **{k: st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf, "inf"]))
       for k in ("lr", "clip")},
    **{k: st.one_of(st.floats(max_value=-1e-9), st.sampled_from([math.nan, math.inf, "-inf"]))
       for k in ("wdecay", "alpha", "beta")},
    **{k: st.integers(max_value=0)
       for k in ("epochs", "batch_size", "eval_batch_size", "test_batch_size", "bptt",
                 "nonmono")},
    "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_SEED + 1)),
    "decay_start": st.integers(max_value=-1),
    "lr_decay": st.one_of(st.floats(max_value=0.999), st.just(math.nan)),
    "min_seq_len": st.one_of(st.integers(max_value=0), st.integers(min_value=13)),
    "optimizer": st.text(max_size=8).filter(lambda s: s not in ("ntasgd", "sgd_schedule")),
    "device": st.sampled_from(["gpu", "cuda:x", "", "tpu", "cuda:-1", "CPU"]),
    "bogus_field": st.integers(),
}


@st.composite
def one_bad_value(draw: st.DrawFn, names: tuple[str, ...] = tuple(sorted(BAD_VALUES))) -> dict:
    flat = draw(small_valid())
    name = draw(st.sampled_from(names))
    if name == "emsize" and flat["model"] == "zaremba":
        name = "nhid"
    flat[name] = draw(BAD_VALUES[name])
    return flat


@SETTINGS
@given(flat=one_bad_value())
def test_every_bad_value_is_a_one_line_config_error(flat):
    assert_one_line_config_error(flat)


@settings(max_examples=12, deadline=None)
@given(flat=small_valid())
def test_every_small_valid_config_trains_a_step(flat, tiny):
    trainer = Trainer(from_flat(flat), tiny)
    trainer.model.train()
    hidden = trainer.model.init_hidden(trainer.cfg.batch_size)
    rng = trainer.window_rng if trainer.cfg.variable_bptt else None
    _, window = next(iter(train_windows(trainer.train_data, trainer.cfg.bptt, rng,
                                        trainer.cfg.min_seq_len)))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    _, loss = trainer.train_step(window, hidden, trainer.epoch_lr())
    assert loss.dim() == 0
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters(),
                                                     strict=True))


# --- properties: the awd.train command line --------------------------------------------------


def _argv(flat: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in flat.items()]


@SETTINGS  # (an unknown flag is argparse's own usage error, not a value's)
@given(flat=one_bad_value(tuple(sorted(set(BAD_VALUES) - {"bogus_field"}))))
def test_awd_train_refuses_every_bad_value_with_one_line(flat, no_data, capsys):
    capsys.readouterr()
    assert awd.train.main([*_argv(flat), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Train 280 tokens, valid and test 56 each: an epoch and a test pass take milliseconds."""
    folder = tmp_path_factory.mktemp("tiny_cli")
    return write_corpus(folder, pattern_text(5), pattern_text(1), pattern_text(1))


@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flat=small_valid())
def test_awd_train_runs_every_small_valid_config(flat, tiny_dir, capsys):
    capsys.readouterr()
    flat = {**flat, "finetune_epochs": 0, "lr": min(flat["lr"], 1.0)}
    code = awd.train.main(["--data", str(tiny_dir), *_argv(flat), "--quiet"])
    out, err = capsys.readouterr()
    if code == 2:  # a valid config may still diverge on a step: that is its one-line error
        assert err.startswith("error: training diverged"), err
    else:
        assert code == 0 and "final |" in out, err


def test_user_errors_of_awd_are_config_errors_here():
    assert issubclass(ConfigError, UserError)
