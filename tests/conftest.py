"""Shared fixtures: every test gets its own SQLite file and task queue."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from errands.client import Client

_queues = itertools.count()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh SQLite file path for this test."""
    return tmp_path / "errands.db"


@pytest.fixture
def db_url(db_path: Path) -> str:
    """The store URL of this test's SQLite file."""
    return f"sqlite:///{db_path}"


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
