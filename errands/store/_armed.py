"""Claims armed by idle pollers (``Store.arm_claim``).

A poller that found nothing registers its claim here; the next start made by
this process on that queue, or the next change another process announces for
it, runs the claim inside its own transaction and hands the result over after
the commit. Taking a claim out, and putting it back when
nothing came of it, happen under one lock, so a poller's ``disarm()`` always
knows whether its claim fired.

A claim that finds nothing although its queue holds a task ready by this
machine's clock is handed over all the same (empty, with the ready time): its
transaction read the clock before the change it ran for became visible, so
its poller must look again rather than wait for a change that already came.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from errands.store import _wakeups
from errands.store._base import ClaimResult


class ClaimSpec:
    """What one claim asks for: the queue, how many, for whom, which types.
    Each store subclasses it with the SQL that carries it out."""

    def __init__(
        self,
        namespace: str,
        task_queue: str,
        max_tasks: int,
        identity: str,
        only_types: Sequence[str] | None,
        exclude_types: Sequence[str],
        queue_rate_per_s: float | None,
        *,
        worker_id: str | None = None,
        owner: str | None = None,
    ) -> None:
        self.namespace = namespace
        self.task_queue = task_queue
        self.max_tasks = max_tasks
        self.identity = identity
        self.only_types = None if only_types is None else frozenset(only_types)
        self.exclude_types = frozenset(exclude_types)
        self.queue_rate_per_s = queue_rate_per_s
        self.worker_id = worker_id
        """The registered worker claiming, if any (its last_seen moves)."""
        self.owner = owner
        """This process's hold on the store, which the claimed attempts name:
        whoever sees it gone fails them as WorkerLost (None: nobody does)."""

    def takes(self, activity_type: str) -> bool:
        """Whether this claim's type filter admits the type."""
        if self.only_types is not None and activity_type not in self.only_types:
            return False
        return activity_type not in self.exclude_types


C = TypeVar("C", bound=ClaimSpec)

Key = tuple[str, str]
"""(namespace, task queue)."""


@dataclass(eq=False)
class Armed(Generic[C]):
    """A poller waiting for work, with the claim to run for it."""

    claim: C
    deliver: Callable[[ClaimResult, int], None]
    """Called on ``loop`` with the claim's result and the number of the commit
    that made it (0 if it rolled back, or found nothing after a withdrawal)."""
    loop: asyncio.AbstractEventLoop
    withdrawn: bool = False
    """Its poller withdrew it while it ran: it is not armed again."""
    listener: object = None
    """The poller's change-feed subscription: a change this claim ran for
    need not wake it."""
    spent: bool = False
    """A follow-up claim (``Store.follow_up_claim``) that a transaction ran
    (writer thread): it is not run again when that transaction's changes are
    retried (the run that did not commit delivered nothing)."""

    def nothing(self) -> None:
        """Tell the poller its claim found nothing (it stops waiting)."""
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
            _wakeups.call_soon(self.loop, self.deliver, ClaimResult([], None), 0)

    def release(self) -> None:
        """A follow-up claim whose write ended, or that was never passed to
        one: if no transaction ran it, it never will, and delivers nothing."""
        if not self.spent:
            self.spent = True
            self.nothing()


class ArmedClaims(Generic[C]):
    """The armed claims of one store, by queue. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[Key, list[Armed[C]]] = {}

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def has(self, key: Key) -> bool:
        """Whether a claim is armed on the queue."""
        return key in self._waiting

    def arm(self, key: Key, armed: Armed[C]) -> Callable[[], bool]:
        """Register; return the poller's ``disarm``: True if withdrawn, False
        if the claim fired (its delivery is then on its way)."""
        with self._lock:
            self._waiting.setdefault(key, []).append(armed)

        def disarm() -> bool:
            with self._lock:
                waiting = self._waiting.get(key)
                if waiting is None or armed not in waiting:
                    # It runs or fired: its delivery (perhaps of nothing) comes.
                    armed.withdrawn = True
                    return False
                waiting.remove(armed)
                if not waiting:
                    del self._waiting[key]
                return True

        return disarm

    def claim_for(
        self,
        key: Key,
        activity_type: str,
        run: Callable[[C], ClaimResult],
        handoffs: list[tuple[Armed[C], ClaimResult]],
    ) -> None:
        """In a start's transaction: run the claim of a poller waiting on the
        queue for this type, and note its tasks for delivery after the commit.
        A claim that finds nothing (see _hand_over), or raises, stays armed."""
        armed = self._take(key, activity_type)
        if armed is None:
            return
        try:
            result = run(armed.claim)
        except BaseException:
            self._put_back(key, armed)
            raise
        if _hand_over(result):
            handoffs.append((armed, result))
        else:
            self._put_back(key, armed)

    def claim_all(
        self,
        key: Key,
        run: Callable[[C], ClaimResult],
        handoffs: list[tuple[Armed[C], ClaimResult]],
    ) -> list[Armed[C]]:
        """In an intake of another process's change to the queue: run every
        claim armed on it (the change does not say which types it concerns).
        Claims that find nothing (see _hand_over) stay armed. Those that ran."""
        with self._lock:
            waiting = self._waiting.pop(key, [])
        kept: list[Armed[C]] = []
        done = 0
        try:
            for armed in waiting:
                result = run(armed.claim)
                done += 1
                if _hand_over(result):
                    handoffs.append((armed, result))
                else:
                    kept.append(armed)
        finally:
            for armed in kept + waiting[done:]:
                self._put_back(key, armed)
        return waiting[:done]

    def _take(self, key: Key, activity_type: str) -> Armed[C] | None:
        with self._lock:
            waiting = self._waiting.get(key)
            if not waiting:
                return None
            for i, armed in enumerate(waiting):
                if armed.claim.takes(activity_type):
                    del waiting[i]
                    if not waiting:
                        del self._waiting[key]
                    return armed
            return None

    def _put_back(self, key: Key, armed: Armed[C]) -> None:
        with self._lock:
            if not armed.withdrawn:
                self._waiting.setdefault(key, []).append(armed)
                return
        armed.nothing()  # its poller stopped waiting for it while it ran


def _hand_over(result: ClaimResult) -> bool:
    """Whether a claim's result goes to its poller: tasks, or a task ready
    already that the claim's clock, read before its snapshot, did not admit."""
    ready = result.next_ready_at
    return bool(result.tasks) or (ready is not None and ready <= time.time())
