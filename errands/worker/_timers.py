"""Fire due timers (timeouts) and prune old executions.

Every worker does this for its whole namespace with the store's conditional
updates, so a timeout fires even if the worker that ran the attempt died. A
timer sleeps until the earliest deadline it knows of; the change feed tells
it of earlier ones (a claim, a start, a retry, made by any process), so it
never polls while nothing is due.
"""

from __future__ import annotations

import asyncio
import logging
import time

from errands._aio import Flag, wait_any
from errands._outage import Backoff, Outage
from errands.exceptions import StoreError
from errands.store import Store
from errands.store._changes import Change, Deadline

logger = logging.getLogger("errands.worker")

SAFETY_LOOK_S = 60.0
"""Longest wait between two looks for due timers (the change feed announces
every deadline; this bounds the cost of a missed one)."""

MIN_GAP_S = 0.02
"""Shortest gap between two looks, however busy the store."""

STORE_RETRY_S = 1.0
"""Pause after a look failed for another reason than the store (a bug)."""

PRUNE_INTERVAL_S = 600.0
"""How often closed executions past retention are deleted."""


class TimerFirer:
    """Fires the namespace's due timers at their deadlines."""

    def __init__(
        self, store: Store, namespace: str, retention_s: float, outage: Outage | None = None
    ) -> None:
        self._store = store
        self._outage = outage or Outage(logger, f"timers of namespace {namespace!r}")
        self._backoff = Backoff()
        self._namespace = namespace
        self._retention_s = retention_s
        self._kick = Flag()
        self._next_prune = time.monotonic() + PRUNE_INTERVAL_S
        self._planned = 0.0
        """When the next look is due (this machine's clock)."""

    def fire_soon(self) -> None:
        """Look for due timers now (an attempt noticed its own timeout)."""
        self._kick.set()

    def _earlier(self, change: Change) -> bool:
        return isinstance(change, Deadline) and change.at < self._planned

    async def run(self, stop: asyncio.Event) -> None:
        """Fire timers until ``stop`` is set."""
        sub = self._store.feed.subscribe(Deadline, keys=[self._namespace], where=self._earlier)
        try:
            while not stop.is_set():
                self._kick.clear()
                self._planned = float("inf")  # while looking, any deadline may be news
                self._planned = time.time() + await self._look()
                await wait_any(self._kick, stop, timeout=MIN_GAP_S)
                while not stop.is_set() and not self._kick.is_set():
                    for change in sub.take():
                        if isinstance(change, Deadline):
                            self._planned = min(self._planned, change.at)
                        else:  # Resync
                            self._planned = time.time()
                    left = self._planned - time.time()
                    if left <= 0:
                        break
                    await wait_any(sub.event, self._kick, stop, timeout=left)
        finally:
            sub.close()

    async def _look(self) -> float:
        """Fire what is due; seconds until the next look."""
        try:
            nxt = await self._store.fire_due_timers(self._namespace)
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + PRUNE_INTERVAL_S
                pruned = await self._store.prune(self._namespace, time.time() - self._retention_s)
                if pruned:
                    logger.info("pruned %d closed executions past retention", pruned)
        except StoreError as e:  # an outage: look again after a pause
            self._outage.failed("firing timers", e)
            return self._backoff.next()
        except Exception:
            logger.exception("firing timers failed; retrying")
            return STORE_RETRY_S
        self._backoff.reset()
        self._outage.passed()
        if nxt is None:
            return SAFETY_LOOK_S
        return min(SAFETY_LOOK_S, max(0.0, nxt - time.time()))
