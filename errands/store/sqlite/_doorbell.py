"""Hear other processes' commits to a SQLite file without polling, and only
those that concern this process.

A process that commits a change others may wait for rings a doorbell after
the commit: a small file beside the database (``<db>-feed``) with one byte
per bell, bumped for each bell the commit rings (a bucket of queues, a
bucket of run ids), and the earliest deadline announced, as a number. Every
process watches that file (inotify, on Linux): it hears of such a commit
within microseconds, compares the bytes with those it saw last, and looks in
the database only when a bell rang that it listens for; an earlier deadline
it hands to its timers without looking at all. Nothing costs anything while
nobody rings. (Watching the write-ahead log instead would not do: its pages
are written before the commit becomes visible.) Where inotify is missing the
watcher polls, backing off while nothing moves.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import logging
import os
import select
import struct
import time
from collections.abc import Callable, Iterable

from errands.store._thread import WatchThread

logger = logging.getLogger("errands.store.sqlite")

SAFETY_LOOK_S = 30.0
"""With inotify: how often to look anyway (a missed event costs at most this)."""

POLL_S = (0.002, 0.05)
"""Without inotify: the first and the longest pause between two looks."""

BELLS = 256
"""Bell bytes at the start of the file (the store says which stands for what)."""

DEADLINE_AT = 256
"""Where the earliest announced deadline is kept: a float64 (0: none)."""

SIZE = DEADLINE_AT + 8

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


def ring(bell: int, bells: Iterable[int], deadline: float | None) -> None:
    """Ring bells of the doorbell file ``bell`` (after a commit): each one's
    byte changes, so a watcher comparing the bytes with those it saw last
    knows which rang. An earlier ``deadline`` than the one kept (or one kept
    that has passed) replaces it, under a lock so no earlier one is lost."""
    for index in bells:
        old = os.pread(bell, 1, index)
        os.pwrite(bell, bytes([(old[0] + 1) % 256 if old else 1]), index)
    if deadline is None:
        return
    fcntl.lockf(bell, fcntl.LOCK_EX, 8, DEADLINE_AT)
    try:
        raw = os.pread(bell, 8, DEADLINE_AT)
        kept = struct.unpack("<d", raw)[0] if len(raw) == 8 else 0.0
        if kept <= time.time() or deadline < kept:
            os.pwrite(bell, struct.pack("<d", deadline), DEADLINE_AT)
    finally:
        fcntl.lockf(bell, fcntl.LOCK_UN, 8, DEADLINE_AT)


class Doorbell(WatchThread):
    """Calls ``rang(bells, deadline)`` on its own thread soon after anyone
    rings the doorbell at ``path`` (creating the file if missing): the bells
    whose bytes changed, and the kept deadline if it changed. Every
    SAFETY_LOOK_S it calls ``rang(None, None)``: look at everything."""

    def __init__(self, path: str, rang: Callable[[list[int] | None, float | None], None]) -> None:
        super().__init__("errands-doorbell")
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        """Write to it (``ring``) to wake every process watching."""
        self._rang = rang
        self._seen = self._read()
        self._pause = POLL_S[0]
        self._watch_fd = _inotify(path)
        if self._watch_fd is None:
            logger.info("no inotify for %s: watching it by polling", path)
        self.start()

    def _read(self) -> bytes:
        return os.pread(self.fd, SIZE, 0).ljust(SIZE, b"\0")

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

    def _compare(self) -> None:
        now = self._read()
        seen, self._seen = self._seen, now
        bells = [i for i in range(BELLS) if now[i] != seen[i]]
        deadline = None
        if now[DEADLINE_AT:] != seen[DEADLINE_AT:]:
            deadline = struct.unpack("<d", now[DEADLINE_AT:])[0] or None
        if bells or deadline is not None:
            self._pause = POLL_S[0]
            self._rang(bells, deadline)

    def _watch(self, fd: int) -> None:
        wake = self._wake
        while not self._stopping.is_set():
            readable, _, _ = select.select([fd, wake], [], [], SAFETY_LOOK_S)
            if wake in readable:
                return
            if fd not in readable:
                self._rang(None, None)  # the safety look
                continue
            with contextlib.suppress(BlockingIOError):
                while os.read(fd, 4096):
                    pass
            self._compare()

    def _poll(self) -> None:
        while not self._stopping.wait(self._pause):
            self._compare()
            self._pause = min(self._pause * 1.5, POLL_S[1])
