"""Faults of the PostgreSQL server (issue 12, DESIGN.md section 4 "Nothing
acknowledged is lost" and section 6 "Liveness and failover"): the server
restarted under load, connections terminated at random under load, and the
server stopped while a client calls it.

These tests stop and restart the real server of ``$ERRANDS_TEST_PG_URL``
with ``pg_ctlcluster`` (so they skip unless that cluster is local and this
user may control it), and always leave it running: every fault is undone in
a ``finally``, which waits until the server accepts connections again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from errands import activity
from errands.client import ActivityHandle, Client
from errands.exceptions import StoreError
from errands.worker import Worker
from tests import procs
from tests.conftest import PG_URL, admin, with_params
from tests.support import CEILING_S, Flag, eventually

SERVER_CEILING_S = 60.0
"""Longest the server may take to stop, start or restart."""

RECONNECT_CEILING_S = 6.0
"""A generous ceiling on reconnecting after the server is back (the aim is
under 2 s: every connection retries at least once a second)."""

OUTCOMES_CEILING_S = 60.0
"""Longest a fault test waits for all its executions to close."""

LONG = timedelta(minutes=5)
"""A start_to_close that must not fire: a report lost to a fault is retried,
not waited out."""


# --------------------------------------------------------------------------- the server


def _cluster() -> list[str] | None:
    """``pg_ctlcluster --skip-systemctl-redirect <version> <name>`` for the
    local cluster on the test server's port, or None if there is none this
    user can control."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return None
    parts = urllib.parse.urlsplit(PG_URL)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or os.geteuid() not in (0,):
        return None
    port = str(parts.port or 5432)
    listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == port:
            return ["pg_ctlcluster", "--skip-systemctl-redirect", fields[0], fields[1]]
    return None


def accepting() -> bool:
    """Whether the server accepts connections now."""
    try:
        with psycopg.connect(PG_URL, connect_timeout=1):
            return True
    except psycopg.Error:
        return False


