"""Hear other processes' commits to a SQLite file without polling.

A process that commits a change others may wait for rings a doorbell after
the commit: it bumps one byte per kind of change (queues, runs, deadlines) in
a small file beside the database (``<db>-feed``). Every process watches that
file (inotify, on Linux), so it hears of such a commit within microseconds,
looks only when a kind it waits for rang, and costs nothing while nobody
rings. (Watching the write-ahead log itself is not enough: its pages are
written before the commit becomes visible.) The store then checks ``PRAGMA
data_version``, which moves only for other connections' commits, before it
reads anything. Where inotify is missing the watcher polls, backing off while
nothing moves.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
from collections.abc import Callable, Iterable

from errands.store._thread import WatchThread

logger = logging.getLogger("errands.store.sqlite")

SAFETY_LOOK_S = 30.0
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


BELLS = 4
"""Bytes in the doorbell file: one per kind of change (see the store's BELL)."""


def ring(bell: int, kinds: Iterable[int]) -> None:
    """Ring the doorbell whose file descriptor is ``bell`` for these kinds
    (after a commit): each kind's byte changes, so a watcher that compares
    the bytes with those it saw last knows which kinds rang."""
    for kind in kinds:
        old = os.pread(bell, 1, kind)
        os.pwrite(bell, bytes([(old[0] + 1) % 256 if old else 1]), kind)


class Doorbell(WatchThread):
    """Calls ``look()`` on its own thread soon after anyone rings the bell at
    ``path`` (creating the file if missing)."""

    def __init__(self, path: str, look: Callable[[], None], wants: Callable[[int], bool]) -> None:
        super().__init__("errands-doorbell")
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        """Write to it (``ring``) to wake every process watching."""
        self._look = look
        self._wants = wants
        self._seen = os.pread(self.fd, BELLS, 0)
        self._pause = POLL_S[0]
        self._watch_fd = _inotify(path)
        if self._watch_fd is None:
            logger.info("no inotify for %s: watching it by polling", path)
        self.start()

    def _stopped(self) -> None:
        if self._watch_fd is not None:
            os.close(self._watch_fd)
        os.close(self.fd)

    def _run(self) -> None:
        try:
            if self._watch_fd is not None:
                self._watch(self._watch_fd)
            else:
                self._poll()
        except Exception:  # never let the thread die silently
            logger.exception("watching the SQLite store's doorbell failed")

    def _watch(self, fd: int) -> None:
        wake = self._wake
        while not self._stopping.is_set():
            readable, _, _ = select.select([fd, wake], [], [], SAFETY_LOOK_S)
            if wake in readable:
                return
            if fd not in readable:
                self._look()  # the safety look
                continue
            with contextlib.suppress(BlockingIOError):
                while os.read(fd, 4096):
                    pass
            now = os.pread(self.fd, BELLS, 0)
            rang = [k for k in range(BELLS) if now[k : k + 1] != self._seen[k : k + 1]]
            self._seen = now
            if any(self._wants(k) for k in rang):
                self._look()

    def moved(self) -> None:
        """Another process committed: poll quickly again (without inotify)."""
        self._pause = POLL_S[0]

    def _poll(self) -> None:
        while not self._stopping.wait(self._pause):
            self._look()
            self._pause = min(self._pause * 1.5, POLL_S[1])
