"""The PostgreSQL store: one database shared by workers and clients on many
machines, on psycopg 3 and psycopg_pool. Needs PostgreSQL 13 or newer.

Threads with synchronous connections, as in the SQLite store, rather than
psycopg's asyncio API: the store serves any event loop (each caller's future
is settled on its own loop), and the writer's round trips never queue behind
activity code on a busy loop (psycopg releases the GIL while it waits on the
network):

- the writer, which drains every pending change (starts, claims, heartbeats,
  outcomes, timers) into one READ COMMITTED transaction on its own pooled
  connection and wakes each caller after the commit that holds its change
  (group commit). Starts, heartbeats and completions of a batch go to the
  database as one statement each (their rows as one JSON parameter); a claim
  is one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)
  RETURNING``. "Now" is the database clock (``clock_timestamp()``), read once
  per transaction, so deadlines mean the same on every machine. A transaction
  that changed rows ends with ``pg_notify`` on the schema's channel;
- a listener on its own autocommit connection outside the pool, which LISTENs
  and wakes this process's waiters when another process committed, and
  reconnects with backoff (logging it) when its connection drops;
- two readers, on pooled connections, for describe / list / count, the timer
  peek and the result and cancel watchers.

Every change is one conditional statement (or a ``SELECT ... FOR UPDATE``
and the update it decides), safe with any number of processes; the start's
id check is the partial unique index on (namespace, activity_id) of running
executions with ``INSERT ... ON CONFLICT DO NOTHING``. A transaction that
fails for an unexpected reason (a deadlock, say) is retried one change at a
time. Lost connections: a transaction that cannot have committed (COMMIT not
sent, or answered with an error) runs again on a new connection; one whose
COMMIT went unanswered asks the server (``pg_xact_status``) whether it
committed. Only when the server cannot be reached do callers get a
StoreError. ``synchronous_commit`` is left on.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import hashlib
import json
import logging
import queue
import re
import select
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

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

logger = logging.getLogger("errands.store.postgres")

T = TypeVar("T")
Row = tuple[Any, ...]
Conn = psycopg.Connection[Row]
Cursor = psycopg.Cursor[Row]

DEFAULT_SCHEMA = "errands"
"""The PostgreSQL schema the store lives in when the URL names none (``?schema=``)."""

READERS = 2
"""Reader threads (and pooled connections for them); the writer holds one more."""

CONNECT_TIMEOUT_S = 10
"""libpq's connect_timeout unless the URL sets one; also how long an operation
waits for a working connection (the pool reconnecting) before a StoreError."""

KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""TCP keepalive settings (libpq's names) unless the URL sets them."""

MAX_BATCH = 2_000
"""Most changes one group commit holds."""

BULK_BYTES = 64 * 1024 * 1024
"""Most payload bytes one bulk statement carries (more go in further ones)."""

LISTEN_BACKOFF_S = (0.1, 5.0)
"""First and longest pause between two attempts to reconnect the listener."""

WRITE_TRIES = 3
"""How often a group commit whose connection broke before it could commit runs
again on a new connection (a dead connection fails at once, so this is quick)."""

FATE_WAIT_S = 2.0
"""How long to wait for a terminated backend's transaction to show as
committed or aborted, when the connection dropped while it committed."""

START_RETRIES = 5
"""How often a start whose id conflict vanished (the running execution closed
meanwhile) inserts again before giving up."""

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,54}\Z")

_BEGIN = (
    "BEGIN ISOLATION LEVEL READ COMMITTED; "
    "SELECT extract(epoch FROM clock_timestamp())::float8, NULL::text"
)
# A batch that will write takes its transaction id at once (it needs one
# anyway): its COMMIT can then go with the NOTIFY in one round trip, and if the
# connection drops unanswered, the id tells whether the commit went through.
_BEGIN_WRITING = (
    "BEGIN ISOLATION LEVEL READ COMMITTED; "
    "SELECT extract(epoch FROM clock_timestamp())::float8, pg_current_xact_id()::text"
)
_XID = "SELECT pg_current_xact_id_if_assigned()::text"

# Kinds that always (or nearly always) write; claims, timer passes and other
# ops often find nothing to do.
_WRITING_KINDS = frozenset({"start", "heartbeat", "complete", "interrupt"})

_CHANGED_VERBS = ("INSERT", "UPDATE", "DELETE")


# --------------------------------------------------------------------------- URLs


def parse_url(url: str) -> tuple[str, str]:
    """Split a ``postgresql://`` (or ``postgres://``) URL into the URL psycopg
    gets and the schema its ``schema`` query parameter names (default
    ``errands``).

    Raises ValueError for another scheme or a schema name that is not a lower
    case identifier of at most 55 characters.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r} (expected postgresql://...)")
    schema = DEFAULT_SCHEMA
    rest = []
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(
            f"schema {schema!r} in {url!r} is not a lower-case identifier "
            "(letters, digits, underscores; at most 55 characters)"
        )
    query = urllib.parse.urlencode(rest, quote_via=urllib.parse.quote)
    return urllib.parse.urlunsplit(parts._replace(query=query)), schema


def _connect_kwargs(conninfo: str, schema: str) -> tuple[dict[str, Any], float]:
    """Connection parameters added to the URL's (the schema on the search path,
    a connect timeout and an application name, unless the URL sets them), and
    the connect timeout in seconds."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error as e:
        raise ValueError(f"invalid PostgreSQL URL: {e}") from e
    options = str(given.get("options") or "")
    kwargs: dict[str, Any] = {"options": f"{options} -c search_path={schema}".strip()}
    try:
        timeout_s = float(given.get("connect_timeout") or CONNECT_TIMEOUT_S)
    except ValueError as e:
        raise ValueError(f"invalid connect_timeout in PostgreSQL URL: {e}") from e
    if "connect_timeout" not in given:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
    if "application_name" not in given:
        kwargs["application_name"] = f"errands:{schema}"
    # Notice a peer gone silent (no RST) within about a minute, not the OS's two
    # hours: the LISTEN connection waits on its socket and would never know.
    for key, value in KEEPALIVES.items():
        kwargs.setdefault(key, given.get(key, value))
    return kwargs, max(1.0, timeout_s)


