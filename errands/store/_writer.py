"""The writer: one thread and one connection that drain every pending change
of a process into one transaction (group commit), and wake each caller after
the commit that holds its change, so nothing is acknowledged before it is
durable.

A batch runs its changes kind by kind (starts first, so claims see them). A
batch that fails for an unexpected reason runs again one change at a time,
so one bad change cannot fail the others. A batch whose connection dropped
runs again on a new connection when it cannot have committed (COMMIT not
sent, or answered with an error); when COMMIT went unanswered the dialect is
asked what became of the transaction. Only what a committed transaction did
is published.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from errands.exceptions import StoreError
from errands.store import _wakeups
from errands.store._dialect import Dialect, Tx

logger = logging.getLogger("errands.store")

MAX_BATCH = 2_000
"""Most changes one group commit holds."""

WRITE_TRIES = 3
"""How often a batch whose connection broke before it could commit runs again
on a new connection (a dead connection fails at once, so this is quick)."""

KINDS = ("start", "intake", "claim", "heartbeat", "complete", "op")
"""The order in which a batch's kinds run. Within a batch every change is
independent (each caller waits for its own commit before its next change), so
any order is valid; starts go first so that claims see them."""

WRITING_KINDS = frozenset({"start", "heartbeat", "complete", "op"})
"""Kinds that nearly always change rows (claims and intakes often find nothing).

