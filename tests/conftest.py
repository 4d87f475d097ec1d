"""Shared fixtures. Every test that uses ``db_url`` or ``client`` runs on both
stores: its own SQLite file, and its own schema of the PostgreSQL at
$ERRANDS_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/test).

Without a reachable PostgreSQL the PostgreSQL variants skip, saying why;
with ERRANDS_REQUIRE_PG=1 (as in .ci/run) they fail instead. A test (or a
module) that is about SQLite only says so with
``@pytest.mark.parametrize("store_kind", ["sqlite"])`` (or its own
``store_kind`` fixture).
"""

from __future__ import annotations

import itertools
import multiprocessing.managers
import os
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from errands.client import Client
from errands.worker import SharedStateManager
from tests.intercepted_activities import Kind
from tests.support import POOL_PREFIX, SPAWN, Probe, probes

try:
    import psycopg
except ImportError:  # the dev extra installs it; without it PostgreSQL tests skip (or fail in CI)
    psycopg = None  # type: ignore[assignment]

PG_URL = os.environ.get("ERRANDS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""The PostgreSQL server the tests use."""

STORES = ("sqlite", "postgres")

_queues = itertools.count()
_schemas = itertools.count()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh SQLite file path for this test."""
    return tmp_path / "errands.db"


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which store this variant of the test runs on."""
    kind: str = request.param
    return kind


@pytest.fixture
def db_url(store_kind: str, db_path: Path, request: pytest.FixtureRequest) -> str:
    """This test's store: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if store_kind == "sqlite":
        return f"sqlite:///{db_path}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[Client]:
    """A client on this test's store, closed afterwards."""
    c = await Client.connect(db_url)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def task_queue() -> str:
    """A task queue name no other test uses."""
    return f"tq-{os.getpid()}-{next(_queues)}"


@pytest.fixture
def probe(task_queue: str) -> Iterator[Probe]:
    """This test's Probe, which its activities find by the task queue (``my_probe()``)."""
    probes[task_queue] = Probe()
    try:
        yield probes[task_queue]
    finally:
        probes[task_queue].release.set()  # never leave an activity blocked on a failed test
        del probes[task_queue]


# --------------------------------------------------------------------------- pools


@pytest.fixture
def thread_pool() -> Iterator[ThreadPoolExecutor]:
    """Four threads named POOL_PREFIX-..., for this test."""
    executor = ThreadPoolExecutor(4, thread_name_prefix=POOL_PREFIX)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def mp_manager() -> Iterator[multiprocessing.managers.SyncManager]:
    """One manager process per test module (each worker gets its own
    SharedStateManager on it: a worker closes its manager when it stops)."""
    manager = SPAWN.Manager()
    try:
        yield manager
    finally:
        manager.shutdown()


@pytest.fixture(scope="module")
def process_pool() -> Iterator[ProcessPoolExecutor]:
    """Two spawn children per test module, shared by the tests that leave them healthy."""
    executor = ProcessPoolExecutor(2, mp_context=SPAWN)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(params=["async", "thread", "process"])
def executor_kind(request: pytest.FixtureRequest) -> Kind:
    """Async activities, this test's thread pool, or the module's process pool
    (tests/intercepted_activities.py)."""
    if request.param == "async":
        return Kind("async", None, None)
    if request.param == "thread":
        return Kind("thread", request.getfixturevalue("thread_pool"), None)
    return Kind(
        "process", request.getfixturevalue("process_pool"), request.getfixturevalue("mp_manager")
    )


@pytest.fixture
def shared_state(mp_manager: multiprocessing.managers.SyncManager) -> SharedStateManager:
    """A SharedStateManager for one worker, on the module's manager process."""
    return SharedStateManager.create_from_multiprocessing(mp_manager)


# --------------------------------------------------------------------------- PostgreSQL


def _unreachable_reason() -> str | None:
    if psycopg is None:
        return "psycopg is not installed (pip install -e '.[dev]')"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except psycopg.Error as e:
        return str(e).strip()


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The server's URL; skips (or, with ERRANDS_REQUIRE_PG=1, fails) when unreachable."""
    reason = _unreachable_reason()
    if reason is not None:
        message = (
            f"PostgreSQL at {PG_URL} is not reachable ({reason}); set ERRANDS_TEST_PG_URL "
            "to run these tests"
        )
        if os.environ.get("ERRANDS_REQUIRE_PG") == "1":
            pytest.fail(message + " (ERRANDS_REQUIRE_PG=1: PostgreSQL tests must run)")
        pytest.skip(message)
    return PG_URL


def with_params(url: str, **params: str) -> str:
    """``url`` with query parameters added."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def admin(sql: str, params: tuple[Any, ...] = (), url: str = PG_URL) -> list[tuple[Any, ...]]:
    """Run one statement on its own autocommit connection; its rows."""
    assert psycopg is not None
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def pg_schema(pg_server: str) -> Iterator[str]:
    """A schema name no other test (or test run) uses; dropped afterwards."""
    name = f"errands_t{os.getpid()}_{next(_schemas)}_{uuid.uuid4().hex[:6]}"
    yield name
    admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def pg_url(pg_server: str, pg_schema: str) -> str:
    """The store URL of this test's schema."""
    return with_params(pg_server, schema=pg_schema)


@pytest.fixture
async def pg_client(pg_url: str) -> AsyncIterator[Client]:
    """A client on this test's schema, closed afterwards."""
    client = await Client.connect(pg_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(autouse=True)
def no_blocked_loop_reports(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Every test but those marked ``blocks_loop`` fails if a worker reported
    its event loop held: the report must raise no false alarms."""
    yield
    if request.node.get_closest_marker("blocks_loop") is None:
        held = [
            r.getMessage()
            for r in caplog.records
            if "held the worker's event loop" in r.getMessage()
        ]
        assert not held, held
