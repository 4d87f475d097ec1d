"""The activities the benchmark runs. Module-level, so a worker in a child
process registers the same definitions under the same names."""

from __future__ import annotations

import asyncio
import time

from errands import activity

HEARTBEAT_EVERY_S = 0.01

cancel_seen_at: dict[str, float] = {}
"""perf_counter() at which ``spin`` saw its cancellation, by activity id
(filled only in the process that runs the activity)."""


@activity.defn
async def noop(i: int) -> int:
    """Nothing to do: the round trip through the store is all that is measured."""
    return i


@activity.defn
async def spin(mark_path: str) -> None:
    """Heartbeat every 10 ms until cancelled. On cancellation record when it was
    seen: perf_counter() in ``cancel_seen_at`` (same-process runs), or time.time()
    written to ``mark_path`` when one is given (worker in another process)."""
    try:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY_S)
    except asyncio.CancelledError:
        if mark_path:
            with open(mark_path, "w") as f:
                f.write(repr(time.time()))
        else:
            cancel_seen_at[activity.info().activity_id] = time.perf_counter()
        raise


ALL = [noop, spin]