def wait_accepting(ceiling_s: float = SERVER_CEILING_S) -> float:
    """Block until the server accepts connections; the database clock then."""
    deadline = time.monotonic() + ceiling_s
    while True:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(PG_URL, connect_timeout=1) as conn,
        ):
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
            assert row is not None
            return float(row[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"the server did not accept connections within {ceiling_s} s")
        time.sleep(0.01)


def started_at() -> float:
    """When the server (its postmaster) started, on the database clock: a
    little before it accepts connections."""
    rows = admin("SELECT extract(epoch FROM pg_postmaster_start_time())::float8")
    return float(rows[0][0])


@pytest.fixture
def server(pg_server: str) -> Iterator[list[str]]:
    """The pg_ctlcluster command of the test server; whatever the test did,
    the server runs and accepts connections afterwards."""
    command = _cluster()
    if command is None:
        pytest.skip(f"no local PostgreSQL cluster for {PG_URL} that this user can control")
    try:
        yield command
    finally:
        if not accepting():
            subprocess.run([*command, "start"], capture_output=True, timeout=SERVER_CEILING_S)
            wait_accepting()


# --------------------------------------------------------------------------- what is stored


def outcomes(schema: str) -> list[tuple[str, str, int, int, str | None]]:
    """Per execution: activity id, status, attempts, COMPLETED attempts, and
    the result's presence (as text, for messages)."""
    rows = admin(
        f"""
        SELECT e.activity_id, e.status, count(a.attempt)::int,
               (count(a.attempt) FILTER (WHERE a.outcome = 'COMPLETED'))::int,
               CASE WHEN e.result IS NULL THEN NULL ELSE 'result' END
        FROM "{schema}".executions e LEFT JOIN "{schema}".attempts a USING (run_id)
        GROUP BY e.activity_id, e.status, e.result
        """
    )
    return [(str(r[0]), str(r[1]), int(r[2]), int(r[3]), r[4]) for r in rows]


def attempt_endings(schema: str) -> dict[str, int]:
    """How many attempts ended each way."""
    rows = admin(f'SELECT outcome, count(*)::int FROM "{schema}".attempts GROUP BY outcome')
    return {str(r[0]): int(r[1]) for r in rows}


def assert_one_completion_each(schema: str, ids: list[str]) -> None:
    """Every execution is COMPLETED with a result, and exactly one of its
    attempts is recorded as COMPLETED."""
    found = {row[0]: row for row in outcomes(schema)}
    assert sorted(found) == sorted(ids)
    bad = [row for row in found.values() if row[1] != "COMPLETED" or row[3] != 1 or not row[4]]
    assert bad == [], f"{len(bad)} executions without exactly one completion: {bad[:10]}"


def runs_per_id(log: Path) -> dict[str, int]:
    """How many attempts began, per activity id (record_run's log)."""
    counts: dict[str, int] = {}
    for line in log.read_text().splitlines():
        activity_id = line.split()[0]
        counts[activity_id] = counts.get(activity_id, 0) + 1
    return counts


class Load:
    """``count`` record_run activities started and awaited by this process's
    client, at most ``in_flight`` open at once."""

    def __init__(
        self,
        client: Client,
        queue: str,
        log: Path,
        count: int,
        in_flight: int,
        seconds: float = 0.0,
    ) -> None:
        self.client = client
        self.seconds = seconds
        self.queue = queue
        self.log = log
        self.ids = [f"a-{i}" for i in range(count)]
        self.results: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self._gate = asyncio.Semaphore(in_flight)

    @property
    def done(self) -> int:
        return len(self.results) + len(self.errors)

    async def _one(self, activity_id: str) -> None:
        async with self._gate:
            try:
                handle: ActivityHandle[str] = await self.client.start_activity(
                    procs.record_run,
                    args=[str(self.log), self.seconds],
                    id=activity_id,
                    task_queue=self.queue,
                    start_to_close_timeout=LONG,
                )
                self.results[activity_id] = await handle.result()
            except Exception as e:  # the test reports them all
                self.errors[activity_id] = repr(e)

    async def run(self) -> None:
        tasks = [asyncio.ensure_future(self._one(i)) for i in self.ids]
        _, late = await asyncio.wait(tasks, timeout=OUTCOMES_CEILING_S)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for activity_id in self.ids:
            if activity_id not in self.results and activity_id not in self.errors:
                self.errors[activity_id] = f"not done within {OUTCOMES_CEILING_S} s"

    def check(self, schema: str) -> None:
        """Every execution returned its id; else what the store says of the others."""
        if self.errors:
            rows = admin(
                "SELECT activity_id, status, run_state, attempt, owner, identity, "
                "deadline - extract(epoch FROM clock_timestamp()) AS deadline_in, "
                f'(SELECT count(*) FROM "{schema}".attempts a WHERE a.run_id = e.run_id) '
                f'FROM "{schema}".executions e WHERE activity_id = ANY(%s)',
                (list(self.errors)[:10],),
            )
            raise AssertionError(
                f"{len(self.errors)} failed: {list(self.errors.items())[:5]}; stored: {rows}"
            )
        assert self.results == {i: i for i in self.ids}


def app_name(schema: str, who: str) -> str:
    """The application_name of one process's connections in a fault test."""
    return f"{schema}:{who}"[:63]


# --------------------------------------------------------------------------- restart


async def test_a_server_restart_amid_5000_activities_loses_and_doubles_nothing(
    server: list[str], pg_url: str, pg_schema: str, task_queue: str, tmp_path: Path
) -> None:
    count, restart_after = 5_000, 1_000
    log = tmp_path / "runs.log"
    names = {who: app_name(pg_schema, who) for who in ("w1", "w2", "client")}
    with procs.Children(tmp_path) as children:
        workers = [
            await children.worker(
                who, with_params(pg_url, application_name=names[who]), task_queue, 200
            )
            for who in ("w1", "w2")
        ]
        client = await Client.connect(with_params(pg_url, application_name=names["client"]))
        try:
            # 400 slots of 0.5 s activities: about 6 s of load, which the restart cuts.
            load = Load(client, task_queue, log, count, in_flight=600, seconds=0.5)
            running = asyncio.ensure_future(load.run())
            await eventually(lambda: load.done >= restart_after or running.done(), "load")
            assert not running.done(), "the load ended before the restart"
            began = time.monotonic()
            await asyncio.to_thread(
                subprocess.run, [*server, "restart"], check=True, timeout=SERVER_CEILING_S
            )
            await asyncio.to_thread(wait_accepting)
            back_at = started_at()
            restart_s = time.monotonic() - began
            done_at_restart = load.done
            assert done_at_restart < count, "the load ended before the server was back"
            await running
            load.check(pg_schema)
            # Measured while every process still holds its connections.
            pids = {"w1": workers[0].pid, "w2": workers[1].pid}
            reconnect = reconnect_times(pg_schema, names, pids, back_at)
        finally:
            await client.close()

    assert_one_completion_each(pg_schema, load.ids)
    endings = attempt_endings(pg_schema)
    runs = runs_per_id(log)
    twice = {i: n for i, n in runs.items() if n != 1}
    print(
        f"\nrestart: {restart_s:.2f} s with {done_at_restart} of {count} done; "
        f"reconnected after the server was back: "
        + ", ".join(f"{who} {s:.2f} s" for who, s in reconnect.items())
        + f"; attempt endings {endings}; ids run more than once: {len(twice)}"
    )
    # A restart is no reason to fail anyone's attempt (WorkerLost) or run one twice.
    assert endings == {"COMPLETED": count}
    assert twice == {}
    assert set(runs) == set(load.ids)
    slow = {who: s for who, s in reconnect.items() if s > RECONNECT_CEILING_S}
    assert slow == {}, f"reconnected later than {RECONNECT_CEILING_S} s: {slow}"


def reconnect_times(
    schema: str, names: dict[str, str], pids: dict[str, int], back_at: float
) -> dict[str, float]:
    """Seconds from the server being back (database clock) until each
    process had its LISTEN connection and liveness connection (workers) back
    and had written again (a worker: an attempt completed; the client: a start)."""
    times: dict[str, float] = {}
    for who, name in names.items():
        marks = admin(
            "SELECT extract(epoch FROM min(backend_start))::float8 FROM pg_stat_activity "
            "WHERE application_name = %s AND query ILIKE '%%LISTEN %%'",
            (name,),
        )
        listened = marks[0][0]
        assert listened is not None, f"{who} has no LISTEN connection"
        back = [float(listened)]
        if who in pids:
            owner = admin(
                "SELECT extract(epoch FROM backend_start)::float8 FROM pg_stat_activity "
                "WHERE application_name = %s",
                (f"errands-owner:{pids[who]}",),
            )
            assert owner, f"{who} has no liveness connection"
            back.append(float(owner[0][0]))
            wrote = admin(
                f'SELECT min(closed_time) FROM "{schema}".attempts '
                "WHERE identity LIKE %s AND closed_time > %s",
                (f"{pids[who]}@%", back_at),
            )
        else:
            wrote = admin(
                f'SELECT min(schedule_time) FROM "{schema}".executions WHERE schedule_time > %s',
                (back_at,),
            )
        assert wrote[0][0] is not None, f"{who} wrote nothing after the restart"
        back.append(float(wrote[0][0]))
        times[who] = max(back) - back_at
    return times


# --------------------------------------------------------------------------- terminated backends


async def _terminate_at_random(
    names: list[str], stop: asyncio.Event, killed: list[str], seed: int
) -> None:
    """Every 100-300 ms, pg_terminate_backend one backend of these application names."""
    rng = random.Random(seed)
    while not stop.is_set():
        rows = await asyncio.to_thread(
            admin,
            "SELECT pid, application_name FROM pg_stat_activity "
            "WHERE application_name = ANY(%s) AND pid <> pg_backend_pid()",
            (names,),
        )
        if rows:
            pid, name = rng.choice(rows)
            await asyncio.to_thread(admin, "SELECT pg_terminate_backend(%s)", (pid,))
            killed.append(str(name))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(0.1, 0.3))  # the pace of faults


