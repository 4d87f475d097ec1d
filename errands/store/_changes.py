"""The change feed: what a committed transaction changed, as typed values, and
the subscriptions that wake a waiter only for the changes it asked for.

The store's writer publishes every committed transition here right after the
commit. Changes committed by other processes arrive through the dialect's
wake-up mechanism (NOTIFY payloads on PostgreSQL, the ``changes`` table on
SQLite) and are published the same way. A waiter subscribes to kinds and,
optionally, keys (a queue, a run id) and receives only those::

    sub = store.feed.subscribe(Started, Claimable, keys=[("default", "images")])
    try:
        while True:
            ...look in the store...
            changes = await sub.wait(timeout=1.0)   # [] on timeout
    finally:
        sub.close()

A subscription collects changes from the moment it is made, so a change
committed between a look and the wait is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import zlib
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from errands._aio import Flag
from errands.store import _wakeups
from errands.store._base import ClosedRun

QueueKey = tuple[str, str]
"""(namespace, task queue)."""


@dataclass(frozen=True)
class Started:
    """A new execution is claimable now on ``queue``."""

    queue: QueueKey

    @property
    def key(self) -> Hashable:
        return self.queue


@dataclass(frozen=True)
class Claimable:
    """An execution of ``queue`` becomes claimable at ``at`` (this machine's
    clock): a retry after its backoff, a delayed start."""

    queue: QueueKey
    at: float

    @property
    def key(self) -> Hashable:
        return self.queue


@dataclass(frozen=True)
class Closed:
    """The execution ``run_id`` closed. ``outcome`` is known when the change
    comes from this process's commit or was read for an awaiting subscriber."""

    run_id: str
    outcome: ClosedRun | None = None

    @property
    def key(self) -> Hashable:
        return self.run_id


@dataclass(frozen=True)
class Interrupted:
    """A running attempt of ``run_id`` is asked to stop: ``kind`` is "cancel"
    or "terminate"; ``attempt`` is the attempt it concerns (0: unknown)."""

    run_id: str
    kind: str
    attempt: int = 0

    @property
    def key(self) -> Hashable:
        return self.run_id


@dataclass(frozen=True)
class Deadline:
    """A timeout of namespace ``namespace`` falls due at ``at`` (this machine's
    clock), perhaps earlier than any a timer knew of."""

    namespace: str
    at: float

    @property
    def key(self) -> Hashable:
        return self.namespace


@dataclass(frozen=True)
class OptionsChanged:
    """The options of ``run_id`` changed."""

    run_id: str

    @property
    def key(self) -> Hashable:
        return self.run_id


@dataclass(frozen=True)
class Touched:
    """Another process made a change of ``kind`` (Closed, Interrupted or
    OptionsChanged) to some run of ``bucket`` that this process heard of
    only coarsely (the SQLite change table records run changes by bucket)
    and awaits or holds no run it could concern. Only subscriptions to
    ``everything`` receive it: they look again."""

    kind: AnyKind
    bucket: int

    @property
    def key(self) -> Hashable:
        return None


@dataclass(frozen=True)
class Resync:
    """Changes may have been missed (a lost connection): look again."""

    @property
    def key(self) -> Hashable:
        return None


Change = Started | Claimable | Closed | Interrupted | Deadline | OptionsChanged | Touched | Resync
AnyKind = (
    type[Started]
    | type[Claimable]
    | type[Closed]
    | type[Interrupted]
    | type[Deadline]
    | type[OptionsChanged]
    | type[Touched]
    | type[Resync]
)
"""A kind of change (its class). Touched is never committed nor announced:
it stands for others' changes heard of by bucket."""

GROUPS: dict[str, tuple[AnyKind, ...]] = {
    "queues": (Started, Claimable),
    "closed": (Closed,),
    "runs": (Interrupted, OptionsChanged, Resync),
    "deadlines": (Deadline,),
}
"""Kinds of change a dialect announces together to other processes (one
NOTIFY channel, one doorbell file): a process hears only the groups it waits
for, so a worker that awaits no result is not told of closes."""

