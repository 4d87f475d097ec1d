"""Liveness tokens of the processes holding a PostgreSQL store: a session
advisory lock each, held on a connection of its own, which the server drops
when the process dies (its connection closes).

The same connection looks, while this process watches (a worker runs, or a
client awaits a result), for processes registered in ``owners`` whose lock no
session holds: every POLL_S while another process's workers run attempts,
every IDLE_POLL_S otherwise (there is nothing to fail over then, and polling
is what an idle process would pay for). Only a look tells that another
process has begun running attempts, so from when this process hears that an
execution becomes claimable (and some process may claim it) it looks every
POLL_S for IDLE_POLL_S: a worker killed right after its claim is found within
POLL_S + LOST_AFTER_S, not IDLE_POLL_S. One missing for LOST_AFTER_S is gone. A process
whose connection drops takes its lock again on reconnecting, so a watcher
that itself just reconnected (after a restart of the server, say) waits
RECONNECT_GRACE_S before it declares anyone gone: the others are
reconnecting too. A stopped process (SIGSTOP) keeps its connection and lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from errands.exceptions import StoreError
from errands.store._catalogue import Catalogue
from errands.store._thread import WatchThread

logger = logging.getLogger("errands.store.postgres")

POLL_S = 0.25
"""How often a watching process looks for locks gone while another process's
workers run attempts."""

IDLE_POLL_S = 2.0
"""How often it looks otherwise."""

LOST_AFTER_S = 0.5
"""How long a lock must be missing before its process is declared gone."""

RECONNECT_GRACE_S = 5.0
"""After the watcher's own connection came back: how long before it declares
anyone gone (the others reconnect and take their locks again meanwhile)."""

BACKOFF_S = (0.1, 1.0)
"""First and longest pause between two attempts to reconnect (so the lock is
back within about a second of the server)."""

_MAX_KEY = 2**31 - 1


class AdvisoryLocks(WatchThread):
    """The token connection of one store. ``lock_class``: the first half of
    every token's lock key (one per schema)."""

    def __init__(
        self,
        conninfo: str,
        kwargs: dict[str, Any],
        catalogue: Catalogue,
        lock_class: int,
        target: str,
        connect_timeout_s: float,
    ) -> None:
        super().__init__("errands-pg-owners")
        self._conninfo = conninfo
        self._kwargs = kwargs
        self._catalogue = catalogue
        self._class = lock_class
        self._target = target
        self._timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._key: int | None = None
        self._owner = ""
        self._busy = False
        """Whether another process's workers ran attempts at the last look."""
        self._soon = (0.0, 0.0)
        """From when until when (monotonic) another process may begin running
        attempts (expect_busy): look every POLL_S then."""
        self._held = threading.Event()
        self._gone: Callable[[list[str]], None] | None = None
        self._missing: dict[str, float] = {}
        self._up_since = 0.0
        self._reconnected = False
        self._kick_r, self._kick_w = socket.socketpair()
        self._kick_r.setblocking(False)  # drained only as far as it holds bytes
        self._started = False

    def _ensure_started(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                self.start()

    def _kick(self) -> None:
        with contextlib.suppress(OSError):
            self._kick_w.send(b"x")

    def hold(self, owner: str) -> int:
        """Take this process's token, for ``owner`` (blocking until held); its lock key.

        Raises StoreError if the server cannot be reached in time.
        """
        with self._lock:
            self._owner = owner
            if self._key is None:
                self._key = random.randint(1, _MAX_KEY)
        self._ensure_started()
        self._kick()
        if not self._held.wait(self._timeout_s):
            raise StoreError(f"PostgreSQL store {self._target}: cannot take a liveness lock")
        assert self._key is not None
        return self._key

    def watch(self, gone: Callable[[list[str]], None]) -> None:
        """Call ``gone`` (on this thread) with the processes found gone, from now on."""
        with self._lock:
            self._gone = gone
        self._ensure_started()
        self._kick()

    def expect_busy(self, in_s: float) -> None:
        """An execution becomes claimable ``in_s`` seconds from now: look
        every POLL_S from then for IDLE_POLL_S."""
        now = time.monotonic()
        begin, end = now + in_s, now + in_s + IDLE_POLL_S
        with self._lock:
            was_begin, was_end = self._soon
            if was_end > now:  # one window still ahead or running: merge
                begin, end = min(begin, was_begin), max(end, was_end)
            self._soon = (begin, end)
            earlier = begin < was_begin or was_end <= now
        if earlier:
            self._kick()  # the watcher sleeps until its next look: shorten that

    def _next_look(self, last: float) -> float:
        """When (monotonic) to look next, the last look having been at ``last``."""
        with self._lock:
            begin, end = self._soon
        if self._busy:
            return last + POLL_S
        due = last + IDLE_POLL_S
        if begin < due and end > last:  # a window of expected claims overlaps
            due = max(last + POLL_S, begin)
        return due

    def _stopped(self) -> None:
        self._kick_r.close()
        self._kick_w.close()

    def _connect_kwargs(self) -> dict[str, Any]:
        """The connection's settings; its application_name says whose token it
        holds (``errands-owner:<pid>``), for an operator reading pg_stat_activity."""
        return {**self._kwargs, "application_name": f"errands-owner:{os.getpid()}"}

    def _run(self) -> None:
        delay = BACKOFF_S[0]
        while not self._stopping.is_set():
            try:
                conn = psycopg.connect(self._conninfo, autocommit=True, **self._connect_kwargs())
            except psycopg.Error as e:
                if delay == BACKOFF_S[0]:  # once per outage
                    logger.warning(
                        "PostgreSQL store %s: cannot connect for liveness (%s); retrying",
                        self._target,
                        str(e).strip(),
                    )
                self._stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_S[1])
                self._reconnected = True
                continue
            delay = BACKOFF_S[0]
            try:
                self._up_since = time.monotonic()
                self._serve(conn)
            except psycopg.Error as e:
                if self._stopping.is_set():
                    break
                logger.warning(
                    "PostgreSQL store %s: liveness connection lost (%s); reconnecting",
                    self._target,
                    str(e).strip(),
                )
                self._held.clear()
                self._reconnected = True
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

    def _take(self, conn: psycopg.Connection[Any]) -> None:
        """Hold this process's lock, if it wants one (another key if its key
        is taken by a process of another store)."""
        while True:
            with self._lock:
                key = self._key
            if key is None or self._held.is_set():
                return
            taken = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (self._class, key)
            ).fetchone()
            if taken and taken[0]:
                self._held.set()
                return
            with self._lock:
                self._key = random.randint(1, _MAX_KEY)

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        kick = self._kick_r.fileno()
        last_look = -IDLE_POLL_S
        while not self._stopping.is_set():
            self._take(conn)
            with self._lock:
                gone = self._gone
            pause = None
            if gone is not None:
                pause = max(0.0, self._next_look(last_look) - time.monotonic())
            readable, _, _ = select.select([self._wake, kick, conn.pgconn.socket], [], [], pause)
            if self._wake in readable:
                return
            if kick in readable:
                with contextlib.suppress(BlockingIOError):
                    self._kick_r.recv(4096)
            if conn.pgconn.socket in readable:
                conn.pgconn.consume_input()  # a notice, or the server going away
                if conn.pgconn.status != psycopg.pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the liveness connection is closed")
            if gone is not None and time.monotonic() >= self._next_look(last_look):
                last_look = time.monotonic()
                found = self._look(conn)
                if found:
                    gone(found)

    def _look(self, conn: psycopg.Connection[Any]) -> list[str]:
        with self._lock:
            me = self._owner
        rows = conn.execute(
            self._catalogue["owners_liveness"], {"class": self._class, "me": me}
        ).fetchall()
        now = time.monotonic()
        unlocked = {owner for owner, is_unlocked, _ in rows if is_unlocked}
        self._busy = any(busy for _, _, busy in rows)
        self._missing = {o: self._missing.get(o, now) for o in unlocked}
        grace = RECONNECT_GRACE_S if self._reconnected else LOST_AFTER_S
        if now - self._up_since < grace:
            return []
        return [o for o, since in self._missing.items() if now - since >= LOST_AFTER_S]

    def dead(self) -> list[str]:
        """The processes found gone by the latest look (missing for long enough)."""
        now = time.monotonic()
        return [o for o, since in dict(self._missing).items() if now - since >= LOST_AFTER_S]
