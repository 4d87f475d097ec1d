"""The embedded store: one SQLite file in WAL mode, shared by any number of
processes on one machine.

Two connections, each on its own thread:

- the writer, which drains every pending change (starts, claims, heartbeats,
  outcomes, timers) into one ``BEGIN IMMEDIATE`` transaction and wakes each
  caller after the commit that holds its change (group commit). Between
  batches, and every 2 ms while anyone waits for a change, it reads ``PRAGMA
  data_version``, which changes only when *another* connection committed (and
  costs no disk read in WAL mode): so this process's waiters are woken once by
  the writer for its own commits and once per commit of other processes;
- the reader, for describe / list / count and the result and cancel watchers.

``PRAGMA synchronous=FULL``: an acknowledged change survives a power cut.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

from errands import _lifecycle as lc
from errands._lifecycle import FAR, RunState, Status
from errands.common import ActivityIDConflictPolicy, ActivityIDReusePolicy
from errands.exceptions import (
    ActivityAlreadyClosedError,
    ActivityAlreadyStartedError,
    ActivityNotFoundError,
    ErrandsError,
    StoreError,
    TimeoutType,
)
from errands.store import _rows
from errands.store._armed import Armed, ArmedClaims, ClaimSpec
from errands.store._base import (
    ClaimedTask,
    ClaimResult,
    ClosedRun,
    ExecutionRecord,
    FailureReport,
    HeartbeatResult,
    Interrupt,
    NewExecution,
    Query,
    StartResult,
    Store,
)
from errands.store._signal import ChangeSignals

logger = logging.getLogger("errands.store.sqlite")

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
"""How long a connection waits for another one's write lock before "locked"."""

DATA_VERSION_POLL_S = 0.002
"""How often an idle writer looks at data_version while anyone waits for a change."""

IDLE_WAIT_S = 0.1
"""How long an idle writer sleeps when nobody waits for a change."""

MAX_BATCH = 2_000
"""Most changes one group commit holds."""


