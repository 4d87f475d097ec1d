"""errands._aio.wait_any: on Flags without a task per event, on plain events
as before; it returns on the first set, on the timeout, and leaves nothing
behind when cancelled."""

from __future__ import annotations

import asyncio

import pytest

from errands._aio import Flag, wait_any


@pytest.mark.parametrize("kind", [Flag, asyncio.Event])
async def test_wait_any_returns_when_one_of_the_events_is_set(kind: type[asyncio.Event]) -> None:
    first, second = kind(), kind()
    waiting = asyncio.ensure_future(wait_any(first, second, timeout=None))
    await asyncio.sleep(0)
    assert not waiting.done()
    second.set()
    await asyncio.wait_for(waiting, 5)
    assert not first.is_set()


async def test_wait_any_returns_at_once_when_an_event_is_already_set() -> None:
    done = Flag()
    done.set()
    await asyncio.wait_for(wait_any(Flag(), done, timeout=None), 5)


async def test_wait_any_returns_after_the_timeout_and_forgets_its_waker() -> None:
    first, second = Flag(), Flag()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await wait_any(first, second, timeout=0.05)
    assert loop.time() - began >= 0.04
    assert not first._wakers and not second._wakers
    # A later set wakes nobody and finds no stale waker.
    first.set()
    assert first.is_set()


async def test_a_cancelled_wait_leaves_no_waker_behind() -> None:
    first, second = Flag(), Flag()
    waiting = asyncio.ensure_future(wait_any(first, second, timeout=None))
    await asyncio.sleep(0)
    assert len(first._wakers) == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not first._wakers and not second._wakers


async def test_a_flag_wakes_every_wait_on_it() -> None:
    shared = Flag()
    waits = [asyncio.ensure_future(wait_any(shared, Flag(), timeout=None)) for _ in range(3)]
    await asyncio.sleep(0)
    shared.set()
    await asyncio.wait_for(asyncio.gather(*waits), 5)
    # It is still an asyncio.Event: wait() and clear() behave as ever.
    await asyncio.wait_for(shared.wait(), 5)
    shared.clear()
    assert not shared.is_set()
