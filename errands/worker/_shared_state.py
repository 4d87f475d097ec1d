"""State shared between the worker and its process-pool children.

Children never touch the store. They reach the worker through a
``SharedStateManager``: the worker writes cancel requests and its shutdown into
it, and children send heartbeats and log records back through it.
``SharedStateManager.create_from_multiprocessing`` builds one on a
``multiprocessing.Manager()``; another implementation may be supplied.

Each child call carries a ``ChildChannel``. It must be cheap to send: the
multiprocessing one travels as the recipe of its manager proxies, and a child
builds the proxies once and reuses them for every later call (a proxy sent
whole would open two fresh connections to the manager per call).

How a request reaches a child without polling (multiprocessing): the shared
mapping holds the requests and the recipe of the current *wake-up*, an
``Event`` in the manager. A child's watcher reads the mapping, then blocks on
that event's ``wait()`` in the manager. The worker writes a request together
with a new wake-up in one update, then sets the old one. An event is set once
and never cleared: a watcher that read the old one, however late it comes to
wait on it, returns at once and reads again, so no request is missed (clearing
and reusing one event could lose a wake-up). Making an event costs a few
milliseconds, so the next one is made ahead, after each request; none is made
per attempt.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import logging
import multiprocessing.managers
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable, Mapping, MutableMapping, Sequence
from typing import Any

from errands.worker._watchdog import DieWith

logger = logging.getLogger("errands.worker")

POLL_S = 0.2
"""How long the worker's queue reader blocks on one read before it looks
whether it should stop."""

SHUTDOWN_KEY = b"errands:worker-shutdown"
"""The entry of the shared mapping that says the worker is shutting down."""

WAKE_KEY = b"errands:wake-up"
"""The entry of the shared mapping that holds the recipe of the current wake-up event."""

DIE_WITH_KEY = b"errands:die-with"
"""The entry of the shared mapping whose unpickling made the manager's server
end with the worker's process (see ``_watchdog``)."""

RETIRED_WAKE_UPS = 8
"""How many set wake-up events the worker keeps alive after replacing them: a
child may still be rebuilding a proxy to one it read just before."""

LOG_EVERY_S = 60.0
"""Longest silence between two log lines about failures of one kind."""


@dataclasses.dataclass(frozen=True)
class Requests:
    """What a worker asks of its process-pool children, as of one read."""

    cancels: Mapping[bytes, dict[str, bool]]
    """The cancellation flags of each attempt the worker asked to cancel, by task token."""
    worker_shutdown: bool
    """Whether the worker began shutting down."""


class ChildChannel(abc.ABC):
    """What a child uses to talk to its worker; pickled into every child call."""

    @abc.abstractmethod
    def key(self) -> Hashable:
        """The same for every channel of one SharedStateManager (a child keeps
        one watcher per key)."""

    @abc.abstractmethod
    def read_requests(self) -> Requests:
        """What the worker asks now (a round trip to the shared state)."""

    @abc.abstractmethod
    def wait_for_requests(self, timeout_s: float) -> bool:
        """Block until the worker may have asked something new since this
        channel object's last ``read_requests()``, at most ``timeout_s``; False
        if nothing new came. Only a child's watcher thread calls it."""

    @abc.abstractmethod
    def send_heartbeat(self, task_token: bytes, details: Sequence[Any]) -> None:
        """Send an attempt's latest heartbeat details (may block briefly)."""

    @abc.abstractmethod
    def send_log(self, record: logging.LogRecord) -> None:
        """Send a log record (message already formatted) to the worker."""


class SharedStateManager(abc.ABC):
    """Cross-process state for process-pool activities."""

    @staticmethod
    def create_from_multiprocessing(
        mgr: multiprocessing.managers.SyncManager,
        queue_poller_executor: concurrent.futures.Executor | None = None,
    ) -> SharedStateManager:
        """A manager whose shared mapping, wake-up events and queue live in
        ``mgr`` (a started ``multiprocessing.Manager()``). ``queue_poller_executor``
        runs the loop that reads heartbeats and logs; default: a thread of its own."""
        return _MultiprocessingSharedStateManager(mgr, queue_poller_executor)

    @abc.abstractmethod
    def child_channel(self) -> ChildChannel:
        """The channel to hand to every child call."""

    @abc.abstractmethod
    def request_cancel(self, task_token: bytes, flags: dict[str, bool]) -> None:
        """Tell the attempt's child to cancel (may block briefly)."""

    @abc.abstractmethod
    def set_worker_shutdown(self) -> None:
        """Tell every child that the worker is shutting down (may block briefly)."""

    @abc.abstractmethod
    def register_heartbeater(
        self, task_token: bytes, heartbeat: Callable[[Sequence[Any]], None]
    ) -> None:
        """Route the attempt's heartbeats to ``heartbeat`` (called on a worker thread)."""

    @abc.abstractmethod
    def unregister_heartbeater(self, task_token: bytes) -> None:
        """Stop routing the attempt's heartbeats and forget its cancel request
        (may block briefly if a cancel was requested)."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Stop background work (the worker calls it when it stops)."""


