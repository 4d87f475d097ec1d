"""Small asyncio helpers shared by the worker and the client."""

from __future__ import annotations

import asyncio


async def wait_any(*events: asyncio.Event, timeout: float | None) -> None:
    """Return when any of the events is set, or after ``timeout`` seconds."""
    for event in events:
        if event.is_set():
            return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