def _describe_target(conninfo: str, schema: str) -> str:
    """host:port/dbname and schema, for messages (never the password)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return f"(schema {schema})"
    host = info.get("host") or "localhost"
    port = info.get("port") or 5432
    return f"{host}:{port}/{info.get('dbname') or info.get('user') or ''} (schema {schema})"


def _lock_key(purpose: str, schema: str) -> int:
    """A 64-bit advisory-lock key for one purpose in one schema."""
    digest = hashlib.blake2b(f"errands:{purpose}:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _is_broken(conn: Conn | None) -> bool:
    return conn is not None and (conn.closed or conn.broken)


# --------------------------------------------------------------------------- migrations


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("errands.store").joinpath("migrations").joinpath("postgres")
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), name, entry.read_text()))
    return sorted(found)


SCHEMA_VERSION = max(version for version, _, _ in _migrations())
"""The newest schema this code knows."""


def migrate(conn: Conn, schema: str, target: str) -> int:
    """Create the schema if missing and apply pending migrations, in one
    transaction under ``pg_advisory_xact_lock`` (so processes connecting at
    once take turns); return the version. ``conn`` is in autocommit mode with
    the schema on its search path.

    Raises StoreError if the schema is newer than this code.
    """
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("migrate", schema),))
            exists = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
            ).fetchone()
            if exists is None:
                conn.execute(f'CREATE SCHEMA "{schema}"')  # a checked identifier
            conn.execute(
                "CREATE TABLE IF NOT EXISTS errands_schema "
                "(version integer PRIMARY KEY, name text NOT NULL, applied float8 NOT NULL)"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM errands_schema").fetchone()
            current = int(row[0]) if row is not None else 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"PostgreSQL store {target} has schema version {current}, newer than "
                    f"this errands (knows up to {SCHEMA_VERSION}); upgrade errands"
                )
            for version, name, sql in _migrations():
                if version <= current:
                    continue
                conn.execute(sql)  # no parameters: the whole script in one simple query
                conn.execute(
                    "INSERT INTO errands_schema (version, name, applied) "
                    "VALUES (%s, %s, extract(epoch FROM clock_timestamp()))",
                    (version, name),
                )
                logger.info("PostgreSQL store %s: applied migration %s", target, name)
                current = version
            return current
    except psycopg.Error as e:
        raise StoreError(f"PostgreSQL store {target}: migration failed: {e}") from e


# --------------------------------------------------------------------------- transactions


class _Tx:
    """One group-commit transaction: its cursor, the database clock's "now",
    what it changed and closed, and the claims it made for armed pollers."""

    def __init__(self, cursor: Cursor, now: float) -> None:
        self.cursor = cursor
        self.now = now
        self.offset = time.time() - now
        """Add to a database time to get this machine's clock (for wait hints)."""
        self.changed = False
        self.closed: list[ClosedRun] = []
        self.handoffs: list[tuple[Armed[_Claim], list[ClaimedTask]]] = []

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Cursor:
        cursor = self.cursor.execute(sql, params)
        if cursor.rowcount > 0 and (cursor.statusmessage or "").startswith(_CHANGED_VERBS):
            self.changed = True
        return cursor

    def local(self, db_time: float) -> float:
        """A database time on this machine's clock."""
        return db_time + self.offset


Outcome = tuple[Any, BaseException | None]
Handler = Callable[[_Tx, list[Any]], list[Outcome]]

# The order in which a batch's kinds run; within a batch every change is
# independent (each caller waits for its own commit before its next change),
# so any order is a valid one. Starts go first so claims see them.
# "interrupt" changes (cancel, terminate, prune) touch the interrupt log: a
# batch holding any takes the log's lock before all else (see _lock_interrupts).
_KINDS = ("start", "claim", "heartbeat", "complete", "op", "interrupt")


@dataclass
class _Pending:
    kind: str
    arg: Any
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


def _run_each(tx: _Tx, ops: list[Callable[[_Tx], Any]]) -> list[Outcome]:
    """Run changes one at a time; a refused one (id in use, not found, ...)
    wrote nothing and fails alone."""
    out: list[Outcome] = []
    for op in ops:
        try:
            out.append((op(tx), None))
        except ErrandsError as e:
            out.append((None, e))
    return out


