"""The PostgreSQL store: one database shared by workers and clients on many
machines, on psycopg 3 and psycopg_pool. Needs PostgreSQL 13 or newer. This
module is the PostgreSQL dialect of the store core (``errands.store._core``):
its statements (``statements.sql``), its connections, and how it hears other
processes' commits.

Threads with synchronous connections rather than psycopg's asyncio API: the
store serves any event loop (each caller's future is settled on its own
loop), and the writer's round trips never queue behind activity code on a
busy loop (psycopg releases the GIL while it waits on the network).

- The writer (the core's writer thread) holds one pooled connection and runs
  each group commit in one READ COMMITTED transaction. "Now" is the database
  clock (``clock_timestamp()``), read once per transaction, so deadlines mean
  the same on every machine. A transaction that changed something ends with
  ``pg_notify`` on the schema's channel, one payload naming each change
  (JSON, after the sending process's token), sent with the COMMIT.
- A listener on its own autocommit connection outside the pool LISTENs and
  hands other processes' changes to the core; it reconnects with backoff
  (logging it) when its connection drops, and then asks every waiter to look
  again, since changes made meanwhile went unheard.
- Readers, on pooled connections, serve describe / list / count, the timer
  peek and the result reads.

Lost connections: the core runs a transaction that cannot have committed
again on a new connection; for one whose COMMIT went unanswered it asks
``fate`` (``pg_xact_status`` of the transaction id). ``synchronous_commit``
is on, but for a batch of claims alone (``_writer.WRITING_KINDS``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import select
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

from errands.exceptions import StoreError
from errands.store import _migrations
from errands.store._catalogue import Catalogue
from errands.store._changes import (
    GROUP_OF,
    GROUPS,
    AnyKind,
    Change,
    Hint,
    Resync,
    from_wire,
    to_wire,
)
from errands.store._core import CoreStore
from errands.store._dialect import Arrived, BulkRows, Dialect, Params, Slots, Tx
from errands.store._rows import Row
from errands.store._thread import WatchThread
from errands.store._writer import WRITING_KINDS
from errands.store.postgres._tokens import AdvisoryLocks

logger = logging.getLogger("errands.store.postgres")

T = TypeVar("T")
Conn = psycopg.Connection[Any]
Cursor = psycopg.Cursor[Any]

DEFAULT_SCHEMA = "errands"
"""The PostgreSQL schema the store lives in when the URL names none (``?schema=``)."""

READERS = 2
"""Reader threads (and pooled connections for them); the writer holds one more."""

CONNECT_TIMEOUT_S = 10
"""libpq's connect_timeout unless the URL sets one; also how long an operation
waits for a working connection (the pool reconnecting) before a StoreError.
A call made while the server is down raises within this (a read counts the
time it queued for a reader thread), or a change within twice this when it
queues behind a group commit already waiting (the writer runs one at a time)."""

MIN_WAIT_S = 0.05
"""The least a read that queued for its whole wait still waits for a
connection (one may be free at once)."""

KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""TCP keepalive settings (libpq's names) unless the URL sets them."""

BULK_BYTES = 64 * 1024 * 1024
"""Most payload bytes one bulk statement carries (more go in further ones)."""

NOTIFY_BYTES = 7_900
"""Most bytes of one NOTIFY payload (PostgreSQL refuses 8,000 or more)."""

RECONNECT_BACKOFF_S = (0.1, 1.0)
"""First and longest pause between two attempts to reconnect (the pool, the
listener, the liveness connection): every connection is back within about a
second of the server."""

UNLISTEN_AFTER_S = 5.0
"""How long a channel nobody waits on stays LISTENed to (so that a process
going busy and idle by turns does not LISTEN and UNLISTEN each time)."""


FATE_WAIT_S = 2.0
"""How long to wait for a terminated backend's transaction to show as
committed or aborted, when the connection dropped while it committed."""

SCHEMA_VERSION = _migrations.newest("postgres")
"""The newest schema this code knows."""

