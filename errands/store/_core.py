"""The store core: the one Store both databases share.

It speaks the lifecycle over a dialect's named statements: every change is
one conditional statement (or a locked read and the update it decides),
queued to the writer (group commit) and answered after its commit; reads run
on reader threads. What a commit changed is published on the change feed
(``store.feed``) and announced to other processes by the dialect; what other
processes announce comes back through ``_arrived`` and is resolved here into
the changes this process's waiters asked for (a closed run's outcome, an
interrupt of a held attempt), in one transaction with the claims armed by
idle pollers.

Decisions (retry or close, which timeout, id reuse) come from
``errands._lifecycle``; the SQL from the dialect's catalogue.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import concurrent.futures
import contextlib
import copy
import functools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from errands import _lifecycle as lc
from errands._lifecycle import FAR, RunState, Status
from errands.common import ActivityIDConflictPolicy, SearchAttributeIndexedValueType
from errands.exceptions import (
    ActivityAlreadyClosedError,
    ActivityAlreadyStartedError,
    ActivityNotFoundError,
    ErrandsError,
    StoreError,
)
from errands.store import _rows, _wakeups, _where
from errands.store import _transitions as tr
from errands.store._armed import Armed, ArmedClaims
from errands.store._base import (
    AttemptRecord,
    ClaimResult,
    ClosedRun,
    ExecutionOptions,
    ExecutionRecord,
    FailureReport,
    FollowUp,
    HeartbeatResult,
    NewExecution,
    Query,
    QueueBacklog,
    StartResult,
    Store,
    WorkerRecord,
)
from errands.store._changes import (
    FOREIGN,
    GROUP_OF,
    GROUPS,
    AnyKind,
    Change,
    Claimable,
    Closed,
    Deadline,
    Feed,
    Hint,
    Interrupted,
    Resync,
    RunBucket,
    Started,
    Touched,
    bucket,
    queue_bucket,
)
from errands.store._dialect import Dialect, Tx
from errands.store._transitions import Claim
from errands.store._writer import Outcome, Writer

logger = logging.getLogger("errands.store")

T = TypeVar("T")

NO_LIMIT = 2**62
"""A LIMIT that limits nothing."""

BULK_BATCH = 1_000
"""Most executions one transaction of a bulk action changes."""

MAX_BATCH_STARTS = 10_000
"""Most executions one ``start_many`` writes (in one transaction)."""

BULK_PAUSE_S = 0.002
"""How long a bulk action leaves the database to others between two batches:
long enough for a process waiting for the write lock to take it (the SQLite
dialect tries every 0.5 ms), and for this process's other changes to commit
without the next batch."""

BLOCKING_READ_TIMEOUT_S = 5.0
"""How long a read made off the event loop (a metrics collection) may take."""

BulkAction = Callable[[Tx, str, str], object]
"""What a bulk action does to one open execution (activity id, run id), inside
the batch's transaction: its result counts as a change when true."""


def _run_each(tx: Tx, ops: list[Callable[[Tx], Any]]) -> list[Outcome]:
    """Run changes one at a time; a refused one (id in use, not found, ...)
    wrote nothing and fails alone."""
    out: list[Outcome] = []
    for op in ops:
        try:
            out.append((op(tx), None))
        except ErrandsError as e:
            out.append((None, e))
    return out


def _run_follow_ups(tx: Tx, follow_ups: Sequence[Armed[Claim] | None]) -> None:
    """Run completions' follow-up claims that no transaction ran yet: one
    claim per poller for all the slots its completions here free, each
    follow-up then handed one task (or none) after the commit. If the
    transaction rolls back they deliver nothing, and they are never run again
    (the completions may be retried, not their claims)."""
    by_poller: dict[Callable[[ClaimResult, int], None], list[Armed[Claim]]] = {}
    for follow_up in follow_ups:
        if follow_up is not None and not follow_up.spent:
            follow_up.spent = True
            by_poller.setdefault(follow_up.deliver, []).append(follow_up)
    at = len(tx.handoffs)
    for group in by_poller.values():
        tx.handoffs.extend((f, ClaimResult([], None)) for f in group)  # what an abort delivers
    for group in by_poller.values():
        claim = copy.copy(group[0].claim)
        claim.max_tasks = len(group)
        result = claim.run(tx)
        for i, f in enumerate(group):
            tx.handoffs[at + i] = (f, ClaimResult(result.tasks[i : i + 1], result.next_ready_at))
        at += len(group)


