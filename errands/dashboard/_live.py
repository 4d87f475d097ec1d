"""Live pages: one subscription to the store's change feed for the whole
app, debounced, wakes every open stream; each stream renders its page's
live part again and pushes it as a Server-Sent Event when it changed.

Claims and heartbeats are not on the change feed (announcing them would
cost every worker a NOTIFY or a change-table write per batch), so a stream
also renders again every REFRESH_S: the server reads, the browser never polls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from errands.client import Client
from errands.store._changes import Claimable, Closed, Interrupted, OptionsChanged, Started

DEBOUNCE_S = 0.1
"""Changes that come within this of the first one are shown together."""

MIN_GAP_S = 0.25
"""Pages are rendered again at most this often, however busy the store."""

REFRESH_S = 2.0
"""A page is rendered again at least this often (for claims and heartbeats)."""

MAX_STREAM_S = 300.0
"""A stream ends after this (the browser reconnects at once, RECONNECT_MS),
so a server shutting down never waits long for an open page."""

RECONNECT_MS = 500
"""How soon a browser opens a stream again after it ended."""

KEEPALIVE_S = 15.0
"""A comment line is sent at least this often, so a dead connection is noticed."""


class Live:
    """The app's one subscription to the change feed, and the streams it wakes."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._streams: set[asyncio.Event] = set()
        self._task: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()

    def join(self) -> asyncio.Event:
        """A new stream's wake-up event (set when the store changed)."""
        event = asyncio.Event()
        self._streams.add(event)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._watch())
        return event

    def leave(self, event: asyncio.Event) -> None:
        """A stream ended."""
        self._streams.discard(event)

    async def stop(self) -> None:
        """End every stream and the subscription (the app shuts down)."""
        self.stopping.set()
        for event in self._streams:
            event.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        sub = self._client.store.feed.subscribe(
            Started, Claimable, Closed, Interrupted, OptionsChanged, everything=True
        )
        loop = asyncio.get_running_loop()
        try:
            while self._streams and not self.stopping.is_set():
                if not await sub.wait(KEEPALIVE_S):
                    continue
                began = loop.time()
                await asyncio.sleep(DEBOUNCE_S)
                sub.take()
                for event in list(self._streams):
                    event.set()
                await asyncio.sleep(max(0.0, MIN_GAP_S - (loop.time() - began)))
        finally:
            sub.close()


def event(name: str, html: str) -> str:
    """One Server-Sent Event carrying ``html``. A carriage return, which
    would end an event's line early, is sent as its character reference."""
    lines = html.replace("\r", "&#13;").split("\n")
    return f"event: {name}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


async def stream(
    live: Live,
    render: Callable[[], Awaitable[str]],
    disconnected: Callable[[], Awaitable[bool]],
) -> AsyncIterator[str]:
    """The events of one open page: its live part whenever it changed."""
    wake = live.join()
    last: str | None = None
    loop = asyncio.get_running_loop()
    ends = loop.time() + MAX_STREAM_S
    yield f"retry: {RECONNECT_MS}\n\n"
    try:
        while not live.stopping.is_set() and loop.time() < ends:
            html = await render()
            if html != last:
                yield event("update", html)
                last = html
            else:
                yield ": still here\n\n"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), REFRESH_S)
            wake.clear()
            if await disconnected():
                return
    finally:
        live.leave(wake)
