"""One wake-up per event loop for all that a commit hands over.

After a commit the writer's thread hands claims to pollers, changes to
change-feed subscriptions and results to callers, often all on one event
loop. Each ``call_soon_threadsafe`` writes to that loop's self-pipe; and a
loop woken while the writer still has work takes the GIL from it, so the
writer's next hand-over waits for the loop's turn to end. Inside
``gathered()``, ``call_soon`` gathers the calls of this thread by loop, and
the block's end makes one ``call_soon_threadsafe`` a loop, which runs them
in the order they were gathered.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

Calls = list[tuple[Callable[..., object], tuple[Any, ...]]]

_local = threading.local()


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: Any) -> None:
    """``loop.call_soon_threadsafe(fn, *args)``, or, inside ``gathered()`` on
    this thread, the same call gathered for the block's end.

    Raises RuntimeError if ``loop`` is closed (as call_soon_threadsafe).
    """
    calls: dict[asyncio.AbstractEventLoop, Calls] | None = getattr(_local, "calls", None)
    if calls is None:
        loop.call_soon_threadsafe(fn, *args)
        return
    if loop.is_closed():
        raise RuntimeError("Event loop is closed")
    calls.setdefault(loop, []).append((fn, args))


@contextlib.contextmanager
def gathered() -> Iterator[None]:
    """Gather this thread's ``call_soon`` calls until the block ends, then
    wake each loop once (a loop that closed meanwhile runs none of its calls,
    as if it had closed just after they were made)."""
    if getattr(_local, "calls", None) is not None:
        yield  # nested: the outer block wakes the loops
        return
    calls: dict[asyncio.AbstractEventLoop, Calls] = {}
    _local.calls = calls
    try:
        yield
    finally:
        _local.calls = None
        for loop, items in calls.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_run, loop, items)


def _run(loop: asyncio.AbstractEventLoop, calls: Calls) -> None:
    """On ``loop``: make the gathered calls, each as its own callback would
    (one that raises goes to the loop's exception handler, the rest still run)."""
    for fn, args in calls:
        try:
            fn(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as e:
            loop.call_exception_handler(
                {"message": f"Exception in callback {fn!r}", "exception": e}
            )
