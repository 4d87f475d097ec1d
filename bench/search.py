"""The list-by-keyword workload (issue 11 point 4): listing a page of the
executions with one value of a keyword search attribute, among a million.

On a fresh store: start and terminate a template execution, insert
``--search-rows`` closed copies of it with SQL in bulk (each with a
``Customer`` keyword: one customer, HOT, on a tenth of them, the rest spread
evenly over CUSTOMERS others, about 900 each), index them as a start would,
then start OPEN executions through the client with the same spread. Then
time ``list_activities("Customer = '...'", limit=PAGE)`` calls one at a
time, the customer drawn as the data is (a tenth of the calls ask for HOT),
and report p50 and p99, and the p50 of HOT alone.
"""

from __future__ import annotations

import asyncio
import random
import time

from bench import workloads as w
from bench.stores import StoreTarget, fill_closed, filled
from errands.client import Client
from errands.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

NAME = "list-by-keyword"
CUSTOMER = SearchAttributeKey.for_keyword("Customer")
CUSTOMERS = 1001
"""Customers besides HOT (prime to 10, so the rows HOT leaves reach every one)."""
HOT = "customer-0"
OPEN = 1000
"""Open executions started through the client after the fill."""
PAGE = 100
TARGET_P50_MS = "<= 20"
TASK_QUEUE = "bench-search"


def customer_sql(i: str) -> str:
    """The customer of execution number ``i``, as SQL both databases run
    (no '%': the PostgreSQL fill binds parameters)."""
    return (
        f"(CASE WHEN {i} - ({i} / 10) * 10 = 0 THEN '{HOT}' "
        f"ELSE 'customer-' || (({i} * 7919) - (({i} * 7919) / {CUSTOMERS}) * {CUSTOMERS} + 1) END)"
    )


def draw(rng: random.Random) -> str:
    """A customer, drawn as the data is spread."""
    return HOT if rng.random() < 0.1 else f"customer-{rng.randint(1, CUSTOMERS)}"


async def fill(store: StoreTarget, url: str, client: Client, rows: int) -> None:
    """The closed rows, their index rows, and the open executions."""
    template = await client.start_activity(
        "noop",
        id="template",
        task_queue=TASK_QUEUE,
        start_to_close_timeout=w.TIMEOUT,
        search_attributes=TypedSearchAttributes([SearchAttributePair(CUSTOMER, HOT)]),
    )
    await template.terminate()
    assert template.run_id is not None
    number = "CAST(substr(activity_id, 8) AS BIGINT)"  # activity_id is 'closed-' || i
    index = (
        "INSERT INTO search_attributes (execution_id, namespace, name, position, text_value) "
        f"SELECT id, namespace, 'Customer', 0, {customer_sql(number)} FROM executions "
        "WHERE activity_id LIKE 'closed-%'"
    )
    then = [index] if store.kind == "sqlite" else [index, "VACUUM ANALYZE search_attributes"]
    json = f"""'{{"Customer":["KEYWORD","' || {customer_sql("i")} || '"]}}'"""
    await asyncio.to_thread(
        fill_closed,
        store.kind,
        url,
        rows,
        template.run_id,
        time.time() - 86_400.0,
        overrides={"search_attributes": json},
        then=then,
    )
    rng = random.Random(7)
    for i in range(OPEN):
        await client.start_activity(
            "noop",
            id=f"open-{i}",
            task_queue=TASK_QUEUE,
            start_to_close_timeout=w.TIMEOUT,
            search_attributes=TypedSearchAttributes([SearchAttributePair(CUSTOMER, draw(rng))]),
        )


async def list_by_keyword(store: StoreTarget, rows: int, calls: int) -> list[w.Figure]:
    """Fill a fresh store (dropped afterwards) and time the listings."""
    async with filled(store, NAME, rows, fill) as (client, fill_s):
        rng = random.Random(11)
        times: list[float] = []
        hot: list[float] = []
        for i in range(calls + 20):
            customer = draw(rng)
            query = f"Customer = '{customer}'"
            t0 = time.perf_counter()
            found = [e async for e in client.list_activities(query, limit=PAGE)]
            elapsed_ms = (time.perf_counter() - t0) * 1000
            if not found or found[0].typed_search_attributes[CUSTOMER] != customer:
                raise RuntimeError(f"{query} found {len(found)} executions, or wrong ones")
            if i >= 20:  # the first calls warm the caches up
                times.append(elapsed_ms)
                if customer == HOT:
                    hot.append(elapsed_ms)
    return [
        w.Figure(NAME, f"list p50, {rows:,} rows", w.percentile(times, 50), "ms", TARGET_P50_MS),
        w.Figure(NAME, f"list p99, {rows:,} rows", w.percentile(times, 99), "ms"),
        w.Figure(NAME, f"list p50 of {HOT} (a tenth of the rows)", w.percentile(hot, 50), "ms"),
        w.Figure(NAME, f"fill {rows:,} rows (setup)", fill_s, "s"),
    ]
