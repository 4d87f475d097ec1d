"""Waiting helpers shared by the behaviour tests: conditions are polled with
generous ceilings, never waited for with bare sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from errands import exceptions
from errands.client import ActivityExecutionDescription, ActivityHandle

CEILING_S = 30.0
"""Longest a test waits for a condition that should hold far sooner."""


async def eventually(
    check: Callable[[], Awaitable[bool]],
    what: str,
    ceiling_s: float = CEILING_S,
    interval_s: float = 0.01,
) -> None:
    """Poll ``check`` until it is true; AssertionError naming ``what`` after the ceiling."""
    deadline = time.monotonic() + ceiling_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {ceiling_s} s: {what}")
        await asyncio.sleep(interval_s)


async def describe_until(
    handle: ActivityHandle[Any],
    condition: Callable[[ActivityExecutionDescription], bool],
    what: str,
    ceiling_s: float = CEILING_S,
    include_heartbeat_details: bool = False,
) -> ActivityExecutionDescription:
    """The first description of the execution for which ``condition`` holds."""
    found: list[ActivityExecutionDescription] = []

    async def check() -> bool:
        found[:] = [await handle.describe(include_heartbeat_details=include_heartbeat_details)]
        return condition(found[0])

    await eventually(check, what, ceiling_s)
    return found[0]


async def failure_of(
    handle: ActivityHandle[Any], ceiling_s: float = CEILING_S
) -> exceptions.FailureError:
    """The cause of the ActivityFailedError that ``result()`` raises (it must)."""
    with pytest.raises(exceptions.ActivityFailedError) as caught:
        await asyncio.wait_for(handle.result(), ceiling_s)
    assert caught.value.__cause__ is caught.value.cause
    return caught.value.cause


async def wait_event(event: asyncio.Event, what: str, ceiling_s: float = CEILING_S) -> None:
    """Wait for ``event``; AssertionError naming ``what`` after the ceiling."""
    try:
        await asyncio.wait_for(event.wait(), ceiling_s)
    except asyncio.TimeoutError:
        raise AssertionError(f"not within {ceiling_s} s: {what}") from None