class CoreStore(Store):
    """The Store over a dialect."""

    def __init__(self, dialect: Dialect) -> None:
        super().__init__()
        self._dialect = dialect
        self.label = dialect.label
        self.feed = Feed()
        self._armed: ArmedClaims[Claim] = ArmedClaims()
        self._held: dict[str, set[int]] = {}
        """The serials of attempts this process claimed and has not reported,
        by run id (more than one after a reset, while the reset attempt stops)
        (writer thread)."""
        self._serial = 0
        self._serial_lock = threading.Lock()
        self._offset = 0.0
        """The database clock's offset from this machine's, at the last commit."""
        self._deadlines: dict[str, float] = {}
        """The earliest deadline announced per namespace (database clock), by
        this process or another: every timer plans to look by then."""
        self._writer = Writer(
            dialect,
            {
                "start": self._bulk_start,
                "intake": self._intake,
                "claim": _run_each,
                "heartbeat": self._bulk_heartbeat,
                "complete": self._bulk_complete,
                "op": _run_each,
            },
            self._after_commit,
            self._deliver_lost,
            self._before_commit,
            self._intake_failed,
        )
        self._owner: str | None = None
        """This process's hold on the store, once a worker registered (its
        liveness token is held)."""
        self._owner_lock = threading.Lock()
        self._lost_failure: bytes | None = None
        """What the attempts of a process found gone fail with (once watching)."""
        self._readers = ThreadPoolExecutor(dialect.readers, thread_name_prefix="errands-reader")
        self.reads = 0
        """Reads run (for tests and bench that count round trips)."""
        self.reads_by: collections.Counter[str] = collections.Counter()
        """Reads run, by the function that read (as ``kinds_begun``)."""
        self._closed = False

    @property
    def round_trips(self) -> int:
        """Transactions and reads this store has run: its database round trips
        (not counting the dialect's cheap wake-up checks)."""
        return self._writer.transactions + self.reads

    @property
    def round_trip_kinds(self) -> dict[str, int]:
        """``round_trips`` by what made them: writer transactions by the kinds
        of change they held, reads by the function that read."""
        return {**self._writer.kinds_begun, **{f"read:{k}": n for k, n in self.reads_by.items()}}

    # ---------------------------------------------------------------- plumbing

    async def _write(self, kind: str, arg: Any) -> Any:
        if self._closed:
            raise StoreError(f"{self.label} is closed")
        return await self._writer.submit(kind, arg)

    async def _op(self, op: Callable[[Tx], T]) -> T:
        result: T = await self._write("op", op)
        return result

    async def _read(self, fn: Callable[[Tx], T]) -> T:
        if self._closed:
            raise StoreError(f"{self.label} is closed")
        self.reads += 1
        self.reads_by[getattr(fn, "__qualname__", "?")] += 1
        return await asyncio.get_running_loop().run_in_executor(
            self._readers, self._dialect.read, fn, time.monotonic()
        )

    def start_watching(self) -> None:
        """Hear of other processes' commits from now on (blocks until listening)."""
        self._dialect.watch(self._arrived, self._wants)
        self.feed.on_interest = self._interest

    def _interest(self, kind: AnyKind, on: bool) -> None:
        """A subscription to ``kind`` came or went: the dialect hears the
        kind's group while any kind of the group is wanted."""
        del on  # the group's interest is read from the feed
        group = GROUP_OF[kind]
        self._dialect.listen(group, any(self.feed.interested(k) for k in GROUPS[group]))

    def _wants(self, kind: AnyKind, buckets: Collection[int]) -> bool:
        """Whether this process waits for a change of ``kind`` to something in
        one of these buckets: an idle poller of a queue there (Started), an
        awaited run (Closed) or a held one (Interrupted) there, a watched one
        (options)."""
        if self.feed.watching_everything(kind):
            return True
        rang = set(buckets)
        if kind in (Started, Claimable):
            queues = self.feed.keys(Started)
            if queues is None:
                return True
            return any(queue_bucket(q) in rang for q in queues if isinstance(q, tuple))
        if kind is Interrupted:
            return any(bucket(r) in rang for r in list(self._held))
        return self.feed.names_run_in(kind, rang)

    async def close(self) -> None:
        if self._closed:
            return
        owner = self._owner
        if owner is not None:
            with contextlib.suppress(StoreError):  # the token goes anyway, with the dialect
                await self._op(functools.partial(_forget_owner, owner=owner))
        self._closed = True
        self.feed.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._writer.stop)
        await loop.run_in_executor(None, self._readers.shutdown, True)
        await loop.run_in_executor(None, self._dialect.close)

    # ---------------------------------------------------------------- after a commit

    def _before_commit(self, tx: Tx) -> None:
        """Leave out announcements of deadlines no earlier than one announced
        already and still ahead: every timer plans to look by then anyway (a
        claim's deadline is nearly always such a one)."""
        kept: list[Change] = []
        for change in tx.changes:
            if isinstance(change, Deadline):
                known = self._deadlines.get(change.namespace, 0.0)
                if tx.now < known <= change.at:
                    continue
            kept.append(change)
        tx.changes = kept

    def _note_deadline(self, namespace: str, at: float, now: float) -> None:
        known = self._deadlines.get(namespace, 0.0)
        if known <= now or at < known:
            self._deadlines[namespace] = at

    def _after_commit(self, tx: Tx) -> None:
        """On the writer's thread, after ``tx`` committed: hand claims over,
        note held attempts, publish what it changed."""
        with self._serial_lock:
            self._serial += 1
            serial = self._serial
        self._offset = tx.offset
        for change in tx.changes:
            if isinstance(change, Deadline):
                self._note_deadline(change.namespace, change.at, tx.now)
        self._expect_claims(tx.changes, tx.now)
        for run_id, serial in tx.released:
            self._forget_held(run_id, serial)
        for run_id, serial in tx.claimed.items():
            self._held.setdefault(run_id, set()).add(serial)
        # The writer gathers these calls: one wake-up per event loop, however
        # many claims this commit hands over (a batch of completions carries a
        # follow-up claim each).
        for armed, result in tx.handoffs:
            try:
                _wakeups.call_soon(armed.loop, armed.deliver, result, serial)
            except RuntimeError:  # the loop closed: the tasks time out and retry
                logger.warning("claimed %d tasks for a poller whose loop closed", len(result.tasks))
        self.feed.publish(_collapsed([_localized(c, tx.offset) for c in tx.changes]), serial)
        if tx.covered:
            self.feed.publish(_collapsed(tx.covered), serial, skip=tx.covered_for)
        # Other processes' changes: no commit of this process covers them.
        self.feed.publish(_collapsed(tx.local_changes), FOREIGN)

    def _expect_claims(self, changes: Sequence[Change | Hint], now: float) -> None:
        """Tell the dialect's liveness watcher when the earliest of ``changes``
        that makes an execution claimable falls due (``now`` on the store's
        clock, as the changes' times): a worker process may claim it and die
        before the watcher's next look at who runs attempts."""
        if self._lost_failure is None:
            return  # not watching
        due: float | None = None
        for change in changes:
            if isinstance(change, Started):
                due = now
                break
            if isinstance(change, Claimable) and (due is None or change.at < due):
                due = change.at
        if due is not None:
            self._dialect.expect_claims(max(0.0, due - now))

    def _intake_failed(self) -> None:
        # Other processes' changes that this intake took in went unheard.
        self.feed.publish([Resync()], FOREIGN)

    def _deliver_lost(self, lost: list[Any]) -> None:
        # Claims that rolled back: tell their pollers nothing came.
        for armed, _ in lost:
            armed.nothing()

    # ---------------------------------------------------------------- other processes

    def _arrived(self, hints: list[Hint] | None) -> None:
        """The dialect heard of other processes' commits (any thread). What
        needs the store (a claim armed on the queue, the outcome of an awaited
        run, the state of a held attempt) goes to the writer, which resolves it
        in one transaction; the rest is published at once; None means the
        dialect must pull the changes in a transaction."""
        if self._closed:
            return
        if hints is None:
            self._writer.post("intake", None)
            return
        self._expect_claims(hints, time.time() - self._offset)
        awaited = self.feed.subscribed_runs(Closed)
        needed: list[Hint] = []
        direct: list[Change] = []
        unresolved: list[Change] = []  # for the subscriptions that watch everything
        for hint in hints:
            if isinstance(hint, (Started, Claimable)):
                (needed if self._armed.has(hint.queue) else direct).append(hint)
            elif isinstance(hint, Closed):
                if hint.run_id in awaited:
                    needed.append(hint)
                elif self.feed.watching_everything(Closed):
                    unresolved.append(hint)
            elif isinstance(hint, Interrupted):
                if hint.run_id in self._held:
                    needed.append(hint)
                elif self.feed.watching_everything(Interrupted):
                    unresolved.append(hint)
            elif isinstance(hint, RunBucket):
                needed.append(hint)
            elif isinstance(hint, Deadline) and not hint.namespace:
                namespaces = self.feed.keys(Deadline) or ()
                direct.extend(Deadline(str(ns), hint.at) for ns in namespaces)
            elif isinstance(hint, Deadline):
                self._note_deadline(hint.namespace, hint.at, time.time() - self._offset)
                direct.append(hint)
            else:
                direct.append(hint)
        if needed:
            self._writer.post("intake", needed)
        if direct:
            self.feed.publish(  # other processes' changes: no commit of ours covers them
                _collapsed([_localized(c, self._offset) for c in direct]), FOREIGN
            )
        if unresolved:
            self.feed.publish(unresolved, FOREIGN, everything_only=True)

    def _intake(self, tx: Tx, items: list[list[Hint] | None]) -> list[Outcome]:
        hints: list[Hint] = []
        for item in items:
            if item is not None:
                hints.extend(item)
        if any(item is None for item in items):
            hints.extend(self._dialect.pull(tx))
        runs: list[Hint] = []
        for hint in hints:
            if isinstance(hint, (Started, Claimable)):
                self._intake_queue(tx, hint)
            elif isinstance(hint, (Closed, Interrupted, RunBucket)):
                runs.append(hint)
            elif isinstance(hint, Deadline):
                tx.local_changes.append(Deadline(hint.namespace, tx.local(hint.at)))
            else:
                tx.local_changes.append(hint)
        if runs:
            self._resolve_runs(tx, runs)
        return [(None, None)] * len(items)

    def _intake_queue(self, tx: Tx, hint: Started | Claimable) -> None:
        """Run the claims idle pollers armed on the queue; wake the others."""
        if isinstance(hint, Claimable):
            hint = Claimable(hint.queue, tx.local(hint.at))
            if hint.at > time.time():
                tx.local_changes.append(hint)
                return
        try:
            ran = self._armed.claim_all(hint.queue, lambda claim: claim.run(tx), tx.handoffs)
        except self._dialect.driver_errors as e:
            if not self._dialect.contended(e):
                raise
            ran = []  # another process is writing: the pollers claim for themselves
        if not ran:
            tx.local_changes.append(hint)
        else:
            # The pollers whose claims ran need not hear of it; the others of
            # the queue (another slot kind, a rate-limited one) must.
            tx.covered.append(hint)
            tx.covered_for.update(id(armed.listener) for armed in ran if armed.listener)

    def _resolve_runs(self, tx: Tx, hints: list[Hint]) -> None:
        """Read the state of the runs the hints may concern that this process
        awaits or holds; publish their closes and interrupts."""
        self._expect_claims(hints, time.time() - self._offset)
        awaited = self.feed.subscribed_runs(Closed)
        # Those that concern no run this process awaits or holds: as they are,
        # for the subscriptions that watch everything (they changed nothing here).
        unresolved: list[Change] = []
        for hint in hints:
            if isinstance(hint, RunBucket):
                if self.feed.watching_everything(hint.kind):
                    unresolved.append(Touched(hint.kind, hint.bucket))
                continue
            mine = awaited if isinstance(hint, Closed) else self._held
            if (
                isinstance(hint, (Closed, Interrupted))
                and hint.run_id not in mine
                and self.feed.watching_everything(type(hint))
            ):
                unresolved.append(hint)
        if unresolved:
            self.feed.publish(_collapsed(unresolved), FOREIGN, everything_only=True)
        held = {run_id: set(serials) for run_id, serials in self._held.items()}
        exact = {h.run_id for h in hints if isinstance(h, (Closed, Interrupted))}
        buckets = {h.bucket for h in hints if isinstance(h, RunBucket)}
        candidates = [
            r for r in awaited | set(held) if r in exact or (buckets and bucket(r) in buckets)
        ]
        if not candidates:
            return
        for row in tx.fetch("states_of_runs", ids=candidates):
            run_id, status = row["run_id"], Status(row["status"])
            if status is not Status.RUNNING and run_id in awaited:
                tx.local_changes.append(Closed(run_id, _rows.closed_run(row)))
            state = None if row["run_state"] is None else RunState(row["run_state"])
            for serial in held.get(run_id, ()):
                # A reset moved the base up to the held attempt's serial.
                superseded = row["attempt_base"] >= serial
                kind = lc.interrupt_kind(status, state, superseded=superseded)
                if kind is not None and (superseded or row["attempt"] == serial):
                    tx.local_changes.append(Interrupted(run_id, kind, serial))
                if status is not Status.RUNNING or superseded:
                    self._forget_held(run_id, serial)

    def _forget_held(self, run_id: str, serial: int) -> None:
        serials = self._held.get(run_id)
        if serials is not None:
            serials.discard(serial)
            if not serials:
                del self._held[run_id]

    # ---------------------------------------------------------------- start

    async def start(self, new: NewExecution) -> StartResult:
        result: StartResult = await self._write("start", new)
        return result

    def _bulk_start(self, tx: Tx, news: list[NewExecution]) -> list[Outcome]:
        out: list[Outcome | None] = [None] * len(news)
        insert: list[int] = []
        types: dict[tuple[str, str], str] = {}
        for i, new in enumerate(news):
            refused = tr.reuse_refusal(tx, new) or tr.attribute_refusal(tx, new, types)
            if refused is not None:
                out[i] = (None, refused)
            else:
                insert.append(i)
        created = tr.insert(tx, [news[i] for i in insert])
        made: list[NewExecution] = []
        for i in insert:
            new = news[i]
            if new.run_id in created:
                out[i] = (StartResult(new.run_id, created=True), None)
                made.append(new)
            else:
                out[i] = tr.start_conflict(tx, new, made)
        for new in made:
            if not new.start_delay_s and self._armed:
                self._armed.claim_for(
                    (new.namespace, new.task_queue),
                    new.activity_type,
                    lambda claim: claim.run(tx),
                    tx.handoffs,
                )
        return [o if o is not None else (None, None) for o in out]

    async def start_many(self, news: Sequence[NewExecution]) -> builtins.list[StartResult]:
        batch = builtins.list(news)
        if len(batch) > MAX_BATCH_STARTS:
            raise ValueError(
                f"start {len(batch)} activities in batches of at most {MAX_BATCH_STARTS:,}"
            )
        results, refused = await self._op(functools.partial(self._start_all, news=batch))
        if refused is not None:
            raise refused
        assert results is not None
        return results

    def _start_all(
        self, tx: Tx, news: builtins.list[NewExecution]
    ) -> tuple[builtins.list[StartResult] | None, Exception | None]:
        """Start every one of ``news`` or none: a refused one (an id running
        under policy FAIL, a refused reuse, a search attribute of another
        type) undoes the others' inserts, within the transaction; the results,
        or the refusal."""
        types: dict[tuple[str, str], str] = {}
        for new in news:
            refused = tr.reuse_refusal(tx, new) or tr.attribute_refusal(tx, new, types)
            if refused is not None:
                return None, refused
        mark = len(tx.changes)
        created = tr.insert(tx, news)
        results: builtins.list[StartResult] = []
        conflicts: builtins.list[str] = []
        for new in news:
            if new.run_id in created:
                results.append(StartResult(new.run_id, created=True))
                continue
            running = tx.one("running_of_id", ns=new.namespace, activity_id=new.activity_id)
            if running is not None and (
                new.id_conflict_policy is ActivityIDConflictPolicy.USE_EXISTING
            ):
                results.append(StartResult(running["run_id"], created=False))
            else:
                conflicts.append(new.activity_id)
        if conflicts:
            ids = sorted(created)
            tx.run("prune_search_attributes", ids=ids)
            tx.run("prune_runs", ids=ids)
            del tx.changes[mark:]
            shown = ", ".join(repr(c) for c in conflicts[:20])
            more = f" and {len(conflicts) - 20} more" if len(conflicts) > 20 else ""
            return None, ActivityAlreadyStartedError(
                f"activity ids already running (or given twice): {shown}{more}; "
                "nothing was started",
                activity_id=conflicts[0],
            )
        if self._armed:
            for new in news:
                if new.run_id in created and not new.start_delay_s:
                    self._armed.claim_for(
                        (new.namespace, new.task_queue),
                        new.activity_type,
                        lambda claim: claim.run(tx),
                        tx.handoffs,
                    )
        return results, None

    # ---------------------------------------------------------------- claim

    async def claim_batch(
        self,
        namespace: str,
        task_queue: str,
        *,
        max_tasks: int,
        identity: str,
        only_types: Sequence[str] | None = None,
        exclude_types: Sequence[str] = (),
        queue_rate_per_s: float | None = None,
        worker_id: str | None = None,
    ) -> ClaimResult:
        if only_types is not None and not only_types:
            return ClaimResult([], None)
        claim = self._claim(
            namespace, task_queue, max_tasks, identity, only_types, exclude_types, worker_id,
            queue_rate_per_s,
        )  # fmt: skip
        result: ClaimResult = await self._write("claim", claim.run)
        return result

    def arm_claim(
        self,
        namespace: str,
        task_queue: str,
        *,
        max_tasks: int,
        identity: str,
        only_types: Sequence[str] | None,
        exclude_types: Sequence[str],
        deliver: Callable[[ClaimResult, int], None],
        listener: object = None,
        worker_id: str | None = None,
    ) -> Callable[[], bool]:
        claim = self._claim(
            namespace, task_queue, max_tasks, identity, only_types, exclude_types, worker_id
        )
        armed = Armed(claim, deliver, asyncio.get_running_loop(), listener=listener)
        return self._armed.arm((namespace, task_queue), armed)

    def follow_up_claim(
        self,
        namespace: str,
        task_queue: str,
        *,
        identity: str,
        only_types: Sequence[str] | None,
        exclude_types: Sequence[str],
        deliver: Callable[[ClaimResult, int], None],
        worker_id: str | None = None,
    ) -> FollowUp | None:
        if only_types is not None and not only_types:
            return None
        claim = self._claim(
            namespace, task_queue, 1, identity, only_types, exclude_types, worker_id
        )
        return Armed(claim, deliver, asyncio.get_running_loop())

    def _claim(
        self,
        namespace: str,
        task_queue: str,
        max_tasks: int,
        identity: str,
        only_types: Sequence[str] | None,
        exclude_types: Sequence[str],
        worker_id: str | None,
        queue_rate_per_s: float | None = None,
    ) -> Claim:
        """A claim by this process (its attempts name this process as their
        owner when a registered worker claims); only a direct claim
        (``claim_batch``) takes a queue's rate limit."""
        return Claim(
            namespace,
            task_queue,
            max_tasks,
            identity,
            only_types,
            exclude_types,
            queue_rate_per_s,
            worker_id=worker_id,
            owner=None if worker_id is None else self._owner,
        )

    # ---------------------------------------------------------------- attempt outcomes

    async def heartbeat(self, run_id: str, attempt: int, details: bytes | None) -> HeartbeatResult:
        result: HeartbeatResult = await self._write("heartbeat", (run_id, attempt, details))
        return result

    def _bulk_heartbeat(self, tx: Tx, beats: list[tuple[str, int, bytes | None]]) -> list[Outcome]:
        rows = [{"run_id": r, "attempt": a, "data": d} for r, a, d in beats]
        found = tx.each("heartbeat", rows, key="run_id", now=tx.now, far=FAR)
        accepted = {(row["run_id"], row["attempt"]): row for row in found}
        out: list[Outcome] = []
        for run_id, attempt, _ in beats:
            row = accepted.get((run_id, attempt))
            if row is None:
                tr.expire_if_due(tx, run_id)
                out.append((HeartbeatResult(accepted=False, cancel_requested=False), None))
            else:
                result = HeartbeatResult(
                    accepted=True,
                    cancel_requested=bool(row["cancel_requested"]),
                    pause_requested=row["run_state"] == RunState.PAUSE_REQUESTED.value,
                )
                out.append((result, None))
        return out

    async def complete(
        self, run_id: str, attempt: int, result: bytes, *, then_claim: FollowUp | None = None
    ) -> bool:
        if then_claim is not None and not isinstance(then_claim, Armed):
            raise TypeError("then_claim must come from this store's follow_up_claim")
        done: bool = await self._write("complete", (run_id, attempt, result, then_claim))
        return done

    def _bulk_complete(
        self, tx: Tx, outcomes: list[tuple[str, int, bytes, Armed[Claim] | None]]
    ) -> list[Outcome]:
        rows = [{"run_id": r, "attempt": a, "data": d} for r, a, d, _ in outcomes]
        done = {
            (row["run_id"], row["attempt"])
            for row in tx.each("complete", rows, key="run_id", now=tx.now, far=FAR)
        }
        tr.end_attempts(
            tx, [(r, a, "COMPLETED", None, None) for r, a, _, _ in outcomes if (r, a) in done]
        )
        _run_follow_ups(tx, [follow_up for *_, follow_up in outcomes])
        out: list[Outcome] = []
        for run_id, attempt, data, _ in outcomes:
            tx.released.add((run_id, attempt))
            if (run_id, attempt) in done:
                tx.changes.append(Closed(run_id, ClosedRun(run_id, Status.COMPLETED, data)))
                out.append((True, None))
            else:
                tr.expire_if_due(tx, run_id)
                out.append((False, None))
        return out

    async def fail(self, run_id: str, attempt: int, failure: FailureReport) -> Status | None:
        def op(tx: Tx) -> Status | None:
            tx.released.add((run_id, attempt))
            row = tx.one("current_attempt", run_id=run_id, attempt=attempt, now=tx.now)
            if row is None:
                tr.expire_if_due(tx, run_id)
                return None
            return tr.apply_failure(tx, row, failure.info, failure.data)

        return await self._op(op)

    async def report_cancelled(self, run_id: str, attempt: int, failure: bytes) -> bool:
        def op(tx: Tx) -> bool:
            tx.released.add((run_id, attempt))
            row = tx.one(
                "close_cancelled",
                run_id=run_id,
                attempt=attempt,
                failure=failure,
                now=tx.now,
                far=FAR,
            )
            if row is not None:
                tr.end_attempts(tx, [(run_id, attempt, "CANCELED", failure, None)])
                tx.changes.append(Closed(run_id, ClosedRun(run_id, Status.CANCELED)))
                return True
            tr.expire_if_due(tx, run_id)
            return False

        return await self._op(op)

    # ---------------------------------------------------------------- client requests

    async def request_cancel(
        self, namespace: str, activity_id: str, run_id: str | None, reason: str | None
    ) -> Status:
        status = await self._op(lambda tx: tr.cancel(tx, namespace, activity_id, run_id, reason))
        return Status.RUNNING if status is None else status

    async def terminate(
        self, namespace: str, activity_id: str, run_id: str | None, reason: str | None
    ) -> None:
        await self._op(lambda tx: tr.terminate(tx, namespace, activity_id, run_id, reason))

    async def pause(self, namespace: str, activity_id: str, run_id: str | None) -> bool:
        def op(tx: Tx) -> bool:
            return tr.pause(tx, namespace, activity_id, run_id)

        return await self._op(op)

    async def unpause(
        self, namespace: str, activity_id: str, run_id: str | None, jitter_s: float
    ) -> bool:
        draw = random.random()

        def op(tx: Tx) -> bool:
            return tr.unpause(tx, namespace, activity_id, run_id, jitter_s, draw)

        return await self._op(op)

    async def reset(
        self,
        namespace: str,
        activity_id: str,
        run_id: str | None,
        *,
        keep_paused: bool = False,
        reset_heartbeat: bool = False,
        jitter_s: float = 0.0,
        restore_original_options: bool = False,
    ) -> bool:
        draw = random.random()

        def op(tx: Tx) -> bool:
            return tr.reset(
                tx,
                namespace,
                activity_id,
                run_id,
                keep_paused=keep_paused,
                reset_heartbeat=reset_heartbeat,
                jitter_s=jitter_s,
                draw=draw,
                restore_original_options=restore_original_options,
            )

        return await self._op(op)

    async def update_options(
        self,
        namespace: str,
        activity_id: str,
        run_id: str | None,
        changes: dict[str, Any] | None,
    ) -> ExecutionOptions:
        def op(tx: Tx) -> ExecutionOptions:
            return tr.update_options(tx, namespace, activity_id, run_id, changes)

        return await self._op(op)

    async def bulk(
        self,
        namespace: str,
        query: Query,
        verb: str,
        *,
        reason: str | None = None,
        jitter_s: float = 0.0,
        reset: dict[str, bool] | None = None,
        batch: int = BULK_BATCH,
        options: dict[str, Any] | None = None,
    ) -> int:
        where, params = _where.where(self._dialect, namespace, query)
        action = self._bulk_action(namespace, verb, reason, jitter_s, reset, options)
        batch = max(1, min(batch, BULK_BATCH))

        def matching(tx: Tx) -> builtins.list[int]:
            rows = self._dialect.query(tx, "open_matching", params, {"where": where})
            return [row["id"] for row in rows]

        def op(tx: Tx, ids: builtins.list[int]) -> int:
            rows = self._dialect.query(
                tx, "open_matching_of", {**params, "ids": ids}, {"where": where}
            )
            closed: set[int] = set()
            if verb in tr.CLOSE_AT_ONCE:
                # Those no attempt of which runs, all in one statement; the
                # rest (a running attempt to interrupt) one at a time.
                closed = tr.close_at_once(tx, [row["id"] for row in rows], verb, reason)
            changed = len(closed)
            for row in rows:
                if row["id"] in closed:
                    continue
                # One that closed meanwhile is left alone.
                with contextlib.suppress(ActivityAlreadyClosedError, ActivityNotFoundError):
                    changed += bool(action(tx, row["activity_id"], row["run_id"]))
            return changed

        # Which ones, read once (off the writer: no lock is held meanwhile),
        # then changed a batch per transaction, each row as it is by then.
        ids = await self._read(matching)
        total = 0
        for first in range(0, len(ids), batch):
            if first:
                await asyncio.sleep(BULK_PAUSE_S)
            chunk = ids[first : first + batch]
            total += await self._op(functools.partial(op, ids=chunk))
        return total

    @staticmethod
    def _bulk_action(
        namespace: str,
        verb: str,
        reason: str | None,
        jitter_s: float,
        reset: dict[str, bool] | None,
        options: dict[str, Any] | None = None,
    ) -> BulkAction:
        if verb == "cancel":
            return lambda tx, aid, rid: tr.cancel(tx, namespace, aid, rid, reason) is not None
        if verb == "terminate":

            def terminate(tx: Tx, activity_id: str, run_id: str) -> bool:
                tr.terminate(tx, namespace, activity_id, run_id, reason)
                return True

            return terminate
        if verb == "pause":
            return lambda tx, aid, rid: tr.pause(tx, namespace, aid, rid)
        if verb == "unpause":
            return lambda tx, aid, rid: tr.unpause(
                tx, namespace, aid, rid, jitter_s, random.random()
            )
        if verb == "reset":
            flags = {
                "keep_paused": False,
                "reset_heartbeat": False,
                "restore_original_options": False,
                **(reset or {}),
            }
            return lambda tx, aid, rid: tr.reset(
                tx, namespace, aid, rid, jitter_s=jitter_s, draw=random.random(), **flags
            )
        if verb == "retry_now":
            return lambda tx, aid, rid: tr.retry_now(tx, namespace, aid, rid)
        if verb == "update_options":

            def update(tx: Tx, activity_id: str, run_id: str) -> bool:
                try:
                    tr.update_options(tx, namespace, activity_id, run_id, options)
                except ValueError:  # it would be left without a timeout: left as it is
                    return False
                return True

            return update
        raise ValueError(
            f"unknown bulk action {verb!r}: cancel, terminate, pause, unpause, reset, "
            "retry_now or update_options"
        )

    async def retry_now(self, namespace: str, activity_id: str, run_id: str | None) -> bool:
        def op(tx: Tx) -> bool:
            return tr.retry_now(tx, namespace, activity_id, run_id)

        return await self._op(op)

    # ---------------------------------------------------------------- timers

    async def fire_due_timers(
        self, namespace: str, *, run_ids: Sequence[str] | None = None, limit: int = 500
    ) -> float | None:
        if run_ids is not None and not run_ids:
            return None
        ids = None if run_ids is None else list(run_ids)

        def peek(tx: Tx) -> tuple[float | None, float]:
            if ids is None:
                row = tx.one("next_deadline", ns=namespace, now=tx.now)
            else:
                row = tx.one("next_deadline_of_runs", ids=ids, now=tx.now)
            assert row is not None
            nxt = row["next_deadline"]
            return (None if nxt is None else float(nxt)), float(row["db_now"])

        def op(tx: Tx) -> float | None:
            if ids is None:
                rows = tx.fetch("due", ns=namespace, now=tx.now, limit=limit)
            else:
                rows = tx.fetch("due_of_runs", ids=ids, now=tx.now, limit=limit)
            for row in rows:
                tr.fire_timer(tx, row)
            if len(rows) == limit:
                return time.time()  # more are due: come back at once
            nxt, _ = peek(tx)
            return None if nxt is None or nxt >= FAR else tx.local(nxt)

        # Look first on a reader: most looks find nothing due and need not
        # queue behind the writer's transactions.
        upcoming, db_now = await self._read(peek)
        if upcoming is None or upcoming >= FAR:
            return None
        if upcoming > db_now:
            return upcoming + (time.time() - db_now)
        return await self._op(op)

    # ---------------------------------------------------------------- reads

    async def describe(
        self, namespace: str, activity_id: str, run_id: str | None = None
    ) -> ExecutionRecord:
        def read(tx: Tx) -> ExecutionRecord:
            if run_id is None:
                row = tx.one("describe_latest", ns=namespace, activity_id=activity_id)
            else:
                row = tx.one("describe_run", ns=namespace, activity_id=activity_id, run_id=run_id)
            if row is None:
                raise ActivityNotFoundError(_rows.not_found(namespace, activity_id, run_id))
            return _rows.record(row)

        return await self._read(read)

    async def get_by_run_ids(self, run_ids: Sequence[str]) -> builtins.list[ExecutionRecord]:
        ids = list(run_ids)

        def read(tx: Tx) -> builtins.list[ExecutionRecord]:
            return [_rows.record(row) for row in tx.fetch("records_of_runs", ids=ids)]

        return await self._read(read)

    async def closed_runs(self, run_ids: Sequence[str]) -> builtins.list[ClosedRun]:
        ids = list(run_ids)

        def read(tx: Tx) -> builtins.list[ClosedRun]:
            return [
                _rows.closed_run(row)
                for row in tx.fetch("states_of_runs", ids=ids)
                if row["status"] != Status.RUNNING.value
            ]

        return await self._read(read)

    async def list(
        self, namespace: str, query: Query, *, limit: int | None = None
    ) -> builtins.list[ExecutionRecord]:
        driven = _where.driver(query)
        slots = {"order": _where.order(query)}
        name = "list_executions"
        if driven is not None:
            term, query = driven
            assert term.field.attribute is not None
            name = "list_by_attribute"
            column = _rows.VALUE_COLUMNS[term.field.attribute]
            slots["driver"] = f"{column} = {self._dialect.param('d_value')}"
        where, params = _where.where(self._dialect, namespace, query)
        if driven is not None:
            params.update(d_name=driven[0].field.name, d_value=driven[0].value)
        params["limit"] = NO_LIMIT if limit is None else limit

        def read(tx: Tx) -> builtins.list[ExecutionRecord]:
            rows = self._dialect.query(tx, name, params, slots={"where": where, **slots})
            return [_rows.record(row) for row in rows]

        return await self._read(read)

    async def count(self, namespace: str, query: Query) -> tuple[int, dict[Status, int]]:
        # A query over the counted fields only reads the counts the triggers
        # keep (a few rows); any other counts the matching executions.
        name, columns = "count_executions", None
        if _where.counted(query):
            name, columns = "count_counted", _where.COUNTED_FIELDS
        where, params = _where.where(self._dialect, namespace, query, columns)

        def read(tx: Tx) -> tuple[int, dict[Status, int]]:
            groups: dict[Status, int] = {}
            total = 0
            for row in self._dialect.query(tx, name, params, slots={"where": where}):
                if int(row["n"]):
                    groups[Status(row["status"])] = int(row["n"])
                    total += int(row["n"])
            return total, (groups if query.group_by_status else {})

        return await self._read(read)

    async def count_by(self, namespace: str, query: Query) -> dict[str, int]:
        if query.group_by not in ("TaskQueue", "ActivityType"):
            raise ValueError(f"cannot count by {query.group_by!r}: TaskQueue or ActivityType")
        name, columns = "count_executions_by", _rows.QUERY_FIELDS
        if _where.counted(query):
            name, columns = "count_counted_by", _where.COUNTED_FIELDS
        where, params = _where.where(self._dialect, namespace, query, columns)
        slots = {"where": where, "group": columns[query.group_by]}

        def read(tx: Tx) -> dict[str, int]:
            rows = self._dialect.query(tx, name, params, slots=slots)
            return {row["value"]: int(row["n"]) for row in rows if int(row["n"])}

        return await self._read(read)

    async def search_attribute_types(
        self, namespace: str
    ) -> dict[str, SearchAttributeIndexedValueType]:
        def read(tx: Tx) -> dict[str, SearchAttributeIndexedValueType]:
            rows = tx.fetch("search_attribute_types", ns=namespace)
            return {row["name"]: SearchAttributeIndexedValueType[row["type"]] for row in rows}

        return await self._read(read)

    @staticmethod
    def _backlog_of(namespace: str) -> Callable[[Tx], builtins.list[QueueBacklog]]:
        def read(tx: Tx) -> builtins.list[QueueBacklog]:
            return [
                QueueBacklog(
                    task_queue=row["task_queue"],
                    backlog=int(row["backlog"]),
                    oldest_age_s=max(0.0, float(row["db_now"]) - float(row["oldest_ready"])),
                )
                for row in tx.fetch("queue_backlog", ns=namespace, now=tx.now)
            ]

        return read

    async def queue_backlog(self, namespace: str) -> builtins.list[QueueBacklog]:
        return await self._read(self._backlog_of(namespace))

    def queue_backlog_now(
        self, namespace: str, timeout_s: float = BLOCKING_READ_TIMEOUT_S
    ) -> builtins.list[QueueBacklog]:
        """``queue_backlog`` for a caller on any thread, with no event loop
        (a metrics collection): blocks until read.

        Raises StoreError if the store is closed or fails, or the read takes
        longer than ``timeout_s``.
        """
        if self._closed:
            raise StoreError(f"{self.label} is closed")
        self.reads += 1
        read = self._readers.submit(
            self._dialect.read, self._backlog_of(namespace), time.monotonic()
        )
        try:
            return read.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise StoreError(
                f"{self.label}: the queue backlog read took over {timeout_s} s"
            ) from None

    def observe_commits(self, observer: Callable[[int, float], None]) -> None:
        """Call ``observer(changes, seconds)`` on the writer's thread after each
        group commit: how many changes it held and how long its transaction took."""
        self._writer.observers.append(observer)

    @property
    def kind(self) -> str:
        """The database: "sqlite" or "postgresql"."""
        return self._dialect.kind

    async def prune(self, namespace: str, closed_before: float, *, batch: int = 1000) -> int:
        batch = min(batch, 1000)

        def op(tx: Tx) -> int:
            rows = tx.fetch("prunable", ns=namespace, before=closed_before, limit=batch)
            ids = [row["run_id"] for row in rows]
            if not ids:
                return 0
            tx.run("prune_attempts", ids=ids)
            tx.run("prune_search_attributes", ids=ids)
            return tx.run("prune_runs", ids=ids)

        total = 0
        while True:
            n = await self._op(op)
            total += n
            if n < batch:
                break
        # Tidy the counts the triggers keep (rows of connections gone, rows at 0).
        await self._op(lambda tx: tx.run("fold_counts"))
        return total

    # ---------------------------------------------------------------- workers and liveness

    def _hold_owner(self) -> tuple[str, int | None, bool]:
        """This process's owner id and lock key, taking its token if it holds
        none yet (blocking); True if it was taken now."""
        with self._owner_lock:
            if self._owner is not None:
                return self._owner, None, False
            owner = uuid.uuid4().hex
            key = self._dialect.hold_token(owner)
            self._owner = owner
            return owner, key, True

    async def register_worker(self, worker: WorkerRecord) -> None:
        try:
            owner, key, new = await asyncio.to_thread(self._hold_owner)
        except OSError as e:
            raise StoreError(f"{self.label}: cannot take a liveness token: {e}") from e
        row = {
            name: getattr(worker, name)
            for name in ("worker_id", "namespace", "identity", "host", "pid", "task_queue")
        }
        row.update(slots=worker.slots, executor=worker.executor)

        def op(tx: Tx) -> None:
            if new:
                tx.run(
                    "owner_add",
                    owner=owner,
                    host=worker.host,
                    pid=worker.pid,
                    now=tx.now,
                    lock_key=key,
                )
            tx.run("worker_add", owner=owner, now=tx.now, **row)

        await self._op(op)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._op(lambda tx: tx.run("worker_forget", worker_id=worker_id))

    async def list_workers(self, namespace: str) -> builtins.list[WorkerRecord]:
        def read(tx: Tx) -> builtins.list[WorkerRecord]:
            return [
                _rows.worker(row, namespace)
                for row in tx.fetch("workers_of_namespace", ns=namespace)
            ]

        return await self._read(read)

    def watch_liveness(self, failure: bytes) -> None:
        first = self._lost_failure is None
        self._lost_failure = failure
        if first:
            self._dialect.watch_tokens(self._tokens_gone)

    def _tokens_gone(self, owners: builtins.list[str]) -> None:
        """(A watcher thread.) Fail the attempts of the processes whose
        liveness tokens are gone."""
        for owner in owners:
            if owner != self._owner and not self._closed:
                self._writer.post("op", functools.partial(self._bury, owner=owner))

    def _bury(self, tx: Tx, owner: str) -> int:
        failed = tr.fail_owner(tx, owner, self._lost_failure)
        if failed:
            logger.warning(
                "%s: a worker process is gone (owner %s): %d attempts failed as WorkerLost",
                self.label,
                owner,
                failed,
            )
        self._dialect.bury_token(owner)
        return failed

    async def check_liveness(self) -> builtins.list[str]:
        dead = await asyncio.to_thread(self._dialect.dead_tokens)
        found = [owner for owner in dead if owner != self._owner]
        for owner in found:
            await self._op(functools.partial(self._bury, owner=owner))
        return found

    async def attempts(self, run_id: str) -> builtins.list[AttemptRecord]:
        def read(tx: Tx) -> builtins.list[AttemptRecord]:
            return [_rows.attempt(row) for row in tx.fetch("attempts_of_run", run_id=run_id)]

        return await self._read(read)


