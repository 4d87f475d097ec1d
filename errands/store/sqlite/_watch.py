"""Hear other processes' commits to a SQLite file without polling.

Every commit appends to the file's write-ahead log, so a watch on the ``-wal``
file (inotify, on Linux) fires within microseconds of any commit and costs
nothing while nobody commits. The store then checks ``PRAGMA data_version``
(which moves only for other connections' commits) before reading anything.
Where inotify is missing the watcher polls, backing off while nothing moves.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
from collections.abc import Callable

from errands.store._thread import WatchThread

logger = logging.getLogger("errands.store.sqlite")

SAFETY_LOOK_S = 5.0
"""With inotify: how often to look anyway (a missed event costs at most this)."""

POLL_S = (0.002, 0.05)
"""Without inotify: the first and the longest pause between two looks."""

_IN_MODIFY = 0x2
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000


def _inotify(path: str) -> int | None:
    """An inotify descriptor watching ``path`` for writes, or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
        os.close(fd)
        return None
    return fd


class WalWatch(WatchThread):
    """Calls ``look()`` on its own thread soon after any commit to the file."""

    def __init__(self, wal_path: str, look: Callable[[], None]) -> None:
        super().__init__("errands-wal-watch")
        self._look = look
        self._pause = POLL_S[0]
        self._fd = _inotify(wal_path)
        if self._fd is None:
            logger.info("no inotify for %s: watching it by polling", wal_path)
        self.start()

    def _stopped(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def _run(self) -> None:
        try:
            if self._fd is not None:
                self._watch(self._fd)
            else:
                self._poll()
        except Exception:  # never let the thread die silently
            logger.exception("watching the SQLite file for commits failed")

    def _watch(self, fd: int) -> None:
        wake = self._wake
        while not self._stopping.is_set():
            readable, _, _ = select.select([fd, wake], [], [], SAFETY_LOOK_S)
            if wake in readable:
                return
            if fd in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(fd, 4096):
                        pass
            self._look()

    def moved(self) -> None:
        """Another process committed: poll quickly again (without inotify)."""
        self._pause = POLL_S[0]

    def _poll(self) -> None:
        while not self._stopping.wait(self._pause):
            self._look()
            self._pause = min(self._pause * 1.5, POLL_S[1])
