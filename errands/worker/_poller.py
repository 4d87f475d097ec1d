"""Claim work: wait for free slots or a wake-up, then claim up to the free
slots in one store call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from errands._aio import wait_any
from errands.store import ClaimedTask, Store

logger = logging.getLogger("errands.worker")

IDLE_POLL_S = 1.0
"""Longest an idle poller waits before looking again without a wake-up."""

DELIVERY_WAIT_S = 10.0
"""Longest a poller waits for the tasks of an armed claim that fired."""

STORE_RETRY_S = 1.0
"""Pause after the store failed a claim."""


class _TokenBucket:
    """Local limit on claims per second (``max_activities_per_second``)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def available(self) -> int:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return int(self.tokens)

    def take(self, n: int) -> None:
        self.tokens -= n

    def seconds_to_next(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)


class Poller:
    """Claims tasks of one task queue for one kind of slot."""

    def __init__(
        self,
        *,
        store: Store,
        namespace: str,
        task_queue: str,
        identity: str,
        slots: int,
        running: Callable[[], int],
        start: Callable[[ClaimedTask], None],
        only_types: Sequence[str] | None = None,
        exclude_types: Sequence[str] = (),
        max_per_second: float | None = None,
        queue_rate_per_s: float | None = None,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._task_queue = task_queue
        self._identity = identity
        self._slots = slots
        self._running = running
        self._start = start
        self._only_types = only_types
        self._exclude_types = exclude_types
        self._bucket = None if max_per_second is None else _TokenBucket(max_per_second)
        self._queue_rate = queue_rate_per_s
        self._slot_freed = asyncio.Event()

    def slot_freed(self) -> None:
        """An attempt of this kind ended."""
        self._slot_freed.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and start tasks until ``stop`` is set."""
        while not stop.is_set():
            free = self._slots - self._running()
            if free <= 0:
                self._slot_freed.clear()
                if self._slots - self._running() <= 0:
                    await wait_any(self._slot_freed, stop, timeout=None)
                continue
            if self._bucket is not None:
                free = min(free, self._bucket.available())
                if free <= 0:
                    await wait_any(stop, timeout=self._bucket.seconds_to_next())
                    continue
            changed = self._store.change_event()
            try:
                result = await self._store.claim_batch(
                    self._namespace,
                    self._task_queue,
                    max_tasks=free,
                    identity=self._identity,
                    only_types=self._only_types,
                    exclude_types=self._exclude_types,
                    queue_rate_per_s=self._queue_rate,
                )
            except Exception:
                logger.exception("claiming from task queue %r failed; retrying", self._task_queue)
                await wait_any(stop, timeout=STORE_RETRY_S)
                continue
            if self._bucket is not None:
                self._bucket.take(len(result.tasks))
            for task in result.tasks:
                self._start(task)
            if len(result.tasks) >= free:
                continue
            timeout = IDLE_POLL_S
            if result.next_ready_at is not None:
                timeout = min(timeout, max(0.0, result.next_ready_at - time.time()))
            disarm = None
            delivered = asyncio.Event()
            if self._bucket is None and self._queue_rate is None:
                # A start made by this process claims for us in its own
                # transaction: the task starts without a commit of its own.

                def deliver(tasks: list[ClaimedTask], delivered: asyncio.Event = delivered) -> None:
                    for task in tasks:
                        self._start(task)
                    delivered.set()

                disarm = self._store.arm_claim(
                    self._namespace,
                    self._task_queue,
                    max_tasks=free - len(result.tasks),
                    identity=self._identity,
                    only_types=self._only_types,
                    exclude_types=self._exclude_types,
                    deliver=deliver,
                )
            try:
                await wait_any(changed, stop, timeout=timeout)
            finally:
                if disarm is not None and not disarm():
                    # It fired: count its tasks before claiming again, or the
                    # slots they take would be claimed twice. The store always
                    # delivers (an empty list if the claim rolled back); the
                    # bound only keeps a store bug from stopping all claims.
                    await wait_any(delivered, timeout=DELIVERY_WAIT_S)
                    if not delivered.is_set():
                        logger.error(
                            "a claim armed on task queue %r was not delivered "
                            "within %.0f s; claiming again",
                            self._task_queue,
                            DELIVERY_WAIT_S,
                        )
