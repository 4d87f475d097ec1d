"""Temporal's side of every workload: bench.activities' ``noop``, ``spin``,
``noop_sync`` and ``spin_sync`` written with temporalio's ``@activity.defn``
(the same bodies), and the crash-recovery activity. Module-level, so a
process-pool child unpickles them by importing this module."""

from __future__ import annotations

import asyncio
import time

from temporalio import activity, exceptions

from bench.compare import _crash

HEARTBEAT_EVERY_S = 0.01  # as bench.activities.HEARTBEAT_EVERY_S

cancel_seen_at: dict[str, float] = {}
"""perf_counter() at which ``spin`` or ``spin_sync`` saw its cancellation, by
the key it was given (in workflow mode the activity id is the workflow's
sequence number, so the workload passes its own key)."""


@activity.defn
async def noop(i: int) -> int:
    """Nothing to do: the round trip through the server is all that is measured."""
    return i


@activity.defn
async def spin(key: str) -> None:
    """Heartbeat every 10 ms until cancelled; record when the cancel was seen."""
    try:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY_S)
    except asyncio.CancelledError:
        cancel_seen_at[key] = time.perf_counter()
        raise


@activity.defn
def noop_sync(i: int) -> int:
    """``noop`` as a plain ``def``, for the thread and process pools."""
    return i


@activity.defn
def spin_sync(key: str) -> None:
    """``spin`` as a plain ``def``: temporalio raises its CancelledError in
    this thread when a heartbeat's answer carries the cancel."""
    try:
        while True:
            activity.heartbeat()
            time.sleep(HEARTBEAT_EVERY_S)
    except exceptions.CancelledError:
        cancel_seen_at[key] = time.perf_counter()
        raise


@activity.defn
async def crash(mark_dir: str) -> str:
    """See :mod:`bench.compare._crash`."""
    started = time.time()
    info = activity.info()
    return await _crash.body(
        started, info.attempt, info.heartbeat_details, activity.heartbeat, mark_dir
    )