They are also the kinds whose commit must reach the disk before it is
acknowledged. A batch of claims and intakes only commits without waiting for
the disk (no fsync on SQLite, ``synchronous_commit = off`` on PostgreSQL): a
crash of the machine or the database can undo such a claim, never corrupt
anything, and what it undoes is as if the worker died with the attempt - the
execution is claimable again. The next durable commit makes it durable too
(the write-ahead log is flushed in order)."""

Outcome = tuple[Any, BaseException | None]
Handler = Callable[[Tx, list[Any]], list[Outcome]]


@dataclass
class Pending:
    """One change waiting for the writer; ``future`` is None when nobody waits."""

    kind: str
    arg: Any
    future: asyncio.Future[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None


@dataclass
class Committed:
    """What a batch's transaction did (or, with ``tx`` None, how it failed)."""

    outcomes: list[tuple[Pending, Outcome]]
    tx: Tx | None
    lost_handoffs: list[Any] = field(default_factory=list)


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in items:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class Writer:
    """The one writing connection of a store, on its own thread."""

    def __init__(
        self,
        dialect: Dialect,
        handlers: dict[str, Handler],
        after_commit: Callable[[Tx], None],
        deliver_lost: Callable[[list[Any]], None],
        before_commit: Callable[[Tx], None] = lambda tx: None,
        intake_failed: Callable[[], None] = lambda: None,
    ) -> None:
        self._dialect = dialect
        self._handlers = handlers
        self._after_commit = after_commit
        self._before_commit = before_commit
        self._intake_failed = intake_failed
        self._deliver_lost = deliver_lost
        self.transactions = 0
        """Transactions begun (for tests and bench that count round trips)."""
        self.kinds_begun: collections.Counter[str] = collections.Counter()
        """Transactions begun by the kinds of change they held ("claim+complete"):
        what a test that counts round trips names when it finds too many."""
        self.observers: list[Callable[[int, float], None]] = []
        """Called with (changes, seconds) after each commit (metrics)."""
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="errands-writer", daemon=True)
        self._thread.start()

    def submit(self, kind: str, arg: Any) -> asyncio.Future[Any]:
        """Queue a change; the future settles after the commit that holds it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(Pending(kind, arg, future, loop))
        return future

    def post(self, kind: str, arg: Any) -> None:
        """Queue a change nobody waits for; callable from any thread."""
        self._queue.put(Pending(kind, arg))

    def stop(self) -> None:
        """Finish what is queued, then stop the thread (blocking)."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            try:
                self._commit(batch)
            except BaseException:  # a bug: never leave callers waiting
                logger.exception("the store's writer failed a batch")
                self._reply([(item, (None, StoreError("store writer failed"))) for item in batch])

    def _commit(self, batch: list[Pending]) -> None:
        only_pulls = all(item.kind == "intake" and item.arg is None for item in batch)
        if only_pulls and not self._dialect.pull_needed():
            return  # only this process committed since the last look
        began = time.perf_counter()
        done = self._transaction(batch)
        if done is not None and done.tx is not None and self.observers:
            elapsed = time.perf_counter() - began
            for observe in self.observers:
                observe(len(batch), elapsed)
        if done is None:
            # Something unexpected broke the batch: run each change alone.
            for item in batch:
                alone = self._transaction([item])
                if alone is None:
                    error = StoreError(f"{self._dialect.label}: write failed")
                    alone = Committed([(item, (None, error))], None)
                self._finish(alone)
        else:
            self._finish(done)

    def _finish(self, done: Committed) -> None:
        with _wakeups.gathered():  # one wake-up per event loop for all of it
            if done.lost_handoffs:
                self._deliver_lost(done.lost_handoffs)
            if done.tx is not None:
                self._after_commit(done.tx)
            elif any(item.kind == "intake" for item, _ in done.outcomes):
                self._intake_failed()
            self._reply(done.outcomes)

    @staticmethod
    def _reply(outcomes: list[tuple[Pending, Outcome]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for item, (value, error) in outcomes:
            if item.future is not None and item.loop is not None:
                by_loop.setdefault(item.loop, []).append((item.future, value, error))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                _wakeups.call_soon(loop, _settle, items)

    def _apply(self, tx: Tx, batch: list[Pending]) -> list[tuple[Pending, Outcome]]:
        by_kind: dict[str, list[Pending]] = {}
        for item in batch:
            by_kind.setdefault(item.kind, []).append(item)
        out: list[tuple[Pending, Outcome]] = []
        for kind in KINDS:
            items = by_kind.get(kind)
            if items:
                results = self._handlers[kind](tx, [item.arg for item in items])
                out.extend(zip(items, results, strict=True))
        return out

    def _transaction(self, batch: list[Pending]) -> Committed | None:
        """Run the batch in one transaction, retrying on a new connection when
        the old one broke before the commit; None when an unexpected error
        aborted it (the caller then runs each change alone)."""
        lost: list[Any] = []  # hand-offs of aborted tries
        kinds = frozenset(item.kind for item in batch)
        for tries_left in range(WRITE_TRIES - 1, -1, -1):
            tx: Tx | None = None
            committing = False
            try:
                self.transactions += 1
                self.kinds_begun["+".join(sorted(kinds))] += 1
                tx = self._dialect.begin(kinds)
                outcomes = self._apply(tx, batch)
                committing = True
                self._before_commit(tx)
                self._dialect.commit(tx)
                return Committed(outcomes, tx, lost)
            except BaseException as e:
                if tx is not None:
                    lost.extend(tx.handoffs)  # the claims rolled back (unless it committed)
                if not self._dialect.lost():
                    if tx is None and isinstance(e, self._dialect.driver_errors):
                        # No transaction began (no connection, the lock not
                        # had): running each change alone would only wait again.
                        error = self._dialect.translate(e)
                        error.__cause__ = e
                        return Committed([(item, (None, error)) for item in batch], None, lost)
                    if tx is not None:
                        self._dialect.rollback(tx)
                    return self._failed(e, batch, lost)
                # The connection is gone. Nothing can have committed if COMMIT was
                # not sent yet; else ask what became of it. Even an error with a
                # SQLSTATE proves nothing: a backend told to terminate (57P01) may
                # say so after its commit went through, before it answered it.
                fate = "aborted"
                if committing and tx and tx.xid:
                    fate = self._dialect.fate(tx.xid)
                if fate == "committed" and tx is not None:
                    logger.warning(
                        "%s: connection lost (%s) after a commit that went through",
                        self._dialect.label,
                        str(e).strip(),
                    )
                    kept = [h for h in lost if not any(h is t for t in tx.handoffs)]
                    return Committed(outcomes, tx, kept)
                if fate == "aborted" and isinstance(e, self._dialect.driver_errors) and tries_left:
                    logger.warning(
                        "%s: connection lost (%s); retrying %d changes on a new connection",
                        self._dialect.label,
                        str(e).strip(),
                        len(batch),
                    )
                    continue
                doubt = " while committing: the changes may or may not be saved" * (
                    fate != "aborted"
                )
                error = StoreError(f"{self._dialect.label}: connection lost{doubt}: {e}")
                error.__cause__ = e
                return Committed([(item, (None, error)) for item in batch], None, lost)
        raise AssertionError("unreachable")

    def _failed(
        self, error: BaseException, batch: list[Pending], lost: list[Any]
    ) -> Committed | None:
        if len(batch) == 1:
            failure = error
            if isinstance(error, self._dialect.driver_errors):
                failure = self._dialect.translate(error)
                failure.__cause__ = error
            return Committed([(batch[0], (None, failure))], None, lost)
        if isinstance(error, self._dialect.driver_errors):
            logger.warning(
                "%s: group commit of %d changes failed (%s); retrying one by one",
                self._dialect.label,
                len(batch),
                str(error).strip(),
            )
        else:
            logger.exception("%s: group commit failed; retrying one by one", self._dialect.label)
        self._deliver_lost(lost)
        lost.clear()
        return None
