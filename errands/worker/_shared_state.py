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
"""

from __future__ import annotations

import abc
import concurrent.futures
import logging
import multiprocessing.managers
import queue
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

logger = logging.getLogger("errands.worker")

POLL_S = 0.2
"""How long the worker's queue reader blocks on one read before it looks
whether it should stop."""

SHUTDOWN_KEY = b"errands:worker-shutdown"
"""The entry of the shared mapping that says the worker is shutting down."""

LOG_EVERY_S = 60.0
"""Longest silence between two log lines about failures of one kind."""


class ChildChannel(abc.ABC):
    """What a child uses to talk to its worker; pickled into every child call."""

    @abc.abstractmethod
    def cancel_requested(self, task_token: bytes) -> dict[str, bool] | None:
        """The cancellation flags for the attempt, once the worker asked to cancel it."""

    @abc.abstractmethod
    def worker_shutting_down(self) -> bool:
        """Whether the worker began shutting down."""

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
        """A manager whose shared mapping and queue live in ``mgr`` (a started
        ``multiprocessing.Manager()``). ``queue_poller_executor`` runs the loop
        that reads heartbeats and logs; default: a thread of its own."""
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


def _rebuilt(recipe: tuple[Any, ...]) -> Any:
    func, token, serializer, kwds = recipe
    key = (token.typeid, token.address, token.id)
    found = _child_proxies.get(key)
    if found is None:
        found = _child_proxies[key] = _rebuild_proxy(func, token, serializer, dict(kwds))
    return found


class _MultiprocessingChannel(ChildChannel):
    """Travels as two proxy recipes; the child rebuilds each proxy once."""

    def __init__(self, mapping: tuple[Any, ...], messages: tuple[Any, ...]) -> None:
        self._mapping_recipe = mapping
        self._messages_recipe = messages

    def cancel_requested(self, task_token: bytes) -> dict[str, bool] | None:
        flags: dict[str, bool] | None = _rebuilt(self._mapping_recipe).get(task_token)
        return flags

    def worker_shutting_down(self) -> bool:
        return bool(_rebuilt(self._mapping_recipe).get(SHUTDOWN_KEY))

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
        self._mapping: MutableMapping[bytes, dict[str, bool]] = mgr.dict()
        self._messages: queue.Queue[Any] = mgr.Queue()
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
        self._mapping[task_token] = flags

    def set_worker_shutdown(self) -> None:
        self._mapping[SHUTDOWN_KEY] = {"worker_shutdown": True}

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
