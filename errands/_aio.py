"""Small asyncio helpers shared by the worker and the client."""

from __future__ import annotations

import asyncio
import contextlib


class Flag(asyncio.Event):
    """An ``asyncio.Event`` that ``wait_any`` waits on without a task of its
    own: the loops of the worker and the client wait on several at once for
    every activity, and a task per event (made, then cancelled) cost more
    than the rest of such a wait."""

    def __init__(self) -> None:
        super().__init__()
        self._wakers: list[asyncio.Future[None]] = []

    def set(self) -> None:
        super().set()
        wakers, self._wakers = self._wakers, []
        for waker in wakers:
            _wake(waker)


def _wake(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)


async def wait_any(*events: asyncio.Event, timeout: float | None) -> None:
    """Return when any of the events is set, or after ``timeout`` seconds."""
    for event in events:
        if event.is_set():
            return
    if not all(isinstance(event, Flag) for event in events):
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return
    loop = asyncio.get_running_loop()
    waker: asyncio.Future[None] = loop.create_future()
    flags = [event for event in events if isinstance(event, Flag)]
    for flag in flags:
        flag._wakers.append(waker)
    timer = None if timeout is None else loop.call_later(timeout, _wake, waker)
    try:
        await waker
    finally:
        if timer is not None:
            timer.cancel()
        for flag in flags:
            with contextlib.suppress(ValueError):  # set meanwhile: already taken out
                flag._wakers.remove(waker)
