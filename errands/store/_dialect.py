"""What a database must supply to the store core: its named statements, its
connections and transactions, and how it hears of other processes' commits.
Everything else (group commit, retries, settling callers, row decoding and
every lifecycle decision) is the core's, written once.

A dialect decides nothing about executions: it runs the statement the core
names, with the parameters the core gives, and returns rows by column name.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from errands.exceptions import StoreError
from errands.store._catalogue import Catalogue
from errands.store._changes import AnyKind, Change, Hint
from errands.store._rows import Row

T = TypeVar("T")

Params = dict[str, Any]
"""A statement's parameters, by name."""
BulkRows = Sequence[Mapping[str, Any]]
"""The rows of a bulk statement, each by column name."""
Arrived = Callable[[list[Hint] | None], None]
"""Takes other processes' changes (None: the core must pull them)."""
Slots = dict[str, str] | None
"""SQL the core built (from bound parameters only) for a statement's ``{slot}``s."""


class Tx:
    """One transaction: the statements it runs, the clock it reads ("now",
    the database's on PostgreSQL), and what it did, for the core to publish
    after the commit."""

    def __init__(self, dialect: Dialect, cursor: Any, now: float, xid: str | None = None) -> None:
        self.dialect = dialect
        self.cursor = cursor
        self.now = now
        self.offset = time.time() - now
        """Add to a database time to get this machine's clock."""
        self.xid = xid
        """The transaction id, when the dialect can ask a lost commit's fate by it."""
        self.changed = False
        """Whether a statement changed a row."""
        self.changes: list[Change] = []
        """What this transaction changed, on the database clock: published here
        and announced to the other processes."""
        self.local_changes: list[Change] = []
        """Changes learnt from other processes, published here only."""
        self.covered_for: set[int] = set()
        """The subscriptions (by id) of the pollers whose claims ran for them."""
        self.covered: list[Change] = []
        """Other processes' changes that this commit's armed claims covered:
        published numbered with the commit, so the pollers whose claims ran
        drop them and the others hear of them."""
        self.handoffs: list[Any] = []
        """Claims made for waiting pollers, delivered after the commit."""
        self.claimed: dict[str, int] = {}
        """Run ids (and attempts) this transaction started for this process."""
        self.released: set[tuple[str, int]] = set()
        """Attempts (run id, serial) this process reported."""

    def fetch(self, name: str, **params: Any) -> list[Row]:
        """The rows a statement returns."""
        return self.dialect.query(self, name, params)

    def one(self, name: str, **params: Any) -> Row | None:
        """The first row a statement returns, or None."""
        rows = self.dialect.query(self, name, params)
        return rows[0] if rows else None

    def run(self, name: str, **params: Any) -> int:
        """Run a statement; how many rows it changed."""
        return self.dialect.update(self, name, params)

    def each(
        self, name: str, rows: Sequence[Mapping[str, Any]], *, key: str, **params: Any
    ) -> list[Row]:
        """Run a statement for many rows (one bulk statement where the dialect
        can: ``key`` names the column no two rows of one statement may share);
        the rows it returns, together."""
        return self.dialect.each(self, name, rows, key, params)

    def local(self, db_time: float) -> float:
        """A database time on this machine's clock."""
        return db_time + self.offset


