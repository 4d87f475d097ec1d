"""Waiting for executions to close, for ``ActivityHandle.result()``.

Executions closed by this process are resolved in memory, straight from the
commit that closed them. For the rest, one store read per change covers every
waiting ``result()`` of the client; the due timers of awaited executions are
fired here too, so an attempt of a dead worker still times out with no other
worker alive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from errands._aio import wait_any
from errands.store import ClosedRun, Store

TIMER_INTERVAL_S = 1.0
"""How often awaited executions' due timers are fired, and the longest wait
between two looks without a change signal."""

MIN_POLL_GAP_S = 0.001
"""Shortest gap between two looks, so a busy store is not read at every commit."""


class OutcomeWatcher:
    """Resolves ``wait(run_id)`` when the execution closes."""

    def __init__(self, store: Store, namespace: str) -> None:
        self._store = store
        self._namespace = namespace
        self._waiters: dict[str, list[asyncio.Future[ClosedRun]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        store.add_closed_listener(self._closed_threadsafe)

    def close(self) -> None:
        """Stop listening to the store."""
        self._store.remove_closed_listener(self._closed_threadsafe)
        if self._task is not None:
            self._task.cancel()

    async def wait(self, run_id: str) -> ClosedRun:
        """Return when the execution with this run id is closed."""
        self._loop = asyncio.get_running_loop()
        future: asyncio.Future[ClosedRun] = self._loop.create_future()
        self._waiters.setdefault(run_id, []).append(future)
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

    def _closed_threadsafe(self, closed: Sequence[ClosedRun]) -> None:
        # Called on the store's writer thread right after a commit.
        loop = self._loop
        if loop is None or not self._waiters:
            return  # a waiter that registers later looks in the store first
        try:
            loop.call_soon_threadsafe(self._resolve_all, closed)
        except RuntimeError:  # the loop closed
            self._loop = None

    def _resolve_all(self, closed: Sequence[ClosedRun]) -> None:
        for run in closed:
            for future in self._waiters.pop(run.run_id, ()):
                if not future.done():
                    future.set_result(run)

    def _fail_all(self, error: BaseException) -> None:
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._waiters.clear()

    async def _run(self) -> None:
        last_timers = time.monotonic()
        while self._waiters:
            changed = self._store.change_event()
            self._kick.clear()
            try:
                self._resolve_all(await self._store.closed_runs(list(self._waiters)))
                if self._waiters and time.monotonic() - last_timers >= TIMER_INTERVAL_S:
                    last_timers = time.monotonic()
                    await self._store.fire_due_timers(self._namespace, run_ids=list(self._waiters))
            except Exception as e:
                self._fail_all(e)
                return
            if self._waiters:
                await asyncio.sleep(MIN_POLL_GAP_S)
                await wait_any(changed, self._kick, timeout=TIMER_INTERVAL_S)