CATALOGUE = Catalogue.load("PostgreSQL", "errands.store.postgres")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,54}\Z")

# A batch of claims alone commits without waiting for the WAL flush (see
# _writer.WRITING_KINDS).
_BEGIN = (
    "BEGIN ISOLATION LEVEL READ COMMITTED; "
    "SELECT extract(epoch FROM clock_timestamp())::float8 AS now, NULL::text AS xid, "
    "set_config('synchronous_commit', 'off', true) AS synchronous_commit"
)
# A batch that will write takes its transaction id at once (it needs one
# anyway): its COMMIT can then go with the NOTIFY in one round trip, and if the
# connection drops unanswered, the id tells whether the commit went through.
_BEGIN_WRITING = (
    "BEGIN ISOLATION LEVEL READ COMMITTED; "
    "SELECT extract(epoch FROM clock_timestamp())::float8 AS now, "
    "pg_current_xact_id()::text AS xid"
)
_XID = "SELECT pg_current_xact_id_if_assigned()::text AS xid"

_CHANGED_VERBS = ("INSERT", "UPDATE", "DELETE")


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
            usable = conn.execute("SELECT has_schema_privilege(%s, 'USAGE')", (schema,)).fetchone()
            if usable is None or not usable[0]:
                raise StoreError(
                    f"PostgreSQL store {target}: this role may not use schema {schema!r}; "
                    "grant it USAGE and the table privileges the README lists"
                )
            # Looked up first: a role with only the grants of the README (no
            # CREATE) opens a store that is up to date.
            known = conn.execute("SELECT to_regclass('errands_schema')").fetchone()
            if known is None or known[0] is None:
                conn.execute(
                    "CREATE TABLE errands_schema "
                    "(version integer PRIMARY KEY, name text NOT NULL, applied float8 NOT NULL)"
                )
            applied = {int(r[0]) for r in conn.execute("SELECT version FROM errands_schema")}
            current = max(applied, default=0)
            for version, name, sql in _migrations.pending(
                "postgres", applied, f"PostgreSQL store {target}"
            ):
                conn.execute(sql)  # no parameters: the whole script in one simple query
                conn.execute(
                    "INSERT INTO errands_schema (version, name, applied) "
                    "VALUES (%s, %s, extract(epoch FROM clock_timestamp()))",
                    (version, name),
                )
                logger.info("PostgreSQL store %s: applied migration %s", target, name)
                current = max(current, version)
            return current
    except psycopg.errors.InsufficientPrivilege as e:
        raise StoreError(
            f"PostgreSQL store {target}: its schema needs migrating, and this role may not "
            f"({str(e).strip()}); run `errands migrate` as the schema's owner"
        ) from e
    except psycopg.Error as e:
        raise StoreError(f"PostgreSQL store {target}: migration failed: {e}") from e


# --------------------------------------------------------------------------- the dialect


def _b64(value: Any) -> Any:
    return base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value


def _rounds(rows: Sequence[Mapping[str, Any]], key: str) -> list[list[Mapping[str, Any]]]:
    """Rows in rounds, one bulk statement each: keys are unique within a round
    (one UPDATE changes a row only once), and a round carries at most
    BULK_BYTES of payload (a parameter holds at most 1 GB)."""
    rounds: list[tuple[list[Mapping[str, Any]], set[Any], list[int]]] = []
    for row in rows:
        k = row[key]
        n = sum(len(v) for v in row.values() if isinstance(v, bytes))
        for members, keys, total in rounds:
            if k not in keys and total[0] + n <= BULK_BYTES:
                members.append(row)
                keys.add(k)
                total[0] += n
                break
        else:
            rounds.append(([row], {k}, [n]))
    return [members for members, _, _ in rounds]


def _payloads(token: str, changes: Sequence[Any]) -> list[str]:
    """NOTIFY payloads naming the changes, each under NOTIFY_BYTES."""
    payloads: list[str] = []
    items: list[str] = []
    size = len(token) + 3
    for change in changes:
        item = json.dumps(to_wire(change), separators=(",", ":"))
        if items and size + len(item) + 1 > NOTIFY_BYTES:
            payloads.append(f"{token}\n[{','.join(items)}]")
            items, size = [], len(token) + 3
        items.append(item)
        size += len(item.encode()) + 1
    if items:
        payloads.append(f"{token}\n[{','.join(items)}]")
    return payloads


