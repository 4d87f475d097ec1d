"""Report an async activity that blocks the worker's event loop.

An ``async def`` activity that calls something blocking (``time.sleep``, a
synchronous HTTP client, a long computation) holds the event loop: every
other activity of the worker and every heartbeat waits. While async
attempts run, a thread asks the loop to answer (``call_soon_threadsafe``);
an answer that does not come within the threshold means the loop is held.
The thread then reads the loop thread's stack (``sys._current_frames``),
names the activity whose function is on it, and logs one warning for that
episode with the stack. It costs one wake-up per threshold while async
attempts run, and nothing otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from types import CodeType, FrameType

logger = logging.getLogger("errands.worker")


class LoopWatch:
    """Watches ``loop`` (run by the calling thread) while ``busy()`` says
    async attempts run; ``activities`` maps activity functions' code to
    their names. ``on_blocked(name)`` is called once per episode (for metrics)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold_s: float,
        activities: Mapping[CodeType, str],
        busy: Callable[[], bool],
        on_blocked: Callable[[str | None], None] | None = None,
    ) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._threshold_s = threshold_s
        self._activities = dict(activities)
        self._busy = busy
        self._on_blocked = on_blocked
        self._work = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="errands-loop-watch", daemon=True)
        self.episodes = 0
        """How many times the loop was found held (for tests)."""
        self._thread.start()

    def attempt_started(self) -> None:
        """An async attempt began: watch (callable on the loop). Setting an
        Event takes its lock, a tenth of a busy worker's time once: only a
        watcher that went idle needs it (it looks at busy() again after
        clearing, so an attempt that starts meanwhile is not missed)."""
        if not self._work.is_set():
            self._work.set()

    def stop(self) -> None:
        """Stop watching (the thread ends at its next look; it never blocks the loop)."""
        self._stopped.set()
        self._work.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._work.wait()
            if self._stopped.is_set():
                return
            if not self._busy():
                self._work.clear()
                if self._busy():  # one started meanwhile
                    self._work.set()
                continue
            answered = threading.Event()
            try:
                self._loop.call_soon_threadsafe(answered.set)
            except RuntimeError:  # the loop closed
                return
            if answered.wait(self._threshold_s):
                self._stopped.wait(self._threshold_s / 2)
                continue
            self._report()
            answered.wait()  # the episode ends when the loop answers

    def _report(self) -> None:
        frame = sys._current_frames().get(self._loop_thread)
        name = self._activity_on(frame)
        self.episodes += 1
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)\n"
        logger.warning(
            "async activity %s has held the worker's event loop for over %.1f s: every other "
            "activity and heartbeat waits (call blocking code with asyncio.to_thread, or make "
            "the activity a plain def run on a pool); its stack:\n%s",
            repr(name) if name is not None else "(unknown)",
            self._threshold_s,
            stack,
        )
        if self._on_blocked is not None:
            self._on_blocked(name)

    def _activity_on(self, frame: FrameType | None) -> str | None:
        while frame is not None:
            name = self._activities.get(frame.f_code)
            if name is not None:
                return name
            frame = frame.f_back
        return None
