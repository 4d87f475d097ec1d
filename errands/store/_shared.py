"""One store per URL per process, shared by the clients that connect to it.

temporalio's Client has no close(), so code written for Temporal connects
clients and drops them. A store holds connections and threads (on PostgreSQL a
pool, a LISTEN connection and a writer), so a store per client would run the
database out of connections. Here every client of one URL holds a ``Lease`` on
one store; the store closes when its last lease is given back, by
``Client.close()`` or by the garbage collector taking a client nobody closed.
A connect that comes while the previous store of its URL is still closing waits
for that close, so a process never holds two stores of one URL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Callable

from errands.store import Store, open_store

logger = logging.getLogger(__name__)


class _Shared:
    """One store of one URL: opening, open, then closing."""

    def __init__(self) -> None:
        self.store: Store | None = None
        self.leases = 0
        self.opened: concurrent.futures.Future[Store] = concurrent.futures.Future()
        self.closed: concurrent.futures.Future[None] = concurrent.futures.Future()


class _OpenFailed(Exception):
    """The open that others waited for failed; each waiter opens for itself."""


_lock = threading.Lock()
_open: dict[str, _Shared] = {}
"""The store of each URL key, from the first connect until its last lease goes."""
_closing: dict[str, _Shared] = {}
"""Stores whose last lease went and whose close has not finished."""


def url_key(url: str) -> str:
    """The URL as its store's identity: the SQLite file's absolute path, or the
    PostgreSQL connection parameters and schema in a fixed order. A URL that does
    not parse is its own key (``open_store`` will say what is wrong with it)."""
    try:
        if url.startswith("sqlite:"):
            from errands.store.sqlite import path_from_url

            # Options (the busy timeout) make another store of the same file.
            query = url.partition("?")[2]
            return "sqlite:" + os.path.realpath(path_from_url(url)) + (f"?{query}" * bool(query))
        if url.startswith(("postgresql:", "postgres:")):
            import psycopg

            from errands.store.postgres import parse_url

            conninfo, schema = parse_url(url)
            params = sorted(psycopg.conninfo.conninfo_to_dict(conninfo).items())
            return f"postgresql:{params!r}?schema={schema}"
    except Exception:
        pass
    return url


class Lease:
    """One client's hold on a shared store. Give it back once, with ``aclose()``
    on an event loop or ``drop()`` from a finalizer; the last one closes the store.
    """

    def __init__(self, key: str, shared: _Shared, store: Store) -> None:
        self.store = store
        self._key = key
        self._shared = shared
        self._released = False
        self._on_release: list[tuple[Callable[[], None], asyncio.AbstractEventLoop | None]] = []

    def call_on_release(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the lease is given back: on the event loop
        running now if it is still open then, else on the thread giving it back."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._on_release.append((callback, loop))

    async def aclose(self) -> None:
        """Give the lease back; close the store if it was the last one."""
        if self._take():
            last = _release(self._key, self._shared)
            if last is not None:
                # Shielded: a close cut short would let the next connect open a
                # second store while this one still holds its connections.
                await asyncio.shield(_close(self._key, last))

    def drop(self) -> None:
        """Give the lease back from a finalizer. A finalizer cannot await, and may
        run on an event loop's thread or while this thread holds the registry's
        lock, so the work is done on a short-lived thread."""
        _on_thread(self._drop_now)

    def _drop_now(self) -> None:
        if self._take():
            _release_now(self._key, self._shared)

    def _take(self) -> bool:
        """True the first time: the caller gives the lease back."""
        with _lock:
            if self._released:
                return False
            self._released = True
        for callback, loop in self._on_release:
            _call_on(loop, callback)
        self._on_release.clear()
        return True


def _call_on(loop: asyncio.AbstractEventLoop | None, callback: Callable[[], None]) -> None:
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is not None and loop is not running and not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # it closed meanwhile: call it here
            loop.call_soon_threadsafe(callback)
            return
    try:
        callback()
    except Exception:
        logger.exception("errands: releasing a client's store")


async def acquire(url: str) -> Lease:
    """A lease on the store of ``url``, opening it if no client of this process
    holds it. Concurrent callers (any threads, any event loops) share one open.

    Raises what ``open_store`` raises.
    """
    key = url_key(url)
    while True:
        with _lock:
            closing = _closing.get(key)
            shared = _open.get(key) if closing is None else None
            opener = closing is None and shared is None
            if opener:
                shared = _open[key] = _Shared()
            if shared is not None:
                shared.leases += 1
        if closing is not None:
            await asyncio.shield(asyncio.wrap_future(closing.closed))
            continue
        assert shared is not None
        if opener:
            return Lease(key, shared, await _open_for(key, shared, url))
        try:
            store = await asyncio.shield(asyncio.wrap_future(shared.opened))
        except _OpenFailed:
            continue  # try again, opening for ourselves if nobody else is
        except BaseException:
            _release_on_thread(key, shared)  # cancelled: we may not await the close
            raise
        return Lease(key, shared, store)


async def _open_for(key: str, shared: _Shared, url: str) -> Store:
    try:
        store = await open_store(url)
    except BaseException:
        with _lock:
            if _open.get(key) is shared:
                del _open[key]
        shared.opened.set_exception(_OpenFailed())
        raise
    with _lock:
        shared.store = store
    shared.opened.set_result(store)
    return store


def _release(key: str, shared: _Shared) -> _Shared | None:
    """Count one lease out; the entry to close when it was the last."""
    with _lock:
        shared.leases -= 1
        if shared.leases > 0 or _open.get(key) is not shared or shared.store is None:
            return None
        del _open[key]
        _closing[key] = shared
        return shared


def _release_on_thread(key: str, shared: _Shared) -> None:
    _on_thread(lambda: _release_now(key, shared))


def _release_now(key: str, shared: _Shared) -> None:
    """Count one lease out and, if it was the last, close the store (off any event loop)."""
    last = _release(key, shared)
    if last is not None:
        try:
            asyncio.run(_close(key, last))
        except Exception:
            logger.exception("errands: closing a store no client holds")


def _on_thread(work: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # no new threads at interpreter exit
        threading.Thread(target=work, name="errands-store-release", daemon=True).start()


async def _close(key: str, shared: _Shared) -> None:
    try:
        assert shared.store is not None
        await shared.store.close()
    finally:
        with _lock:
            if _closing.get(key) is shared:
                del _closing[key]
        shared.closed.set_result(None)
