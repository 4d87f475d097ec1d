"""Watch cancel and terminate requests for this worker's running attempts.

One query per wake-up covers every running attempt: it reads the requests
made since the last look (a cursor into the store's interrupt log), woken by
the store's change signal (data_version on SQLite).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from errands._aio import wait_any
from errands.activity import ActivityCancellationDetails
from errands.store import Interrupt, Store

logger = logging.getLogger("errands.worker")

IDLE_POLL_S = 1.0
"""Longest wait between looks when no change is signalled."""

MIN_POLL_GAP_S = 0.002
"""Shortest gap between two looks, so a busy store is not read at every commit."""

EARLY_KEEP_S = 60.0
"""How long a request for an attempt this worker has not registered yet is kept."""


class InterruptWatcher:
    """Finds cancel / terminate requests and hands them to the attempts."""

    def __init__(
        self,
        store: Store,
        namespace: str,
        deliver: Callable[[Interrupt], bool],
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._deliver = deliver
        # Requests seen before their attempt registered (a claim racing a cancel).
        self._early: dict[tuple[str, int], tuple[Interrupt, float]] = {}
        self._cursor: int | None = None

    async def read_cursor(self) -> None:
        """Note where the interrupt log ends. Await it before the worker claims
        anything: a request for an attempt is logged after its claim, so none
        can fall behind the cursor (reading it later could skip one)."""
        self._cursor = await self._store.interrupts_cursor()

    def take_early(self, run_id: str, attempt: int) -> Interrupt | None:
        """A request that arrived before the attempt registered, if any."""
        found = self._early.pop((run_id, attempt), None)
        return None if found is None else found[0]

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until ``stop`` is set."""
        cursor = self._cursor if self._cursor is not None else await self._store.interrupts_cursor()
        while not stop.is_set():
            changed = self._store.change_event()
            try:
                interrupts, cursor = await self._store.poll_interrupts(self._namespace, cursor)
            except Exception:
                logger.exception("cannot read cancel requests; retrying")
                await wait_any(stop, timeout=IDLE_POLL_S)
                continue
            now = time.monotonic()
            for interrupt in interrupts:
                if not self._deliver(interrupt):
                    self._early[(interrupt.run_id, interrupt.attempt)] = (interrupt, now)
            if self._early:
                for key, (_, seen) in list(self._early.items()):
                    if now - seen > EARLY_KEEP_S:
                        del self._early[key]
            await asyncio.sleep(MIN_POLL_GAP_S)
            await wait_any(changed, stop, timeout=IDLE_POLL_S)


def details_for(interrupt: Interrupt) -> ActivityCancellationDetails:
    """The cancellation details an interrupt means to the activity."""
    if interrupt.kind == "terminate":
        return ActivityCancellationDetails(not_found=True)
    return ActivityCancellationDetails(cancel_requested=True)
