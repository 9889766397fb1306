"""The local cluster a search starts (`search.tune.session.connect_ray`): none of the idle
workers Ray would start for its first driver, which Tune never gives a trial."""

from __future__ import annotations

import os
import time

import psutil
import pytest
import ray

from search.tune import session

pytestmark = pytest.mark.slow

PRESTART_S = 4.0  # Ray starts its idle workers within a second or two of `ray.init` (measured)


def ray_workers() -> list[psutil.Process]:
    """This process's Ray worker processes: ``default_worker.py``, titled ``ray::IDLE`` once
    it has started (Ray's agents are titled ``ray::`` too, and are not workers)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            args = p.cmdline()
        except psutil.Error:
            continue
        if args and (args[0].startswith("ray::IDLE")
                     or any(a.endswith("default_worker.py") for a in args)):
            out.append(p)
    return out


@pytest.mark.parametrize("users_value", [None, "1"])
def test_a_new_local_cluster_has_no_idle_workers_unless_the_user_asks(monkeypatch, users_value):
    if users_value is None:
        monkeypatch.delenv(session.PRESTART_ENV, raising=False)
    else:  # the user's own setting wins: Ray's default behaviour, one idle worker per CPU
        monkeypatch.setenv(session.PRESTART_ENV, users_value)
    session.connect_ray(None)
    try:
        assert os.environ.get(session.PRESTART_ENV) == users_value  # put back as it was
        time.sleep(PRESTART_S)
        workers = ray_workers()
        if users_value is None:
            assert workers == []
        else:
            assert len(workers) >= 1
    finally:
        ray.shutdown()
