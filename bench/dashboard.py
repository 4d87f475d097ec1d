"""The dashboard workload (issue 13 point 7): the activities page and an
activity's page among a million executions, in server time.

On a fresh store: start and terminate a template execution, insert
``--dashboard-rows`` closed copies of it with SQL in bulk (nine in ten
COMPLETED, the rest FAILED, CANCELED or TIMED_OUT, on three activity types),
then start OPEN executions through the client. Then call the dashboard's
ASGI app in this process, one request at a time (no network, no browser):
the activities page as it first opens, the same filtered by status, and
the page of a random closed execution; report p50 and p95 of each.

Then, on a small store of its own, how soon an open activity page shows a
completion: the dashboard served by uvicorn, an activity page's event
stream read by a plain HTTP client, and the activity completed by another
store of the same database (as another process would: its commit reaches
the dashboard through NOTIFY or the SQLite change table); from the
completion's commit to the event that shows COMPLETED.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

from bench import workloads as w
from bench.stores import StoreTarget, fill_closed, filled
from errands.client import Client
from errands.store import open_store

NAME = "dashboard"
OPEN = 1000
TARGET_P95_MS = "<= 100"
LIVE_ROUNDS = 20
LIVE_TARGET_MS = "<= 1000"
"""An open page shows a completion within 1 s (issue 13)."""
TYPES = ("resize", "send-mail", "report")


def status_sql(i: str) -> str:
    """The status of closed execution number ``i`` (no '%': PostgreSQL binds)."""
    return (
        f"(CASE WHEN {i} - ({i} / 10) * 10 < 9 THEN 'COMPLETED' "
        f"WHEN {i} - ({i} / 30) * 30 = 9 THEN 'FAILED' "
        f"WHEN {i} - ({i} / 30) * 30 = 19 THEN 'CANCELED' ELSE 'TIMED_OUT' END)"
    )


def type_sql(i: str) -> str:
    return (
        f"(CASE WHEN {i} - ({i} / 3) * 3 = 0 THEN '{TYPES[0]}' "
        f"WHEN {i} - ({i} / 3) * 3 = 1 THEN '{TYPES[1]}' ELSE '{TYPES[2]}' END)"
    )


async def fill(store: StoreTarget, url: str, client: Client, rows: int) -> None:
    template = await client.start_activity(
        TYPES[0],
        ["in"],
        id="template",
        task_queue="bench-dashboard",
        start_to_close_timeout=w.TIMEOUT,
    )
    await template.terminate()
    assert template.run_id is not None
    await asyncio.to_thread(
        fill_closed,
        store.kind,
        url,
        rows,
        template.run_id,
        time.time() - 86_400.0,
        overrides={"status": status_sql("i"), "activity_type": type_sql("i")},
    )
    for i in range(OPEN):
        await client.start_activity(
            TYPES[i % 3],
            [i],
            id=f"open-{i}",
            task_queue="bench-dashboard",
            start_to_close_timeout=w.TIMEOUT,
        )


async def get(app: Any, path: str, query: dict[str, str] | None = None) -> float:
    """Milliseconds the app takes to answer a GET (its body read to the end).

    Raises RuntimeError for a status other than 200."""
    status = 0
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": urllib.parse.urlencode(query or {}).encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8780")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8780),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    began = time.perf_counter()
    await app(scope, receive, send)
    elapsed = (time.perf_counter() - began) * 1000
    if status != 200:
        raise RuntimeError(f"GET {path} {query} answered {status}")
    return elapsed


LIVE_QUEUE = "bench-live"


def _first_completed(url: str, opened: threading.Event, seen: list[float]) -> None:
    """Read an event stream until an event shows the status COMPLETED (its
    time goes in ``seen``); ``opened`` is set at the first event."""
    with urllib.request.urlopen(url, timeout=60) as response:
        for raw in response:
            line = raw.decode("utf-8", "replace")
            if line.startswith("event: update"):
                opened.set()
            if 'id="status">COMPLETED' in line:
                seen.append(time.perf_counter())
                return


async def live_latency(store: StoreTarget, rounds: int) -> list[float]:
    """Milliseconds from each completion's commit (by another store of the
    database) to the event that shows it on its open activity page."""
    import uvicorn

    from errands.dashboard import create_app

    url = store.url_for(NAME + "-live")
    latencies: list[float] = []
    try:
        client = await Client.connect(url)
        other = await open_store(url)
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(client), log_level="warning", lifespan="on", timeout_graceful_shutdown=1
            )
        )
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            result = await client.data_converter.encode(["done"])
            for i in range(rounds):
                activity_id = f"live-{i}"
                await client.start_activity(
                    "noop", id=activity_id, task_queue=LIVE_QUEUE, start_to_close_timeout=w.TIMEOUT
                )
                (task,) = (
                    await other.claim_batch("default", LIVE_QUEUE, max_tasks=1, identity="bench")
                ).tasks
                opened, seen = threading.Event(), []
                page = f"http://127.0.0.1:{port}/live/activity?id={activity_id}"
                reader = threading.Thread(
                    target=_first_completed, args=(page, opened, seen), daemon=True
                )
                reader.start()
                if not await asyncio.to_thread(opened.wait, 30):
                    raise RuntimeError("the activity page's stream sent nothing")
                await asyncio.sleep(0.3)  # as a page left open a moment
                if not await other.complete(task.run_id, task.serial, result):
                    raise RuntimeError(f"{activity_id}'s completion was refused")
                committed = time.perf_counter()
                await asyncio.to_thread(reader.join, 30)
                if not seen:
                    raise RuntimeError(f"{activity_id} never showed COMPLETED")
                latencies.append((seen[0] - committed) * 1000)
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 30)
            await other.close()
            await client.close()
    finally:
        await asyncio.to_thread(store.drop, url)
    return latencies


async def dashboard(store: StoreTarget, rows: int, calls: int) -> list[w.Figure]:
    """Fill a fresh store (dropped afterwards) and time the pages."""
    from errands.dashboard import create_app

    async with filled(store, NAME, rows, fill) as (client, fill_s):
        app = create_app(client)
        rng = random.Random(13)
        pages = {
            "activities page": lambda: ("/activities", {}),
            "activities page, Failed only": lambda: (
                "/activities",
                {"q": "ExecutionStatus = 'Failed'"},
            ),
            "activity page": lambda: ("/activity", {"id": f"closed-{rng.randint(1, rows)}"}),
        }
        times: dict[str, list[float]] = {name: [] for name in pages}
        for i in range(calls + 10):
            for name, request in pages.items():
                elapsed = await get(app, *request())
                if i >= 10:  # the first calls warm the caches up
                    times[name].append(elapsed)
    figures = []
    for name, values in times.items():
        target = "" if "only" in name else TARGET_P95_MS
        figures.append(w.Figure(NAME, f"{name} p50, {rows:,} rows", w.percentile(values, 50), "ms"))
        figures.append(
            w.Figure(NAME, f"{name} p95, {rows:,} rows", w.percentile(values, 95), "ms", target)
        )
    figures.append(w.Figure(NAME, f"fill {rows:,} rows (setup)", fill_s, "s"))
    live = await live_latency(store, LIVE_ROUNDS)
    figures.append(
        w.Figure(NAME, "completion shown live on its page, p50", w.percentile(live, 50), "ms")
    )
    figures.append(
        w.Figure(NAME, "completion shown live on its page, max", max(live), "ms", LIVE_TARGET_MS)
    )
    return figures
