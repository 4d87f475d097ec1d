"""Hear other processes' commits to a SQLite file without polling, and only
those that concern this process.

A process that commits a change others may wait for rings a doorbell after
the commit. The doorbell is a folder beside the database (``<db>-feed/``)
with one small file per group of bells (say: changes to queues; closes of
runs; interrupts), one byte per bell (a bucket of queues or of run ids),
bumped for each bell the commit rings; the earliest announced deadline is
kept in a file of its own, as a number. Each process watches (inotify, on
Linux) only the files of the groups it listens to: a worker that awaits no
result is not woken when runs close. When a file changes it compares the
bytes with those it saw last and looks in the database only when a bell
rang that it wants; an earlier deadline it hands to its timers without
looking at all. Nothing costs anything while nobody rings. (Watching the
write-ahead log instead would not do: its pages are written before the
commit becomes visible.) Where inotify is missing the watcher polls, backing
off while nothing moves.
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
import threading
import time
from collections.abc import Callable, Iterable

from errands.store._thread import WatchThread

logger = logging.getLogger("errands.store.sqlite")

SAFETY_LOOK_S = 30.0
"""With inotify: how often to look anyway (a missed event costs at most this)."""

POLL_S = (0.002, 0.05)
"""Without inotify: the first and the longest pause between two looks."""

FILE_MODE = 0o600
"""The mode of a new database file, and of the files beside it: the store
holds every activity's arguments and results, for its owner only."""

FOLDER_MODE = 0o700
"""The mode of the folders beside the database (doorbell, owners)."""

BELLS = 64
"""Bells per group (one byte each)."""

DEADLINE = "deadline"
"""The file that keeps the earliest announced deadline (a float64; 0: none)."""

_IN_MODIFY = 0x2
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # struct inotify_event without its name


class Inotify:
    """An inotify descriptor, and watches added to it."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self.fd = int(self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")

    def add(self, path: str, mask: int = _IN_MODIFY) -> int:
        """Watch ``path`` for the events of ``mask`` (default: modified); the watch."""
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path} failed")
        return wd

    def read(self) -> set[int]:
        """The watches that fired since the last read."""
        fired: set[int] = set()
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self.fd, 4096):
                offset = 0
                while offset + _EVENT.size <= len(data):
                    wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                    fired.add(wd)
                    offset += _EVENT.size + length
        return fired


class Doorbell(WatchThread):
    """The doorbell folder at ``path`` (made if missing). ``ring`` after a
    commit; ``listen`` to a group, and ``rang(group, bells)`` is called on the
    watcher's thread with the bells of that group that rang (``rang(None,
    [])`` every SAFETY_LOOK_S: look at everything), ``deadline(at)`` with an
    earlier deadline."""

    def __init__(
        self,
        path: str,
        groups: Iterable[str],
        rang: Callable[[str | None, list[int]], None],
        deadline: Callable[[float], None],
    ) -> None:
        super().__init__("errands-doorbell")
        os.makedirs(path, FOLDER_MODE, exist_ok=True)
        self._path = path
        self._fds = {
            name: os.open(
                os.path.join(path, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
            )
            for name in [*groups, DEADLINE]
        }
        self._rang = rang
        self._deadline = deadline
        self._lock = threading.Lock()
        self._seen: dict[str, bytes] = {}
        self._watches: dict[int, str] = {}
        self._pause = POLL_S[0]
        try:
            self._inotify: Inotify | None = Inotify()
        except OSError:
            logger.info("no inotify for %s: watching it by polling", path)
            self._inotify = None
        self.listen(DEADLINE)
        self.start()

    # -- ringing (the writer's thread)

    def ring(self, bells: dict[str, set[int]], deadline: float | None) -> None:
        """Ring these bells of each group: each one's byte changes, so a
        watcher comparing the bytes with those it saw last knows which rang.
        An earlier ``deadline`` than the one kept (or one kept that has
        passed) replaces it, under a lock so no earlier one is lost."""
        for group, indexes in bells.items():
            fd = self._fds[group]
            # The file lock makes each bump whole across processes and across
            # two stores of one file in one process (flock: it belongs to the
            # open file, not the process, as lockf's would); the doorbell's
            # own lock orders it with this doorbell's watcher, which then
            # takes no bell this store rang for news (it would only look,
            # find nothing, and take the GIL from whoever runs the activity)
            # - but one rung by anyone else since it last compared it still finds.
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with self._lock:
                    seen = self._seen.get(group)
                    mine = None if seen is None else bytearray(seen)
                    for index in indexes:
                        old = os.pread(fd, 1, index)
                        was = old[0] if old else 0
                        now = (was + 1) % 256
                        os.pwrite(fd, bytes([now]), index)
                        if mine is not None and mine[index] == was:
                            mine[index] = now
                    if mine is not None:
                        self._seen[group] = bytes(mine)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        if deadline is None:
            return
        fd = self._fds[DEADLINE]
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(fd, 8, 0)
            kept = struct.unpack("<d", raw)[0] if len(raw) == 8 else 0.0
            if kept <= time.time() or deadline < kept:
                os.pwrite(fd, struct.pack("<d", deadline), 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    # -- listening (any thread)

    def listen(self, group: str) -> None:
        """Hear the bells of ``group`` from now on (no-op if already)."""
        with self._lock:
            if group in self._seen:
                return
            self._seen[group] = self._read(group)
            if self._inotify is not None:
                wd = self._inotify.add(os.path.join(self._path, group))
                self._watches[wd] = group

    def _read(self, group: str) -> bytes:
        size = 8 if group == DEADLINE else BELLS
        return os.pread(self._fds[group], size, 0).ljust(size, b"\0")

    # -- the watcher's thread

    def _stopped(self) -> None:
        if self._inotify is not None:
            os.close(self._inotify.fd)
        for fd in self._fds.values():
            os.close(fd)

    def _run(self) -> None:
        try:
            if self._inotify is not None:
                self._watch(self._inotify)
            else:
                self._poll()
        except Exception:  # never let the thread die silently
            logger.exception("watching the SQLite store's doorbell failed")

    def _compare(self, groups: Iterable[str]) -> None:
        for group in groups:
            now = self._read(group)
            with self._lock:
                seen, self._seen[group] = self._seen[group], now
            if now == seen:
                continue
            self._pause = POLL_S[0]
            if group == DEADLINE:
                at = struct.unpack("<d", now)[0]
                if at:
                    self._deadline(at)
            else:
                self._rang(group, [i for i in range(BELLS) if now[i] != seen[i]])

    def _watch(self, inotify: Inotify) -> None:
        wake = self._wake
        while not self._stopping.is_set():
            readable, _, _ = select.select([inotify.fd, wake], [], [], SAFETY_LOOK_S)
            if wake in readable:
                return
            if inotify.fd not in readable:
                self._rang(None, [])  # the safety look
                continue
            fired = inotify.read()
            with self._lock:
                groups = [self._watches[wd] for wd in fired if wd in self._watches]
            self._compare(groups)

    def _poll(self) -> None:
        while not self._stopping.wait(self._pause):
            with self._lock:
                groups = list(self._seen)
            self._compare(groups)
            self._pause = min(self._pause * 1.5, POLL_S[1])
