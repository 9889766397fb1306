"""Locked dropout, embedding dropout, weight drop, AR and TAR."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from awd.regularizers import (
    LockedDropout,
    WeightDropRNN,
    activation_regularization,
    dropconnect,
    embedding_dropout,
    temporal_activation_regularization,
)

# --- locked dropout --------------------------------------------------------------------------


def test_locked_dropout_mask_is_shared_across_time():
    torch.manual_seed(0)
    drop = LockedDropout(0.5).train()
    out = drop(torch.ones(12, 8, 16))
    zero = out == 0
    assert zero.any() and (~zero).any()
    assert torch.equal(zero, zero[:1].expand_as(zero))  # same pattern at every t
    assert torch.allclose(out[~zero], torch.full_like(out[~zero], 2.0))


def test_locked_dropout_mask_differs_between_batch_elements():
    torch.manual_seed(1)
    out = LockedDropout(0.5).train()(torch.ones(3, 8, 64))
    patterns = {tuple(out[0, b].eq(0).tolist()) for b in range(8)}
    assert len(patterns) == 8


def test_locked_dropout_draws_a_new_mask_each_call():
    torch.manual_seed(2)
    drop = LockedDropout(0.5).train()
    x = torch.ones(2, 4, 32)
    assert not torch.equal(drop(x), drop(x))


def test_locked_dropout_is_identity_in_eval_and_at_p_zero():
    x = torch.randn(5, 3, 7)
    assert torch.equal(LockedDropout(0.5).eval()(x), x)
    assert torch.equal(LockedDropout(0.0).train()(x), x)


def test_locked_dropout_preserves_the_expectation():
    torch.manual_seed(3)
    x = torch.full((1, 200, 500), 3.0)
    out = LockedDropout(0.3).train()(x)
    assert out.mean().item() == pytest.approx(3.0, rel=0.02)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 3.0 / 0.7))
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)


# --- embedding dropout -----------------------------------------------------------------------


def test_embedding_dropout_zeroes_whole_word_types_and_scales_the_rest():
    torch.manual_seed(4)
    embed = nn.Embedding(20, 6)
    with torch.no_grad():
        embed.weight.uniform_(0.5, 1.0)  # no entry is zero by chance
    words = torch.arange(20).repeat(3).view(12, 5)  # every word at three positions
    out = embedding_dropout(embed, words, 0.5, training=True)
    dropped_types = set()
    for w in range(20):
        rows = out[words == w]  # every position of word w in this call
        if rows.eq(0).any():
            assert rows.eq(0).all(), f"word {w} partly dropped"
            dropped_types.add(w)
        else:
            expected = (embed.weight[w] / 0.5).expand_as(rows)
            assert torch.allclose(rows, expected)
    assert 0 < len(dropped_types) < 20


def test_embedding_dropout_is_identity_in_eval_and_keeps_gradients():
    embed = nn.Embedding(10, 4)
    words = torch.tensor([[1, 2], [3, 1]])
    assert torch.equal(embedding_dropout(embed, words, 0.5, training=False), embed(words))
    torch.manual_seed(5)
    embedding_dropout(embed, words, 0.1, training=True).sum().backward()
    assert embed.weight.grad is not None


# --- weight drop -----------------------------------------------------------------------------


def _wrapped(cell: type[nn.RNNBase], wdrop: float = 0.5) -> WeightDropRNN:
    torch.manual_seed(6)
    return WeightDropRNN(cell(8, 16), wdrop)


def _zero_hidden(cell, batch=3, hidden=16):
    h = torch.zeros(1, batch, hidden)
    return (h, h.clone()) if cell is nn.LSTM else h


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_weight_drop_changes_only_recurrent_steps_in_training(cell):
    layer = _wrapped(cell).train()
    x = torch.randn(6, 3, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1, _ = layer(x, _zero_hidden(cell))
        out2, _ = layer(x, _zero_hidden(cell))
    assert caught == [], [str(w.message) for w in caught]
    # t=0 sees only W_ih (never dropped) and a zero hidden state
    assert torch.allclose(out1[0], out2[0])
    assert not torch.allclose(out1[1:], out2[1:])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_weight_drop_eval_is_deterministic_and_equals_the_plain_rnn(cell):
    layer = _wrapped(cell).eval()
    x = torch.randn(6, 3, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1, h1 = layer(x, _zero_hidden(cell))
        out2, _ = layer(x, _zero_hidden(cell))
        plain, hp = layer.rnn(x, _zero_hidden(cell))
    assert caught == []
    assert torch.equal(out1, out2)
    assert torch.equal(out1, plain)
    if cell is nn.LSTM:
        assert torch.equal(h1[0], hp[0]) and torch.equal(h1[1], hp[1])
    else:
        assert torch.equal(h1, hp)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_weight_drop_masks_weight_hh_once_per_call(cell):
    """Reproduce the training output by hand: the same W_hh mask at every step and row."""
    layer = _wrapped(cell, 0.5).train()
    x = torch.randn(5, 3, 8)
    torch.manual_seed(7)
    out, _ = layer(x, _zero_hidden(cell))
    torch.manual_seed(7)
    dropped = dropconnect(layer.rnn.weight_hh_l0, 0.5)
    reference = cell(8, 16)
    reference.load_state_dict(layer.rnn.state_dict())
    with torch.no_grad():
        reference.weight_hh_l0.copy_(dropped)
    expected, _ = reference(x, _zero_hidden(cell))
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_weight_drop_raw_weight_gets_gradient_and_input_weight_is_not_dropped(cell):
    layer = _wrapped(cell).train()
    x = torch.randn(4, 3, 8)
    hidden = _zero_hidden(cell)
    hidden = (torch.randn_like(hidden[0]), hidden[1]) if cell is nn.LSTM else torch.randn_like(
        hidden)
    out, _ = layer(x, hidden)
    out.pow(2).sum().backward()
    grad_hh = layer.rnn.weight_hh_l0.grad
    assert grad_hh is not None and grad_hh.abs().sum() > 0
    # DropConnect on W_hh: about half of W_hh's gradient entries are exactly zero
    assert 0.3 < (grad_hh == 0).float().mean().item() < 0.7
    # W_ih is used as it is: its gradient has no dropped entries
    grad_ih = layer.rnn.weight_ih_l0.grad
    assert grad_ih is not None and (grad_ih == 0).float().mean().item() < 0.05


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_weight_drop_keeps_the_wrapped_modules_registered_parameters(cell):
    rnn = cell(8, 16)
    before = dict(rnn.named_parameters())
    layer = WeightDropRNN(rnn, 0.5).train()
    layer(torch.randn(3, 2, 8), _zero_hidden(cell, batch=2))
    after = dict(layer.rnn.named_parameters())
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    assert {n for n, _ in layer.named_parameters()} == {f"rnn.{k}" for k in before}
    assert isinstance(layer.rnn.weight_hh_l0, nn.Parameter)


def test_weight_drop_rejects_stacked_or_bidirectional_rnns():
    with pytest.raises(ValueError, match="wraps one unidirectional layer"):
        WeightDropRNN(nn.LSTM(4, 4, num_layers=2), 0.5)
    with pytest.raises(ValueError, match="wraps one unidirectional layer"):
        WeightDropRNN(nn.GRU(4, 4, bidirectional=True), 0.5)


# --- AR / TAR --------------------------------------------------------------------------------


def test_activation_regularization_is_alpha_times_mean_square():
    h = torch.tensor([[[1.0, -2.0]], [[3.0, 0.0]]])  # (T=2, B=1, H=2)
    assert activation_regularization(h, 2.0).item() == pytest.approx(2.0 * (1 + 4 + 9 + 0) / 4)


def test_temporal_activation_regularization_is_beta_times_mean_square_difference():
    h = torch.tensor([[[1.0, 0.0]], [[3.0, 1.0]], [[0.0, 1.0]]])  # (T=3, B=1, H=2)
    # differences: (2, 1), (-3, 0) -> squares 4, 1, 9, 0 -> mean 3.5
    assert temporal_activation_regularization(h, 0.5).item() == pytest.approx(0.5 * 3.5)
    assert temporal_activation_regularization(h[:1], 1.0).item() == 0.0


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropconnect_keeps_1_minus_p_of_the_weights_scaled(p):
    torch.manual_seed(0)
    weight = torch.ones(400, 500)
    dropped = dropconnect(weight, p)
    kept = dropped != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.01
    assert torch.allclose(dropped[kept], torch.full_like(dropped[kept], 1 / (1 - p)))


def test_cuda_weight_layout_is_one_buffer_in_cudnn_order_with_gradients():
    """On CUDA the substituted weights are views of one flat buffer (so cuDNN takes them as
    they are); checked here on CPU: same values, one storage, in order, gradients flow."""
    from awd.regularizers import _contiguous_views

    rnn = nn.LSTM(8, 16)
    weights = {n: getattr(rnn, n) for n in rnn._flat_weights_names}
    views = _contiguous_views(weights)
    assert list(views) == list(weights)
    storage = {v.untyped_storage().data_ptr() for v in views.values()}
    assert len(storage) == 1
    offsets = [v.storage_offset() for v in views.values()]
    assert offsets == sorted(offsets) and offsets[0] == 0
    for name, w in weights.items():
        assert torch.equal(views[name], w)
    x = torch.randn(5, 3, 8)
    out, _ = torch.func.functional_call(rnn, views, (x,))
    expected, _ = rnn(x)
    assert torch.allclose(out, expected, atol=1e-6)
    out.sum().backward()
    assert rnn.weight_hh_l0.grad is not None and rnn.weight_ih_l0.grad.abs().sum() > 0