class ThrottledLog:
    """Logs each kind of failure at most once per ``every_s``, counting the
    ones it held back: a broken manager fails every heartbeat, and a line for
    each would drown the log. Thread-safe."""

    def __init__(self, log: logging.Logger, every_s: float = LOG_EVERY_S) -> None:
        self._log = log
        self._every_s = every_s
        self._kinds: dict[str, tuple[float, int]] = {}  # kind -> (next line at, held back)
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, *args: Any) -> None:
        """Log ``message % args`` unless a line of this kind went out lately."""
        now = time.monotonic()
        with self._lock:
            next_at, held = self._kinds.get(kind, (0.0, 0))
            if now < next_at:
                self._kinds[kind] = (next_at, held + 1)
                return
            self._kinds[kind] = (now + self._every_s, 0)
        if held:
            message += f" ({held} more like it in the last {self._every_s:g} s)"
        self._log.warning(message, *args)


# --------------------------------------------------------------------------- multiprocessing


_rebuild_proxy: Callable[..., Any] = getattr(multiprocessing.managers, "RebuildProxy")  # noqa: B009
"""How a pickled manager proxy is rebuilt (not in the typeshed stubs)."""

_child_proxies: dict[tuple[Any, ...], Any] = {}
"""The proxies a child built, by token: built once per child process."""


def _recipe(proxy: Any) -> tuple[Any, ...]:
    """How to rebuild a manager proxy elsewhere: its class, token, serializer and
    keywords (what pickling it would send, without the object)."""
    rebuild, args = proxy.__reduce__()
    if rebuild is not _rebuild_proxy:
        raise TypeError(f"not a multiprocessing manager proxy: {proxy!r}")
    return tuple(args)


def _object_key(recipe: tuple[Any, ...]) -> tuple[Any, ...]:
    """Which manager object a recipe rebuilds (tokens do not compare by value)."""
    token = recipe[1]
    return (token.typeid, token.address, token.id)


def _rebuilt(recipe: tuple[Any, ...]) -> Any:
    key = _object_key(recipe)
    found = _child_proxies.get(key)
    if found is None:
        func, token, serializer, kwds = recipe
        found = _child_proxies[key] = _rebuild_proxy(func, token, serializer, dict(kwds))
    return found


class _MultiprocessingChannel(ChildChannel):
    """Travels as two proxy recipes; the child rebuilds each proxy once. The
    watcher's own channel object also holds a proxy to the wake-up it last read."""

    def __init__(self, mapping: tuple[Any, ...], messages: tuple[Any, ...]) -> None:
        self._mapping_recipe = mapping
        self._messages_recipe = messages
        self._wake_up_recipe: tuple[Any, ...] | None = None  # as of the last read
        self._wake_up: Any = None  # a proxy to the wake-up event of _wake_up_key
        self._wake_up_key: tuple[Any, ...] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._mapping_recipe, self._messages_recipe))

    def key(self) -> Hashable:
        return _object_key(self._mapping_recipe)

    def read_requests(self) -> Requests:
        state: dict[bytes, Any] = _rebuilt(self._mapping_recipe).copy()
        self._wake_up_recipe = state.pop(WAKE_KEY)
        shutdown = state.pop(SHUTDOWN_KEY, None) is not None
        return Requests(cancels=state, worker_shutdown=shutdown)

    def wait_for_requests(self, timeout_s: float) -> bool:
        recipe = self._wake_up_recipe
        if recipe is None:
            return True  # nothing read yet
        # Rebuilt here, not in read_requests(): a new proxy costs two connections
        # (its incref, the old one's decref), after the requests are handled.
        if _object_key(recipe) != self._wake_up_key:
            self._wake_up = self._wake_up_key = None
            func, token, serializer, kwds = recipe
            self._wake_up = _rebuild_proxy(func, token, serializer, dict(kwds))
            self._wake_up_key = _object_key(recipe)
        return bool(self._wake_up.wait(timeout_s))

    def send_heartbeat(self, task_token: bytes, details: Sequence[Any]) -> None:
        _rebuilt(self._messages_recipe).put(("heartbeat", task_token, list(details)))

    def send_log(self, record: logging.LogRecord) -> None:
        _rebuilt(self._messages_recipe).put(("log", record.name, record.__dict__))


