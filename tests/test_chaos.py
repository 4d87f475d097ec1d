"""The chaos soak on each store (tests/chaos.py): worker processes SIGKILLed
and restarted, executions cancelled, terminated, paused, unpaused and reset at
random, then every invariant checked: 60 s on each store (``python -m bench
--only chaos`` soaks ten minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import Plan, soak

SOAK_S = {"sqlite": 60.0, "postgres": 60.0}


@pytest.mark.timeout(400)
async def test_every_execution_reaches_one_outcome_with_a_consistent_history_under_chaos(
    db_url: str, store_kind: str, tmp_path: Path
) -> None:
    # Given worker processes and a client starting activities, and a driver
    # killing workers and steering executions at random for the soak's time,
    report = await soak(Plan(db_url, tmp_path, SOAK_S[store_kind]))
    print(report.summary())
    # then every execution closed once, with a history that adds up,
    assert not report.violations, "\n".join(report.violations[:50])
    # and the soak did what it says.
    assert report.started > 100
    assert report.actions["kill"] >= 5
    for action in ("cancel", "terminate", "pause", "unpause", "reset"):
        assert report.actions[action] > 0, report.summary()