class _Writer:
    """The one writing connection of a store, on its own thread (group commit)."""

    def __init__(
        self,
        pool: ConnectionPool[Conn],
        target: str,
        handlers: dict[str, Handler],
        notify_sql: str,
        after_commit: Callable[[], None],
        on_closed: Callable[[Sequence[ClosedRun]], None],
    ) -> None:
        self._pool = pool
        self._target = target
        self._handlers = handlers
        self._commit_sql = f"{notify_sql}; COMMIT"
        self._after_commit = after_commit
        self._on_closed = on_closed
        self._conn: Conn | None = None
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="errands-pg-writer", daemon=True)
        self._thread.start()

    def submit(self, kind: str, arg: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Pending(kind, arg, future, loop))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
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
                self._commit(batch)
        finally:
            self._drop_connection()

    def _connection(self) -> Conn:
        if self._conn is None:
            self._conn = self._pool.getconn()
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                self._pool.putconn(conn)  # the pool replaces a broken one

    def _commit(self, batch: list[_Pending]) -> None:
        result = self._transaction(batch)
        if result is None:
            # Something unexpected broke the batch: run each change alone so that
            # one bad change cannot fail the others.
            outcomes: list[tuple[_Pending, Outcome]] = []
            closed: list[ClosedRun] = []
            handoffs: list[tuple[Armed[_Claim], list[ClaimedTask]]] = []
            changed = False
            for item in batch:
                alone = self._transaction([item])
                if alone is None:
                    error = StoreError(f"PostgreSQL store {self._target}: write failed")
                    outcomes.append((item, (None, error)))
                    continue
                outcomes.extend(alone[0])
                changed = changed or alone[1]
                closed.extend(alone[2])
                handoffs.extend(alone[3])
        else:
            outcomes, changed, closed, handoffs = result
        # Wake waiters only when rows changed: an empty claim or timer pass must
        # not wake its own poller, or idle workers spin on empty transactions.
        if changed:
            self._after_commit()
        if closed:
            self._on_closed(closed)
        for armed, tasks in handoffs:
            try:
                armed.loop.call_soon_threadsafe(armed.deliver, tasks)
            except RuntimeError:  # the loop closed: the tasks time out and retry
                logger.warning("claimed %d tasks for a poller whose loop closed", len(tasks))
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for item, (value, failure) in outcomes:
            by_loop.setdefault(item.loop, []).append((item.future, value, failure))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(_settle, items)

    def _apply(self, tx: _Tx, batch: list[_Pending]) -> list[tuple[_Pending, Outcome]]:
        by_kind: dict[str, list[_Pending]] = {}
        for item in batch:
            by_kind.setdefault(item.kind, []).append(item)
        if "interrupt" in by_kind:
            _lock_interrupts(tx)
        out: list[tuple[_Pending, Outcome]] = []
        for kind in _KINDS:
            items = by_kind.get(kind)
            if items:
                results = self._handlers[kind](tx, [item.arg for item in items])
                out.extend(zip(items, results, strict=True))
        return out

    def _transaction(
        self, batch: list[_Pending]
    ) -> (
        tuple[
            list[tuple[_Pending, Outcome]],
            bool,
            list[ClosedRun],
            list[tuple[Armed[_Claim], list[ClaimedTask]]],
        ]
        | None
    ):
        """Run the batch in one transaction: (outcomes, changed, closed,
        handoffs), or None when an unexpected error aborted it."""
        lost: list[tuple[Armed[_Claim], list[ClaimedTask]]] = []  # handoffs of aborted tries
        for tries_left in range(WRITE_TRIES - 1, -1, -1):
            last_try = tries_left == 0
            try:
                conn = self._connection()
            except (psycopg.Error, PoolTimeout) as e:
                error = StoreError(f"PostgreSQL store {self._target}: no connection: {e}")
                error.__cause__ = e
                return [(item, (None, error)) for item in batch], False, [], lost
            tx: _Tx | None = None
            committing = False
            xid: str | None = None
            try:
                cursor = conn.cursor()
                writing = any(item.kind in _WRITING_KINDS for item in batch)
                cursor.execute(_BEGIN_WRITING if writing else _BEGIN)
                cursor.nextset()
                row = cursor.fetchone()
                assert row is not None
                tx = _Tx(cursor, float(row[0]))
                xid = row[1]
                outcomes = self._apply(tx, batch)
                if tx.changed and xid is None:
                    found = cursor.execute(_XID).fetchone()
                    xid = None if found is None else found[0]
                committing = True
                cursor.execute(self._commit_sql if tx.changed else "COMMIT")
                return outcomes, tx.changed, tx.closed, lost + tx.handoffs
            except BaseException as e:
                if _is_broken(conn):
                    self._drop_connection()
                    # Nothing can have committed if COMMIT was not sent yet, or if
                    # the server answered it with an error (a terminated backend
                    # says so); else ask the server what became of the transaction.
                    fate = "aborted"
                    if committing and getattr(e, "sqlstate", None) is None and xid is not None:
                        fate = self._fate(xid)
                    if fate == "committed" and tx is not None:
                        logger.warning(
                            "PostgreSQL store %s: connection lost (%s) after a commit that "
                            "went through",
                            self._target,
                            str(e).strip(),
                        )
                        return outcomes, tx.changed, tx.closed, lost + tx.handoffs
                    if tx is not None:
                        # The claims rolled back: tell their pollers nothing came.
                        lost.extend((armed, []) for armed, _ in tx.handoffs)
                    unsaved = fate == "aborted"
                    if isinstance(e, psycopg.Error) and unsaved and not last_try:
                        logger.warning(
                            "PostgreSQL store %s: connection lost (%s); retrying %d changes "
                            "on a new connection",
                            self._target,
                            e,
                            len(batch),
                        )
                        with contextlib.suppress(Exception):
                            self._pool.check()  # drop the pool's other dead connections
                        continue
                    doubt = " while committing: the changes may or may not be saved" * (not unsaved)
                    error = StoreError(
                        f"PostgreSQL store {self._target}: connection lost{doubt}: {e}"
                    )
                    error.__cause__ = e
                    return [(item, (None, error)) for item in batch], False, [], lost
                if tx is not None:
                    # The claims rolled back: tell their pollers nothing came.
                    lost.extend((armed, []) for armed, _ in tx.handoffs)
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                if len(batch) == 1:
                    failure: BaseException = e
                    if isinstance(e, psycopg.Error):
                        failure = StoreError(f"PostgreSQL store {self._target} failed: {e}")
                        failure.__cause__ = e
                    return [(batch[0], (None, failure))], False, [], lost
                if isinstance(e, psycopg.Error):
                    logger.warning(
                        "PostgreSQL group commit of %d changes failed (%s); retrying one by one",
                        len(batch),
                        e,
                    )
                else:
                    logger.exception("PostgreSQL group commit failed; retrying one by one")
                # Deliver the aborted claims' empty hand-offs before the retries.
                self._deliver_lost(lost)
                return None
        raise AssertionError("unreachable")

    def _fate(self, xid: str) -> str:
        """What became of a transaction whose connection dropped while it
        committed: "committed", "aborted", or "unknown" (the server cannot be
        asked). A terminated backend's transaction reads "in progress" until
        the backend has exited: wait for that, briefly."""
        deadline = time.monotonic() + FATE_WAIT_S
        with contextlib.suppress(Exception):
            self._pool.check()  # the other pooled connections may have died too
        while True:
            try:
                with self._pool.connection() as conn:
                    row = conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
                status = None if row is None else row[0]
                if status in ("committed", "aborted"):
                    return str(status)
                if status is None:
                    return "unknown"
            except (psycopg.Error, PoolTimeout) as e:
                if time.monotonic() > deadline:
                    logger.warning(
                        "PostgreSQL store %s: cannot learn whether a commit went through: %s",
                        self._target,
                        e,
                    )
                    return "unknown"
            if time.monotonic() > deadline:
                return "unknown"
            time.sleep(0.005)

    @staticmethod
    def _deliver_lost(lost: list[tuple[Armed[_Claim], list[ClaimedTask]]]) -> None:
        for armed, tasks in lost:
            with contextlib.suppress(RuntimeError):
                armed.loop.call_soon_threadsafe(armed.deliver, tasks)


# --------------------------------------------------------------------------- listener


class _Listener:
    """LISTENs on its own autocommit connection (outside the pool) and fires
    the store's change signals when another process commits a change.
    Reconnects with backoff when the connection drops, logging it."""

    def __init__(
        self,
        conninfo: str,
        kwargs: dict[str, Any],
        channel: str,
        own_token: str,
        fire: Callable[[], None],
        target: str,
    ) -> None:
        self._conninfo = conninfo
        self._kwargs = kwargs
        self._channel = channel
        self._own_token = own_token
        self._fire = fire
        self._target = target
        self._stopping = threading.Event()
        self._listening = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="errands-pg-listen", daemon=True)
        self._thread.start()

    def wait_listening(self, timeout: float) -> bool:
        """Block until the first LISTEN is in place (at most ``timeout``)."""
        return self._listening.wait(timeout)

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        delay = LISTEN_BACKOFF_S[0]
        lost = False
        while not self._stopping.is_set():
            try:
                conn = psycopg.connect(self._conninfo, autocommit=True, **self._kwargs)
            except psycopg.Error as e:
                logger.warning(
                    "PostgreSQL store %s: cannot connect to LISTEN (%s); retrying in %.1f s",
                    self._target,
                    str(e).strip(),
                    delay,
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, LISTEN_BACKOFF_S[1])
                continue
            try:
                conn.execute(f"LISTEN {self._channel}")  # a checked identifier
                if lost:
                    logger.warning("PostgreSQL store %s: LISTEN connection restored", self._target)
                    self._fire()  # changes made while it was down went unnoticed
                lost = False
                delay = LISTEN_BACKOFF_S[0]
                self._listening.set()
                self._listen(conn)
            except psycopg.Error as e:
                if self._stopping.is_set():
                    break
                logger.warning(
                    "PostgreSQL store %s: LISTEN connection lost (%s); reconnecting",
                    self._target,
                    str(e).strip(),
                )
                lost = True
                self._fire()
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

    def _listen(self, conn: Conn) -> None:
        pgconn = conn.pgconn
        wake = self._wake_r.fileno()
        while not self._stopping.is_set():
            readable, _, _ = select.select([pgconn.socket, wake], [], [])
            if wake in readable:
                return
            pgconn.consume_input()
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the LISTEN connection is closed")
            others = False
            while (notify := pgconn.notifies()) is not None:
                if notify.extra.decode() != self._own_token:
                    others = True
            if others:
                self._fire()


