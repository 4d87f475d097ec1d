"""Clients of one URL in one process share one store (DESIGN.md §6 "Store core
and change feed"): one pool, one listener, one writer. The store closes when no
client holds it any more, also when its clients were dropped without close(),
as code written for temporalio (whose Client has no close()) does."""

from __future__ import annotations

import asyncio
import gc
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from errands import activity, exceptions
from errands.client import ActivityExecutionStatus, Client
from errands.exceptions import StoreError
from errands.store import Store
from errands.worker import Worker
from tests.conftest import PG_URL
from tests.support import CEILING_S, eventually

try:
    import psycopg
except ImportError:  # the PostgreSQL variants skip (or fail in CI) in conftest
    psycopg = None  # type: ignore[assignment]

TIMEOUT = timedelta(seconds=30)

CLIENTS = 200
"""Clients connected, one per event loop, and never closed."""


@activity.defn
async def shout(text: str) -> str:
    return text.upper()


async def is_closed(store: Store) -> bool:
    try:
        await store.closed_runs([])
    except StoreError as e:
        assert "closed" in str(e)
        return True
    return False


async def start(client: Client, activity_id: str, task_queue: str) -> None:
    await client.start_activity(
        shout, "x", id=activity_id, task_queue=task_queue, start_to_close_timeout=TIMEOUT
    )


def same_store_spelled_differently(db_url: str, tmp_path: Path) -> str:
    """Another URL of this test's store: a path with ``.`` in it, or the
    ``postgres://`` scheme."""
    if db_url.startswith("sqlite:"):
        return f"sqlite:///{tmp_path}/./errands.db"
    return "postgres:" + db_url.split(":", 1)[1]


# --------------------------------------------------------------------------- sharing


async def test_two_clients_of_one_url_share_one_store(db_url: str, tmp_path: Path) -> None:
    async with (
        await Client.connect(db_url) as one,
        await Client.connect(db_url, namespace="other") as two,
        await Client.connect(same_store_spelled_differently(db_url, tmp_path)) as three,
    ):
        assert one.store is two.store is three.store


async def test_clients_connecting_at_once_open_the_store_once(db_url: str) -> None:
    clients = await asyncio.gather(*(Client.connect(db_url) for _ in range(10)))
    try:
        assert len({id(c.store) for c in clients}) == 1
    finally:
        for c in clients:
            await c.close()


def test_clients_of_several_threads_and_event_loops_share_one_store(db_url: str) -> None:
    n = 4
    barrier = threading.Barrier(n, timeout=CEILING_S)
    stores: list[Store] = []

    async def connect_and_hold() -> None:
        async with await Client.connect(db_url) as client:
            stores.append(client.store)
            # Each holds its client until every thread connected.
            await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
            await client.count_activities()

    threads = [threading.Thread(target=asyncio.run, args=(connect_and_hold(),)) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CEILING_S)
    assert len(stores) == n
    assert all(s is stores[0] for s in stores)


async def test_closing_one_client_leaves_the_others_working(db_url: str, task_queue: str) -> None:
    one = await Client.connect(db_url)
    two = await Client.connect(db_url)
    try:
        await start(one, "before", task_queue)
        await one.close()
        await one.close()  # closing twice is allowed and changes nothing

        await start(two, "after", task_queue)
        desc = await two.get_activity_handle("before").describe()
        assert desc.status is ActivityExecutionStatus.RUNNING
        assert (await two.count_activities()).count == 2
    finally:
        await two.close()


async def test_the_store_closes_with_its_last_client_and_a_later_connect_opens_another(
    db_url: str, task_queue: str
) -> None:
    one = await Client.connect(db_url)
    two = await Client.connect(db_url)
    store = one.store
    await start(one, "kept", task_queue)

    await one.close()
    assert not await is_closed(store)
    await two.close()
    assert await is_closed(store)

    async with await Client.connect(db_url) as three:
        assert three.store is not store
        assert (await three.count_activities()).count == 1


