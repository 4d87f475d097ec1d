"""Helper processes die with their worker, even when it is SIGKILLed.

A worker's process-pool children and the server of its multiprocessing
manager would outlive a worker killed outright: a busy child runs its
activity to the end, and a manager's server waits for clients forever. Each
of them calls ``die_with(worker_pid)``: a daemon thread waits on a pidfd of
the worker (Linux 5.3+; it costs nothing while it waits) and ends the process
the moment the worker exits. Where pidfds are missing, the thread looks every
POLL_S whether the process's parent changed.

A pool child calls it at its first attempt. The manager's server is reached
through pickling: unpickling a ``DieWith`` calls ``die_with`` in whichever
process unpickles it, so storing one in a managed dict runs it in the server.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time

POLL_S = 0.5
"""Without pidfds: how often the watchdog looks at the parent process."""

EXIT_CODE = 70
"""The exit status of a process ended because its worker died."""

_watched: set[int] = set()
_lock = threading.Lock()


def die_with(pid: int) -> None:
    """End this process (``os._exit``) as soon as process ``pid`` exits; once
    per ``pid`` and process. Ends it at once if ``pid`` is gone already."""
    with _lock:
        if pid in _watched or pid == os.getpid():
            return
        _watched.add(pid)
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(EXIT_CODE)
    except (AttributeError, OSError):
        fd = None  # no pidfds here: watch the parent instead
    thread = threading.Thread(
        target=_wait_pidfd if fd is not None else _poll_parent,
        args=(fd,) if fd is not None else (os.getppid(),),
        name="errands-die-with-worker",
        daemon=True,
    )
    thread.start()


def _wait_pidfd(fd: int) -> None:
    with contextlib.suppress(OSError):
        select.select([fd], [], [])
    os._exit(EXIT_CODE)


def _poll_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os._exit(EXIT_CODE)


class DieWith:
    """Pickles into a call of ``die_with(pid)`` in the process that unpickles
    it, which is then left holding the pid (an int)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (_die_with_returning, (self.pid,))


def _die_with_returning(pid: int) -> int:
    die_with(pid)
    return pid