# --------------------------------------------------------------------------- claims


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
        self.args: dict[str, Any] = {"ns": namespace, "tq": task_queue}
        if only_types is not None:
            type_filter += " AND activity_type = ANY(%(only)s)"
            self.args["only"] = list(only_types)
        if exclude_types:
            type_filter += " AND activity_type <> ALL(%(skip)s)"
            self.args["skip"] = list(exclude_types)
        # One statement claims and, when it takes fewer than max_tasks, also
        # finds when the queue's next scheduled task becomes ready (its snapshot
        # still shows the claimed rows as scheduled: they are left out). It
        # always returns a row: with no task claimed, the task columns are NULL.
        self.claim_sql = (
            "WITH claimed AS (UPDATE executions SET run_state = 'STARTED', "
            "started_time = %(now)s, identity = %(identity)s, "
            "attempt_deadline = least(s2c_deadline, %(now)s + coalesce(start_to_close_s, 1e15)), "
            "deadline = least(s2c_deadline, %(now)s + coalesce(start_to_close_s, 1e15), "
            "%(now)s + coalesce(heartbeat_s, 1e15)) "
            "WHERE id IN (SELECT id FROM executions WHERE namespace = %(ns)s "
            "AND task_queue = %(tq)s AND run_state = 'SCHEDULED' AND ready_at <= %(now)s "
            f"AND deadline > %(now)s{type_filter} ORDER BY priority_key, ready_at, id "
            f"LIMIT %(n)s FOR UPDATE SKIP LOCKED) RETURNING {_rows.TASK_COLUMNS}) "
            "SELECT c.*, nxt.ready FROM (SELECT CASE WHEN (SELECT count(*) FROM claimed) "
            "< %(max)s THEN (SELECT min(ready_at) FROM executions WHERE namespace = %(ns)s "
            f"AND task_queue = %(tq)s AND run_state = 'SCHEDULED'{type_filter} "
            "AND id NOT IN (SELECT id FROM claimed)) END AS ready) AS nxt "
            "LEFT JOIN claimed AS c ON true"
        )

    def run(self, tx: _Tx) -> ClaimResult:
        """Claim, inside the writer's transaction."""
        now, rate = tx.now, self.queue_rate_per_s
        n = self.max_tasks
        tokens = None
        if rate is not None:
            tokens = _queue_tokens(tx, self.namespace, self.task_queue, rate)
            n = min(n, int(tokens))
        found = tx.execute(
            self.claim_sql,
            {
                **self.args,
                "now": now,
                "identity": self.identity,
                "n": max(0, n),
                "max": self.max_tasks,
            },
        ).fetchall()
        rows = [row for row in found if row[2] is not None]
        if rows:
            tx.changed = True  # the statement reports itself as a SELECT
        if tokens is not None and rows:
            tx.execute(
                "UPDATE queue_rates SET tokens = %s, updated = %s "
                "WHERE namespace = %s AND task_queue = %s",
                (tokens - len(rows), now, self.namespace, self.task_queue),
            )
        ready = found[0][-1] if found else None
        next_ready = None if ready is None else float(ready)
        if rate is not None and next_ready is not None and n < self.max_tasks:
            next_ready = max(next_ready, now + 1.0 / rate)
        rows.sort(key=lambda r: (r[16], r[9], r[17]))
        return ClaimResult(
            [_rows.task(r) for r in rows], None if next_ready is None else tx.local(next_ready)
        )


def _queue_tokens(tx: _Tx, namespace: str, task_queue: str, rate: float) -> float:
    """The tokens in the queue's bucket now, with its row locked until commit
    (so two processes never spend the same tokens)."""
    capacity = max(1.0, rate)
    tx.execute(
        "INSERT INTO queue_rates (namespace, task_queue, tokens, updated) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (namespace, task_queue, capacity, tx.now),
    )
    row = tx.execute(
        "SELECT tokens, updated FROM queue_rates WHERE namespace = %s AND task_queue = %s "
        "FOR UPDATE",
        (namespace, task_queue),
    ).fetchone()
    assert row is not None
    return float(min(capacity, row[0] + max(0.0, tx.now - row[1]) * rate))


# --------------------------------------------------------------------------- lifecycle helpers


def _find_open(
    tx: _Tx, namespace: str, activity_id: str, run_id: str | None, verb: str
) -> tuple[int, str, str, str, int]:
    """The execution a cancel or terminate is about, locked until commit."""
    if run_id is None:
        row = tx.execute(
            "SELECT id, run_id, status, run_state, attempt FROM executions WHERE namespace = %s "
            "AND activity_id = %s ORDER BY id DESC LIMIT 1 FOR UPDATE",
            (namespace, activity_id),
        ).fetchone()
    else:
        row = tx.execute(
            "SELECT id, run_id, status, run_state, attempt FROM executions WHERE namespace = %s "
            "AND activity_id = %s AND run_id = %s FOR UPDATE",
            (namespace, activity_id, run_id),
        ).fetchone()
    if row is None:
        raise ActivityNotFoundError(_rows.not_found(namespace, activity_id, run_id))
    if row[2] != Status.RUNNING.value:
        raise ActivityAlreadyClosedError(
            f"cannot {verb} activity {activity_id!r} (run {row[1]}): it already closed {row[2]}"
        )
    return row[0], row[1], row[2], row[3], row[4]


def _lock_interrupts(tx: _Tx) -> None:
    """Take the interrupt log's write lock until commit, first thing in a
    transaction that cancels, terminates or prunes. It makes seq order commit
    order, so a reader's cursor never passes a request that becomes visible
    later; taken before any row lock, it cannot close a deadlock with another
    such transaction. Readers are not blocked."""
    tx.execute("LOCK TABLE interrupts IN EXCLUSIVE MODE")


def _log_interrupt(tx: _Tx, namespace: str, run_id: str, attempt: int, kind: str) -> None:
    """Log a request for a started attempt (under ``_lock_interrupts``)."""
    tx.execute(
        "INSERT INTO interrupts (namespace, run_id, attempt, kind, created) "
        "VALUES (%s, %s, %s, %s, %s)",
        (namespace, run_id, attempt, kind, tx.now),
    )


def _apply_failure(
    tx: _Tx, row: Sequence[Any], info: lc.AttemptFailure, failure_data: bytes | None
) -> Status | None:
    """Retry or close the execution whose decide-columns are ``row`` (read with
    FOR UPDATE), conditional on the attempt and deadline it was read with.
    None if it changed meanwhile."""
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
    now = tx.now
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
        done = tx.execute(
            "UPDATE executions SET run_state = 'SCHEDULED', attempt = %s, ready_at = %s, "
            "deadline = %s, attempt_deadline = 1e15, failure = %s, timeout_type = %s, "
            "retry_interval_s = %s WHERE id = %s AND attempt = %s AND deadline = %s",
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
        ).rowcount
        return Status.RUNNING if done == 1 else None
    done = tx.execute(
        "UPDATE executions SET status = %s, run_state = NULL, failure = %s, timeout_type = %s, "
        "close_time = %s, deadline = 1e15 WHERE id = %s AND attempt = %s AND deadline = %s",
        (decision.status.value, failure_data, timeout_type, now, row_id, attempt, deadline),
    ).rowcount
    if done != 1:
        return None
    tx.closed.append(ClosedRun(run_id, decision.status))
    return decision.status


def _close_timed_out(tx: _Tx, row: Sequence[Any], fired: TimeoutType) -> None:
    row_id, run_id, attempt, deadline = row[0], row[1], row[2], row[13]
    done = tx.execute(
        "UPDATE executions SET status = 'TIMED_OUT', run_state = NULL, failure = NULL, "
        "timeout_type = %s, close_time = %s, deadline = 1e15 "
        "WHERE id = %s AND attempt = %s AND deadline = %s",
        (int(fired), tx.now, row_id, attempt, deadline),
    ).rowcount
    if done == 1:
        tx.closed.append(ClosedRun(run_id, Status.TIMED_OUT))


