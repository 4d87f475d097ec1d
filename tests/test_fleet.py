"""The fleet (issue 5, point 4): four worker processes and two client processes
on one store, FLEET_SIZE activities, every FAIL_EVERY-th failing its first
attempt (retryably), and one worker SIGKILLed once KILL_AT of them completed.
Afterwards every activity has exactly one outcome, none is lost or duplicated,
and the attempts the store counted are exactly the attempts that ran.

How the attempts are accounted for exactly: the activity appends
``start <id> <attempt> <pid>`` as its first act and ``done <id> <attempt> <pid>``
just before it returns (one O_APPEND write each). The only attempts that can
leave no ``start`` line are ones the killed worker had claimed but not yet begun;
they are in the store as STARTED attempts of the killed worker's identity, and
that set is final once the process (and, on PostgreSQL, every backend of its
connections) is gone, so the test reads it right after the kill, long before
start_to_close could retry them. The worker is killed while it holds attempts:
the test freezes it (SIGSTOP), looks, and kills it or lets it go on (SIGCONT).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from errands._lifecycle import RunState, Status
from errands._query import parse_query
from errands.client import ActivityExecutionStatus, Client
from tests import procs
from tests.conftest import admin, with_params

FLEET_SIZE = {"postgres": 20_000, "sqlite": 20_000}
"""Activities per run, per store (split evenly between the client processes)."""

WORKERS = 4
CLIENTS = 2
IN_FLIGHT = 300
"""Executions each client process keeps open at once (start, then await the result)."""

FAIL_EVERY = 10
"""Activities whose number is a multiple of this fail their first attempt."""

KILL_AT = 0.3
"""The share of activities completed when the first worker is SIGKILLed."""

ACTIVITY_S = 0.005
START_TO_CLOSE_S = 5.0
"""How long the killed worker's attempts stay claimed before they are retried."""

RETRY_INTERVAL_S = 0.05
CEILING_S = 100.0
"""How long the whole run may take before the test gives up."""


def read_log(path: Path) -> list[tuple[str, str, int, str]]:
    """(kind, activity id, attempt, pid) per line."""
    lines = []
    for line in path.read_text().splitlines():
        kind, activity_id, attempt, pid = line.split()
        lines.append((kind, activity_id, int(attempt), pid))
    return lines


async def count_completed(client: Client, task_queue: str) -> int:
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Completed'"
    return (await client.count_activities(query)).count


