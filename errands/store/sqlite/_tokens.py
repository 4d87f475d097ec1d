"""Liveness tokens of the processes holding a SQLite store: one lock file
each, in a folder beside the database (``<db>-owners/``).

A process that runs workers creates its file and takes an exclusive ``fcntl``
lock on it, which the kernel drops when the process dies, however it dies. A
stopped process (SIGSTOP) keeps it. When a file opened for writing is closed,
as it is when its process dies, inotify tells every watcher; each tries a
shared lock on the file through a read-only descriptor (whose closing wakes
nobody): if it gets one, the owner is gone. Every SAFETY_LOOK_S, and when the
watch begins, every file is tried. Where inotify is missing, the watcher
tries every file each POLL_S.

A process never opens another descriptor to its own file: closing any
descriptor of a file drops the process's locks on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import threading
from collections.abc import Callable

from errands.store._thread import WatchThread
from errands.store.sqlite._doorbell import FILE_MODE, FOLDER_MODE, Inotify

logger = logging.getLogger("errands.store.sqlite")

SAFETY_LOOK_S = 30.0
"""With inotify: how often to try every file anyway."""

POLL_S = 0.25
"""Without inotify: how often to try every file."""

_IN_CLOSE_WRITE = 0x8


class LockFiles:
    """The token folder at ``path`` (made if missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mine: dict[str, int] = {}
        self._watcher: _Watcher | None = None
        self._lock = threading.Lock()

    def hold(self, owner: str) -> None:
        """Take ``owner``'s token: its file, locked. The lock is taken under
        a temporary name, so no watcher ever sees the file unlocked.

        Raises OSError if the folder cannot be written.
        """
        os.makedirs(self.path, FOLDER_MODE, exist_ok=True)
        final = os.path.join(self.path, owner)
        temporary = final + ".new"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, final)
        except OSError:
            os.close(fd)
            raise
        with self._lock:
            self._mine[owner] = fd

    def release(self) -> None:
        """Give up this process's tokens (it closes the store)."""
        with self._lock:
            mine, self._mine = self._mine, {}
        for owner, fd in mine.items():
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.path, owner))
            os.close(fd)
        if self._watcher is not None:
            self._watcher.stop()

    def bury(self, owner: str) -> None:
        """Remove a dead owner's file (its attempts were failed)."""
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.path, owner))

    def dead(self) -> list[str]:
        """The owners whose files no living process holds now."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        with self._lock:
            mine = set(self._mine)
        return [n for n in names if not n.endswith(".new") and n not in mine and self._gone(n)]

    def _gone(self, owner: str) -> bool:
        try:
            fd = os.open(os.path.join(self.path, owner), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # buried already
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return False  # held: its process lives
        finally:
            os.close(fd)  # drops the shared lock too, if it was taken
        return True

    def watch(self, gone: Callable[[list[str]], None]) -> None:
        """Call ``gone`` (on a watcher thread) with the owners found dead,
        from now on (no-op if already watching)."""
        with self._lock:
            if self._watcher is not None:
                return
            os.makedirs(self.path, FOLDER_MODE, exist_ok=True)
            self._watcher = _Watcher(self, gone)


class _Watcher(WatchThread):
    def __init__(self, files: LockFiles, gone: Callable[[list[str]], None]) -> None:
        super().__init__("errands-sqlite-owners")
        self._files = files
        self._gone = gone
        try:
            self._inotify: Inotify | None = Inotify()
            self._inotify.add(files.path, _IN_CLOSE_WRITE)
        except OSError:
            logger.info("no inotify for %s: watching it by polling", files.path)
            self._inotify = None
        self.start()

    def _stopped(self) -> None:
        if self._inotify is not None:
            os.close(self._inotify.fd)

    def _look(self) -> None:
        dead = self._files.dead()
        if dead:
            self._gone(dead)

    def _run(self) -> None:
        try:
            self._look()
            timeout = SAFETY_LOOK_S if self._inotify is not None else POLL_S
            fds = [self._wake] + ([self._inotify.fd] if self._inotify is not None else [])
            while not self._stopping.is_set():
                readable, _, _ = select.select(fds, [], [], timeout)
                if self._wake in readable:
                    return
                if self._inotify is not None and self._inotify.fd in readable:
                    self._inotify.read()
                self._look()
        except Exception:  # never let the thread die silently
            logger.exception("watching %s failed", self._files.path)