def _reset_deadline(tx: _Tx, row_id: int, old: float, new: float) -> None:
    tx.execute(
        "UPDATE executions SET deadline = %s WHERE id = %s AND deadline = %s", (new, row_id, old)
    )


def _fire_timer(tx: _Tx, row: Sequence[Any]) -> None:
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
    now = tx.now
    if state == RunState.SCHEDULED.value:
        fired = lc.scheduled_timeout_type(
            now=now, ready_at=ready_at, schedule_to_start_s=s2s, schedule_to_close_deadline=s2c
        )
        if fired is not None:
            _close_timed_out(tx, row, fired)
        else:  # the deadline was stale: put back the real one
            _reset_deadline(
                tx,
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
        _reset_deadline(tx, row_id, deadline, real)
        return
    if fired is TimeoutType.SCHEDULE_TO_CLOSE:
        _close_timed_out(tx, row, fired)
        return
    _apply_failure(tx, row, lc.AttemptFailure(lc.FailureKind.TIMEOUT, timeout_type=fired), None)


_CURRENT_ATTEMPT = "run_state IN ('STARTED', 'CANCEL_REQUESTED') AND deadline > %(now)s"
"""With a run id and attempt: the attempt is the execution's current one and none
of its deadlines has passed, so a heartbeat or outcome arriving later is stale,
even before a timer fired. (run_state is NULL once closed, so this implies
status = 'RUNNING'. Saying "status = 'RUNNING'" instead would let the planner
pick the partial deadline index and scan every running execution; it does on a
fresh table whose statistics are not gathered yet.)"""


def _expire_if_due(tx: _Tx, run_id: str) -> None:
    """Fire the run's timeout if its deadline has passed but no timer fired it yet,
    so that an outcome or heartbeat arriving after the deadline finds its attempt
    stale instead of overtaking the timeout."""
    row = tx.execute(
        f"SELECT {_rows.DECIDE_COLUMNS} FROM executions WHERE run_id = %s AND status = 'RUNNING' "
        "AND deadline <= %s FOR UPDATE",
        (run_id, tx.now),
    ).fetchone()
    if row is not None:
        _fire_timer(tx, row)


def _rounds(
    items: Sequence[T], key: Callable[[T], Any], size: Callable[[T], int]
) -> list[list[int]]:
    """Indexes of ``items`` in rounds, one bulk statement each: keys are unique
    within a round (one UPDATE changes a row only once), and a round carries
    at most BULK_BYTES of payload (a parameter holds at most 1 GB)."""
    rounds: list[tuple[list[int], set[Any], list[int]]] = []
    for i, item in enumerate(items):
        k, n = key(item), size(item)
        for members, keys, total in rounds:
            if k not in keys and total[0] + n <= BULK_BYTES:
                members.append(i)
                keys.add(k)
                total[0] += n
                break
        else:
            rounds.append(([i], {k}, [n]))
    return [members for members, _, _ in rounds]


def _where(namespace: str, query: Query) -> tuple[str, list[Any]]:
    clauses = ["namespace = %s"]
    params: list[Any] = [namespace]
    for cond in query.conditions:
        column = _rows.QUERY_FIELDS[cond.field]
        if cond.op == "STARTS_WITH":
            clauses.append(f"starts_with({column}, %s)")
            params.append(cond.value)
        elif cond.op in ("=", "!="):
            clauses.append(f"{column} {'<>' if cond.op == '!=' else '='} %s")
            params.append(cond.value)
        else:
            raise ValueError(f"unsupported operator {cond.op!r}")
    return " AND ".join(clauses), params


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class _Report:
    """A heartbeat or completion of one attempt (details or result)."""

    run_id: str
    attempt: int
    data: bytes | None


# Bulk statements take their rows as one JSON array of arrays (bytes in base64):
# psycopg adapts one string far faster than a Python list per column, and the
# server unpacks it cheaply.
_INSERT_SQL = (
    "INSERT INTO executions (namespace, activity_id, run_id, activity_type, task_queue, status, "
    "run_state, attempt, input, schedule_time, ready_at, s2c_deadline, attempt_deadline, "
    "deadline, schedule_to_close_s, schedule_to_start_s, start_to_close_s, heartbeat_s, "
    "retry_policy, priority_key, start_delay_s, summary) "
    "SELECT r->>0, r->>1, r->>2, r->>3, r->>4, 'RUNNING', 'SCHEDULED', 1, "
    "decode(r->>5, 'base64'), %(now)s, (r->>6)::float8, (r->>7)::float8, 1e15, "
    "(r->>8)::float8, (r->>9)::float8, (r->>10)::float8, (r->>11)::float8, (r->>12)::float8, "
    "r->>13, (r->>14)::int, (r->>15)::float8, r->>16 "
    "FROM json_array_elements(%(rows)s::json) AS r "
    "ON CONFLICT DO NOTHING RETURNING run_id"
)

# Rows [run_id, attempt, base64 bytes or null]. The run ids also come as an
# array: "run_id = ANY(...)" steers the planner to the run_id index (see
# _CURRENT_ATTEMPT for the other half of that).
_HEARTBEAT_SQL = (
    "UPDATE executions e SET "
    "heartbeat_details = coalesce(decode(v.r->>2, 'base64'), e.heartbeat_details), "
    "heartbeat_count = e.heartbeat_count + 1, last_heartbeat_time = %(now)s, "
    "deadline = CASE WHEN e.heartbeat_s IS NULL THEN e.attempt_deadline "
    "ELSE least(e.attempt_deadline, %(now)s + e.heartbeat_s) END "
    "FROM json_array_elements(%(rows)s::json) AS v(r) "
    "WHERE e.run_id = ANY(%(run_ids)s) AND e.run_id = v.r->>0 AND e.attempt = (v.r->>1)::int "
    "AND e.run_state IN ('STARTED', 'CANCEL_REQUESTED') AND e.deadline > %(now)s "
    "RETURNING e.run_id, e.cancel_requested"
)

# A completion keeps the last attempt's failure and timeout type (describe shows them).
_COMPLETE_SQL = (
    "UPDATE executions e SET status = 'COMPLETED', run_state = NULL, "
    "result = decode(v.r->>2, 'base64'), close_time = %(now)s, deadline = 1e15 "
    "FROM json_array_elements(%(rows)s::json) AS v(r) "
    "WHERE e.run_id = ANY(%(run_ids)s) AND e.run_id = v.r->>0 AND e.attempt = (v.r->>1)::int "
    "AND e.run_state IN ('STARTED', 'CANCEL_REQUESTED') AND e.deadline > %(now)s "
    "RETURNING e.run_id"
)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _report_size(report: _Report) -> int:
    return 0 if report.data is None else len(report.data)


def _outcome_rows(items: Sequence[_Report]) -> dict[str, Any]:
    return {
        "rows": json.dumps([[o.run_id, o.attempt, _b64(o.data)] for o in items]),
        "run_ids": [o.run_id for o in items],
    }


class PostgresStore(Store):
    """The Store on a PostgreSQL schema. Open it with ``await PostgresStore.open(url)``."""

    def __init__(
        self, pool: ConnectionPool[Conn], conninfo: str, kwargs: dict[str, Any], schema: str
    ) -> None:
        super().__init__()
        self.schema = schema
        self.target = _describe_target(conninfo, schema)
        self._pool = pool
        self._armed: ArmedClaims[_Claim] = ArmedClaims()
        self._signals = ChangeSignals()
        channel = f"errands_{schema}"
        token = uuid.uuid4().hex
        self._writer = _Writer(
            pool,
            self.target,
            {
                "start": self._bulk_start,
                "claim": _run_each,
                "heartbeat": self._bulk_heartbeat,
                "complete": self._bulk_complete,
                "op": _run_each,
                "interrupt": _run_each,
            },
            f"SELECT pg_notify('{channel}', '{token}')",
            self._signals.fire_threadsafe,
            self._emit_closed,
        )
        self._listener = _Listener(
            conninfo, kwargs, channel, token, self._signals.fire_threadsafe, self.target
        )
        self._reader = ThreadPoolExecutor(READERS, thread_name_prefix="errands-pg-reader")
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        """Open the store a ``postgresql://`` URL names (``?schema=`` picks the
        schema, default ``errands``), creating the schema and applying pending
        migrations.

        Raises ValueError for a malformed URL, StoreError if the database is
        missing or unreachable or its schema is newer than this code.
        """
        conninfo, schema = parse_url(url)
        kwargs, timeout_s = _connect_kwargs(conninfo, schema)
        target = _describe_target(conninfo, schema)

        def setup() -> ConnectionPool[Conn]:
            try:
                conn = psycopg.connect(conninfo, autocommit=True, **kwargs)
            except psycopg.Error as e:
                raise StoreError(f"cannot open PostgreSQL store {target}: {str(e).strip()}") from e
            try:
                migrate(conn, schema, target)
            finally:
                conn.close()
            pool: ConnectionPool[Conn] = ConnectionPool(
                conninfo,
                kwargs={**kwargs, "autocommit": True},
                min_size=READERS + 1,
                max_size=READERS + 1,
                open=False,
                name=f"errands:{schema}",
                timeout=timeout_s,
                num_workers=1,
            )
            try:
                pool.open(wait=True, timeout=timeout_s)
            except PoolTimeout as e:
                pool.close()
                raise StoreError(f"cannot open PostgreSQL store {target}: {e}") from e
            return pool

        loop = asyncio.get_running_loop()
        pool = await loop.run_in_executor(None, setup)
        store = cls(pool, conninfo, kwargs, schema)
        # Changes made from here on wake this process's waiters.
        await loop.run_in_executor(None, store._listener.wait_listening, timeout_s)
        return store

    # ---------------------------------------------------------------- plumbing

    async def _write(self, kind: str, arg: Any) -> Any:
        if self._closed:
            raise StoreError(f"PostgreSQL store {self.target} is closed")
        return await self._writer.submit(kind, arg)

    async def _op(self, op: Callable[[_Tx], T], kind: str = "op") -> T:
        result: T = await self._write(kind, op)
        return result

    async def _read(self, fn: Callable[[Cursor], T]) -> T:
        if self._closed:
            raise StoreError(f"PostgreSQL store {self.target} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._read_now, fn)

    def _read_now(self, fn: Callable[[Cursor], T]) -> T:
        for last_try in (False, True):
            try:
                conn = self._pool.getconn()
            except PoolTimeout as e:
                raise StoreError(f"PostgreSQL store {self.target}: no connection: {e}") from e
            try:
                return fn(conn.cursor())
            except psycopg.Error as e:
                if not _is_broken(conn) or last_try:
                    raise StoreError(f"PostgreSQL store {self.target} failed: {e}") from e
                # A connection that died while idle in the pool: reads are safe
                # to repeat on a fresh one.
                logger.warning(
                    "PostgreSQL store %s: connection lost (%s); reading again",
                    self.target,
                    str(e).strip(),
                )
            finally:
                self._pool.putconn(conn)  # the pool replaces a broken one
            with contextlib.suppress(Exception):
                self._pool.check()  # and its other dead ones
        raise AssertionError("unreachable")

    def change_event(self) -> asyncio.Event:
        return self._signals.event()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._signals.wake_all()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._writer.stop)
        await loop.run_in_executor(None, self._listener.stop)
        await loop.run_in_executor(None, self._reader.shutdown, True)
        await loop.run_in_executor(None, self._pool.close)

    # ---------------------------------------------------------------- start

    async def start(self, new: NewExecution) -> StartResult:
        result: StartResult = await self._write("start", new)
        return result

    def _bulk_start(self, tx: _Tx, news: list[NewExecution]) -> list[Outcome]:
        out: list[Outcome | None] = [None] * len(news)
        insert: list[int] = []
        for i, new in enumerate(news):
            refused = self._reuse_refusal(tx, new)
            if refused is not None:
                out[i] = (None, refused)
            else:
                insert.append(i)
        created = self._insert(tx, [news[i] for i in insert])
        made: list[NewExecution] = []
        for i in insert:
            new = news[i]
            if new.run_id in created:
                out[i] = (StartResult(new.run_id, created=True), None)
                made.append(new)
            else:
                out[i] = self._start_conflict(tx, new, made)
        if self._armed:
            for new in made:
                if not new.start_delay_s:
                    self._armed.claim_for(
                        (new.namespace, new.task_queue),
                        new.activity_type,
                        lambda claim: claim.run(tx),
                        tx.handoffs,
                    )
        return [o if o is not None else (None, None) for o in out]

    @staticmethod
    def _reuse_refusal(tx: _Tx, new: NewExecution) -> ActivityAlreadyStartedError | None:
        if new.id_reuse_policy is ActivityIDReusePolicy.ALLOW_DUPLICATE:
            return None
        latest = tx.execute(
            "SELECT status, run_id FROM executions WHERE namespace = %s AND activity_id = %s "
            "ORDER BY id DESC LIMIT 1",
            (new.namespace, new.activity_id),
        ).fetchone()
        if latest is None or latest[0] == Status.RUNNING.value:
            return None
        refused = new.id_reuse_policy is ActivityIDReusePolicy.REJECT_DUPLICATE or (
            latest[0] == Status.COMPLETED.value
        )
        if not refused:
            return None
        return ActivityAlreadyStartedError(
            f"activity id {new.activity_id!r} was used by a closed execution "
            f"({latest[0]}) and the reuse policy is {new.id_reuse_policy.name}",
            activity_id=new.activity_id,
            run_id=latest[1],
        )

    @staticmethod
    def _insert(tx: _Tx, news: list[NewExecution]) -> set[str]:
        """Insert new executions; the run ids of those inserted (the others'
        ids are running already)."""
        if not news:
            return set()
        now = tx.now
        rows: list[list[Any]] = []
        for new in news:
            ready_at = now + (new.start_delay_s or 0.0)
            s2c = FAR if new.schedule_to_close_s is None else now + new.schedule_to_close_s
            deadline = lc.scheduled_deadline(
                ready_at=ready_at,
                schedule_to_start_s=new.schedule_to_start_s,
                schedule_to_close_deadline=s2c,
            )
            rows.append(
                [
                    new.namespace,
                    new.activity_id,
                    new.run_id,
                    new.activity_type,
                    new.task_queue,
                    _b64(new.input),
                    ready_at,
                    s2c,
                    deadline,
                    new.schedule_to_close_s,
                    new.schedule_to_start_s,
                    new.start_to_close_s,
                    new.heartbeat_s,
                    _rows.policy_text(new.retry_policy),
                    new.priority_key,
                    new.start_delay_s,
                    new.summary,
                ]
            )
        created: set[str] = set()
        for members in _rounds(news, lambda new: new.run_id, lambda new: len(new.input)):
            batch = json.dumps([rows[i] for i in members])
            created.update(
                row[0] for row in tx.execute(_INSERT_SQL, {"now": now, "rows": batch}).fetchall()
            )
        return created

    def _start_conflict(self, tx: _Tx, new: NewExecution, made: list[NewExecution]) -> Outcome:
        """A start whose insert did nothing: the id runs (USE_EXISTING or
        refuse), or the run id is taken; or the running execution closed since,
        and the start inserts again."""
        for _ in range(START_RETRIES):
            running = tx.execute(
                "SELECT run_id FROM executions WHERE namespace = %s AND activity_id = %s "
                "AND status = 'RUNNING'",
                (new.namespace, new.activity_id),
            ).fetchone()
            if running is not None:
                if new.id_conflict_policy is ActivityIDConflictPolicy.USE_EXISTING:
                    return StartResult(running[0], created=False), None
                return None, ActivityAlreadyStartedError(
                    f"activity id {new.activity_id!r} is already running (run {running[0]})",
                    activity_id=new.activity_id,
                    run_id=running[0],
                )
            taken = tx.execute(
                "SELECT 1 FROM executions WHERE run_id = %s", (new.run_id,)
            ).fetchone()
            if taken is not None:
                return None, ActivityAlreadyStartedError(
                    f"run id {new.run_id!r} is already in use", activity_id=new.activity_id
                )
            refused = self._reuse_refusal(tx, new)
            if refused is not None:
                return None, refused
            if self._insert(tx, [new]):
                made.append(new)
                return StartResult(new.run_id, created=True), None
        return None, ActivityAlreadyStartedError(
            f"activity id {new.activity_id!r} is being started and closed concurrently; try again",
            activity_id=new.activity_id,
        )

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
        deliver: Callable[[builtins.list[ClaimedTask]], None],
    ) -> Callable[[], bool]:
        claim = _Claim(namespace, task_queue, max_tasks, identity, only_types, exclude_types, None)
        return self._armed.arm(
            (namespace, task_queue), Armed(claim, deliver, asyncio.get_running_loop())
        )

    # ---------------------------------------------------------------- attempt outcomes

    async def heartbeat(self, run_id: str, attempt: int, details: bytes | None) -> HeartbeatResult:
        result: HeartbeatResult = await self._write("heartbeat", _Report(run_id, attempt, details))
        return result

    @staticmethod
    def _bulk_heartbeat(tx: _Tx, beats: list[_Report]) -> list[Outcome]:
        out: list[Outcome] = [(None, None)] * len(beats)
        for members in _rounds(beats, lambda b: (b.run_id, b.attempt), _report_size):
            rows = tx.execute(
                _HEARTBEAT_SQL, {"now": tx.now, **_outcome_rows([beats[i] for i in members])}
            ).fetchall()
            accepted = {run_id: bool(cancel) for run_id, cancel in rows}
            for i in members:
                cancel = accepted.get(beats[i].run_id)
                if cancel is None:
                    _expire_if_due(tx, beats[i].run_id)
                    out[i] = (HeartbeatResult(accepted=False, cancel_requested=False), None)
                else:
                    out[i] = (HeartbeatResult(accepted=True, cancel_requested=cancel), None)
        return out

    async def complete(self, run_id: str, attempt: int, result: bytes) -> bool:
        done: bool = await self._write("complete", _Report(run_id, attempt, result))
        return done

    @staticmethod
    def _bulk_complete(tx: _Tx, outcomes: list[_Report]) -> list[Outcome]:
        out: list[Outcome] = [(False, None)] * len(outcomes)
        for members in _rounds(outcomes, lambda o: o.run_id, _report_size):
            rows = tx.execute(
                _COMPLETE_SQL, {"now": tx.now, **_outcome_rows([outcomes[i] for i in members])}
            ).fetchall()
            done = {row[0] for row in rows}
            for i in members:
                o = outcomes[i]
                if o.run_id in done:
                    tx.closed.append(ClosedRun(o.run_id, Status.COMPLETED, o.data))
                    out[i] = (True, None)
                else:
                    _expire_if_due(tx, o.run_id)
        return out

    async def fail(self, run_id: str, attempt: int, failure: FailureReport) -> Status | None:
        def op(tx: _Tx) -> Status | None:
            row = tx.execute(
                f"SELECT {_rows.DECIDE_COLUMNS} FROM executions WHERE run_id = %(run_id)s "
                f"AND attempt = %(attempt)s AND {_CURRENT_ATTEMPT} FOR UPDATE",
                {"run_id": run_id, "attempt": attempt, "now": tx.now},
            ).fetchone()
            if row is None:
                _expire_if_due(tx, run_id)
                return None
            return _apply_failure(tx, row, failure.info, failure.data)

        return await self._op(op)

    async def report_cancelled(self, run_id: str, attempt: int, failure: bytes) -> bool:
        def op(tx: _Tx) -> bool:
            done = tx.execute(
                "UPDATE executions SET status = 'CANCELED', run_state = NULL, "
                "failure = %(failure)s, timeout_type = NULL, close_time = %(now)s, "
                "deadline = 1e15 WHERE run_id = %(run_id)s AND attempt = %(attempt)s "
                f"AND {_CURRENT_ATTEMPT}",
                {"failure": failure, "now": tx.now, "run_id": run_id, "attempt": attempt},
            ).rowcount
            if done == 1:
                tx.closed.append(ClosedRun(run_id, Status.CANCELED))
                return True
            _expire_if_due(tx, run_id)
            return False

        return await self._op(op)

    # ---------------------------------------------------------------- client requests

    async def request_cancel(
        self, namespace: str, activity_id: str, run_id: str | None, reason: str | None
    ) -> Status:
        def op(tx: _Tx) -> Status:
            row_id, found_run, _status, state, attempt = _find_open(
                tx, namespace, activity_id, run_id, "cancel"
            )
            if state == RunState.SCHEDULED.value:
                tx.execute(
                    "UPDATE executions SET status = 'CANCELED', run_state = NULL, "
                    "close_time = %s, canceled_reason = %s, cancel_requested = true, "
                    "deadline = 1e15 WHERE id = %s",
                    (tx.now, reason, row_id),
                )
                tx.closed.append(ClosedRun(found_run, Status.CANCELED))
                return Status.CANCELED
            if state == RunState.STARTED.value:
                tx.execute(
                    "UPDATE executions SET run_state = 'CANCEL_REQUESTED', "
                    "cancel_requested = true, canceled_reason = %s WHERE id = %s",
                    (reason, row_id),
                )
                _log_interrupt(tx, namespace, found_run, attempt, "cancel")
            return Status.RUNNING

        return await self._op(op, "interrupt")

    async def terminate(
        self, namespace: str, activity_id: str, run_id: str | None, reason: str | None
    ) -> None:
        def op(tx: _Tx) -> None:
            row_id, found_run, _, state, attempt = _find_open(
                tx, namespace, activity_id, run_id, "terminate"
            )
            tx.execute(
                "UPDATE executions SET status = 'TERMINATED', run_state = NULL, close_time = %s, "
                "canceled_reason = %s, deadline = 1e15 WHERE id = %s",
                (tx.now, reason, row_id),
            )
            tx.closed.append(ClosedRun(found_run, Status.TERMINATED))
            if state != RunState.SCHEDULED.value:
                _log_interrupt(tx, namespace, found_run, attempt, "terminate")

        await self._op(op, "interrupt")

    # ---------------------------------------------------------------- timers

    async def fire_due_timers(
        self, namespace: str, *, run_ids: Sequence[str] | None = None, limit: int = 500
    ) -> float | None:
        if run_ids is not None and not run_ids:
            return None
        ids = None if run_ids is None else list(run_ids)
        scope = "namespace = %(ns)s" if ids is None else "run_id = ANY(%(ids)s)"
        args: dict[str, Any] = {"ns": namespace, "ids": ids}
        next_sql = f"SELECT min(deadline) FROM executions WHERE {scope} AND status = 'RUNNING'"
        # Rows another transaction holds are skipped: it is changing them, and
        # the next pass looks again.
        due_sql = (
            f"SELECT {_rows.DECIDE_COLUMNS} FROM executions WHERE {scope} AND status = 'RUNNING' "
            "AND deadline <= %(now)s LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
        )

        def op(tx: _Tx) -> float | None:
            rows = tx.execute(due_sql, {**args, "now": tx.now, "limit": limit}).fetchall()
            for row in rows:
                _fire_timer(tx, row)
            if len(rows) == limit:
                return time.time()  # more are due: come back at once
            found = tx.execute(next_sql, args).fetchone()
            nxt = None if found is None else found[0]
            return None if nxt is None or nxt >= FAR else tx.local(float(nxt))

        def peek(cursor: Cursor) -> tuple[float | None, float]:
            row = cursor.execute(
                f"SELECT min(deadline), extract(epoch FROM clock_timestamp())::float8 "
                f"FROM executions WHERE {scope} AND status = 'RUNNING'",
                args,
            ).fetchone()
            assert row is not None
            return (None if row[0] is None else float(row[0])), float(row[1])

        # Look first on a reader: most looks find nothing due and need not
        # queue behind the writer's transactions.
        upcoming, db_now = await self._read(peek)
        if upcoming is None or upcoming >= FAR:
            return None
        if upcoming > db_now:
            return upcoming + (time.time() - db_now)
        result: float | None = await self._op(op)
        return result

    # ---------------------------------------------------------------- reads

    async def describe(
        self, namespace: str, activity_id: str, run_id: str | None = None
    ) -> ExecutionRecord:
        def read(cursor: Cursor) -> ExecutionRecord:
            if run_id is None:
                row = cursor.execute(
                    f"SELECT {_rows.RECORD_COLUMNS} FROM executions WHERE namespace = %s "
                    "AND activity_id = %s ORDER BY id DESC LIMIT 1",
                    (namespace, activity_id),
                ).fetchone()
            else:
                row = cursor.execute(
                    f"SELECT {_rows.RECORD_COLUMNS} FROM executions WHERE namespace = %s "
                    "AND activity_id = %s AND run_id = %s",
                    (namespace, activity_id, run_id),
                ).fetchone()
            if row is None:
                raise ActivityNotFoundError(_rows.not_found(namespace, activity_id, run_id))
            return _rows.record(row)

        return await self._read(read)

    async def get_by_run_ids(self, run_ids: Sequence[str]) -> builtins.list[ExecutionRecord]:
        ids = list(run_ids)

        def read(cursor: Cursor) -> list[ExecutionRecord]:
            return [
                _rows.record(row)
                for row in cursor.execute(
                    f"SELECT {_rows.RECORD_COLUMNS} FROM executions WHERE run_id = ANY(%s)", (ids,)
                )
            ]

        return await self._read(read)

    async def closed_runs(self, run_ids: Sequence[str]) -> builtins.list[ClosedRun]:
        ids = list(run_ids)

        def read(cursor: Cursor) -> builtins.list[ClosedRun]:
            # Open ones are left out here, not in SQL: "status <> 'RUNNING'" would
            # let the planner scan the retention index of every closed execution.
            return [
                ClosedRun(run_id, Status(status), result)
                for run_id, status, result in cursor.execute(
                    "SELECT run_id, status, result FROM executions WHERE run_id = ANY(%s)", (ids,)
                )
                if status != Status.RUNNING.value
            ]

        return await self._read(read)

    async def list(
        self, namespace: str, query: Query, *, limit: int | None = None
    ) -> list[ExecutionRecord]:
        where, params = _where(namespace, query)
        sql = f"SELECT {_rows.RECORD_COLUMNS} FROM executions WHERE {where} ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)

        def read(cursor: Cursor) -> list[ExecutionRecord]:
            return [_rows.record(row) for row in cursor.execute(sql, params)]

        return await self._read(read)

    async def count(self, namespace: str, query: Query) -> tuple[int, dict[Status, int]]:
        where, params = _where(namespace, query)
        sql = f"SELECT status, count(*) FROM executions WHERE {where} GROUP BY status"

        def read(cursor: Cursor) -> tuple[int, dict[Status, int]]:
            groups: dict[Status, int] = {}
            total = 0
            for status, n in cursor.execute(sql, params):
                groups[Status(status)] = int(n)
                total += int(n)
            return total, (groups if query.group_by_status else {})

        return await self._read(read)

    async def prune(self, namespace: str, closed_before: float, *, batch: int = 1000) -> int:
        batch = min(batch, 1000)

        def op(tx: _Tx) -> int:
            tx.execute(
                "DELETE FROM interrupts WHERE seq IN (SELECT seq FROM interrupts "
                "WHERE namespace = %s AND created < %s LIMIT %s)",
                (namespace, min(closed_before, tx.now - 3600.0), batch),
            )
            deleted = tx.execute(
                "DELETE FROM executions WHERE id IN (SELECT id FROM executions "
                "WHERE namespace = %s AND status <> 'RUNNING' AND close_time < %s LIMIT %s)",
                (namespace, closed_before, batch),
            ).rowcount
            return int(deleted)

        total = 0
        while True:
            n = await self._op(op, "interrupt")
            total += n
            if n < batch:
                return total

    async def interrupts_cursor(self) -> int:
        def read(cursor: Cursor) -> int:
            row = cursor.execute("SELECT coalesce(max(seq), 0) FROM interrupts").fetchone()
            return 0 if row is None else int(row[0])

        return await self._read(read)

    async def poll_interrupts(
        self, namespace: str, after: int
    ) -> tuple[builtins.list[Interrupt], int]:
        def read(cursor: Cursor) -> tuple[list[Interrupt], int]:
            position = after
            found = []
            for seq, run_id, attempt, kind in cursor.execute(
                "SELECT seq, run_id, attempt, kind FROM interrupts "
                "WHERE seq > %s AND namespace = %s ORDER BY seq",
                (after, namespace),
            ):
                position = seq
                found.append(Interrupt(run_id, attempt, kind))
            return found, position

        return await self._read(read)
