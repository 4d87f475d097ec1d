"""errands.store._wakeups: calls gathered on a thread reach their loop once
the block ends, in order, each isolated from the others' errors."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from errands.store import _wakeups


async def test_gathered_calls_run_in_order_only_once_the_block_ends() -> None:
    loop = asyncio.get_running_loop()
    seen: list[int] = []
    done = asyncio.Event()

    def on_a_thread() -> None:
        with _wakeups.gathered():
            _wakeups.call_soon(loop, seen.append, 1)
            with _wakeups.gathered():  # nested: the outer block wakes the loop
                _wakeups.call_soon(loop, seen.append, 2)
            time.sleep(0.05)  # the loop is free meanwhile: nothing may have run
            assert seen == []
            _wakeups.call_soon(loop, seen.append, 3)
        _wakeups.call_soon(loop, done.set)  # outside a block: at once

    await asyncio.to_thread(on_a_thread)
    await asyncio.wait_for(done.wait(), 5)
    assert seen == [1, 2, 3]


async def test_a_gathered_call_that_raises_does_not_keep_the_others_from_running() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    seen: list[str] = []
    done = asyncio.Event()

    def fail() -> None:
        raise ValueError("boom")

    def on_a_thread() -> None:
        with _wakeups.gathered():
            _wakeups.call_soon(loop, fail)
            _wakeups.call_soon(loop, seen.append, "after")
            _wakeups.call_soon(loop, done.set)

    try:
        await asyncio.to_thread(on_a_thread)
        await asyncio.wait_for(done.wait(), 5)
    finally:
        loop.set_exception_handler(None)
    assert seen == ["after"]
    assert [type(c["exception"]) for c in reported] == [ValueError]


def test_a_call_for_a_closed_loop_raises_as_call_soon_threadsafe_does() -> None:
    closed = asyncio.new_event_loop()
    closed.close()
    with _wakeups.gathered(), pytest.raises(RuntimeError, match="closed"):
        _wakeups.call_soon(closed, print)
    with pytest.raises(RuntimeError, match="closed"):
        _wakeups.call_soon(closed, print)
