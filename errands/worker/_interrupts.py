"""Hand cancel and terminate requests to this worker's running attempts.

The store's change feed delivers an ``Interrupted`` change for every request
made in this process, and for those made elsewhere that concern an attempt
this process claimed (the store reads their state once per change); this
watcher only routes them. Nothing is polled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from errands.activity import ActivityCancellationDetails
from errands.store import Store
from errands.store._changes import Interrupted, Subscription

EARLY_KEEP_S = 60.0
"""How long a request for an attempt this worker has not registered yet is kept."""


class InterruptWatcher:
    """Finds cancel / terminate requests and hands them to the attempts."""

    def __init__(
        self,
        store: Store,
        deliver: Callable[[Interrupted], bool],
    ) -> None:
        self._store = store
        self._deliver = deliver
        # Requests seen before their attempt registered (a claim racing a cancel).
        self._early: dict[tuple[str, int], tuple[Interrupted, float]] = {}
        self._sub: Subscription | None = None

    def subscribe(self) -> None:
        """Start receiving requests. Call it before the worker claims anything,
        so that no request for a claimed attempt can pass unseen."""
        self._sub = self._store.feed.subscribe(Interrupted)

    def take_early(self, run_id: str, attempt: int) -> Interrupted | None:
        """A request that arrived before the attempt registered, if any."""
        found = self._early.pop((run_id, attempt), None)
        return None if found is None else found[0]

    async def run(self, stop: asyncio.Event) -> None:
        """Route requests until ``stop`` is set."""
        if self._sub is None:
            self.subscribe()
        assert self._sub is not None
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                changed = asyncio.ensure_future(self._sub.event.wait())
                await asyncio.wait([changed, stopped], return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                self._route([c for c in self._sub.take() if isinstance(c, Interrupted)])
        finally:
            stopped.cancel()
            self._sub.close()

    def _route(self, interrupts: list[Interrupted]) -> None:
        now = time.monotonic()
        for interrupt in interrupts:
            if not self._deliver(interrupt):
                self._early[(interrupt.run_id, interrupt.attempt)] = (interrupt, now)
        if self._early:
            for key, (_, seen) in list(self._early.items()):
                if now - seen > EARLY_KEEP_S:
                    del self._early[key]


def details_for(interrupt: Interrupted) -> ActivityCancellationDetails:
    """The cancellation details an interrupt means to the activity."""
    if interrupt.kind == "terminate":
        return ActivityCancellationDetails(not_found=True)
    if interrupt.kind == "pause":
        return ActivityCancellationDetails(paused=True)
    if interrupt.kind == "reset":
        return ActivityCancellationDetails(reset=True)
    return ActivityCancellationDetails(cancel_requested=True)


def needs_heartbeat(interrupt: Interrupted) -> bool:
    """Whether the request reaches only an attempt that has heartbeated (a
    client's cancel, pause or reset, as Temporal delivers them); terminate
    reaches any."""
    return interrupt.kind in ("cancel", "pause", "reset")