async def attempts_held(client: Client, task_queue: str, pid: int) -> dict[str, int]:
    """The attempt each execution STARTED on the worker process ``pid`` is on."""
    running = parse_query(f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'")
    return {
        r.activity_id: r.attempt
        for r in await client.store.list(client.namespace, running)
        if r.run_state in (RunState.STARTED, RunState.CANCEL_REQUESTED)
        and (r.identity or "").startswith(f"{pid}@")
    }


def wait_for_backends_gone(application_name: str) -> None:
    """Wait until no PostgreSQL backend serves ``application_name`` (a backend
    of a killed process may still be finishing the statement it was sent)."""
    deadline = time.monotonic() + procs.READY_CEILING_S
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    while admin(sql, (application_name,))[0][0] > 0:
        assert time.monotonic() < deadline, f"backends of {application_name} never went away"
        time.sleep(0.01)


@pytest.mark.parametrize("store_kind", ["postgres", "sqlite"])
async def test_a_fleet_runs_every_activity_to_one_outcome_through_retries_and_a_sigkilled_worker(
    store_kind: str, db_url: str, client: Client, task_queue: str, tmp_path: Path
) -> None:
    n = FLEET_SIZE[store_kind]
    per_client = n // CLIENTS
    log = tmp_path / "attempts.log"
    go = tmp_path / "go"
    ids = [f"fleet-{i}" for i in range(n)]
    failing = {f"fleet-{i}" for i in range(0, n, FAIL_EVERY)}
    # The killed worker's connections carry their own name, so the test can
    # see when the last of its statements is over.
    victim_app = f"errands-fleet-victim-{uuid.uuid4().hex[:8]}"
    victim_url = (
        db_url if store_kind == "sqlite" else with_params(db_url, application_name=victim_app)
    )

    with procs.Children(tmp_path) as children:
        victim = await children.worker("worker-0", victim_url, task_queue)
        survivors = [
            await children.worker(f"worker-{i}", db_url, task_queue) for i in range(1, WORKERS)
        ]
        clients = [
            children.spawn(
                f"client-{c}",
                "fleet-client",
                *("--url", db_url, "--queue", task_queue, "--prefix", "fleet"),
                *("--first", str(c * per_client), "--count", str(per_client)),
                *("--in-flight", str(IN_FLIGHT), "--log", str(log)),
                *("--fail-every", str(FAIL_EVERY), "--seconds", str(ACTIVITY_S)),
                *("--start-to-close", str(START_TO_CLOSE_S)),
                *("--retry-interval", str(RETRY_INTERVAL_S), "--go", str(go)),
            )
            for c in range(CLIENTS)
        ]
        await procs.all_ready(clients)
        go.touch()
        began = time.monotonic()

        # Once KILL_AT of the activities completed, SIGKILL one worker at a
        # moment it holds attempts: freeze it, look, and kill it or let it go on.
        deadline = began + CEILING_S
        kill_tries = 0
        while True:
            assert time.monotonic() < deadline, "the worker never got to be killed mid-run"
            for child in [victim, *survivors, *clients]:
                assert child.proc.poll() is None, f"{child.name} died: {child.stderr()[-3000:]}"
            if await count_completed(client, task_queue) >= KILL_AT * n:
                os.kill(victim.pid, signal.SIGSTOP)
                kill_tries += 1
                if await attempts_held(client, task_queue, victim.pid):
                    break
                os.kill(victim.pid, signal.SIGCONT)
            await asyncio.sleep(0.02)
        victim.kill()
        killed_at = time.monotonic()
        if store_kind == "postgres":
            await asyncio.to_thread(wait_for_backends_gone, victim_app)
        # What the killed worker held (its STARTED attempts) is final from now
        # on: nobody else may touch them until start_to_close has passed.
        held = await attempts_held(client, task_queue, victim.pid)
        snapshot_s = time.monotonic() - killed_at
        assert snapshot_s < START_TO_CLOSE_S / 2, f"the snapshot took {snapshot_s:.1f} s"

        reports: list[dict[str, Any]] = []
        for c in clients:
            line = await c.wait_for_line("{", timeout=max(1.0, deadline - time.monotonic()))
            reports.append(json.loads(line[0]))
        finished_at = time.monotonic()
        for child in survivors:
            child.stop()

    # Every client got a result for each of its activities, and no error.
    assert [r["errors"] for r in reports] == [{}] * CLIENTS
    results: dict[str, str] = {}
    for report in reports:
        results.update(report["results"])
    assert sorted(results) == sorted(ids)

    # One execution per id, each COMPLETED, nothing else in the store.
    everything = parse_query(f"TaskQueue = '{task_queue}'")
    records = await client.store.list(client.namespace, everything)
    assert Counter(r.activity_id for r in records) == Counter(ids), "an id is missing or doubled"
    assert {r.status for r in records} == {Status.COMPLETED}
    grouped = await client.count_activities(f"TaskQueue = '{task_queue}' GROUP BY ExecutionStatus")
    assert grouped.count == n
    assert [(g.group_values, g.count) for g in grouped.groups] == [(["Completed"], n)]
    final = {r.activity_id: r.attempt for r in records}

    # The kill landed mid-run: the victim had done work and held attempts.
    lines = read_log(log)
    pids = {str(w.pid) for w in [victim, *survivors]}
    by_pid = Counter(pid for _, _, _, pid in lines)
    assert set(by_pid) == pids, f"attempts per pid: {by_pid}"
    assert held, "the killed worker held no attempt: the kill tested nothing"

    # Each attempt began at most once; the attempts without a start line are
    # exactly the killed worker's claimed-but-not-begun ones.
    starts = Counter(
        (activity_id, attempt) for kind, activity_id, attempt, _ in lines if kind == "start"
    )
    assert [key for key, times in starts.items() if times > 1] == [], "an attempt ran twice"
    never_began = set(held.items()) - set(starts)
    began_on = {(a, attempt): pid for kind, a, attempt, pid in lines if kind == "start"}
    assert {began_on[k] for k in set(held.items()) & set(starts)} <= {str(victim.pid)}
    attempts_of: dict[str, set[int]] = {}
    for activity_id, attempt in [*starts, *never_began]:
        attempts_of.setdefault(activity_id, set()).add(attempt)
    wrong = {
        a: sorted(attempts_of.get(a, ()))
        for a in ids
        if attempts_of.get(a) != set(range(1, final[a] + 1))
    }
    assert wrong == {}, (
        f"attempts that ran do not match the store's count: {list(wrong.items())[:10]}"
    )
    assert sum(final.values()) == len(starts) + len(never_began)

    # The attempt counts add up: one more for a failing first attempt, one more
    # for an attempt the killed worker held.
    expected = {a: held[a] + 1 if a in held else 2 if a in failing else 1 for a in ids}
    off = {a: (final[a], expected[a]) for a in ids if final[a] != expected[a]}
    assert off == {}, f"(attempts, expected) per id: {list(off.items())[:10]}"
    assert all(final[a] >= 2 for a in failing)

    # Completed exactly once per id: the result is the last attempt's, and a
    # second "done" line exists only where the killed worker returned but died
    # before its completion was stored.
    dones = [
        (activity_id, attempt, pid) for kind, activity_id, attempt, pid in lines if kind == "done"
    ]
    last_done = Counter((a, attempt) for a, attempt, _ in dones if attempt == final[a])
    assert last_done == Counter({(a, final[a]): 1 for a in ids})
    extra = {(a, attempt) for a, attempt, _ in dones if attempt != final[a]}
    assert extra <= set(held.items()), (
        f"a stale attempt returned: {sorted(extra - set(held.items()))}"
    )
    done_mark = {a: f"{a} {attempt} {pid}" for a, attempt, pid in dones if attempt == final[a]}
    assert results == done_mark
    assert all(results[a].split()[2] != str(victim.pid) for a in held)
    for activity_id in [*list(held)[:50], *ids[:: n // 20]]:
        desc = await client.get_activity_handle(activity_id).describe()
        assert desc.status is ActivityExecutionStatus.COMPLETED
        assert desc.attempt == final[activity_id]
        assert desc.last_worker_identity is not None
        assert desc.last_worker_identity.startswith(results[activity_id].split()[2] + "@")

    run_s = finished_at - began
    print(
        f"\nfleet on {store_kind}: {n} activities in {run_s:.1f} s ({n / run_s:.0f}/s), "
        f"killed at {killed_at - began:.1f} s (try {kill_tries}) holding {len(held)} attempts "
        f"({len(never_began)} never began), snapshot {snapshot_s * 1000:.0f} ms, "
        f"clients {[round(r['elapsed'], 1) for r in reports]} s, attempts per pid {dict(by_pid)}"
    )