GROUP_OF: dict[AnyKind, str] = {kind: group for group, kinds in GROUPS.items() for kind in kinds}
"""The group of each kind of change."""

BUCKETS = 64
"""Run ids fall into this many buckets where a change can only be recorded
coarsely (the SQLite ``changes`` table keeps one row per kind and bucket)."""


def bucket(run_id: str) -> int:
    """The bucket of a run id."""
    return zlib.crc32(run_id.encode()) % BUCKETS


def queue_bucket(queue: QueueKey) -> int:
    """The bucket of a queue."""
    return zlib.crc32("\x1f".join(queue).encode()) % BUCKETS


@dataclass(frozen=True)
class RunBucket:
    """Some run of ``bucket`` had a change of ``kind`` (how the SQLite change
    table records run changes); the store resolves it into the changes of the
    runs its waiters care about before anyone sees it."""

    kind: AnyKind
    bucket: int

    @property
    def key(self) -> Hashable:
        return self.bucket


Hint = Change | RunBucket
"""A change as another process announced it, before the store resolves it."""

_NAMES: dict[AnyKind, str] = {
    Started: "started",
    Claimable: "claimable",
    Closed: "closed",
    Interrupted: "interrupt",
    Deadline: "deadline",
    OptionsChanged: "options",
}
_KINDS = {name: kind for kind, name in _NAMES.items()}


def to_wire(change: Change) -> list[Any]:
    """A change as a JSON-able list, for another process (see from_wire)."""
    if isinstance(change, (Started, Claimable)):
        at = change.at if isinstance(change, Claimable) else None
        return [_NAMES[type(change)], *change.queue, at]
    if isinstance(change, Interrupted):
        return ["interrupt", change.run_id, change.kind, change.attempt]
    if isinstance(change, Deadline):
        return ["deadline", change.namespace, change.at]
    if isinstance(change, (Closed, OptionsChanged)):
        return [_NAMES[type(change)], change.run_id]
    return ["resync"]


def from_wire(item: list[Any]) -> Change:
    """The change a ``to_wire`` list stands for. Raises ValueError if none."""
    try:
        name = item[0]
        if name == "started":
            return Started((item[1], item[2]))
        if name == "claimable":
            return Claimable((item[1], item[2]), float(item[3]))
        if name == "interrupt":
            return Interrupted(item[1], item[2], int(item[3]))
        if name == "deadline":
            return Deadline(item[1], float(item[2]))
        if name == "closed":
            return Closed(item[1])
        if name == "options":
            return OptionsChanged(item[1])
        if name == "resync":
            return Resync()
    except (IndexError, TypeError, ValueError) as e:
        raise ValueError(f"not a change: {item!r}") from e
    raise ValueError(f"not a change: {item!r}")


def to_row(change: Change) -> tuple[str, str, float | None] | None:
    """(kind, key, at) of the row a change bumps in a change table: queues by
    name, run ids by bucket; None for a deadline or a resync (a table that
    records changes for other processes carries neither: a deadline travels
    by itself, a resync is never committed)."""
    if isinstance(change, (Started, Claimable)):
        at = change.at if isinstance(change, Claimable) else None
        return _NAMES[type(change)], json.dumps(change.queue), at
    if isinstance(change, (Closed, Interrupted, OptionsChanged)):
        return _NAMES[type(change)], str(bucket(change.run_id)), None
    return None


def from_row(kind: str, key: str, at: float | None) -> Hint:
    """The hint a change-table row stands for. Raises ValueError if none."""
    try:
        if kind in ("started", "claimable"):
            namespace, task_queue = json.loads(key)
            if kind == "started" or at is None:
                return Started((namespace, task_queue))
            return Claimable((namespace, task_queue), float(at))
        if kind in ("closed", "interrupt", "options"):
            return RunBucket(_KINDS[kind], int(key))
    except (TypeError, ValueError) as e:
        raise ValueError(f"not a change row: {(kind, key, at)!r}") from e
    raise ValueError(f"not a change row: {(kind, key, at)!r}")


