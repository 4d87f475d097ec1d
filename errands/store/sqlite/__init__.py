"""The embedded store: one SQLite file in WAL mode, shared by any number of
processes on one machine. This module is the SQLite dialect of the store
core (``errands.store._core``): its statements (``statements.sql``), its
connections, and how it hears other processes' commits.

- The writer's connection (on the core's writer thread) runs each group
  commit in ``BEGIN IMMEDIATE``. A transaction that changed something also
  bumps, for each kind of change and key, a row of the ``changes`` table.
- Other processes' commits: a process that committed such a change rings a
  doorbell file beside the database (``_doorbell.py``); every process's
  watcher asks its writer to look: it reads ``PRAGMA data_version`` (which
  moves only when *another* connection committed, and costs no disk read in
  WAL mode) and only then reads the ``changes`` rows past the last one it saw.
- Readers (one connection per reader thread) serve describe / list / count.

``PRAGMA synchronous=FULL``: an acknowledged change survives a power cut. A
batch of claims alone commits with ``synchronous=NORMAL`` (no fsync; see
``_writer.WRITING_KINDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, TypeVar

from errands.exceptions import StoreError
from errands.store import _migrations
from errands.store._catalogue import Catalogue
from errands.store._changes import (
    GROUP_OF,
    GROUPS,
    AnyKind,
    Change,
    Claimable,
    Closed,
    Deadline,
    Hint,
    Interrupted,
    OptionsChanged,
    Started,
    bucket,
    from_row,
    queue_bucket,
    to_row,
)
from errands.store._core import CoreStore
from errands.store._dialect import Arrived, BulkRows, Dialect, Params, Slots, Tx
from errands.store._rows import Row
from errands.store._writer import WRITING_KINDS
from errands.store.sqlite._doorbell import FILE_MODE, Doorbell
from errands.store.sqlite._tokens import LockFiles

logger = logging.getLogger("errands.store.sqlite")

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
"""How long a connection waits for another one's write lock before "locked",
unless the URL says otherwise (``?busy_timeout_ms=``)."""

LOCK_POLL_S = 0.0005
"""How often the writer tries again for the write lock while another process
holds it. SQLite's own busy handler sleeps longer and longer (up to 100 ms
between tries), so a process that waits behind a run of short transactions
(a bulk action's batches) would rarely try in the gap between two of them;
trying this often, it gets the lock in the first gap."""

SCHEMA_VERSION = _migrations.newest("sqlite")
"""The newest schema this code knows."""

CATALOGUE = Catalogue.load("SQLite", "errands.store.sqlite")

BELL_GROUPS = [group for group in GROUPS if group != "deadlines"]
"""The doorbell's files of bells (a bell per bucket of queues or run ids);
deadlines ride in it as a number."""


def _bell(change: Change) -> tuple[str, int] | None:
    """The doorbell group and bell a change rings (None: a deadline)."""
    group = GROUP_OF[type(change)]
    if isinstance(change, (Started, Claimable)):
        return group, queue_bucket(change.queue)
    if isinstance(change, (Closed, Interrupted, OptionsChanged)):
        return group, bucket(change.run_id)
    return None if group == "deadlines" else (group, 0)


def path_from_url(url: str) -> str:
    """The file path of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL
    (a ``?query`` after it is not part of the path: see :func:`options_from_url`).

    Raises ValueError for any other URL.
    """
    prefix = "sqlite:///"
    path = url.split("?", 1)[0]
    if not path.startswith(prefix) or len(path) == len(prefix):
        raise ValueError(
            f"not a SQLite URL: {url!r} (expected sqlite:///relative.db or sqlite:////absolute.db)"
        )
    return path[len(prefix) :]


def options_from_url(url: str) -> dict[str, int]:
    """The options in a SQLite URL's query: ``busy_timeout_ms`` (how long to
    wait for another process's write lock; default BUSY_TIMEOUT_MS).

    Raises ValueError for an unknown option or a value that is not a
    non-negative integer.
    """
    query = url.split("?", 1)[1] if "?" in url else ""
    options: dict[str, int] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name != "busy_timeout_ms":
            raise ValueError(f"unknown SQLite URL option {name!r} in {url!r}: busy_timeout_ms")
        if not value.isdigit():
            raise ValueError(f"busy_timeout_ms must be a whole number of milliseconds: {value!r}")
        options[name] = int(value)
    return options


def _translate(error: BaseException, path: str) -> StoreError:
    text = str(error)
    if "locked" in text or "busy" in text:
        return StoreError(f"SQLite store {path!r} is locked: {text}")
    if "is full" in text:  # SQLITE_FULL: the transaction was rolled back
        return StoreError(f"SQLite store {path!r}: the disk is full: {text}")
    if "not a database" in text or "malformed" in text:
        return StoreError(f"{path!r} is not an errands SQLite store: {text}")
    return StoreError(f"SQLite store {path!r} failed: {text}")


def _connect(path: str, busy_timeout_ms: int | None = None) -> sqlite3.Connection:
    if busy_timeout_ms is None:
        busy_timeout_ms = BUSY_TIMEOUT_MS
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreError(
            f"cannot open SQLite store {path!r}: directory {directory!r} does not exist"
        )
    try:
        # A new store is its owner's only (SQLite gives the -wal and -shm files
        # the database file's mode): it holds every activity's arguments and results.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
    except FileExistsError:
        pass
    except OSError as e:
        raise StoreError(f"cannot create SQLite store {path!r}: {e}") from e
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"SQLite store {path!r} could not switch to WAL (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error as e:
        raise _translate(e, path) from e
    return conn


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
            applied = {row[0] for row in conn.execute("SELECT version FROM errands_schema")}
            current = max(applied, default=0)
            for version, name, sql in _migrations.pending(
                "sqlite", applied, f"SQLite store {path!r}"
            ):
                # executescript would commit; run statement by statement inside our transaction.
                for statement in _split_sql(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO errands_schema (version, name, applied) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )
                logger.info("SQLite store %s: applied migration %s", path, name)
                current = max(current, version)
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


def _bind(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Parameters as sqlite3 takes them: lists as JSON text (read with json_each).
    Most statements have no list: their parameters go as they are (a copy of
    every row's parameters was a tenth of a bulk write's time)."""
    if not any(isinstance(v, (list, tuple)) for v in params.values()):
        return params
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in params.items()}


