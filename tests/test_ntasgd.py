"""NT-ASGD: the non-monotone trigger, iterate averaging, weight swapping, state, schedules."""

from __future__ import annotations

import io

import pytest
import torch

from awd.ntasgd import NTASGD, finetune_should_stop, should_trigger, zaremba_lr


def feed(vals: list[float], nonmono: int = 5) -> tuple[NTASGD, list[int]]:
    """Observe a scripted validation sequence; returns the optimiser and the triggering epochs."""
    opt = NTASGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0, wdecay=0.0, nonmono=nonmono)
    fired = [epoch for epoch, v in enumerate(vals, start=1) if opt.observe(v, epoch)]
    return opt, fired


def reference_rule(vals: list[float], nonmono: int) -> int | None:
    """The code's rule written out: epoch e fires when worse than the best of epochs 1..e-n-1."""
    for e in range(nonmono + 2, len(vals) + 1):
        if vals[e - 1] > min(vals[: e - nonmono - 1]):
            return e
    return None


def test_monotone_decreasing_validation_never_triggers():
    vals = [10.0 - 0.1 * i for i in range(60)]
    opt, fired = feed(vals)
    assert fired == [] and opt.trigger_epoch is None and not opt.averaging
    assert opt.history == vals


def test_plateau_equal_to_the_best_does_not_trigger():
    _, fired = feed([5.0, 4.0] + [4.0] * 20)
    assert fired == []


def test_trigger_is_at_the_epoch_the_reference_rule_predicts_not_the_paper_reading():
    vals = [10, 9, 8, 7, 6, 5.5, 5.8, 5.9, 5.95, 5.7, 5.6, 9.5, 9.6, 9.7]
    # the paper's "worse than the best of the last 5 epochs" would fire at epoch 7 (5.8 > 5.5)
    assert min(vals[1:6]) < 5.8
    opt, fired = feed(vals)
    assert fired == [12] == [reference_rule(vals, 5)]
    assert opt.trigger_epoch == 12
    assert opt.averaging


def test_earliest_trigger_is_epoch_7_with_nonmono_5():
    _, fired = feed([5.0, 4.0, 4.0, 4.0, 4.0, 100.0, 5.1, 9.0])
    assert fired == [7]  # epoch 6 is terrible but only 5 epochs of history precede it
    assert should_trigger([5.0, 4.0, 4.0, 4.0, 4.0], 100.0, 5) is False
    assert should_trigger([5.0, 4.0, 4.0, 4.0, 4.0, 100.0], 5.1, 5) is True


@pytest.mark.parametrize("nonmono", [1, 2, 5])
def test_trigger_matches_the_rule_on_a_noisy_sequence(nonmono):
    vals = [6.0, 5.0, 4.6, 4.7, 4.4, 4.5, 4.35, 4.4, 4.38, 4.36, 4.37, 4.5, 4.6]
    _, fired = feed(vals, nonmono)
    assert fired == [reference_rule(vals, nonmono)]


def test_trigger_happens_only_once_and_history_stops_growing():
    vals = [5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 6.0, 7.0, 8.0, 9.0]
    opt, fired = feed(vals)
    assert fired == [7]
    assert opt.history == vals[:6]
    assert opt.trigger_epoch == 7


# --- steps and averaging ---------------------------------------------------------------------


def _step(opt: NTASGD, param: torch.nn.Parameter, grad: torch.Tensor, lr: float) -> None:
    opt.zero_grad()
    param.grad = grad.clone()
    opt.step(lr)


def test_step_is_sgd_with_weight_decay_at_the_given_lr():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = NTASGD([p], lr=30.0, wdecay=0.1)
    _step(opt, p, torch.tensor([0.5, 0.5]), lr=0.2)  # the per-window lr overrides the base lr
    expected = torch.tensor([1.0, -2.0]) - 0.2 * (torch.tensor([0.5, 0.5]) + 0.1 * torch.tensor(
        [1.0, -2.0]))
    assert torch.allclose(p.detach(), expected)


def test_average_is_the_arithmetic_mean_of_the_iterates_after_the_trigger():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4))
    opt = NTASGD([p], lr=1.0, wdecay=0.01, nonmono=1)
    for _ in range(3):  # plain SGD before the trigger
        _step(opt, p, torch.randn(4), lr=0.5)
    assert not opt.averaging
    opt.observe(1.0, 1)
    opt.observe(0.9, 2)
    assert opt.observe(1.5, 3)  # 1.5 > min([1.0])
    iterates = []
    for k in range(6):
        _step(opt, p, torch.randn(4), lr=0.5 * (k + 1) / 3)
        iterates.append(p.detach().clone())
    assert opt.n_averaged == 6
    mean = torch.stack(iterates).mean(0)
    assert torch.allclose(opt.average[0], mean, atol=1e-6)
    assert not torch.allclose(p.detach(), mean)