async def test_backends_terminated_at_random_under_load_lose_and_double_nothing(
    pg_url: str, pg_schema: str, task_queue: str, tmp_path: Path
) -> None:
    count = 2_000
    log = tmp_path / "runs.log"
    names = {who: app_name(pg_schema, who) for who in ("w1", "w2", "client")}
    killed: list[str] = []
    stop = asyncio.Event()
    with procs.Children(tmp_path) as children:
        workers = [
            await children.worker(
                who, with_params(pg_url, application_name=names[who]), task_queue, 50
            )
            for who in ("w1", "w2")
        ]
        targets = [*names.values(), *(f"errands-owner:{w.pid}" for w in workers)]
        targets.append(f"errands-owner:{os.getpid()}")
        client = await Client.connect(with_params(pg_url, application_name=names["client"]))
        seed = random.randrange(2**32)
        print(f"\nterminating backends at random, seed {seed}")  # shown if the test fails
        killer = asyncio.ensure_future(_terminate_at_random(targets, stop, killed, seed))
        began = time.monotonic()
        try:
            # 100 slots of 0.25 s activities: about 5 s of load.
            load = Load(client, task_queue, log, count, in_flight=300, seconds=0.25)
            await load.run()
        finally:
            stop.set()
            await killer
            await client.close()
        elapsed = time.monotonic() - began
        load.check(pg_schema)

    assert_one_completion_each(pg_schema, load.ids)
    endings = attempt_endings(pg_schema)
    by_kind: dict[str, int] = {}
    for name in killed:
        kind = "liveness" if name.startswith("errands-owner:") else name.rsplit(":", 1)[1]
        by_kind[kind] = by_kind.get(kind, 0) + 1
    print(
        f"\n{len(killed)} backends terminated ({by_kind}) during {count} activities "
        f"in {elapsed:.1f} s; attempt endings {endings}"
    )
    assert len(killed) >= 10, "too few faults were injected to mean anything"
    assert endings.get("COMPLETED") == count
    assert set(runs_per_id(log)) == set(load.ids)


# --------------------------------------------------------------------------- a stopped server

CONNECT_TIMEOUT_S = 2
"""The connect_timeout this test's URL sets: calls made while the server is
down raise StoreError within OUTAGE_BOUND_S."""