class SQLiteDialect(Dialect):
    """Statements, connections and wake-ups of one SQLite file."""

    catalogue = CATALOGUE
    kind = "sqlite"
    readers = 1
    driver_errors = (sqlite3.Error,)

    def __init__(self, path: str, writer: sqlite3.Connection, busy_timeout_ms: int) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.label = f"SQLite store {path!r}"
        self._writer = writer
        self._readers: list[sqlite3.Connection] = []
        self._reader_local = threading.local()
        self._lock = threading.Lock()
        self._version = self._data_version()
        self._seq = int(writer.execute(CATALOGUE["changes_head"]).fetchone()["seq"])
        # The writer waits for the write lock itself (_lock_for_writing), and an
        # intake's claim that finds it taken gives way at once (its pollers
        # claim for themselves): SQLite's busy handler never waits for it.
        writer.execute("PRAGMA busy_timeout = 0")
        self._watch: Doorbell | None = None
        self._tokens = LockFiles(path + "-owners")
        self._look_posted = threading.Event()
        self._durable = True
        """Whether the writer's commits wait for the disk (PRAGMA synchronous)."""
        self._pulled_seq: int | None = None
        self._pulled_version: int | None = None

    # -- statements

    def query(self, tx: Tx, name: str, params: Params, slots: Slots = None) -> list[Row]:
        sql = CATALOGUE[name]
        if slots:
            for slot, text in slots.items():
                sql = sql.replace("{" + slot + "}", text)
        rows: list[Row] = tx.cursor.execute(sql, _bind(params)).fetchall()
        return rows

    def update(self, tx: Tx, name: str, params: Params) -> int:
        count = int(tx.cursor.execute(CATALOGUE[name], _bind(params)).rowcount)
        if count > 0:
            tx.changed = True
        return count

    def each(self, tx: Tx, name: str, rows: BulkRows, key: str, params: Params) -> list[Row]:
        # In-process SQLite runs a statement per row about as fast as one bulk one.
        sql, out, execute, shared = CATALOGUE[name], [], tx.cursor.execute, _bind(params)
        for row in rows:
            bound = _bind(row)
            out.extend(execute(sql, {**shared, **bound} if shared else bound).fetchall())
        return out

    def param(self, name: str) -> str:
        return f":{name}"

    # -- the writer's transactions

    def begin(self, kinds: frozenset[str]) -> Tx:
        # A batch that only takes in other processes' changes begins reading
        # (it takes the write lock only if it claims for an armed poller).
        if "intake" in kinds:
            # A bell that rings from now on asks for another look: this one may
            # fail before it reads (the lock not had), and must not leave the
            # watcher believing a look is on its way.
            self._look_posted.clear()
        durable = bool(kinds & WRITING_KINDS)
        if durable != self._durable:
            self._writer.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        if kinds == {"intake"}:
            # The first read takes the snapshot; the clock is read after it, so
            # an execution another process made ready before it is ready by
            # this transaction's "now" too (its claims would miss it otherwise).
            self._writer.execute("BEGIN")
            self._writer.execute(CATALOGUE["changes_head"]).fetchone()
        else:
            self._lock_for_writing()
        return Tx(self, self._writer, time.time())

    def _lock_for_writing(self) -> None:
        """BEGIN IMMEDIATE, trying every LOCK_POLL_S while another process
        writes, for at most the busy timeout."""
        give_up = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if not self.contended(e) or time.monotonic() > give_up:
                    raise
            time.sleep(LOCK_POLL_S)

    def commit(self, tx: Tx) -> None:
        if tx.changes:
            rows: dict[tuple[str, str], float | None] = {}
            for change in tx.changes:
                row = to_row(change)
                if row is None:
                    continue  # a deadline: it rides in the doorbell
                kind, key, at = row
                known = rows.get((kind, key))
                rows[(kind, key)] = (
                    at if known is None or (at is not None and at < known) else known
                )
            sql = CATALOGUE["announce"]
            for (kind, key), at in rows.items():
                self._writer.execute(sql, {"kind": kind, "key": key, "at": at, "now": tx.now})
        self._writer.execute("COMMIT")
        # What a pull read counts as seen only now (a failed one is read again).
        if self._pulled_seq is not None:
            self._seq, self._pulled_seq = self._pulled_seq, None
        if self._pulled_version is not None:
            self._version, self._pulled_version = self._pulled_version, None
        if tx.changes and self._watch is not None:  # only now can the others see them
            bells: dict[str, set[int]] = {}
            for bell in map(_bell, tx.changes):
                if bell is not None:
                    bells.setdefault(bell[0], set()).add(bell[1])
            deadlines = [c.at for c in tx.changes if isinstance(c, Deadline)]
            try:
                self._watch.ring(bells, min(deadlines) if deadlines else None)
            except OSError as e:  # committed all the same; the others' safety look finds it
                logger.warning("%s: cannot ring the doorbell: %s", self.label, e)

    def rollback(self, tx: Tx) -> None:
        self._pulled_seq = self._pulled_version = None
        with contextlib.suppress(sqlite3.Error):
            self._writer.execute("ROLLBACK")

    def contended(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.OperationalError) and (
            "locked" in str(error) or "busy" in str(error)
        )

    # -- other processes' commits

    def _data_version(self) -> int | None:
        try:
            version: int = self._writer.execute("PRAGMA data_version").fetchone()[0]
            return version
        except sqlite3.Error as e:
            logger.warning("%s: cannot read data_version: %s", self.label, e)
            return None

    def pull_needed(self) -> bool:
        self._look_posted.clear()
        version = self._data_version()
        if version == self._version:
            return False
        self._pulled_version = version  # taken as seen once the pull commits
        return True

    def pull(self, tx: Tx) -> list[Hint]:
        self._look_posted.clear()
        hints: list[Hint] = []
        self._pulled_seq = self._seq
        if self._pulled_version is None:
            self._pulled_version = self._data_version()
        closed = False
        for row in tx.cursor.execute(CATALOGUE["changes_since"], {"seq": self._seq}):
            self._pulled_seq = max(self._pulled_seq, int(row["seq"]))
            if row["kind"] == "closed":
                closed = True  # which runs: read below, exactly
                continue
            try:
                hints.append(from_row(row["kind"], row["key"], row["at"]))
            except ValueError as e:
                logger.warning("%s: %s", self.label, e)
        if closed:
            rows = tx.cursor.execute(CATALOGUE["closed_since"], {"seq": self._seq})
            hints.extend(Closed(row["run_id"]) for row in rows)
        return hints

    def watch(self, arrived: Arrived, wants: Callable[[AnyKind, Collection[int]], bool]) -> None:
        def rang(group: str | None, bells: list[int]) -> None:
            looking = group is None or any(wants(kind, bells) for kind in GROUPS[group])
            if looking and not self._look_posted.is_set():
                self._look_posted.set()
                arrived(None)

        def deadline(at: float) -> None:
            arrived([Deadline("", at)])  # for every namespace's timers

        self._watch = Doorbell(self.path + "-doorbell", BELL_GROUPS, rang, deadline)

    def listen(self, group: str, on: bool) -> None:
        # A watch, once made, stays: a bell nobody wants costs a comparison.
        if on and group in BELL_GROUPS and self._watch is not None:
            self._watch.listen(group)

    # -- reads

    def read(self, fn: Callable[[Tx], T], asked_at: float) -> T:
        del asked_at  # a reader never waits for a connection; the busy timeout bounds locks
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = _connect(self.path, self.busy_timeout_ms)
            self._reader_local.conn = conn
            with self._lock:
                self._readers.append(conn)
        try:
            return fn(Tx(self, conn, time.time()))
        except sqlite3.Error as e:
            raise _translate(e, self.path) from e

    # -- liveness tokens

    def hold_token(self, owner: str) -> int | None:
        self._tokens.hold(owner)
        return None

    def watch_tokens(self, gone: Callable[[list[str]], None]) -> None:
        self._tokens.watch(gone)

    def dead_tokens(self) -> list[str]:
        return self._tokens.dead()

    def bury_token(self, owner: str) -> None:
        self._tokens.bury(owner)

    def close(self) -> None:
        self._tokens.release()
        if self._watch is not None:
            self._watch.stop()
        with self._lock:
            conns, self._readers = [self._writer, *self._readers], []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def translate(self, error: BaseException) -> StoreError:
        return _translate(error, self.path)


class SQLiteStore(CoreStore):
    """The Store on one SQLite file. Open it with ``await SQLiteStore.open(path)``."""

    def __init__(self, dialect: SQLiteDialect) -> None:
        super().__init__(dialect)
        self.path = dialect.path

    @classmethod
    async def open(cls, path: str, *, busy_timeout_ms: int | None = None) -> SQLiteStore:
        """Open (creating if missing) and migrate the store at ``path``.
        ``busy_timeout_ms``: how long a write waits for another process's
        write lock before it fails with StoreError (default BUSY_TIMEOUT_MS).

        Raises StoreError if the directory is missing, the file is not a
        database, the schema is newer than this code, or the file stays locked.
        """
        timeout_ms = BUSY_TIMEOUT_MS if busy_timeout_ms is None else busy_timeout_ms

        def setup() -> SQLiteStore:
            conn = _connect(path, timeout_ms)
            try:
                migrate(conn, path)
                store = cls(SQLiteDialect(path, conn, timeout_ms))
            except BaseException:
                conn.close()
                raise
            store.start_watching()
            return store

        return await asyncio.get_running_loop().run_in_executor(None, setup)