FOREIGN = 2**62
"""The number other processes' changes are published with: above any commit
of this process, so a waiter never drops one as covered by its own claim."""


class Subscription:
    """The changes of some kinds (and keys) for one waiter on one event loop."""

    def __init__(
        self,
        feed: Feed,
        kinds: Iterable[AnyKind],
        keys: Iterable[Hashable] | None,
        where: Callable[[Change], bool] | None,
        everything: bool = False,
    ) -> None:
        self._feed = feed
        self.kinds = frozenset(kinds)
        self.everything = everything
        """Also other processes' changes to runs this process neither awaits
        nor holds (see ``Feed.subscribe``)."""
        self.keys: set[Hashable] | None = None if keys is None else set(keys)
        """The keys wanted (None: all). Changed in place under the feed's lock,
        so a key costs the same however many there are; whoever iterates it
        holds that lock (a membership test needs none)."""
        self.where = where
        self._loop = asyncio.get_running_loop()
        self._event = Flag()
        self._lock = threading.Lock()
        self._pending: list[tuple[int, Change]] = []
        self._scheduled = False
        self.closed = False

    def add_keys(self, keys: Iterable[Hashable]) -> None:
        """Also receive changes for these keys (from other processes too: this
        may wait for the store to start hearing them)."""
        with self._feed.lock:
            if self.keys is None:
                self.keys = set()
            self.keys.update(keys)
        self._feed.interest_changed(self.kinds)

    def discard_keys(self, keys: Iterable[Hashable]) -> None:
        """Stop receiving changes for these keys."""
        with self._feed.lock:
            if self.keys is not None:
                self.keys.difference_update(keys)
        self._feed.interest_changed(self.kinds)

    def wants(self, change: Change) -> bool:
        """Whether this subscription receives the change."""
        if type(change) is Resync:
            return True
        if type(change) is Touched:
            return self.everything and change.kind in self.kinds
        if type(change) not in self.kinds:
            return False
        if self.keys is not None and change.key not in self.keys:
            return False
        return self.where is None or self.where(change)

    def push(self, changes: Sequence[Change], serial: int = 0) -> None:
        """Hand over changes of the commit numbered ``serial``; any thread."""
        with self._lock:
            self._pending.extend((serial, c) for c in changes)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            _wakeups.call_soon(self._loop, self._wake)
        except RuntimeError:  # the loop closed: nobody waits any more
            self.close()

    def _wake(self) -> None:
        with self._lock:
            self._scheduled = False
        self._event.set()

    def take(self, after: int = -1) -> list[Change]:
        """The changes received since the last take (never blocks), leaving
        out those of commits numbered ``after`` or lower."""
        with self._lock:
            taken, self._pending = self._pending, []
            self._event.clear()
        return [change for serial, change in taken if serial > after]

    async def wait(self, timeout: float | None) -> list[Change]:
        """The changes received since the last take, waiting up to ``timeout``
        seconds for the first one (None: no limit); [] on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            taken = self.take()
            if taken or self.closed:
                return taken
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return []
            # The event may be set with nothing pending: a wake-up scheduled
            # before an earlier take ran after it.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event.wait(), left)

    @property
    def event(self) -> asyncio.Event:
        """Set when changes are pending (for waiting on several things at once)."""
        return self._event

    def close(self) -> None:
        """Stop receiving changes."""
        self.closed = True
        self._feed.unsubscribe(self)


class Feed:
    """Where a store publishes its changes, and waiters subscribe to them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._subs: list[Subscription] = []
        self.on_interest: Callable[[AnyKind, bool], None] | None = None
        """Told when some subscription starts (True) or no subscription any
        longer (False) wants changes of a kind: the store then starts or stops
        hearing other processes' changes of that kind."""
        self._interested: set[AnyKind] = set()
        self._interest_lock = threading.Lock()

    def subscribe(
        self,
        *kinds: AnyKind,
        keys: Iterable[Hashable] | None = None,
        where: Callable[[Change], bool] | None = None,
        everything: bool = False,
    ) -> Subscription:
        """Receive changes of these kinds (of these keys only, unless None;
        for which ``where`` holds, if given; called on the publishing
        thread). Every subscription also receives Resync. Call on the loop
        that will wait.

        Of other processes' changes to runs (Closed, Interrupted), the store
        hears only those concerning runs this process awaits or holds;
        ``everything`` asks for all of them (a Closed without its outcome;
        a ``Touched`` where the store heard of them only by bucket), at the
        cost of a look at the store's change log whenever another process
        changes a run (the dashboard watches so)."""
        sub = Subscription(self, kinds, keys, where, everything)
        with self.lock:
            self._subs = [*self._subs, sub]
        self.interest_changed(sub.kinds)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self.lock:
            self._subs = [s for s in self._subs if s is not sub]
        self.interest_changed(sub.kinds)

    def interested(self, kind: AnyKind) -> bool:
        """Whether a subscription wants changes of ``kind`` (of some key)."""
        return any(kind in s.kinds and (s.keys is None or s.keys) for s in self._subs)

    def interest_changed(self, kinds: Iterable[AnyKind]) -> None:
        """Tell ``on_interest`` of the kinds whose interest flipped. One lock
        covers the look, the flip and the call, so two threads cannot apply
        them out of order (and switch off what one still needs)."""
        with self._interest_lock:
            for kind in kinds:
                now = self.interested(kind)
                if now == (kind in self._interested):
                    continue
                (self._interested.add if now else self._interested.discard)(kind)
                if self.on_interest is not None:
                    self.on_interest(kind, now)

    def watching_everything(self, kind: AnyKind) -> bool:
        """Whether a subscription asks for every change of ``kind`` made by
        other processes (``subscribe(everything=True)``)."""
        return any(s.everything and kind in s.kinds for s in self._subs)

    def subscribed_runs(self, kind: AnyKind) -> set[str]:
        """The run ids that subscriptions to ``kind`` name."""
        found: set[str] = set()
        with self.lock:
            for sub in self._subs:
                if kind in sub.kinds and sub.keys is not None:
                    found.update(k for k in sub.keys if isinstance(k, str))
        return found

    def names_run_in(self, kind: AnyKind, buckets: Collection[int]) -> bool:
        """Whether a subscription to ``kind`` names a run id of one of these
        buckets (stops at the first: a process may await thousands)."""
        with self.lock:
            for sub in self._subs:
                if kind in sub.kinds and sub.keys is not None:
                    for key in sub.keys:
                        if isinstance(key, str) and bucket(key) in buckets:
                            return True
        return False

    def keys(self, kind: AnyKind) -> set[Hashable] | None:
        """The keys subscriptions to ``kind`` name; None if one takes all."""
        found: set[Hashable] = set()
        with self.lock:
            for sub in self._subs:
                if kind in sub.kinds:
                    if sub.keys is None:
                        return None
                    found.update(sub.keys)
        return found

    def publish(
        self,
        changes: Sequence[Change],
        serial: int = 0,
        skip: set[int] = frozenset(),  # type: ignore[assignment]
        *,
        everything_only: bool = False,
    ) -> None:
        """Hand each subscription the changes it asked for (of the commit
        numbered ``serial``), but those whose id is in ``skip`` (and, if
        ``everything_only``, those that do not watch everything); any thread."""
        if not changes:
            return
        for sub in self._subs:
            if id(sub) in skip or (everything_only and not sub.everything):
                continue
            mine = [c for c in changes if sub.wants(c)]
            if mine:
                sub.push(mine, serial)

    def close(self) -> None:
        """Wake every waiter once more (the store closed)."""
        for sub in list(self._subs):
            sub.push([Resync()])
