"""The private attributes of Ray Tune and Optuna that `search/` relies on, on the real objects.

`search.tune.scheduler.PersistentASHA` reads and rewrites ASHA's rungs (``_brackets``, ``_rungs``);
`search.tune.searcher.AWDOptunaSearch` reads OptunaSearch's ``_ot_trials``, ``_ot_study`` and
``_completed_trials``. None of these is public API: if an upgrade of Ray (pinned to the tested
minor in pyproject.toml) moves them, these tests fail here, by name, rather than the search
misbehaving quietly.
"""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
import ray
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from search.tune.scheduler import PersistentASHA
from search.tune.searcher import AWDOptunaSearch, make_searcher
from spaces import get_space

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _trial(tid: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid)


def _asha(cls=ASHAScheduler, **kwargs) -> ASHAScheduler:
    return cls(time_attr="epoch", metric="best_val_ppl", mode="min", max_t=9, grace_period=1,
               reduction_factor=3, **kwargs)


@pytest.mark.parametrize("make", [_asha, lambda: _asha(PersistentASHA, state_path="/nonexistent")],
                         ids=["ASHAScheduler", "PersistentASHA"])
def test_asha_keeps_rungs_as_milestone_and_recorded_dict_pairs(make):
    asha = make()
    assert hasattr(asha, "_brackets"), f"ray {ray.__version__}: ASHAScheduler lost _brackets"
    assert isinstance(asha._brackets, list) and asha._brackets
    for bracket in asha._brackets:
        assert hasattr(bracket, "_rungs"), f"ray {ray.__version__}: _Bracket lost _rungs"
        assert isinstance(bracket._rungs, list) and bracket._rungs
        for rung in bracket._rungs:
            milestone, recorded = rung  # a pair, as PersistentASHA saves and restores them
            assert isinstance(milestone, (int, float)) and isinstance(recorded, dict)
    # max_t 9, grace 1, reduction factor 3: one bracket, rungs from the last milestone down
    assert [m for m, _ in asha._brackets[0]._rungs] == [9, 3, 1]


def test_asha_records_a_result_in_the_rung_dict_by_trial_id():
    asha = _asha()
    asha.on_trial_add(None, _trial("a"))
    assert asha.on_trial_result(None, _trial("a"), {"epoch": 1, "best_val_ppl": 123.0}) \
        == "CONTINUE"
    recorded = {tid: score for _, rung in asha._brackets[0]._rungs for tid, score in rung.items()}
    assert recorded == {"a": -123.0}  # the score ASHA compares: negated for mode="min"


def test_rewriting_the_rungs_changes_asha_decisions():
    """What PersistentASHA's restore does: replace ``_rungs`` with saved pairs."""
    donor = _asha()
    for i, tid in enumerate("abc"):
        donor.on_trial_add(None, _trial(tid))
        donor.on_trial_result(None, _trial(tid), {"epoch": 1, "best_val_ppl": 100.0 + i})
    saved = [[(m, dict(r)) for m, r in b._rungs] for b in donor._brackets]
    fresh = _asha()
    for bracket, rungs in zip(fresh._brackets, saved, strict=True):
        bracket._rungs = [(m, dict(r)) for m, r in rungs]
    fresh.on_trial_add(None, _trial("d"))
    assert fresh.on_trial_result(None, _trial("d"), {"epoch": 1, "best_val_ppl": 500.0}) == "STOP"
    # the change: without the donor's rungs, the same result of the same trial goes on
    untouched = _asha()
    untouched.on_trial_add(None, _trial("d"))
    assert untouched.on_trial_result(None, _trial("d"),
                                     {"epoch": 1, "best_val_ppl": 500.0}) == "CONTINUE"


def _define(trial: optuna.trial.BaseTrial) -> dict:
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


def test_optuna_search_has_its_trials_study_and_completed_set_after_setup():
    searcher = OptunaSearch(space=_define, metric="best_val_ppl", mode="min",
                            sampler=optuna.samplers.RandomSampler(seed=0))
    for name in ("_ot_trials", "_ot_study", "_completed_trials"):
        assert hasattr(searcher, name), f"ray {ray.__version__}: OptunaSearch lost {name}"
    assert isinstance(searcher._ot_study, optuna.Study)
    assert searcher._ot_trials == {} and searcher._completed_trials == set()
    config = searcher.suggest("t1")
    assert 0.0 <= config["x"] <= 1.0
    ot_trial = searcher._ot_trials["t1"]
    assert isinstance(ot_trial, optuna.Trial) and ot_trial.number == 0
    assert ot_trial.params == config
    searcher.on_trial_complete("t1", {"best_val_ppl": 3.0})
    assert searcher._completed_trials == {"t1"}
    assert searcher._ot_study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_our_searcher_uses_the_same_attributes():
    searcher = make_searcher(get_space("smoke"), {}, 0, "internals", 2).searcher
    assert isinstance(searcher, AWDOptunaSearch) and isinstance(searcher, OptunaSearch)
    assert searcher._ot_study is searcher.study()
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"best_val_ppl": 9.0, "finished": False})
    assert searcher._completed_trials == {"a"}
    assert searcher.study().trials[0].state == optuna.trial.TrialState.PRUNED
    searcher.on_trial_complete("a", {"best_val_ppl": 1.0, "finished": True})  # told once only
    assert searcher.study().trials[0].state == optuna.trial.TrialState.PRUNED


def test_an_optuna_trial_reaches_its_storage_state_as_our_searcher_reads_it():
    """`AWDOptunaSearch._told` reads ``Trial.study._storage`` and ``Trial._trial_id``."""
    study = optuna.create_study()
    trial = study.ask()
    assert not trial.study._storage.get_trial(trial._trial_id).state.is_finished()
    study.tell(trial, 1.0)
    assert trial.study._storage.get_trial(trial._trial_id).state.is_finished()


def test_a_trial_the_study_already_has_ended_is_not_told_again():
    """A driver killed after telling the study, before Tune's snapshot: once resumed, Tune ends
    the same trial again; telling Optuna twice would crash the search."""
    searcher = make_searcher(get_space("smoke"), {}, 0, "told-twice", 2).searcher
    searcher.suggest("a")
    searcher.study().tell(searcher._ot_trials["a"], 5.0)  # by the killed driver
    searcher.on_trial_result("a", {"best_val_ppl": 4.0, "epoch": 2})
    searcher.on_trial_complete("a", {"best_val_ppl": 4.0, "finished": True})
    assert searcher.study().trials[0].state == optuna.trial.TrialState.COMPLETE
    assert searcher.study().trials[0].value == 5.0
