"""Fire due timers (timeouts) and prune old executions.

Every worker does this for its whole namespace with the store's conditional
updates, so a timeout fires even if the worker that ran the attempt died.
"""

from __future__ import annotations

import asyncio
import logging
import time

from errands._aio import wait_any
from errands.store import Store

logger = logging.getLogger("errands.worker")

TIMER_POLL_S = 1.0
"""Longest wait between two looks for due timers."""

MIN_GAP_S = 0.02
"""Shortest gap between two looks, however busy the store."""

PRUNE_INTERVAL_S = 600.0
"""How often closed executions past retention are deleted."""


class TimerFirer:
    """Fires the namespace's due timers at their deadlines."""

    def __init__(self, store: Store, namespace: str, retention_s: float) -> None:
        self._store = store
        self._namespace = namespace
        self._retention_s = retention_s
        self._kick = asyncio.Event()
        self._next_prune = time.monotonic() + PRUNE_INTERVAL_S

    def fire_soon(self) -> None:
        """Look for due timers now (an attempt noticed its own timeout)."""
        self._kick.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Fire timers until ``stop`` is set."""
        while not stop.is_set():
            self._kick.clear()
            timeout = TIMER_POLL_S
            try:
                nxt = await self._store.fire_due_timers(self._namespace)
                if nxt is not None:
                    timeout = min(timeout, max(0.0, nxt - time.time()))
                if time.monotonic() >= self._next_prune:
                    self._next_prune = time.monotonic() + PRUNE_INTERVAL_S
                    pruned = await self._store.prune(
                        self._namespace, time.time() - self._retention_s
                    )
                    if pruned:
                        logger.info("pruned %d closed executions past retention", pruned)
            except Exception:
                logger.exception("firing timers failed; retrying")
            # A change (another process's start, say) may bring an earlier
            # deadline: look again then, but not more often than MIN_GAP_S.
            changed = self._store.change_event()
            await wait_any(self._kick, stop, timeout=min(timeout, MIN_GAP_S))
            if timeout > MIN_GAP_S:
                await wait_any(self._kick, stop, changed, timeout=timeout - MIN_GAP_S)