def _channel_base(schema: str) -> str:
    """The prefix of the schema's channel names (identifiers of at most 63 bytes)."""
    base = f"errands_{schema}"
    if len(base) + 2 > 63:
        base = "errands_" + hashlib.blake2b(schema.encode(), digest_size=8).hexdigest()
    return base


class PostgresDialect(Dialect):
    """Statements, connections and wake-ups of one PostgreSQL schema."""

    catalogue = CATALOGUE
    kind = "postgresql"
    readers = READERS
    driver_errors = (psycopg.Error, PoolTimeout)

    def __init__(
        self, pool: ConnectionPool[Conn], conninfo: str, kwargs: dict[str, Any], schema: str
    ) -> None:
        self.schema = schema
        self.target = _describe_target(conninfo, schema)
        self.label = f"PostgreSQL store {self.target}"
        self._pool = pool
        self._conninfo = conninfo
        self._kwargs = kwargs
        # A channel per group of kinds: errands_<schema>_q, _c, _r, _d.
        self._channels = {group: f"{_channel_base(schema)}_{group[0]}" for group in GROUPS}
        self._token = uuid.uuid4().hex
        self._conn: Conn | None = None
        self._wait_s = _connect_kwargs(conninfo, schema)[1]
        """How long an operation waits for a connection before a StoreError."""
        self._reads_lost = False
        """Whether a reader found its connection dead since the last read that
        worked (so that an outage is logged once, not once per connection)."""
        self._listener: _Listener | None = None
        self._tokens = AdvisoryLocks(
            conninfo,
            kwargs,
            CATALOGUE,
            _lock_key("owners", schema) & 0x7FFFFFFF,
            self.target,
            self._wait_s,
        )

    # -- statements

    def query(self, tx: Tx, name: str, params: Params, slots: Slots = None) -> list[Row]:
        text = CATALOGUE[name]
        if slots:
            for slot, fill in slots.items():
                text = text.replace("{" + slot + "}", fill)
        cursor = self._execute(tx, text, params)
        rows: list[Row] = cursor.fetchall() if cursor.description else []
        if tx.xid is None and rows and rows[0].get("xact") is not None:
            tx.xid = rows[0]["xact"]  # the commit then needs no round trip to learn it
        return rows

    def update(self, tx: Tx, name: str, params: Params) -> int:
        return int(self._execute(tx, CATALOGUE[name], params).rowcount)

    @staticmethod
    def _execute(tx: Tx, text: str, params: dict[str, Any]) -> Cursor:
        cursor: Cursor = tx.cursor.execute(text, params)
        if cursor.rowcount > 0 and (cursor.statusmessage or "").startswith(_CHANGED_VERBS):
            tx.changed = True
        return cursor

    def each(self, tx: Tx, name: str, rows: BulkRows, key: str, params: Params) -> list[Row]:
        # Rows as one JSON parameter: psycopg adapts one string far faster
        # than a Python list per column, and the server unpacks it cheaply.
        out: list[Row] = []
        for members in _rounds(rows, key):
            encoded = json.dumps([{k: _b64(v) for k, v in row.items()} for row in members])
            keys = [row[key] for row in members]
            out.extend(self.query(tx, name, {**params, "rows": encoded, "keys": keys}))
        return out

    def param(self, name: str) -> str:
        return f"%({name})s"

    # -- the writer's transactions

    def _connection(self) -> Conn:
        if self._conn is None:
            self._conn = self._pool.getconn()
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                self._pool.putconn(conn)  # the pool replaces a broken one

    def begin(self, kinds: frozenset[str]) -> Tx:
        cursor = self._connection().cursor()
        cursor.execute(_BEGIN_WRITING if kinds & WRITING_KINDS else _BEGIN)
        cursor.nextset()
        row = cursor.fetchone()
        assert row is not None
        return Tx(self, cursor, float(row["now"]), row["xid"])

    def commit(self, tx: Tx) -> None:
        cursor: Cursor = tx.cursor
        if tx.changed and tx.xid is None:
            found = cursor.execute(_XID).fetchone()
            tx.xid = None if found is None else found["xid"]
        if not tx.changes:
            cursor.execute("COMMIT")
            return
        by_group: dict[str, list[Change]] = {}
        for change in tx.changes:
            by_group.setdefault(GROUP_OF[type(change)], []).append(change)
        channels: list[str] = []
        payloads: list[str] = []
        for group, changes in by_group.items():
            for payload in _payloads(self._token, changes):
                channels.append(self._channels[group])
                payloads.append(payload)
        statement = sql.SQL(CATALOGUE["notify_and_commit"]).format(
            channels=sql.Literal(channels), payloads=sql.Literal(payloads)
        )
        cursor.execute(statement)

    def rollback(self, tx: Tx) -> None:
        with contextlib.suppress(psycopg.Error):
            self._connection().rollback()

    def lost(self) -> bool:
        if not _is_broken(self._conn):
            return False
        self._drop_connection()
        with contextlib.suppress(Exception):
            self._pool.check()  # drop the pool's other dead connections
        return True

    def fate(self, xid: str) -> str:
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
                    row = conn.execute(
                        "SELECT pg_xact_status(%s::xid8) AS status", (xid,)
                    ).fetchone()
                status = None if row is None else row["status"]
                if status in ("committed", "aborted"):
                    return str(status)
                if status is None:
                    return "unknown"
            except (psycopg.Error, PoolTimeout) as e:
                if time.monotonic() > deadline:
                    logger.warning(
                        "PostgreSQL store %s: cannot learn whether a commit went through: %s",
                        self.label,
                        e,
                    )
                    return "unknown"
            if time.monotonic() > deadline:
                return "unknown"
            time.sleep(0.005)

    # -- reads

    def read(self, fn: Callable[[Tx], T], asked_at: float) -> T:
        for last_try in (False, True):
            left = asked_at + self._wait_s - time.monotonic()
            try:
                conn = self._pool.getconn(max(left, MIN_WAIT_S))
            except PoolTimeout as e:
                raise StoreError(f"{self.label}: no connection: {e}") from e
            try:
                result = fn(Tx(self, conn.cursor(), time.time()))
                self._reads_lost = False
                return result
            except psycopg.Error as e:
                if not _is_broken(conn) or last_try:
                    raise StoreError(f"{self.label} failed: {e}") from e
                # A connection that died while idle in the pool: reads are safe
                # to repeat on a fresh one.
                if not self._reads_lost:
                    self._reads_lost = True
                    logger.warning(
                        "%s: connection lost (%s); reading again", self.label, str(e).strip()
                    )
            finally:
                self._pool.putconn(conn)  # the pool replaces a broken one
            with contextlib.suppress(Exception):
                self._pool.check()  # and its other dead ones
        raise AssertionError("unreachable")

    # -- wake-ups and life

    def watch(self, arrived: Arrived, wants: Callable[[AnyKind, Collection[int]], bool]) -> None:
        self._listener = _Listener(self._conninfo, self._kwargs, self._token, arrived, self.target)
        self._listener.wait_listening(self._wait_s)

    def listen(self, group: str, on: bool) -> None:
        if self._listener is not None:
            self._listener.listen(self._channels[group], on)

    # -- liveness tokens

    def hold_token(self, owner: str) -> int | None:
        return self._tokens.hold(owner)

    def watch_tokens(self, gone: Callable[[list[str]], None]) -> None:
        self._tokens.watch(gone)

    def expect_claims(self, in_s: float) -> None:
        self._tokens.expect_busy(in_s)

    def dead_tokens(self) -> list[str]:
        return self._tokens.dead()

    def bury_token(self, owner: str) -> None:
        del owner  # its lock is gone with its session; its row goes with its attempts

    def close(self) -> None:
        self._tokens.stop()
        if self._listener is not None:
            self._listener.stop()
        self._drop_connection()
        self._pool.close()

    def translate(self, error: BaseException) -> StoreError:
        return StoreError(f"{self.label} failed: {error}")


