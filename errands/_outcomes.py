"""Waiting for executions to close, for ``ActivityHandle.result()``.

The store's change feed brings a ``Closed`` change, with the outcome, for
every run this watcher awaits: straight from the commit when this process
closed it, or read once by the store when another process did. A run is
looked up once when its wait begins, unless the watcher was told to expect
it before it was started (``execute_activity``): then no close can have
passed unseen. The due timers of awaited executions are fired here too, so
an attempt of a dead worker still times out with no other worker alive.

A store that fails (restarted, connection lost) never fails a waiting
``result()``: the watcher logs once and keeps trying with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from errands._aio import Flag, wait_any
from errands.store import ClosedRun, Store
from errands.store._changes import Closed, Resync, Subscription

logger = logging.getLogger("errands.client")

TIMER_INTERVAL_S = 1.0
"""How often awaited executions' due timers are fired."""

MANY_WAITERS = 100
"""Awaiting more runs than this, a process fires the due timers of its whole
namespace rather than of those runs: one walk of the deadline index costs
less than looking up thousands of run ids every TIMER_INTERVAL_S."""

RELOOK_S = 30.0
"""How often every waiting run is looked up anyway, so that a close whose
change went unheard (a lost connection) still ends its wait."""

RETRY_S = (0.05, 1.0)
"""First and longest pause between two tries while the store fails."""


class OutcomeWatcher:
    """Resolves ``wait(run_id)`` when the execution closes. One per event loop."""

    def __init__(self, store: Store, namespace: str) -> None:
        self._store = store
        self._namespace = namespace
        self._waiters: dict[str, list[asyncio.Future[ClosedRun]]] = {}
        self._expected: set[str] = set()
        self._unlooked: set[str] = set()
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._kick = Flag()

    def _subscription(self) -> Subscription:
        if self._sub is None or self._sub.closed:
            self._sub = self._store.feed.subscribe(Closed, keys=())
        return self._sub

    def expect(self, run_id: str) -> None:
        """Watch for the run's close from now on: call it before the run is
        started, and its wait needs no first look."""
        self._subscription().add_keys([run_id])
        self._expected.add(run_id)

    def forget(self, run_id: str) -> None:
        """Stop expecting a run that was not started after all."""
        self._expected.discard(run_id)
        if run_id not in self._waiters and self._sub is not None:
            self._sub.discard_keys([run_id])

    def close(self) -> None:
        """Stop watching; callable from any thread."""
        if self._sub is not None:
            self._sub.close()
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # its loop closed
                task.get_loop().call_soon_threadsafe(task.cancel)

    async def wait(self, run_id: str) -> ClosedRun:
        """Return when the execution with this run id is closed."""
        future: asyncio.Future[ClosedRun] = asyncio.get_running_loop().create_future()
        sub = self._subscription()
        self._waiters.setdefault(run_id, []).append(future)
        if run_id in self._expected:
            self._expected.discard(run_id)
        else:
            sub.add_keys([run_id])
            self._unlooked.add(run_id)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        else:
            self._kick.set()
        try:
            return await future
        finally:
            futures = self._waiters.get(run_id)
            if futures is not None and future in futures:
                futures.remove(future)
                if not futures:
                    del self._waiters[run_id]
                    sub.discard_keys([run_id])

    def _resolve(self, run: ClosedRun) -> None:
        for future in self._waiters.pop(run.run_id, ()):
            if not future.done():
                future.set_result(run)
        if self._sub is not None:
            self._sub.discard_keys([run.run_id])

    async def _run(self) -> None:
        sub = self._subscription()
        last_timers = last_look = time.monotonic()
        pause = 0.0
        while self._waiters:
            self._kick.clear()
            if time.monotonic() - last_look >= RELOOK_S:
                last_look = time.monotonic()
                self._unlooked.update(self._waiters)
            for change in sub.take():
                if isinstance(change, Closed) and change.outcome is not None:
                    self._resolve(change.outcome)
                elif isinstance(change, Closed):
                    self._unlooked.add(change.run_id)
                elif isinstance(change, Resync):
                    self._unlooked.update(self._waiters)
            looking = [r for r in self._unlooked if r in self._waiters]
            self._unlooked.clear()
            try:
                if looking:
                    for run in await self._store.closed_runs(looking):
                        self._resolve(run)
                if self._waiters and time.monotonic() - last_timers >= TIMER_INTERVAL_S:
                    last_timers = time.monotonic()
                    awaited = None if len(self._waiters) > MANY_WAITERS else list(self._waiters)
                    await self._store.fire_due_timers(self._namespace, run_ids=awaited)
            except Exception as e:
                self._unlooked.update(looking)
                pause = min(max(pause * 2, RETRY_S[0]), RETRY_S[1])
                if pause == RETRY_S[0]:
                    logger.warning("waiting for results: the store failed (%s); retrying", e)
                await wait_any(self._kick, timeout=pause)
                continue
            if pause:
                logger.warning("waiting for results: the store works again")
                pause = 0.0
            if self._waiters:
                await wait_any(sub.event, self._kick, timeout=TIMER_INTERVAL_S)