def path_from_url(url: str) -> str:
    """The file path of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL.

    Raises ValueError for any other URL.
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(
            f"not a SQLite URL: {url!r} (expected sqlite:///relative.db or sqlite:////absolute.db)"
        )
    return url[len(prefix) :]


def _translate(error: sqlite3.Error, path: str) -> StoreError:
    text = str(error)
    if "locked" in text or "busy" in text:
        return StoreError(f"SQLite store {path!r} is locked: {text}")
    if "not a database" in text or "malformed" in text:
        return StoreError(f"{path!r} is not an errands SQLite store: {text}")
    return StoreError(f"SQLite store {path!r} failed: {text}")


def _connect(path: str) -> sqlite3.Connection:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreError(
            f"cannot open SQLite store {path!r}: directory {directory!r} does not exist"
        )
    try:
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"SQLite store {path!r} could not switch to WAL (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error as e:
        raise _translate(e, path) from e
    return conn


# --------------------------------------------------------------------------- migrations


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("errands.store").joinpath("migrations").joinpath("sqlite")
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), name, entry.read_text()))
    return sorted(found)


SCHEMA_VERSION = max(version for version, _, _ in _migrations())
"""The newest schema this code knows."""


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Apply pending migrations under ``BEGIN IMMEDIATE``; return the version.

    Raises StoreError if the file's schema is newer than this code.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS errands_schema "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
            )
            current = conn.execute(
                "SELECT coalesce(max(version), 0) FROM errands_schema"
            ).fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"SQLite store {path!r} has schema version {current}, newer than this "
                    f"errands (knows up to {SCHEMA_VERSION}); upgrade errands"
                )
            for version, name, sql in _migrations():
                if version <= current:
                    continue
                # executescript would commit; run statement by statement inside our transaction.
                for statement in _split_sql(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO errands_schema (version, name, applied) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )
                logger.info("SQLite store %s: applied migration %s", path, name)
                current = version
            conn.execute("COMMIT")
            return int(current)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        raise _translate(e, path) from e


def _split_sql(script: str) -> Iterator[str]:
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            stripped = "\n".join(
                part for part in statement.splitlines() if not part.strip().startswith("--")
            ).strip()
            if stripped:
                yield stripped
            statement = ""


# --------------------------------------------------------------------------- writer


Op = Callable[[sqlite3.Connection, float], Any]


_IDLE: Any = object()


@dataclass
class _Pending:
    op: Op
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in items:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class _Writer:
    """The one writing connection of a store, on its own thread (group commit)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        after_commit: Callable[[], None],
        on_closed: Callable[[Sequence[ClosedRun]], None],
        watched: Callable[[], bool],
    ):
        self._conn = conn
        self._watched = watched
        self._path = path
        self._after_commit = after_commit
        self._on_closed = on_closed
        self.closed: list[ClosedRun] = []
        """Executions the current transaction closes (ops append; writer thread only)."""
        self.handoffs: list[tuple[Armed[_Claim], list[ClaimedTask]]] = []
        """Tasks the current transaction claimed for waiting pollers."""
        self._committed_closed: list[ClosedRun] = []
        self._committed_handoffs: list[tuple[Armed[_Claim], list[ClaimedTask]]] = []
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="errands-sqlite-writer", daemon=True)
        self._thread.start()

    def submit(self, op: Op) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Pending(op, future, loop))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        last_version = self._data_version()
        while True:
            try:
                first = self._queue.get(
                    timeout=DATA_VERSION_POLL_S if self._watched() else IDLE_WAIT_S
                )
            except queue.Empty:
                first = _IDLE
            if first is None:
                return
            if first is not _IDLE:
                self._drain_and_commit(first)
            version = self._data_version()
            if version != last_version:
                last_version = version
                self._after_commit()  # another process committed

    def _undo_handoffs(self) -> None:
        # The claims rolled back: tell their pollers nothing came, so they
        # stop waiting for these deliveries.
        self._committed_handoffs.extend((armed, []) for armed, _ in self.handoffs)
        self.handoffs = []

    def _data_version(self) -> int | None:
        try:
            version: int = self._conn.execute("PRAGMA data_version").fetchone()[0]
            return version
        except sqlite3.Error:
            return None

    def _drain_and_commit(self, first: _Pending) -> None:
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
        self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        changes_before = self._conn.total_changes
        outcomes = self._transaction(batch)
        if outcomes is None:
            # Something unexpected broke the batch: run each change alone so that
            # one bad change cannot fail the others.
            outcomes = []
            for item in batch:
                alone = self._transaction([item])
                outcomes.extend(
                    alone
                    if alone is not None
                    else [(item, None, StoreError(f"SQLite store {self._path!r} write failed"))]
                )
        # Wake waiters only when rows changed: an empty claim or timer pass must
        # not wake its own poller, or idle workers spin on empty transactions.
        if self._conn.total_changes != changes_before:
            self._after_commit()
        closed, self._committed_closed = self._committed_closed, []
        if closed:
            self._on_closed(closed)
        handoffs, self._committed_handoffs = self._committed_handoffs, []
        if handoffs:
            for armed, tasks in handoffs:
                try:
                    armed.loop.call_soon_threadsafe(armed.deliver, tasks)
                except RuntimeError:  # the loop closed: the tasks time out and retry
                    logger.warning("claimed %d tasks for a poller whose loop closed", len(tasks))
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for item, result, error in outcomes:
            by_loop.setdefault(item.loop, []).append((item.future, result, error))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(_settle, items)

    def _transaction(
        self, batch: list[_Pending]
    ) -> list[tuple[_Pending, Any, BaseException | None]] | None:
        conn = self._conn
        outcomes: list[tuple[_Pending, Any, BaseException | None]] = []
        self.closed = []
        self.handoffs = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            error = _translate(e, self._path)
            error.__cause__ = e
            return [(item, None, error) for item in batch]
        try:
            now = time.time()
            for item in batch:
                try:
                    outcomes.append((item, item.op(conn, now), None))
                except ErrandsError as e:
                    # A refused change (id in use, not found, ...): it wrote nothing.
                    outcomes.append((item, None, e))
            conn.execute("COMMIT")
            # Only what a committed transaction did is announced.
            self._committed_closed.extend(self.closed)
            self._committed_handoffs.extend(self.handoffs)
            return outcomes
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._undo_handoffs()
            if len(batch) == 1:
                error = _translate(e, self._path)
                error.__cause__ = e
                return [(batch[0], None, error)]
            logger.warning(
                "SQLite group commit of %d changes failed (%s); retrying one by one", len(batch), e
            )
            return None
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._undo_handoffs()
            if len(batch) == 1:
                return [(batch[0], None, e)]
            logger.exception("SQLite group commit failed; retrying one by one")
            return None


# --------------------------------------------------------------------------- the store