def _forget_owner(tx: Tx, owner: str) -> None:
    """This process closes the store: forget its hold and its workers."""
    tx.run("workers_of_owner_forget", owner=owner)
    tx.run("owner_forget", owner=owner)


def _localized(change: Change, offset: float) -> Change:
    """A change with its times on this machine's clock."""
    if offset == 0.0:
        return change
    if isinstance(change, Claimable):
        return Claimable(change.queue, change.at + offset)
    if isinstance(change, Deadline):
        return Deadline(change.namespace, change.at + offset)
    return change


def _collapsed(changes: list[Change]) -> list[Change]:
    """The changes with repeats folded: one Started per queue, the earliest
    Claimable per queue and Deadline per namespace."""
    out: list[Change] = []
    seen: set[Any] = set()
    claimable: dict[Any, Claimable] = {}
    deadlines: dict[str, Deadline] = {}
    for change in changes:
        if isinstance(change, Claimable):
            known = claimable.get(change.queue)
            if known is None or change.at < known.at:
                claimable[change.queue] = change
        elif isinstance(change, Deadline):
            deadline = deadlines.get(change.namespace)
            if deadline is None or change.at < deadline.at:
                deadlines[change.namespace] = change
        elif isinstance(change, (Started, Touched, Resync)):
            if change not in seen:
                seen.add(change)
                out.append(change)
        else:
            out.append(change)
    return out + list(claimable.values()) + list(deadlines.values())
