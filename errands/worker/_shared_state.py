"""State shared between the worker and its process-pool children.

Children never touch the store: they reach the worker through a
``SharedStateManager``, which gives them cross-process events (cancellation,
worker shutdown) and a channel for heartbeats and log records back to the
worker. ``SharedStateManager.create_from_multiprocessing`` builds one on a
``multiprocessing.Manager()``; another implementation may be supplied.
"""

from __future__ import annotations

import abc
import concurrent.futures
import logging
import multiprocessing.managers
import queue
import threading
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, Protocol

logger = logging.getLogger("errands.worker")

POLL_S = 0.2
"""How long the worker's queue poller blocks on one read before it looks
whether it should stop."""


class CrossProcessEvent(Protocol):
    """What a child needs of an event: ``threading.Event``'s waiting half."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class SharedHeartbeatSender(abc.ABC):
    """Carries heartbeats and log records from a child to the worker. It is
    pickled into each child call."""

    @abc.abstractmethod
    def send_heartbeat(self, task_token: bytes, details: Sequence[Any]) -> None:
        """Send an attempt's latest heartbeat details (may block briefly)."""

    @abc.abstractmethod
    def send_log(self, record: logging.LogRecord) -> None:
        """Send a log record (already formatted, args merged) to the worker."""


class SharedStateManager(abc.ABC):
    """Cross-process state for process-pool activities."""

    @staticmethod
    def create_from_multiprocessing(
        mgr: multiprocessing.managers.SyncManager,
        queue_poller_executor: concurrent.futures.Executor | None = None,
    ) -> SharedStateManager:
        """A manager whose events and queue live in ``mgr`` (a started
        ``multiprocessing.Manager()``). ``queue_poller_executor`` runs the
        thread that reads heartbeats and logs; default: a thread of its own."""
        return _MultiprocessingSharedStateManager(mgr, queue_poller_executor)

    @abc.abstractmethod
    def new_event(self) -> CrossProcessEvent:
        """A new event that children can wait on."""

    @abc.abstractmethod
    def new_dict(self) -> MutableMapping[bytes, dict[str, bool]]:
        """A new mapping that children can read (cancellation details travel in it)."""

    @abc.abstractmethod
    def register_heartbeater(
        self, task_token: bytes, heartbeat: Callable[[Sequence[Any]], None]
    ) -> SharedHeartbeatSender:
        """Route the attempt's heartbeats to ``heartbeat`` (called on a worker
        thread); return the sender to hand to the child."""

    @abc.abstractmethod
    def unregister_heartbeater(self, task_token: bytes) -> None:
        """Stop routing the attempt's heartbeats."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Stop background work (the worker calls it when it stops)."""


class _QueueSender(SharedHeartbeatSender):
    def __init__(self, q: queue.Queue[Any]) -> None:
        self._queue = q

    def send_heartbeat(self, task_token: bytes, details: Sequence[Any]) -> None:
        self._queue.put(("heartbeat", task_token, list(details)))

    def send_log(self, record: logging.LogRecord) -> None:
        self._queue.put(("log", record.name, record.__dict__))


class _MultiprocessingSharedStateManager(SharedStateManager):
    def __init__(
        self,
        mgr: multiprocessing.managers.SyncManager,
        queue_poller_executor: concurrent.futures.Executor | None,
    ) -> None:
        self._mgr = mgr
        self._queue: queue.Queue[Any] = mgr.Queue()
        self._sender = _QueueSender(self._queue)
        self._heartbeaters: dict[bytes, Callable[[Sequence[Any]], None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = False
        self._executor = queue_poller_executor

    def new_event(self) -> CrossProcessEvent:
        event: CrossProcessEvent = self._mgr.Event()
        return event

    def new_dict(self) -> MutableMapping[bytes, dict[str, bool]]:
        shared: MutableMapping[bytes, dict[str, bool]] = self._mgr.dict()
        return shared

    def register_heartbeater(
        self, task_token: bytes, heartbeat: Callable[[Sequence[Any]], None]
    ) -> SharedHeartbeatSender:
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
        return self._sender

    def unregister_heartbeater(self, task_token: bytes) -> None:
        with self._lock:
            self._heartbeaters.pop(task_token, None)

    def close(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._queue.get(timeout=POLL_S)
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
            kind = message[0]
            if kind == "heartbeat":
                with self._lock:
                    heartbeat = self._heartbeaters.get(message[1])
                if heartbeat is not None:
                    heartbeat(message[2])
            elif kind == "log":
                record = logging.makeLogRecord(message[2])
                logging.getLogger(message[1]).handle(record)