class SQLiteStore(Store):
    """The Store on one SQLite file. Open it with ``await SQLiteStore.open(path)``."""

    def __init__(self, path: str, writer_conn: sqlite3.Connection) -> None:
        super().__init__()
        self.path = path
        self._armed: ArmedClaims[_Claim] = ArmedClaims()
        self._signals = ChangeSignals()
        self._writer = _Writer(
            writer_conn,
            path,
            self._signals.fire_threadsafe,
            self._emit_closed,
            self._signals.has_waiters,
        )
        self._reader_local = threading.local()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="errands-sqlite-reader")
        self._closed = False

    @classmethod
    async def open(cls, path: str) -> SQLiteStore:
        """Open (creating if missing) and migrate the store at ``path``.

        Raises StoreError if the directory is missing, the file is not a
        database, the schema is newer than this code, or the file stays locked.
        """

        def setup() -> sqlite3.Connection:
            conn = _connect(path)
            try:
                migrate(conn, path)
            except BaseException:
                conn.close()
                raise
            return conn

        conn = await asyncio.get_running_loop().run_in_executor(None, setup)
        return cls(path, conn)

    # ---------------------------------------------------------------- plumbing

    async def _write(self, op: Op) -> Any:
        if self._closed:
            raise StoreError(f"SQLite store {self.path!r} is closed")
        return await self._writer.submit(op)

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._reader_local.conn = conn
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError(f"SQLite store {self.path!r} is closed")

        def run() -> T:
            try:
                return fn(self._reader_conn())
            except sqlite3.Error as e:
                raise _translate(e, self.path) from e

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    def change_event(self) -> asyncio.Event:
        return self._signals.event()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._signals.wake_all()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._writer.stop)

        def close_reader() -> None:
            conn = getattr(self._reader_local, "conn", None)
            if conn is not None:
                conn.close()

        await loop.run_in_executor(self._reader, close_reader)
        self._reader.shutdown(wait=True)

    # ---------------------------------------------------------------- start

    async def start(self, new: NewExecution) -> StartResult:
        policy_text = _rows.policy_text(new.retry_policy)

        def op(conn: sqlite3.Connection, now: float) -> StartResult:
            if new.id_reuse_policy is not ActivityIDReusePolicy.ALLOW_DUPLICATE:
                latest = conn.execute(
                    "SELECT status, run_id FROM executions WHERE namespace = ? AND activity_id = ? "
                    "ORDER BY id DESC LIMIT 1",
                    (new.namespace, new.activity_id),
                ).fetchone()
                if latest is not None and latest[0] != Status.RUNNING.value:
                    refused = new.id_reuse_policy is ActivityIDReusePolicy.REJECT_DUPLICATE or (
                        latest[0] == Status.COMPLETED.value
                    )
                    if refused:
                        raise ActivityAlreadyStartedError(
                            f"activity id {new.activity_id!r} was used by a closed execution "
                            f"({latest[0]}) and the reuse policy is {new.id_reuse_policy.name}",
                            activity_id=new.activity_id,
                            run_id=latest[1],
                        )
            ready_at = now + (new.start_delay_s or 0.0)
            s2c = FAR if new.schedule_to_close_s is None else now + new.schedule_to_close_s
            deadline = lc.scheduled_deadline(
                ready_at=ready_at,
                schedule_to_start_s=new.schedule_to_start_s,
                schedule_to_close_deadline=s2c,
            )
            cursor = conn.execute(
                "INSERT OR IGNORE INTO executions (namespace, activity_id, run_id, activity_type, "
                "task_queue, status, run_state, attempt, input, schedule_time, ready_at, "
                "s2c_deadline, attempt_deadline, deadline, schedule_to_close_s, "
                "schedule_to_start_s, start_to_close_s, heartbeat_s, retry_policy, priority_key, "
                "start_delay_s, summary) VALUES "
                "(?, ?, ?, ?, ?, 'RUNNING', 'SCHEDULED', 1, "
                "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new.namespace,
                    new.activity_id,
                    new.run_id,
                    new.activity_type,
                    new.task_queue,
                    new.input,
                    now,
                    ready_at,
                    s2c,
                    FAR,
                    deadline,
                    new.schedule_to_close_s,
                    new.schedule_to_start_s,
                    new.start_to_close_s,
                    new.heartbeat_s,
                    policy_text,
                    new.priority_key,
                    new.start_delay_s,
                    new.summary,
                ),
            )
            if cursor.rowcount == 1:
                if ready_at <= now and self._armed:
                    self._armed.claim_for(
                        (new.namespace, new.task_queue),
                        new.activity_type,
                        lambda claim: claim.run(conn, now),
                        self._writer.handoffs,
                    )
                return StartResult(new.run_id, created=True)
            running = conn.execute(
                "SELECT run_id FROM executions WHERE namespace = ? AND activity_id = ? "
                "AND status = 'RUNNING'",
                (new.namespace, new.activity_id),
            ).fetchone()
            if running is None:  # the insert was ignored for another reason: a run id clash
                raise ActivityAlreadyStartedError(
                    f"run id {new.run_id!r} is already in use", activity_id=new.activity_id
                )
            if new.id_conflict_policy is ActivityIDConflictPolicy.USE_EXISTING:
                return StartResult(running[0], created=False)
            raise ActivityAlreadyStartedError(
                f"activity id {new.activity_id!r} is already running (run {running[0]})",
                activity_id=new.activity_id,
                run_id=running[0],
            )

        result: StartResult = await self._write(op)
        return result

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
    ) -> ClaimResult:
        if only_types is not None and not only_types:
            return ClaimResult([], None)
        claim = _Claim(
            namespace, task_queue, max_tasks, identity, only_types, exclude_types, queue_rate_per_s
        )
        result: ClaimResult = await self._write(claim.run)
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
        deliver: Callable[[builtins.list[ClaimedTask]], None],
    ) -> Callable[[], bool]:
        claim = _Claim(namespace, task_queue, max_tasks, identity, only_types, exclude_types, None)
        return self._armed.arm(
            (namespace, task_queue), Armed(claim, deliver, asyncio.get_running_loop())
        )

    # ---------------------------------------------------------------- attempt outcomes

    async def heartbeat(self, run_id: str, attempt: int, details: bytes | None) -> HeartbeatResult:
        def op(conn: sqlite3.Connection, now: float) -> HeartbeatResult:
            row = conn.execute(
                "UPDATE executions SET heartbeat_details = coalesce(?, heartbeat_details), "
                "heartbeat_count = heartbeat_count + 1, last_heartbeat_time = ?, "
                "deadline = CASE WHEN heartbeat_s IS NULL THEN attempt_deadline "
                "ELSE min(attempt_deadline, ? + heartbeat_s) END "
                f"WHERE {_CURRENT_ATTEMPT} RETURNING cancel_requested",
                (details, now, now, run_id, attempt, now),
            ).fetchone()
            if row is None:
                _expire_if_due(conn, run_id, now, self._writer.closed)
                return HeartbeatResult(accepted=False, cancel_requested=False)
            return HeartbeatResult(accepted=True, cancel_requested=bool(row[0]))

        result: HeartbeatResult = await self._write(op)
        return result

    async def complete(self, run_id: str, attempt: int, result: bytes) -> bool:
        def op(conn: sqlite3.Connection, now: float) -> bool:
            return _close_attempt(
                conn, now, run_id, attempt, Status.COMPLETED, result, None, self._writer.closed
            )

        done: bool = await self._write(op)
        return done

    async def fail(self, run_id: str, attempt: int, failure: FailureReport) -> Status | None:
        def op(conn: sqlite3.Connection, now: float) -> Status | None:
            row = conn.execute(
                f"SELECT {_rows.DECIDE_COLUMNS} FROM executions WHERE {_CURRENT_ATTEMPT}",
                (run_id, attempt, now),
            ).fetchone()
            if row is None:
                _expire_if_due(conn, run_id, now, self._writer.closed)
                return None
            return _apply_failure(conn, row, failure.info, failure.data, now, self._writer.closed)

        status: Status | None = await self._write(op)
        return status

    async def report_cancelled(self, run_id: str, attempt: int, failure: bytes) -> bool:
        def op(conn: sqlite3.Connection, now: float) -> bool:
            return _close_attempt(
                conn, now, run_id, attempt, Status.CANCELED, None, failure, self._writer.closed
            )

        done: bool = await self._write(op)
        return done

    # ---------------------------------------------------------------- client requests

    async def request_cancel(
        self, namespace: str, activity_id: str, run_id: str | None, reason: str | None
    ) -> Status:
        def op(conn: sqlite3.Connection, now: float) -> Status:
            row_id, found_run, _status, state, attempt = _find_open(
                conn, namespace, activity_id, run_id, "cancel"
            )
            if state == RunState.SCHEDULED.value:
                conn.execute(
                    "UPDATE executions SET status = 'CANCELED', run_state = NULL, close_time = ?, "
                    "canceled_reason = ?, cancel_requested = 1, deadline = 1e15 WHERE id = ?",
                    (now, reason, row_id),
                )
                self._writer.closed.append(ClosedRun(found_run, Status.CANCELED))
                return Status.CANCELED
            if state == RunState.STARTED.value:
                conn.execute(
                    "UPDATE executions SET run_state = 'CANCEL_REQUESTED', cancel_requested = 1, "
                    "canceled_reason = ? WHERE id = ?",
                    (reason, row_id),
                )
                conn.execute(
                    "INSERT INTO interrupts (namespace, run_id, attempt, kind, created) "
                    "VALUES (?, ?, ?, 'cancel', ?)",
                    (namespace, found_run, attempt, now),
                )
            return Status.RUNNING

        status: Status = await self._write(op)
        return status

    async def terminate(
        self, namespace: str, activity_id: str, run_id: str | None, reason: str | None
    ) -> None:
        def op(conn: sqlite3.Connection, now: float) -> None:
            row_id, found_run, _, state, attempt = _find_open(
                conn, namespace, activity_id, run_id, "terminate"
            )
            conn.execute(
                "UPDATE executions SET status = 'TERMINATED', run_state = NULL, close_time = ?, "
                "canceled_reason = ?, deadline = 1e15 WHERE id = ?",
                (now, reason, row_id),
            )
            self._writer.closed.append(ClosedRun(found_run, Status.TERMINATED))
            if state != RunState.SCHEDULED.value:
                conn.execute(
                    "INSERT INTO interrupts (namespace, run_id, attempt, kind, created) "
                    "VALUES (?, ?, ?, 'terminate', ?)",
                    (namespace, found_run, attempt, now),
                )

        await self._write(op)

    # ---------------------------------------------------------------- timers

    async def fire_due_timers(
        self, namespace: str, *, run_ids: Sequence[str] | None = None, limit: int = 500
    ) -> float | None:
        if run_ids is not None and not run_ids:
            return None
        where = "namespace = ? AND status = 'RUNNING' AND deadline <= ?"
        if run_ids is not None:
            where += f" AND run_id IN ({','.join('?' * len(run_ids))})"
        due_sql = f"SELECT {_rows.DECIDE_COLUMNS} FROM executions WHERE {where} LIMIT ?"
        next_sql = (
            "SELECT min(deadline) FROM executions WHERE namespace = ? AND status = 'RUNNING'"
            if run_ids is None
            else "SELECT min(deadline) FROM executions WHERE status = 'RUNNING' "
            f"AND run_id IN ({','.join('?' * len(run_ids))})"
        )

        def op(conn: sqlite3.Connection, now: float) -> float | None:
            rows = conn.execute(due_sql, (namespace, now, *(run_ids or ()), limit)).fetchall()
            for row in rows:
                _fire_timer(conn, row, now, self._writer.closed)
            nxt = conn.execute(
                next_sql, (namespace,) if run_ids is None else tuple(run_ids)
            ).fetchone()[0]
            if len(rows) == limit:
                return now  # more are due: come back at once
            return None if nxt is None or nxt >= FAR else float(nxt)

        def peek(conn: sqlite3.Connection) -> float | None:
            nxt = conn.execute(
                next_sql, (namespace,) if run_ids is None else tuple(run_ids)
            ).fetchone()[0]
            return None if nxt is None or nxt >= FAR else float(nxt)

        # Look first on the reader: most looks find nothing due and need not
        # take the write lock that every process shares.
        upcoming = await self._read(peek)
        if upcoming is None or upcoming > time.time():
            return upcoming
        result: float | None = await self._write(op)
        return result

    # ---------------------------------------------------------------- reads

    async def describe(
        self, namespace: str, activity_id: str, run_id: str | None = None
    ) -> ExecutionRecord:
        def read(conn: sqlite3.Connection) -> ExecutionRecord:
            if run_id is None:
                row = conn.execute(
                    f"SELECT {_rows.RECORD_COLUMNS} FROM executions WHERE namespace = ? "
                    "AND activity_id = ? ORDER BY id DESC LIMIT 1",
                    (namespace, activity_id),
                ).fetchone()
            else:
                row = conn.execute(
                    f"SELECT {_rows.RECORD_COLUMNS} FROM executions WHERE namespace = ? "
                    "AND activity_id = ? AND run_id = ?",
                    (namespace, activity_id, run_id),
                ).fetchone()
            if row is None:
                raise ActivityNotFoundError(_rows.not_found(namespace, activity_id, run_id))
            return _rows.record(row)

        return await self._read(read)

    async def get_by_run_ids(self, run_ids: Sequence[str]) -> builtins.list[ExecutionRecord]:
        ids = list(run_ids)

        def read(conn: sqlite3.Connection) -> list[ExecutionRecord]:
            out: builtins.list[ExecutionRecord] = []
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                out.extend(
                    _rows.record(row)
                    for row in conn.execute(
                        f"SELECT {_rows.RECORD_COLUMNS} FROM executions "
                        f"WHERE run_id IN ({','.join('?' * len(chunk))})",
                        chunk,
                    )
                )
            return out

        return await self._read(read)

    async def closed_runs(self, run_ids: Sequence[str]) -> builtins.list[ClosedRun]:
        ids = list(run_ids)

        def read(conn: sqlite3.Connection) -> builtins.list[ClosedRun]:
            out: builtins.list[ClosedRun] = []
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                out.extend(
                    ClosedRun(run_id, Status(status), result)
                    for run_id, status, result in conn.execute(
                        "SELECT run_id, status, result FROM executions "
                        f"WHERE run_id IN ({','.join('?' * len(chunk))}) AND status != 'RUNNING'",
                        chunk,
                    )
                )
            return out

        return await self._read(read)

    async def list(
        self, namespace: str, query: Query, *, limit: int | None = None
    ) -> list[ExecutionRecord]:
        where, params = _where(namespace, query)
        sql = f"SELECT {_rows.RECORD_COLUMNS} FROM executions WHERE {where} ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)

        def read(conn: sqlite3.Connection) -> list[ExecutionRecord]:
            return [_rows.record(row) for row in conn.execute(sql, params)]

        return await self._read(read)

    async def count(self, namespace: str, query: Query) -> tuple[int, dict[Status, int]]:
        where, params = _where(namespace, query)

        def read(conn: sqlite3.Connection) -> tuple[int, dict[Status, int]]:
            groups: dict[Status, int] = {}
            total = 0
            for status, n in conn.execute(
                f"SELECT status, count(*) FROM executions WHERE {where} GROUP BY status", params
            ):
                groups[Status(status)] = n
                total += n
            return total, (groups if query.group_by_status else {})

        return await self._read(read)

    async def prune(self, namespace: str, closed_before: float, *, batch: int = 1000) -> int:
        batch = min(batch, 1000)

        def op(conn: sqlite3.Connection, now: float) -> int:
            deleted = conn.execute(
                "DELETE FROM executions WHERE id IN (SELECT id FROM executions "
                "WHERE namespace = ? AND status != 'RUNNING' AND close_time < ? LIMIT ?)",
                (namespace, closed_before, batch),
            ).rowcount
            conn.execute(
                "DELETE FROM interrupts WHERE seq IN (SELECT seq FROM interrupts "
                "WHERE namespace = ? AND created < ? LIMIT ?)",
                (namespace, min(closed_before, now - 3600.0), batch),
            )
            return int(deleted)

        total = 0
        while True:
            n: int = await self._write(op)
            total += n
            if n < batch:
                return total

    async def interrupts_cursor(self) -> int:
        def read(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM interrupts").fetchone()[0])

        return await self._read(read)

    async def poll_interrupts(
        self, namespace: str, after: int
    ) -> tuple[builtins.list[Interrupt], int]:
        def read(conn: sqlite3.Connection) -> tuple[list[Interrupt], int]:
            cursor = after
            found = []
            for seq, run_id, attempt, kind in conn.execute(
                "SELECT seq, run_id, attempt, kind FROM interrupts WHERE seq > ? AND namespace = ? "
                "ORDER BY seq",
                (after, namespace),
            ):
                cursor = seq
                found.append(Interrupt(run_id, attempt, kind))
            return found, cursor

        return await self._read(read)


# ------------------------------------------------------------------ helpers (writer thread)


class _Claim(ClaimSpec):
    """One claim's SQL, built once: take up to ``max_tasks`` ready attempts of a
    queue, smallest priority key first, then in the order they became ready."""

    def __init__(
        self,
        namespace: str,
        task_queue: str,
        max_tasks: int,
        identity: str,
        only_types: Sequence[str] | None,
        exclude_types: Sequence[str],
        queue_rate_per_s: float | None,
    ) -> None:
        super().__init__(
            namespace, task_queue, max_tasks, identity, only_types, exclude_types, queue_rate_per_s
        )
        type_filter = ""
        self.type_args: dict[str, Any] = {}
        if only_types is not None:
            names = [f"only{i}" for i in range(len(only_types))]
            type_filter += f" AND activity_type IN ({','.join(':' + n for n in names)})"
            self.type_args.update(zip(names, only_types, strict=True))
        if exclude_types:
            names = [f"skip{i}" for i in range(len(exclude_types))]
            type_filter += f" AND activity_type NOT IN ({','.join(':' + n for n in names)})"
            self.type_args.update(zip(names, exclude_types, strict=True))
        self.claim_sql = (
            "UPDATE executions SET run_state = 'STARTED', started_time = :now, "
            "identity = :identity, "
            "attempt_deadline = min(s2c_deadline, :now + coalesce(start_to_close_s, 1e15)), "
            "deadline = min(s2c_deadline, :now + coalesce(start_to_close_s, 1e15), "
            ":now + coalesce(heartbeat_s, 1e15)) "
            "WHERE id IN (SELECT id FROM executions WHERE namespace = :ns AND task_queue = :tq "
            f"AND run_state = 'SCHEDULED' AND ready_at <= :now AND deadline > :now{type_filter} "
            f"ORDER BY priority_key, ready_at, id LIMIT :n) RETURNING {_rows.TASK_COLUMNS}"
        )
        self.next_sql = (
            "SELECT min(ready_at) FROM executions WHERE namespace = :ns AND task_queue = :tq "
            f"AND run_state = 'SCHEDULED'{type_filter}"
        )

    def run(self, conn: sqlite3.Connection, now: float) -> ClaimResult:
        """Claim, inside the writer's transaction."""
        namespace, task_queue, rate = self.namespace, self.task_queue, self.queue_rate_per_s
        n = self.max_tasks
        tokens = None
        if rate is not None:
            tokens = _queue_tokens(conn, namespace, task_queue, rate, now)
            n = min(n, int(tokens))
        rows = []
        if n > 0:
            rows = conn.execute(
                self.claim_sql,
                {
                    "now": now,
                    "identity": self.identity,
                    "ns": namespace,
                    "tq": task_queue,
                    "n": n,
                    **self.type_args,
                },
            ).fetchall()
            if tokens is not None and rows:
                _spend_tokens(conn, namespace, task_queue, tokens - len(rows), now)
        next_ready: float | None = None
        if len(rows) < self.max_tasks:
            next_ready = conn.execute(
                self.next_sql, {"ns": namespace, "tq": task_queue, **self.type_args}
            ).fetchone()[0]
            if rate is not None and next_ready is not None and n < self.max_tasks:
                next_ready = max(next_ready, now + 1.0 / rate)
        rows.sort(key=lambda r: (r[16], r[9], r[17]))
        return ClaimResult([_rows.task(r) for r in rows], next_ready)


def _find_open(
    conn: sqlite3.Connection, namespace: str, activity_id: str, run_id: str | None, verb: str
) -> tuple[int, str, str, str, int]:
    if run_id is None:
        row = conn.execute(
            "SELECT id, run_id, status, run_state, attempt FROM executions WHERE namespace = ? "
            "AND activity_id = ? ORDER BY id DESC LIMIT 1",
            (namespace, activity_id),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT id, run_id, status, run_state, attempt FROM executions WHERE namespace = ? "
            "AND activity_id = ? AND run_id = ?",
            (namespace, activity_id, run_id),
        ).fetchone()
    if row is None:
        raise ActivityNotFoundError(_rows.not_found(namespace, activity_id, run_id))
    if row[2] != Status.RUNNING.value:
        raise ActivityAlreadyClosedError(
            f"cannot {verb} activity {activity_id!r} (run {row[1]}): it already closed {row[2]}"
        )
    return row[0], row[1], row[2], row[3], row[4]


def _apply_failure(
    conn: sqlite3.Connection,
    row: Sequence[Any],
    info: lc.AttemptFailure,
    failure_data: bytes | None,
    now: float,
    closed: list[ClosedRun],
) -> Status:
    """Retry or close the execution whose decide-columns are ``row``, conditional
    on the attempt and deadline it was read with."""
    (
        row_id,
        run_id,
        attempt,
        _state,
        policy_text,
        cancel_requested,
        s2c,
        _ready,
        _started,
        _hb,
        s2s,
        _stc,
        _hbs,
        deadline,
    ) = row
    decision = lc.after_failure(
        policy=_rows.policy(policy_text),
        attempt=attempt,
        failure=info,
        cancel_requested=bool(cancel_requested),
        schedule_to_close_deadline=s2c,
        now=now,
    )
    timeout_type = None if info.timeout_type is None else int(info.timeout_type)
    if isinstance(decision, lc.Retry):
        conn.execute(
            "UPDATE executions SET run_state = 'SCHEDULED', attempt = ?, ready_at = ?, "
            "deadline = ?, attempt_deadline = 1e15, failure = ?, timeout_type = ?, "
            "retry_interval_s = ? WHERE id = ? AND attempt = ? AND deadline = ?",
            (
                decision.attempt,
                decision.ready_at,
                lc.scheduled_deadline(
                    ready_at=decision.ready_at,
                    schedule_to_start_s=s2s,
                    schedule_to_close_deadline=s2c,
                ),
                failure_data,
                timeout_type,
                decision.interval_s,
                row_id,
                attempt,
                deadline,
            ),
        )
        return Status.RUNNING
    conn.execute(
        "UPDATE executions SET status = ?, run_state = NULL, failure = ?, timeout_type = ?, "
        "close_time = ?, deadline = 1e15 WHERE id = ? AND attempt = ? AND deadline = ?",
        (decision.status.value, failure_data, timeout_type, now, row_id, attempt, deadline),
    )
    closed.append(ClosedRun(run_id, decision.status))
    return decision.status


def _close_timed_out(
    conn: sqlite3.Connection,
    row: Sequence[Any],
    fired: TimeoutType,
    now: float,
    closed: list[ClosedRun],
) -> None:
    row_id, run_id, attempt, deadline = row[0], row[1], row[2], row[13]
    conn.execute(
        "UPDATE executions SET status = 'TIMED_OUT', run_state = NULL, failure = NULL, "
        "timeout_type = ?, close_time = ?, deadline = 1e15 "
        "WHERE id = ? AND attempt = ? AND deadline = ?",
        (int(fired), now, row_id, attempt, deadline),
    )
    closed.append(ClosedRun(run_id, Status.TIMED_OUT))


def _fire_timer(
    conn: sqlite3.Connection, row: Sequence[Any], now: float, closed: list[ClosedRun]
) -> None:
    (
        row_id,
        _run_id,
        _attempt,
        state,
        _policy_text,
        _cancel,
        s2c,
        ready_at,
        started,
        last_hb,
        s2s,
        stc,
        hbs,
        deadline,
    ) = row
    if state == RunState.SCHEDULED.value:
        fired = lc.scheduled_timeout_type(
            now=now, ready_at=ready_at, schedule_to_start_s=s2s, schedule_to_close_deadline=s2c
        )
        if fired is not None:
            _close_timed_out(conn, row, fired, now, closed)
        else:  # the deadline was stale: put back the real one
            _reset_deadline(
                conn,
                row_id,
                deadline,
                lc.scheduled_deadline(
                    ready_at=ready_at, schedule_to_start_s=s2s, schedule_to_close_deadline=s2c
                ),
            )
        return
    fired = lc.started_timeout_type(
        now=now,
        attempt_started=started,
        start_to_close_s=stc,
        heartbeat_s=hbs,
        last_heartbeat=last_hb,
        schedule_to_close_deadline=s2c,
    )
    if fired is None:
        since = started if last_hb is None else max(started, last_hb)
        real = min(s2c, FAR if stc is None else started + stc, FAR if hbs is None else since + hbs)
        _reset_deadline(conn, row_id, deadline, real)
        return
    if fired is TimeoutType.SCHEDULE_TO_CLOSE:
        _close_timed_out(conn, row, fired, now, closed)
        return
    _apply_failure(
        conn, row, lc.AttemptFailure(lc.FailureKind.TIMEOUT, timeout_type=fired), None, now, closed
    )


_CURRENT_ATTEMPT = (
    "run_id = ? AND attempt = ? AND status = 'RUNNING' AND run_state != 'SCHEDULED' "
    "AND deadline > ?"
)
"""The attempt is the execution's current one and none of its deadlines has
passed: a heartbeat or outcome arriving later is stale, even before a timer fired."""


def _close_attempt(
    conn: sqlite3.Connection,
    now: float,
    run_id: str,
    attempt: int,
    status: Status,
    result: bytes | None,
    failure: bytes | None,
    closed: list[ClosedRun],
) -> bool:
    """Close the execution with the current attempt's outcome; False if stale."""
    done = (
        conn.execute(
            # A completion keeps the last attempt's failure (describe shows it).
            "UPDATE executions SET status = ?, run_state = NULL, result = ?, "
            "failure = coalesce(?, failure), "
            "timeout_type = CASE WHEN ? IS NULL THEN timeout_type END, "
            f"close_time = ?, deadline = 1e15 WHERE {_CURRENT_ATTEMPT}",
            (status.value, result, failure, failure, now, run_id, attempt, now),
        ).rowcount
        == 1
    )
    if done:
        closed.append(ClosedRun(run_id, status, result))
    else:
        _expire_if_due(conn, run_id, now, closed)
    return done


def _expire_if_due(
    conn: sqlite3.Connection, run_id: str, now: float, closed: list[ClosedRun]
) -> None:
    """Fire the run's timeout if its deadline has passed but no timer fired it yet,
    so that an outcome or heartbeat arriving after the deadline finds its attempt
    stale instead of overtaking the timeout."""
    row = conn.execute(
        f"SELECT {_rows.DECIDE_COLUMNS} FROM executions WHERE run_id = ? AND status = 'RUNNING' "
        "AND deadline <= ?",
        (run_id, now),
    ).fetchone()
    if row is not None:
        _fire_timer(conn, row, now, closed)


def _reset_deadline(conn: sqlite3.Connection, row_id: int, old: float, new: float) -> None:
    conn.execute(
        "UPDATE executions SET deadline = ? WHERE id = ? AND deadline = ?", (new, row_id, old)
    )


def _queue_tokens(
    conn: sqlite3.Connection, namespace: str, task_queue: str, rate: float, now: float
) -> float:
    """The tokens in the queue's bucket at ``now`` (read only: a claim that takes
    nothing writes nothing, so idle workers do not wake each other)."""
    capacity = max(1.0, rate)
    row = conn.execute(
        "SELECT tokens, updated FROM queue_rates WHERE namespace = ? AND task_queue = ?",
        (namespace, task_queue),
    ).fetchone()
    return capacity if row is None else float(min(capacity, row[0] + (now - row[1]) * rate))


def _spend_tokens(
    conn: sqlite3.Connection, namespace: str, task_queue: str, left: float, now: float
) -> None:
    conn.execute(
        "INSERT INTO queue_rates (namespace, task_queue, tokens, updated) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (namespace, task_queue) DO UPDATE SET tokens = excluded.tokens, "
        "updated = excluded.updated",
        (namespace, task_queue, left, now),
    )


def _where(namespace: str, query: Query) -> tuple[str, list[Any]]:
    clauses = ["namespace = ?"]
    params: list[Any] = [namespace]
    for cond in query.conditions:
        column = _rows.QUERY_FIELDS[cond.field]
        if cond.op == "STARTS_WITH":
            clauses.append(f"substr({column}, 1, ?) = ?")
            params.extend([len(cond.value), cond.value])
        elif cond.op in ("=", "!="):
            clauses.append(f"{column} {cond.op} ?")
            params.append(cond.value)
        else:
            raise ValueError(f"unsupported operator {cond.op!r}")
    return " AND ".join(clauses), params
