"""The chaos soak as a workload (tests/chaos.py): ten minutes (``--chaos-seconds``)
of activities (at most ``--chaos-total``) run by 3 worker processes while a
driver SIGKILLs and restarts them and cancels, terminates, pauses, unpauses
and resets executions at random; then every invariant is checked. Reported:
the counts (executions, outcomes, actions, attempts) and the violations (target 0)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from bench.stores import StoreTarget
from bench.workloads import Figure
from tests.chaos import Plan, soak


async def chaos(store: StoreTarget, seconds: float, total: int, notes: list[str]) -> list[Figure]:
    url = store.url_for("chaos")
    try:
        with tempfile.TemporaryDirectory(prefix="errands-chaos-") as directory:
            report = await soak(Plan(url, Path(directory), seconds, total=total))
    finally:
        await asyncio.to_thread(store.drop, url)
    notes.append(f"chaos: {report.summary()}")
    notes += [f"chaos violation: {v}" for v in report.violations[:20]]
    figures = [
        Figure("chaos", "executions", report.started, "executions"),
        Figure("chaos", "invariant violations", len(report.violations), "", "<= 0"),
        Figure("chaos", "worker processes SIGKILLed", report.actions["kill"], ""),
        Figure("chaos", "attempts lost with their worker", report.attempts["WORKER_LOST"], ""),
    ]
    for action in ("cancel", "terminate", "pause", "unpause", "reset"):
        figures.append(Figure("chaos", f"{action} calls", report.actions[action], ""))
    return figures