# --------------------------------------------------------------------------- listener


class _Listener(WatchThread):
    """LISTENs on its own autocommit connection (outside the pool) and hands
    the changes other processes announce to ``arrived``. Reconnects with
    backoff when the connection drops, logging it, and then hands over a
    Resync (changes made meanwhile went unheard)."""

    def __init__(
        self,
        conninfo: str,
        kwargs: dict[str, Any],
        own_token: str,
        arrived: Callable[[list[Hint] | None], None],
        target: str,
    ) -> None:
        super().__init__("errands-pg-listen")
        self._conninfo = conninfo
        self._kwargs = kwargs
        self._own_token = own_token
        self._arrived = arrived
        self._target = target
        self._listening = threading.Event()
        self._lock = threading.Lock()
        self._wanted: set[str] = set()
        self._done: dict[str, threading.Event] = {}
        self._linger: dict[str, float] = {}
        """Channels nobody wants any more, and since when (monotonic)."""
        self._kick_r, self._kick_w = socket.socketpair()
        self._kick_r.setblocking(False)  # drained only as far as it holds bytes
        self.start()

    def listen(self, channel: str, on: bool) -> None:
        """LISTEN to ``channel`` too (``on``), returning once it is in place
        (or at once while the connection is down: it is LISTENed to on
        reconnecting); or UNLISTEN it (``on`` False) once nobody wanted it
        for UNLISTEN_AFTER_S, without waiting."""
        with self._lock:
            done = self._done.get(channel)
            if on:
                self._linger.pop(channel, None)
                if done is None:
                    self._wanted.add(channel)
                    done = self._done[channel] = threading.Event()
                    self._kick()
            elif done is not None:
                self._linger.setdefault(channel, time.monotonic())
                self._kick()
        if on and done is not None and self._listening.is_set():
            done.wait(CONNECT_TIMEOUT_S)

    def _kick(self) -> None:
        with contextlib.suppress(OSError):
            self._kick_w.send(b"x")

    def _stopped(self) -> None:
        self._kick_r.close()
        self._kick_w.close()

    def wait_listening(self, timeout: float) -> bool:
        """Block until the first LISTEN is in place (at most ``timeout``)."""
        return self._listening.wait(timeout)

    def _run(self) -> None:
        delay = RECONNECT_BACKOFF_S[0]
        lost = False
        while not self._stopping.is_set():
            try:
                conn = psycopg.connect(self._conninfo, autocommit=True, **self._kwargs)
            except psycopg.Error as e:
                if delay == RECONNECT_BACKOFF_S[0]:  # once per outage
                    logger.warning(
                        "PostgreSQL store %s: cannot connect to LISTEN (%s); retrying",
                        self._target,
                        str(e).strip(),
                    )
                self._stopping.wait(delay)
                delay = min(delay * 2, RECONNECT_BACKOFF_S[1])
                continue
            delay = RECONNECT_BACKOFF_S[0]
            try:
                conn.add_notify_handler(self._notified)  # those read while a LISTEN runs
                self._listen(conn, restored=lost)
                lost = False
            except psycopg.Error as e:
                if self._stopping.is_set():
                    break
                logger.warning(
                    "PostgreSQL store %s: LISTEN connection lost (%s); reconnecting",
                    self._target,
                    str(e).strip(),
                )
                lost = True
                with self._lock:
                    self._listening.clear()
                    # LISTENs are gone with the connection: wait for them anew.
                    self._done = {channel: threading.Event() for channel in self._done}
                self._arrived([Resync()])
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

    def _listen_wanted(self, conn: Conn, listened: set[str]) -> set[str]:
        with self._lock:
            now = time.monotonic()
            for channel, since in list(self._linger.items()):
                if now - since >= UNLISTEN_AFTER_S:
                    del self._linger[channel]
                    self._wanted.discard(channel)
                    self._done.pop(channel, None)
            wanted = set(self._wanted)
        for channel in sorted(listened - wanted):
            conn.execute(f"UNLISTEN {channel}")  # a checked identifier
        for channel in sorted(wanted - listened):
            conn.execute(f"LISTEN {channel}")
        with self._lock:
            for channel in wanted:
                done = self._done.get(channel)
                if done is not None:
                    done.set()
        return wanted

    def _notified(self, notify: psycopg.Notify) -> None:
        hints = self._decode(notify.payload)
        if hints:
            self._arrived(hints)

    def _listen(self, conn: Conn, *, restored: bool) -> None:
        pgconn = conn.pgconn
        wake, kick = self._wake, self._kick_r.fileno()
        listened = self._listen_wanted(conn, set())
        self._listening.set()
        if restored:
            logger.warning("PostgreSQL store %s: LISTEN connection restored", self._target)
            # Changes made while it was down went unheard: everyone looks again,
            # now that the LISTENs are back.
            self._arrived([Resync()])
        while not self._stopping.is_set():
            with self._lock:
                lingering = min(self._linger.values(), default=None)
            timeout = None
            if lingering is not None:
                timeout = max(0.0, lingering + UNLISTEN_AFTER_S - time.monotonic())
            readable, _, _ = select.select([pgconn.socket, wake, kick], [], [], timeout)
            if wake in readable:
                return
            if kick in readable or not readable:  # asked to (UN)LISTEN, or a channel's linger ended
                with contextlib.suppress(BlockingIOError):
                    self._kick_r.recv(4096)
                listened = self._listen_wanted(conn, listened)
                continue
            pgconn.consume_input()
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the LISTEN connection is closed")
            hints: list[Hint] = []
            while (notify := pgconn.notifies()) is not None:
                hints.extend(self._decode(notify.extra.decode()))
            if hints:
                self._arrived(hints)

    def _decode(self, payload: str) -> list[Hint]:
        token, _, body = payload.partition("\n")
        if token == self._own_token:
            return []  # this process published its own changes already
        try:
            return [from_wire(item) for item in json.loads(body)]
        except ValueError as e:
            logger.warning("PostgreSQL store %s: ignoring a notification: %s", self._target, e)
            return [Resync()]