class _MultiprocessingSharedStateManager(SharedStateManager):
    def __init__(
        self,
        mgr: multiprocessing.managers.SyncManager,
        queue_poller_executor: concurrent.futures.Executor | None,
    ) -> None:
        self._mgr = mgr
        self._mapping: MutableMapping[bytes, Any] = mgr.dict()
        self._messages: queue.Queue[Any] = mgr.Queue()
        self._wake_up: Any = mgr.Event()
        self._next_wake_up: Any = mgr.Event()  # made ahead of the next request
        self._retired: collections.deque[Any] = collections.deque(maxlen=RETIRED_WAKE_UPS)
        self._mapping[WAKE_KEY] = _recipe(self._wake_up)
        # Unpickled in the manager's server, this makes it end with this process.
        self._mapping[DIE_WITH_KEY] = DieWith(os.getpid())
        self._ringing = threading.Lock()  # one request at a time replaces the wake-up
        self._channel = _MultiprocessingChannel(_recipe(self._mapping), _recipe(self._messages))
        self._heartbeaters: dict[bytes, Callable[[Sequence[Any]], None]] = {}
        self._requested: set[bytes] = set()  # tokens with an entry in the mapping
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = False
        self._executor = queue_poller_executor
        self._complaints = ThrottledLog(logger)

    def child_channel(self) -> ChildChannel:
        return self._channel

    def request_cancel(self, task_token: bytes, flags: dict[str, bool]) -> None:
        with self._lock:
            self._requested.add(task_token)
        self._ring({task_token: flags})

    def set_worker_shutdown(self) -> None:
        self._ring({SHUTDOWN_KEY: {"worker_shutdown": True}})

    def _ring(self, entries: dict[bytes, Any]) -> None:
        """Write ``entries`` and wake every child's watcher (see the module's docstring)."""
        with self._ringing:
            successor = self._next_wake_up
            if successor is None:
                successor = self._mgr.Event()
            self._mapping.update({**entries, WAKE_KEY: _recipe(successor)})
            self._next_wake_up = None
            self._wake_up.set()
            self._retired.append(self._wake_up)
            self._wake_up = successor
            try:
                self._next_wake_up = self._mgr.Event()
            except Exception as e:  # made at the next request instead; this one was delivered
                self._complaints.warning(
                    "make", "could not make the next wake-up event in the shared state: %r", e
                )

    def register_heartbeater(
        self, task_token: bytes, heartbeat: Callable[[Sequence[Any]], None]
    ) -> None:
        with self._lock:
            self._heartbeaters[task_token] = heartbeat
            if not self._started:
                self._started = True
                if self._executor is None:
                    threading.Thread(
                        target=self._poll, name="errands-shared-state", daemon=True
                    ).start()
                else:
                    self._executor.submit(self._poll)

    def unregister_heartbeater(self, task_token: bytes) -> None:
        with self._lock:
            self._heartbeaters.pop(task_token, None)
            if task_token not in self._requested:
                return
            self._requested.discard(task_token)
        self._mapping.pop(task_token, None)

    def close(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._messages.get(timeout=POLL_S)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                if self._stop.is_set():
                    return
                logger.error(
                    "the multiprocessing manager went away; heartbeats from "
                    "process-pool activities stop"
                )
                return
            try:
                self._dispatch(message)
            except Exception as e:  # this thread serves every attempt: it must go on
                self._complaints.warning(
                    message[0],
                    "could not take a %s from a process-pool activity: %r",
                    message[0],
                    e,
                )

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "heartbeat":
            with self._lock:
                heartbeat = self._heartbeaters.get(message[1])
            if heartbeat is not None:
                heartbeat(message[2])
        elif kind == "log":
            record = logging.makeLogRecord(message[2])
            logging.getLogger(message[1]).handle(record)
