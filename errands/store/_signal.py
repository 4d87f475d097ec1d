"""Wake-ups for coroutines that wait for the store to change.

Any thread may fire (the writer after a commit, the data_version watcher, a
LISTEN connection); each event loop that waits gets its event set on its own
thread. Several fires before the loop runs are coalesced into one wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class _LoopSignal:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()
        self.scheduled = False

    def fire(self) -> None:
        # On the loop's thread: wake everyone waiting on the current event and
        # hand out a fresh one to those who look next.
        self.scheduled = False
        event, self.event = self.event, asyncio.Event()
        event.set()


class ChangeSignals:
    """One change event per event loop, fired from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopSignal] = {}
        self._has_waiters = threading.Event()

    def event(self) -> asyncio.Event:
        """The event the next change sets, for the running loop."""
        loop = asyncio.get_running_loop()
        signal = self._loops.get(loop)
        if signal is None:
            with self._lock:
                signal = self._loops.setdefault(loop, _LoopSignal(loop))
            self._has_waiters.set()
        return signal.event

    def has_waiters(self) -> bool:
        """True when some loop has asked for an event."""
        return self._has_waiters.is_set()

    def wait_for_waiters(self, timeout: float) -> None:
        """Block (a watcher thread) until some loop waits, at most ``timeout``."""
        self._has_waiters.wait(timeout)

    def fire_threadsafe(self) -> None:
        """Wake every loop's waiters; callable from any thread."""
        with self._lock:
            signals = list(self._loops.values())
        dead = []
        for signal in signals:
            if signal.scheduled:
                continue
            signal.scheduled = True
            try:
                signal.loop.call_soon_threadsafe(signal.fire)
            except RuntimeError:  # the loop closed
                dead.append(signal.loop)
        if dead:
            with self._lock:
                for loop in dead:
                    self._loops.pop(loop, None)
                if not self._loops:
                    self._has_waiters.clear()

    def wake_all(self) -> None:
        """Fire once more (used when the store closes)."""
        with contextlib.suppress(RuntimeError):
            self.fire_threadsafe()