def test_averaged_weights_swaps_in_the_mean_and_restores_the_iterate():
    p = torch.nn.Parameter(torch.tensor([0.0, 0.0]))
    opt = NTASGD([p], lr=1.0, wdecay=0.0)
    with opt.averaged_weights():  # before the trigger: a no-op
        assert torch.equal(p.detach(), torch.zeros(2))
    opt.start_averaging()
    with opt.averaged_weights():  # no step averaged yet: still a no-op
        assert torch.equal(p.detach(), torch.zeros(2))
    for g in (torch.tensor([-1.0, 0.0]), torch.tensor([-1.0, -2.0])):
        _step(opt, p, g, lr=1.0)  # iterates (1, 0), (2, 2)
    current = p.detach().clone()
    with opt.averaged_weights():
        assert torch.allclose(p.detach(), torch.tensor([1.5, 1.0]))
    assert torch.equal(p.detach(), current)
    with pytest.raises(RuntimeError, match="evaluation failed"), opt.averaged_weights():
        raise RuntimeError("evaluation failed")
    assert torch.equal(p.detach(), current)  # restored on error too


def test_start_averaging_restarts_the_mean():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = NTASGD([p], lr=1.0, wdecay=0.0)
    opt.start_averaging()
    _step(opt, p, torch.tensor([-10.0]), lr=1.0)
    opt.start_averaging()  # fine-tuning restarts the average
    _step(opt, p, torch.tensor([-1.0]), lr=1.0)
    assert opt.n_averaged == 1
    assert torch.allclose(opt.average[0], torch.tensor([11.0]))


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(1)
    init = torch.randn(3)
    grads = [torch.randn(3) for _ in range(8)]
    a = torch.nn.Parameter(init.clone())
    opt_a = NTASGD([a], lr=1.0, wdecay=0.05, nonmono=1)
    for g in grads[:3]:
        _step(opt_a, a, g, 0.3)
    opt_a.observe(1.0, 1)
    opt_a.observe(2.0, 2)
    opt_a.observe(3.0, 3)
    assert opt_a.averaging
    _step(opt_a, a, grads[3], 0.3)
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    b = torch.nn.Parameter(a.detach().clone())
    opt_b = NTASGD([b], lr=1.0, wdecay=0.05, nonmono=1)
    opt_b.load_state_dict(torch.load(buffer, weights_only=False))
    assert opt_b.history == opt_a.history and opt_b.trigger_epoch == 3
    assert opt_b.n_averaged == opt_a.n_averaged == 1
    for g in grads[4:]:
        _step(opt_a, a, g, 0.3)
        _step(opt_b, b, g, 0.3)
    assert torch.equal(a.detach(), b.detach())
    assert torch.equal(opt_a.average[0], opt_b.average[0])
    assert opt_b.average[0] is not opt_a.average[0]


def test_state_dict_before_the_trigger_has_no_average():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = NTASGD([p], lr=1.0, wdecay=0.0)
    opt.observe(3.0, 1)
    other = NTASGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0, wdecay=0.0)
    other.load_state_dict(opt.state_dict())
    assert other.average is None and other.history == [3.0] and other.trigger_epoch is None


# --- schedules -------------------------------------------------------------------------------


def test_zaremba_lr_is_constant_then_divided_each_epoch():
    lrs = [zaremba_lr(1.0, e, 1.2, 6) for e in range(1, 10)]
    assert lrs[:6] == [1.0] * 6
    assert lrs[6] == pytest.approx(1 / 1.2)
    assert lrs[7] == pytest.approx(1 / 1.2**2)
    assert lrs[8] == pytest.approx(1 / 1.2**3)
    assert zaremba_lr(1.0, 5, 2.0, 4) == pytest.approx(0.5)  # small: halved after 4 epochs


def test_finetune_stops_when_worse_than_the_best_before_the_last_five():
    assert not finetune_should_stop([], 1.0)
    assert not finetune_should_stop([3.0, 2.9, 2.8, 2.7, 2.6], 99.0)  # only 5 checks yet
    assert finetune_should_stop([3.0, 2.9, 2.8, 2.7, 2.6, 2.5], 3.01)
    assert not finetune_should_stop([3.0, 2.9, 2.8, 2.7, 2.6, 2.5], 3.0)
    assert finetune_should_stop([3.0, 2.0, 2.8, 2.7, 2.6, 2.5, 2.4], 2.05)