async def test_the_store_closes_when_its_last_unclosed_client_is_collected(
    db_url: str, task_queue: str
) -> None:
    closed = await Client.connect(db_url)
    dropped = await Client.connect(db_url)
    store = dropped.store
    await start(dropped, "gone", task_queue)
    handle = dropped.get_activity_handle("gone")
    await handle.terminate()
    with pytest.raises(exceptions.ActivityFailedError):
        await handle.result()  # a result waiter listens to the store
    await closed.close()
    assert not await is_closed(store), "a client that was not closed still holds it"

    del dropped, handle
    gc.collect()

    await eventually(lambda: is_closed(store), "the store of a collected client closes")
    async with await Client.connect(db_url) as again:
        assert again.store is not store
        assert (await again.count_activities()).count == 1


async def test_a_worker_and_a_client_sharing_a_store_run_an_activity_end_to_end(
    db_url: str, task_queue: str
) -> None:
    async with (
        await Client.connect(db_url) as for_worker,
        Worker(for_worker, task_queue=task_queue, activities=[shout]),
    ):
        starter = await Client.connect(db_url)
        assert starter.store is for_worker.store
        first = await starter.execute_activity(
            shout, "one", id="first", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        await starter.close()
        # The worker's client still holds the store.
        second = await for_worker.execute_activity(
            shout, "two", id="second", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
    assert (first, second) == ("ONE", "TWO")


# --------------------------------------------------------------------------- never closed


class Peak:
    """The largest value ``measure`` returned, sampled on a thread until stopped."""

    def __init__(self, measure: Callable[[], int]) -> None:
        self.measure = measure
        self.highest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        value = self.measure()
        self.highest = max(self.highest, value)
        return value

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.sample()

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def store_resources(db_url: str) -> Iterator[tuple[Callable[[], int], int]]:
    """How to count what the stores of this test's URL hold, and the most that
    one store holds: PostgreSQL backends with its application name, or (SQLite)
    writer threads more than before the test."""
    if db_url.startswith("sqlite:"):
        # Threads, not open files: SQLiteStore.close() leaves its writer's
        # connection to the garbage collector.
        def writers() -> int:
            names = [t.name for t in threading.enumerate()]
            return sum(n.startswith("errands-") and "writer" in n for n in names)

        before = writers()
        yield lambda: writers() - before, 1
        return
    from errands.store import postgres as pg_store

    schema = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(db_url).query))["schema"]
    assert psycopg is not None
    with psycopg.connect(PG_URL, autocommit=True) as watcher:

        def backends() -> int:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (f"errands:{schema}",),
            ).fetchone()
            assert row is not None
            count: int = row[0]
            return count

        # The pool (readers and the writer), the LISTEN connection, and the
        # migration connection while the store opens.
        yield backends, pg_store.READERS + 1 + 1 + 1


def test_clients_never_closed_each_in_its_own_event_loop_hold_one_store_at_most(
    db_url: str, task_queue: str, store_resources: tuple[Callable[[], int], int]
) -> None:
    measure, one_store = store_resources
    seen_live: list[int] = []

    async def use_a_client_and_drop_it(n: int) -> None:
        client = await Client.connect(db_url)  # never closed, as with temporalio
        await start(client, f"c-{n}", task_queue)
        desc = await client.get_activity_handle(f"c-{n}").describe()
        assert desc.status is ActivityExecutionStatus.RUNNING
        seen_live.append(peak.sample())

    with Peak(measure) as peak:
        for n in range(CLIENTS):
            asyncio.run(use_a_client_and_drop_it(n))  # a new event loop each time
        gc.collect()

        async def released() -> bool:
            return peak.sample() == 0

        asyncio.run(eventually(released, "the last client's store closes"))

    assert min(seen_live) > 0, "the samples did not see the store"
    assert peak.highest <= one_store, f"{peak.highest} held at once; one store holds {one_store}"

    async def count() -> int:
        async with await Client.connect(db_url) as client:
            return (await client.count_activities()).count

    assert asyncio.run(count()) == CLIENTS