REPORT_OUTAGE_S = 2 * CONNECT_TIMEOUT_S + 1.0
"""How long the server stays down after the pending attempt ended: its
report, queued behind at most one group commit waiting for a connection,
fails at least once meanwhile."""

READS = 20
"""Reads made at once while the server is down (ten times the reader threads)."""

OUTAGE_BOUND_S = 2 * CONNECT_TIMEOUT_S + 2.0
"""The documented bound (a call may queue behind one batch already waiting
for a connection: twice the connect timeout), plus room for a loaded machine."""


@activity.defn
async def wait_for_gate(gate: str) -> str:
    """Block until the test sets the gate, then return its name."""
    await gates[gate].wait()
    return gate


gates: dict[str, Flag] = {}


@contextlib.asynccontextmanager
async def stopped(server: list[str]) -> AsyncIterator[None]:
    """The server stopped within the block, and running again after it."""
    await asyncio.to_thread(subprocess.run, [*server, "stop"], check=True, timeout=SERVER_CEILING_S)
    try:
        yield
    finally:
        await asyncio.to_thread(
            subprocess.run, [*server, "start"], check=True, timeout=SERVER_CEILING_S
        )
        await asyncio.to_thread(wait_accepting)


async def timed(call: Any) -> tuple[float, BaseException | None]:
    """How long an awaitable took, and what it raised."""
    began = time.monotonic()
    try:
        await call
    except Exception as e:
        return time.monotonic() - began, e
    return time.monotonic() - began, None


async def test_a_stopped_server_fails_calls_within_a_bound_and_nothing_pending(
    server: list[str],
    pg_url: str,
    pg_schema: str,
    task_queue: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="errands")
    url = with_params(pg_url, connect_timeout=str(CONNECT_TIMEOUT_S))
    gate = gates[task_queue] = Flag()
    client = await Client.connect(url)
    try:
        async with Worker(client, task_queue=task_queue, activities=[wait_for_gate]):
            pending = await client.start_activity(
                wait_for_gate,
                task_queue,
                id="pending",
                task_queue=task_queue,
                start_to_close_timeout=LONG,
            )
            result = asyncio.ensure_future(pending.result())
            await eventually(lambda: attempts_running(pg_schema) == 1, "the attempt runs")
            caplog.clear()
            async with stopped(server):
                # Calls made now fail within the bound, each with StoreError,
                # however many there are (more reads than reader threads).
                started, *described = await asyncio.gather(
                    timed(
                        client.start_activity(
                            wait_for_gate,
                            task_queue,
                            id="during",
                            task_queue=task_queue,
                            start_to_close_timeout=LONG,
                        )
                    ),
                    *(timed(pending.describe()) for _ in range(READS)),
                )
                gate.set()  # the attempt ends while the server is down: its report fails
                # The outage lasts long enough for the report to fail at least
                # once (a fault's length, not a wait for an event).
                again, _ = await asyncio.gather(
                    timed(pending.describe()), asyncio.sleep(REPORT_OUTAGE_S)
                )
                slowest = max(took for took, _ in described)
                print(
                    f"\nwith the server stopped: start_activity {started[0]:.2f} s, "
                    f"{READS} describes at once {slowest:.2f} s at most, "
                    f"describe again {again[0]:.2f} s (bound {OUTAGE_BOUND_S} s)"
                )
                for took, error in (started, *described, again):
                    assert isinstance(error, StoreError), error
                    assert took < OUTAGE_BOUND_S
                assert not result.done()
            back = time.monotonic()
            # What was pending goes on: the report, the result, the poller.
            assert await asyncio.wait_for(result, CEILING_S) == task_queue
            after = await client.start_activity(
                wait_for_gate,
                task_queue,
                id="after",
                task_queue=task_queue,
                start_to_close_timeout=LONG,
            )
            assert await asyncio.wait_for(after.result(), CEILING_S) == task_queue
            print(f"pending result and a new execution done {time.monotonic() - back:.2f} s after")
    finally:
        del gates[task_queue]
        await client.close()
    assert_one_completion_each(pg_schema, ["pending", "after"])
    repeated = _repeated_warnings(caplog.records)
    assert repeated == {}, f"logged more than once per outage: {repeated}"


def attempts_running(schema: str) -> int:
    rows = admin(f"SELECT count(*)::int FROM \"{schema}\".attempts WHERE outcome = 'RUNNING'")
    return int(rows[0][0])


def _repeated_warnings(records: list[logging.LogRecord]) -> dict[str, int]:
    """Warning messages (their format strings) logged more than once."""
    counts: dict[str, int] = {}
    for record in records:
        if record.levelno >= logging.WARNING and record.name.startswith("errands"):
            key = f"{record.name}: {record.msg}"
            counts[key] = counts.get(key, 0) + 1
    return {key: n for key, n in counts.items() if n > 1}
