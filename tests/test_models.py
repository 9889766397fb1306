"""Model sizes, tying, initialisation, forward shapes, config validation and paper presets."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from awd.config import (
    AWDGRUConfig,
    AWDLSTMConfig,
    RunConfig,
    TrainConfig,
    ZarembaConfig,
    from_flat,
    preset,
)
from awd.errors import ConfigError
from awd.models import AWDModel, ZarembaModel, build_model, count_parameters

PTB_V, WT2_V = 10_000, 33_278


def rnn_layer_params(cell: str, n_in: int, n_hid: int) -> int:
    gates = 4 if cell == "lstm" else 3
    return gates * n_hid * (n_in + n_hid) + 2 * gates * n_hid  # W_ih, W_hh, two biases


def awd_formula(cell: str, vocab: int, emsize: int, nhid: int, nlayers: int) -> int:
    sizes = [emsize] + [nhid] * (nlayers - 1) + [emsize]
    rnns = sum(rnn_layer_params(cell, sizes[i], sizes[i + 1]) for i in range(nlayers))
    return vocab * emsize + rnns + vocab  # tied embedding/decoder weight + decoder bias


def zaremba_formula(vocab: int, nhid: int, nlayers: int) -> int:
    return vocab * nhid + nlayers * rnn_layer_params("lstm", nhid, nhid) + nhid * vocab + vocab


def meta_params(model: str, dataset: str, vocab: int, size: str = "") -> int:
    """Count parameters of the full-size model without allocating its memory."""
    with torch.device("meta"):
        return count_parameters(build_model(preset(model, dataset, size), vocab))


@pytest.mark.parametrize(("model", "dataset", "vocab", "cell", "known"), [
    ("awd_lstm", "ptb", PTB_V, "lstm", 24_221_600),
    ("awd_lstm", "wikitext-2", WT2_V, "lstm", 33_556_078),
    ("awd_gru", "ptb", PTB_V, "gru", 19_168_700),
])
def test_awd_parameter_count_matches_formula_and_paper(model, dataset, vocab, cell, known):
    assert awd_formula(cell, vocab, 400, 1150, 3) == known
    assert meta_params(model, dataset, vocab) == known


@pytest.mark.parametrize(("size", "nhid", "known"), [
    ("small", 200, 4_653_200), ("medium", 650, 19_780_400), ("large", 1500, 66_034_000),
])
def test_zaremba_parameter_count_matches_formula_and_paper(size, nhid, known):
    assert zaremba_formula(PTB_V, nhid, 2) == known
    assert meta_params("zaremba", "ptb", PTB_V, size) == known


@pytest.mark.parametrize("cell_cfg", [AWDLSTMConfig, AWDGRUConfig])
def test_tiny_awd_parameter_count_matches_formula(cell_cfg):
    cfg = cell_cfg(emsize=16, nhid=24, nlayers=2)
    model = AWDModel(cfg, 50)
    assert count_parameters(model) == awd_formula(cfg.cell, 50, 16, 24, 2)


def test_untied_awd_has_its_own_decoder_and_a_full_size_last_layer():
    model = AWDModel(AWDLSTMConfig(emsize=16, nhid=24, nlayers=2, tie_weights=False), 50)
    assert model.decoder.weight is not model.encoder.weight
    assert model.rnns[-1].rnn.hidden_size == 24
    rnns = rnn_layer_params("lstm", 16, 24) + rnn_layer_params("lstm", 24, 24)
    assert count_parameters(model) == 50 * 16 + rnns + 24 * 50 + 50


def test_awd_tied_weights_share_storage_and_decoder_bias_starts_at_zero():
    model = AWDModel(AWDLSTMConfig(emsize=16, nhid=32), 40)
    assert model.decoder.weight is model.encoder.weight
    assert model.decoder.weight.data_ptr() == model.encoder.weight.data_ptr()
    assert torch.equal(model.decoder.bias, torch.zeros(40))
    assert model.encoder.weight.abs().max() <= 0.1


@pytest.mark.parametrize("cell_cfg", [AWDLSTMConfig, AWDGRUConfig])
def test_awd_last_layer_outputs_emsize_and_forward_shapes(cell_cfg):
    torch.manual_seed(0)
    cfg = cell_cfg(emsize=16, nhid=32, nlayers=3)
    model = AWDModel(cfg, 40).train()
    assert [layer.rnn.hidden_size for layer in model.rnns] == [32, 32, 16]
    assert [layer.rnn.input_size for layer in model.rnns] == [16, 32, 32]
    words = torch.randint(0, 40, (7, 3))
    out = model(words, model.init_hidden(3))
    assert out.logits.shape == (7, 3, 40)
    assert out.raw_output.shape == out.dropped_output.shape == (7, 3, 16)
    assert len(out.hidden) == 3
    if cfg.cell == "lstm":
        assert [tuple(h[0].shape) for h in out.hidden] == [(1, 3, 32), (1, 3, 32), (1, 3, 16)]
    else:
        assert [tuple(h.shape) for h in out.hidden] == [(1, 3, 32), (1, 3, 32), (1, 3, 16)]


def test_awd_outputs_raw_and_dropped_last_layer_for_tar_and_ar():
    torch.manual_seed(1)
    model = AWDModel(AWDLSTMConfig(emsize=16, nhid=32, nlayers=2, dropout=0.5), 40).train()
    out = model(torch.randint(0, 40, (6, 4)), model.init_hidden(4))
    raw, dropped = out.raw_output, out.dropped_output
    assert (raw != 0).all()
    zero = dropped == 0
    assert zero.any() and (~zero).any()
    assert torch.equal(zero, zero[:1].expand_as(zero))  # locked: same units dropped at every t
    assert torch.allclose(dropped[~zero], 2 * raw[~zero])
    # the logits are computed from the dropped output
    assert torch.allclose(out.logits, model.decoder(dropped))


def test_awd_eval_forward_is_deterministic():
    model = AWDModel(AWDLSTMConfig(emsize=16, nhid=32), 40).eval()
    words = torch.randint(0, 40, (6, 2))
    a = model(words, model.init_hidden(2))
    b = model(words, model.init_hidden(2))
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.raw_output, a.dropped_output)  # no dropout at evaluation


def test_zaremba_parameters_start_within_init_range():
    torch.manual_seed(0)
    cfg = ZarembaConfig(nhid=32, init_range=0.05)
    model = ZarembaModel(cfg, 60)
    for name, p in model.named_parameters():
        assert p.abs().max().item() <= 0.05, name
        assert p.abs().max().item() > 0.04, f"{name} not spread over the range"
    assert model.decoder.weight is not model.encoder.weight  # untied


def test_zaremba_forward_shapes_and_hidden():
    model = ZarembaModel(ZarembaConfig(nhid=24, nlayers=2), 30)
    hidden = model.init_hidden(4)
    assert hidden[0].shape == hidden[1].shape == (2, 4, 24)
    out = model(torch.randint(0, 30, (5, 4)), hidden)
    assert out.logits.shape == (5, 4, 30)
    assert out.hidden[0].shape == (2, 4, 24)


def test_build_model_picks_the_class_from_the_config():
    awd = from_flat({"model": "awd_gru", "emsize": 8, "nhid": 16})
    zar = from_flat({"model": "zaremba", "nhid": 16})
    assert isinstance(build_model(awd, 20), AWDModel)
    assert isinstance(build_model(awd, 20).rnns[0].rnn, torch.nn.GRU)
    assert isinstance(build_model(zar, 20), ZarembaModel)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(("flat", "field"), [
    ({"model": "awd_lstm", "dropout": 1.0}, "dropout"),
    ({"model": "awd_lstm", "dropout": -0.1}, "dropout"),
    ({"model": "awd_gru", "wdrop": 1.0}, "wdrop"),
    ({"model": "zaremba", "dropout": 1.0}, "dropout"),
    ({"model": "awd_lstm", "emsize": 0}, "emsize"),
    ({"model": "zaremba", "nhid": 0}, "nhid"),
    ({"model": "awd_lstm", "lr": 0}, "lr"),
    ({"model": "awd_lstm", "optimizer": "adam"}, "optimizer"),
    ({"model": "awd_lstm", "device": "tpu"}, "device"),
    ({"model": "transformer"}, "model"),
    ({"dropout": 0.1}, "model"),
    ({"model": "awd_lstm", "dropoutz": 0.1}, "dropoutz"),
    ({"model": "zaremba", "emsize": 10}, "emsize"),  # AWD field on Zaremba
    ({"model": "awd_lstm", "emsize": "abc"}, "emsize"),
    ({"model": "awd_lstm", "dropout": "high"}, "dropout"),
    ({"model": "awd_lstm", "variable_bptt": "maybe"}, "variable_bptt"),
    ({"model": "awd_lstm", "nhid": 2.5}, "nhid"),
    ({"model": "zaremba", "preset": "huge"}, "preset"),
])
def test_invalid_config_raises_config_error_naming_the_field(flat, field):
    with pytest.raises(ConfigError, match=re.escape(field)) as info:
        from_flat(flat)
    message = str(info.value)
    assert field in message or (field == "preset" and "small, medium, large" in message)


def test_non_integer_string_for_int_field_is_rejected():
    with pytest.raises(ConfigError, match="nhid"):
        from_flat({"model": "awd_lstm", "nhid": "2.5"})


def test_run_config_validate_rejects_direct_bad_values():
    run = RunConfig("awd_lstm", "ptb", AWDLSTMConfig(dropouti=1.0), TrainConfig())
    with pytest.raises(ConfigError, match="dropouti"):
        run.validate()
    with pytest.raises(ConfigError, match="batch_size"):
        RunConfig("zaremba", "ptb", ZarembaConfig(), TrainConfig(batch_size=0)).validate()


def test_from_flat_coerces_cli_strings_and_round_trips():
    run = from_flat({"model": "awd_lstm", "emsize": "32", "dropout": "0.3",
                     "variable_bptt": "false", "epochs": "3"})
    assert run.arch.emsize == 32 and run.arch.dropout == 0.3
    assert run.train.variable_bptt is False and run.train.epochs == 3
    assert from_flat(run.to_flat()) == run
    zar = from_flat({"model": "zaremba", "preset": "large", "nhid": 64})
    assert from_flat(zar.to_flat()) == zar


# --- presets ---------------------------------------------------------------------------------


def test_awd_lstm_ptb_preset_matches_the_reference():
    run = preset("awd_lstm", "ptb")
    a, t = run.arch, run.train
    assert (a.emsize, a.nhid, a.nlayers, a.tie_weights, a.cell) == (400, 1150, 3, True, "lstm")
    assert (a.dropout, a.dropouth, a.dropouti, a.dropoute, a.wdrop) == (0.4, 0.25, 0.4, 0.1, 0.5)
    assert (t.lr, t.clip, t.wdecay, t.alpha, t.beta) == (30.0, 0.25, 1.2e-6, 2.0, 1.0)
    assert (t.bptt, t.nonmono, t.optimizer, t.variable_bptt) == (70, 5, "ntasgd", True)
    assert (t.batch_size, t.eval_batch_size, t.test_batch_size) == (20, 10, 1)
    assert t.loss_sum_over_time is False


def test_awd_wt2_preset_uses_the_wt2_dropouts_and_batch():
    for model in ("awd_lstm", "awd_gru"):
        run = preset(model, "wikitext-2")
        assert (run.arch.dropouth, run.arch.dropouti) == (0.2, 0.65)
        assert (run.arch.dropout, run.arch.dropoute, run.arch.wdrop) == (0.4, 0.1, 0.5)
        assert (run.train.batch_size, run.train.epochs, run.train.lr) == (80, 750, 30.0)
    assert preset("awd_lstm", "wt2") == dataclasses.replace(preset("awd_lstm", "wikitext-2"),
                                                           dataset="wt2")


def test_awd_gru_preset_is_the_awd_recipe_on_gru_cells():
    gru, lstm = preset("awd_gru", "ptb"), preset("awd_lstm", "ptb")
    assert gru.arch.cell == "gru"
    assert gru.train == lstm.train
    assert {k: v for k, v in dataclasses.asdict(gru.arch).items() if k != "cell"} == {
        k: v for k, v in dataclasses.asdict(lstm.arch).items() if k != "cell"}


@pytest.mark.parametrize(("size", "arch", "schedule"), [
    ("small", (200, 2, 0.0, 0.1), (1.0, 2.0, 4, 5.0, 20, 13)),
    ("medium", (650, 2, 0.5, 0.05), (1.0, 1.2, 6, 5.0, 35, 39)),
    ("large", (1500, 2, 0.65, 0.04), (1.0, 1.15, 14, 10.0, 35, 55)),
])
def test_zaremba_presets_match_the_paper(size, arch, schedule):
    run = preset("zaremba", "ptb", size)
    a, t = run.arch, run.train
    assert (a.nhid, a.nlayers, a.dropout, a.init_range) == arch
    assert (t.lr, t.lr_decay, t.decay_start, t.clip, t.bptt, t.epochs) == schedule
    assert t.batch_size == 20
    assert t.loss_sum_over_time is True
    assert t.variable_bptt is False
    assert (t.wdecay, t.alpha, t.beta) == (0.0, 0.0, 0.0)


def test_zaremba_default_preset_is_medium():
    assert preset("zaremba", "ptb") == dataclasses.replace(preset("zaremba", "ptb", "medium"),
                                                          preset="medium")


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_zaremba_presets_train_with_the_sgd_schedule(size):
    assert preset("zaremba", "ptb", size).train.optimizer == "sgd_schedule"


def test_negative_max_seq_len_is_a_config_error():
    with pytest.raises(ConfigError, match="max_seq_len"):
        from_flat({"model": "awd_lstm", "max_seq_len": -1})