class Dialect(abc.ABC):
    """One database's statements, connections and wake-up mechanics."""

    catalogue: Catalogue
    kind: str = ""
    """The database ("sqlite", "postgresql"), as metrics label it."""
    label: str
    """The store as messages name it ("SQLite store 'x.db'")."""
    readers: int = 1
    """Reader threads the core runs."""
    driver_errors: tuple[type[BaseException], ...] = ()
    """The driver's exceptions (translated to StoreError at this seam)."""

    # -- statements ---------------------------------------------------------

    @abc.abstractmethod
    def query(self, tx: Tx, name: str, params: Params, slots: Slots = None) -> list[Row]:
        """Run a named statement (its ``{slot}`` parts filled with SQL the core
        built from bound parameters only); its rows."""

    @abc.abstractmethod
    def update(self, tx: Tx, name: str, params: Params) -> int:
        """Run a named statement; how many rows it changed."""

    @abc.abstractmethod
    def each(self, tx: Tx, name: str, rows: BulkRows, key: str, params: Params) -> list[Row]:
        """Run a named statement for many rows; the rows it returns."""

    @abc.abstractmethod
    def param(self, name: str) -> str:
        """The placeholder of a named parameter in this dialect's SQL."""

    # -- the writer's transactions (writer thread) ---------------------------

    @abc.abstractmethod
    def begin(self, kinds: frozenset[str]) -> Tx:
        """Begin a transaction on the writer's connection (connecting if
        needed) for a batch of these kinds of change (see ``_writer.KINDS``;
        ``_writer.WRITING_KINDS`` nearly always change rows, and only a batch
        holding one of them waits for the disk at its commit)."""

    @abc.abstractmethod
    def commit(self, tx: Tx) -> None:
        """Announce ``tx.changes`` to the other processes and commit."""

    @abc.abstractmethod
    def rollback(self, tx: Tx) -> None:
        """Roll back (never raises)."""

    def lost(self) -> bool:
        """After an error: whether the writer's connection is gone (it is
        then dropped, and the next begin connects anew)."""
        return False

    def fate(self, xid: str) -> str:
        """What became of a transaction whose connection dropped while it
        committed: "committed", "aborted" or "unknown"."""
        return "unknown"

    def contended(self, error: BaseException) -> bool:
        """Whether a driver error inside a transaction that began reading
        means another process holds the write lock (the transaction can go
        on reading); False by default."""
        return False

    def pull(self, tx: Tx) -> list[Hint]:
        """Changes other processes announced since the last pull, read inside
        ``tx`` (for dialects that record them in a table); [] by default."""
        return []

    def pull_needed(self) -> bool:
        """Whether a pull can find anything (a cheap check on the writer's
        thread before any transaction begins); True by default."""
        return True

    # -- reads (reader threads) ----------------------------------------------

    @abc.abstractmethod
    def read(self, fn: Callable[[Tx], T], asked_at: float) -> T:
        """Run ``fn`` with a Tx on a reading connection. ``asked_at``
        (``time.monotonic()``) is when the read was asked for: a dialect that
        waits for connections counts the time it queued for a reader thread
        against that wait, so that a read made during an outage fails within
        the wait's bound however many reads are queued."""

    # -- wake-ups and life ----------------------------------------------------

    @abc.abstractmethod
    def watch(self, arrived: Arrived, wants: Callable[[AnyKind, Collection[int]], bool]) -> None:
        """Start telling ``arrived`` of other processes' commits: with the
        changes when the dialect receives them, or None when the core must
        ``pull`` them, which a dialect that hears of changes only coarsely
        does only when this process ``wants`` a kind of change in one of some
        buckets (``_changes.queue_bucket`` of a queue, ``bucket`` of a run
        id). Returns once watching."""

    def listen(self, group: str, on: bool) -> None:  # noqa: B027 - an optional hook
        """This process now waits (``on``), or no longer waits, for changes of
        a group of kinds (``_changes.GROUPS``): a dialect that hears of
        changes by group starts (before it returns) or stops hearing them.
        Callable from any thread; nothing by default."""

    # -- liveness tokens (see the migration of schema 6) ----------------------

    @abc.abstractmethod
    def hold_token(self, owner: str) -> int | None:
        """Take this process's liveness token, for ``owner`` (blocking); the
        lock key to record with it, if the dialect's token has one.

        Raises StoreError (or OSError) if it cannot be taken.
        """

    @abc.abstractmethod
    def watch_tokens(self, gone: Callable[[list[str]], None]) -> None:
        """From now on, call ``gone`` (on a watcher thread) with the owners
        whose tokens are found gone (no-op if watching already)."""

    def expect_claims(self, in_s: float) -> None:  # noqa: B027 - an optional hook
        """An execution becomes claimable in ``in_s`` seconds (0: now), so a
        process may soon run an attempt: a dialect that looks for lost
        tokens less often while no other process runs attempts looks often
        from then on. Callable from any thread; nothing by default."""

    @abc.abstractmethod
    def dead_tokens(self) -> list[str]:
        """The owners whose tokens are gone now, as far as the dialect knows
        (blocking)."""

    @abc.abstractmethod
    def bury_token(self, owner: str) -> None:
        """Forget a dead owner's token: its attempts were failed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching, give up this process's token and release every
        connection (blocking)."""

    @abc.abstractmethod
    def translate(self, error: BaseException) -> StoreError:
        """A driver error as the StoreError callers see."""
