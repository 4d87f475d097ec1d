"""A daemon thread that waits on sockets and can be woken to stop: the shape
of both dialects' watchers (PostgreSQL's LISTEN connection, SQLite's inotify
descriptor)."""

from __future__ import annotations

import abc
import contextlib
import socket
import threading


class WatchThread(abc.ABC):
    """Runs ``_run`` on a daemon thread until ``stop()``; ``_run`` selects on
    ``self._wake`` too and returns when it is readable."""

    def __init__(self, name: str) -> None:
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def _wake(self) -> int:
        """A descriptor that turns readable when the thread must stop."""
        return self._wake_r.fileno()

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (blocking) and release its sockets."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join()
        self._wake_r.close()
        self._wake_w.close()
        self._stopped()

    def _stopped(self) -> None:  # noqa: B027 - optional hook
        """Release what the subclass holds, after the thread ended."""

    @abc.abstractmethod
    def _run(self) -> None:
        """The thread's work."""