# --------------------------------------------------------------------------- the pool


class _Attempt(AttemptWithBackoff):
    """psycopg_pool's reconnection backoff, bounded by RECONNECT_BACKOFF_S
    (its own doubles from 1 s without bound: after a minute's outage the
    pool would come back half a minute after the server)."""

    INITIAL_DELAY = RECONNECT_BACKOFF_S[0]

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_BACKOFF_S[1])


class _Pool(ConnectionPool[Conn]):
    """The connection pool, reconnecting with the bounded backoff."""

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or _Attempt(timeout=self.reconnect_timeout), growing)


# --------------------------------------------------------------------------- the store


class PostgresStore(CoreStore):
    """The Store on a PostgreSQL schema. Open it with ``await PostgresStore.open(url)``."""

    def __init__(self, dialect: PostgresDialect) -> None:
        super().__init__(dialect)
        self.schema = dialect.schema
        self.target = dialect.target

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

        def setup() -> PostgresStore:
            try:
                conn = psycopg.connect(conninfo, autocommit=True, **kwargs)
            except psycopg.Error as e:
                raise StoreError(f"cannot open PostgreSQL store {target}: {str(e).strip()}") from e
            try:
                migrate(conn, schema, target)
            finally:
                conn.close()
            pool: ConnectionPool[Conn] = _Pool(
                conninfo,
                kwargs={**kwargs, "autocommit": True, "row_factory": dict_row},
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
            store = cls(PostgresDialect(pool, conninfo, kwargs, schema))
            # Changes made from here on reach this process's waiters.
            store.start_watching()
            return store

        return await asyncio.get_running_loop().run_in_executor(None, setup)
