"""Claim work: wait for free slots or a change on the queue, then claim up to
the free slots in one store call.

An idle poller arms a claim with the store, which runs it inside the
transaction that brings work (a start in this process, or the intake of
another process's change) and hands the tasks over after the commit: the
task starts without a claim of its own. The poller wakes only for changes to
its queue (the store's change feed), or when a known future task becomes
ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from errands._aio import Flag, wait_any
from errands._outage import Backoff, Outage
from errands.exceptions import StoreError
from errands.store import ClaimedTask, ClaimResult, Store
from errands.store._base import FollowUp
from errands.store._changes import Change, Claimable, Started, Subscription

logger = logging.getLogger("errands.worker")

IDLE_POLL_S = 30.0
"""Longest an idle poller waits before looking again without a change (the
change feed announces all work; this only bounds the cost of a bug)."""

DELIVERY_WAIT_S = 10.0
"""Longest a poller waits for the tasks of an armed claim that fired."""

STORE_RETRY_S = 1.0
"""Pause after a claim failed for another reason than the store (a bug)."""


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
        worker_id: str | None = None,
        outage: Outage | None = None,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._task_queue = task_queue
        self._identity = identity
        self._worker_id = worker_id
        self._slots = slots
        self._running = running
        self._start = start
        self._only_types = only_types
        self._exclude_types = exclude_types
        self._bucket = None if max_per_second is None else _TokenBucket(max_per_second)
        self._queue_rate = queue_rate_per_s
        self._outage = outage or Outage(logger, f"poller of task queue {task_queue!r}")
        self._backoff = Backoff()
        self._slot_freed = Flag()
        self._next_ready: float | None = None
        """When the queue's next known task becomes ready (this machine's clock)."""
        self._waiting_for_slot = False
        self._following = 0
        """Follow-up claims handed out and not delivered yet: each holds the
        slot it was made for."""
        self._followed = Flag()
        """Set whenever no follow-up claim is on its way."""
        self._followed.set()

    def slot_freed(self, *, reporting: bool = False) -> FollowUp | None:
        """An attempt of this kind ended. ``reporting``: it is about to write
        its completion. If this poller waits for a slot, it then gets a claim
        for the freed slot to run in that write (``Store.follow_up_claim``):
        one commit for both instead of a second one for the claim. The slot
        stays taken until that claim is delivered (or dropped)."""
        if (
            reporting
            and self._waiting_for_slot
            and self._bucket is None
            and self._queue_rate is None
        ):
            follow_up = self._store.follow_up_claim(
                self._namespace,
                self._task_queue,
                identity=self._identity,
                only_types=self._only_types,
                exclude_types=self._exclude_types,
                deliver=self._deliver_follow_up,
                worker_id=self._worker_id,
            )
            if follow_up is not None:
                self._following += 1
                self._followed.clear()
                return follow_up
        self._slot_freed.set()
        return None

    def _deliver_follow_up(self, result: ClaimResult, serial: int) -> None:
        self._following -= 1
        if not self._following:
            self._followed.set()
        for task in result.tasks:
            self._start(task)
        if not result.tasks:
            self._slot_freed.set()  # the slot is free after all: claim as usual

    def _free(self) -> int:
        return self._slots - self._running() - self._following

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and start tasks until ``stop`` is set."""
        queue = (self._namespace, self._task_queue)
        sub = self._store.feed.subscribe(Started, Claimable, keys=[queue])
        listening = True
        try:
            need_claim = True
            while not stop.is_set():
                free = self._free()
                if free <= 0:
                    # Full: no change to the queue concerns this poller until a
                    # slot frees (it claims then anyway), so it stops listening.
                    if listening:
                        sub.discard_keys([queue])
                        listening = False
                    self._slot_freed.clear()
                    if self._free() <= 0:
                        self._waiting_for_slot = True
                        try:
                            await wait_any(self._slot_freed, stop, timeout=None)
                        finally:
                            self._waiting_for_slot = False
                    need_claim = True
                    continue
                if self._bucket is not None:
                    free = min(free, self._bucket.available())
                    if free <= 0:
                        await wait_any(stop, timeout=self._bucket.seconds_to_next())
                        continue
                if need_claim:
                    result = await self._claim(free, stop)
                    if result is None or len(result.tasks) >= free:
                        continue
                    if not listening:
                        # About to wait: listen first, then claim once more, so
                        # a start between that claim and now is not missed.
                        sub.add_keys([queue])
                        listening = True
                        continue
                    free -= len(result.tasks)
                need_claim = await self._idle(sub, free, stop)
        finally:
            sub.close()
            # Follow-up claims on their way start their tasks when delivered:
            # wait for them, so none starts after the worker stopped claiming.
            # The bound only keeps a store bug from holding the shutdown.
            await wait_any(self._followed, timeout=DELIVERY_WAIT_S)

    async def _claim(self, free: int, stop: asyncio.Event) -> ClaimResult | None:
        try:
            result = await self._store.claim_batch(
                self._namespace,
                self._task_queue,
                max_tasks=free,
                identity=self._identity,
                only_types=self._only_types,
                exclude_types=self._exclude_types,
                queue_rate_per_s=self._queue_rate,
                worker_id=self._worker_id,
            )
        except StoreError as e:  # an outage: claim again after a pause
            self._outage.failed(f"claiming from task queue {self._task_queue!r}", e)
            await wait_any(stop, timeout=self._backoff.next())
            return None
        except Exception:
            logger.exception("claiming from task queue %r failed; retrying", self._task_queue)
            await wait_any(stop, timeout=STORE_RETRY_S)
            return None
        self._backoff.reset()
        self._outage.passed()
        self._next_ready = result.next_ready_at
        if self._bucket is not None:
            self._bucket.take(len(result.tasks))
        for task in result.tasks:
            self._start(task)
        return result

    async def _idle(self, sub: Subscription, free: int, stop: asyncio.Event) -> bool:
        """Wait for work with ``free`` slots: a change to the queue, a known
        task becoming ready, or an armed claim's delivery. Whether to claim."""
        delivered: list[tuple[ClaimResult, int]] = []
        got = Flag()
        disarm = None
        if self._bucket is None and self._queue_rate is None:

            def deliver(result: ClaimResult, serial: int) -> None:
                for task in result.tasks:
                    self._start(task)
                delivered.append((result, serial))
                got.set()

            disarm = self._store.arm_claim(
                self._namespace,
                self._task_queue,
                max_tasks=free,
                identity=self._identity,
                only_types=self._only_types,
                exclude_types=self._exclude_types,
                deliver=deliver,
                listener=sub,
                worker_id=self._worker_id,
            )
        timeout = IDLE_POLL_S
        if self._next_ready is not None:
            timeout = min(timeout, max(0.0, self._next_ready - time.time()))
        woken = False
        try:
            await wait_any(sub.event, got, stop, timeout=timeout)
            woken = sub.event.is_set()
        finally:
            fired = disarm is not None and not disarm()
            if fired:
                # Count its tasks before claiming again, or the slots they take
                # would be claimed twice. The store always delivers (an empty
                # result if the claim rolled back); the bound only keeps a
                # store bug from stopping all claims.
                await wait_any(got, timeout=DELIVERY_WAIT_S)
        if fired and not got.is_set():
            logger.error(
                "a claim armed on task queue %r was not delivered within %.0f s; claiming again",
                self._task_queue,
                DELIVERY_WAIT_S,
            )
            return True
        if delivered:
            result, serial = delivered[0]
            self._next_ready = result.next_ready_at
            if not serial or len(result.tasks) >= free:
                return True  # it rolled back, or filled the slots: look again
            # Changes the delivering commit already covered need no claim.
            return self._wanted(sub.take(after=serial))
        if self._next_ready is not None and self._next_ready <= time.time():
            sub.take()
            return True
        # A change may call for a claim; so does the idle wait running out.
        return self._wanted(sub.take()) or not woken

    def _wanted(self, changes: Sequence[Change]) -> bool:
        """Whether changes to the queue call for a claim (a later ready time
        only moves the wake-up)."""
        claim = False
        for change in changes:
            if isinstance(change, Claimable) and change.at > time.time():
                if self._next_ready is None or change.at < self._next_ready:
                    self._next_ready = change.at
            else:
                claim = True
        return claim
