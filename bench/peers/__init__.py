"""The systems ``python -m bench.compare`` runs side by side on the peer
workloads (loop, lanes, batch, sequential; bench/peers/_workloads.py), each
behind one small interface: a :class:`Peer` says how to prepare a run, which
worker processes to start and which server processes count as its own, and
opens a :class:`Producer` with four calls (enqueue one, enqueue many, await
one result, await many). Each system lives in its own module
(``bench/peers/<name>.py``) and is imported only when a run uses it, so a
missing library makes that one column ``n/a`` and nothing else.

Every system runs the same trivial task (it returns its argument) with its
worker in other processes; the workloads are written once, against
:class:`Producer`."""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


class NoBulkEnqueue(Exception):
    """The system has no bulk enqueue: its batch cell is n/a."""


class Unavailable(Exception):
    """The system cannot run here (library not installed, server not
    reachable): its cells are n/a, with this as the reason."""


@dataclass(frozen=True)
class Run:
    """What a system needs for one run; passed as JSON to the worker processes."""

    system: str
    namespace: str
    """Unique per run: the queue, schema or task queue name."""
    target: str
    """errands' store URL, or Temporal's server address; empty for the others."""
    postgres: str
    """The PostgreSQL server given to bench.compare (peers on PostgreSQL make a
    database of their own on it); empty when none was given."""
    in_flight: int
    tmp: str
    mode: str = ""
    """Temporal's "standalone" or "workflow" (bench.compare's --temporal-mode)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Run:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class WorkerProcess:
    """One worker process to start: its command line, extra environment, and
    the line it prints (stdout or stderr) once it serves, ``ready_count`` times."""

    argv: Sequence[str]
    ready: str
    ready_count: int = 1
    env: dict[str, str] = field(default_factory=dict)


class Producer(Protocol):
    """The producer side of one run. A blocking system's calls block (they
    are awaited on a loop that has nothing else to do, and its lanes are
    threads, each with its own loop)."""

    async def enqueue(self, i: int) -> Any:
        """Enqueue the task for ``i``; a handle to await it by."""
        ...

    async def enqueue_many(self, items: Sequence[int]) -> list[Any]:
        """The system's bulk enqueue of ``items``; raises NoBulkEnqueue when it has none."""
        ...

    async def result(self, handle: Any) -> Any:
        """The task's result (its argument) once it has completed."""
        ...

    async def results(self, handles: Sequence[Any]) -> list[Any] | None:
        """The results of all ``handles``, in order, once all completed (an
        untimed check after a workload: it may use any cheap way to look);
        None when the system can no longer tell."""
        ...

    async def close(self) -> None: ...


class Peer(Protocol):
    """One system as the peer workloads run it."""

    config: str
    """Its configuration, as its documentation recommends for throughput."""
    blocking: bool
    """No async client: lanes are concurrent producer threads."""

    def check(self, run: Run) -> None:
        """Raise Unavailable when the system cannot run here."""
        ...

    def setup(self, run: Run) -> None:
        """Make the run's fresh namespace (queues, schema)."""
        ...

    def teardown(self, run: Run) -> None:
        """Remove what setup made."""
        ...

    def workers(self, run: Run) -> list[WorkerProcess]: ...

    def server_pids(self, run: Run) -> list[int]:
        """The database and broker processes that serve this run, on this
        machine (their CPU is the system's)."""
        ...

    async def producer(self, run: Run) -> Producer: ...


@dataclass(frozen=True)
class System:
    """A system's name in tables, where its Peer is (``module:attribute``),
    and whether a completed task's result (or completion) survives a crash of
    its server."""

    label: str
    peer: str
    durable: bool


SYSTEMS = {
    "errands-sqlite": System("errands (SQLite)", "bench.peers.errands:SQLITE", True),
    "errands-postgres": System("errands (PostgreSQL)", "bench.peers.errands:POSTGRES", True),
    "temporal": System("Temporal", "bench.peers.temporal:PEER", True),
    "pgqueuer": System("pgqueuer", "bench.peers.pgqueuer:PEER", True),
    "pgqueuer-b1": System("pgqueuer, batch 1", "bench.peers.pgqueuer:LATENCY", True),
    "procrastinate": System("procrastinate", "bench.peers.procrastinate:PEER", True),
    "celery-rpc": System("Celery, rpc results", "bench.peers.celery:RPC", False),
    "celery-pg": System(
        "Celery, acks_late, results in PostgreSQL", "bench.peers.celery:POSTGRES", True
    ),
    "dramatiq": System("Dramatiq, results in Redis", "bench.peers.dramatiq:PEER", False),
}
"""Every system of the peer workloads, by name."""

PEERS = ("pgqueuer", "procrastinate", "celery-rpc", "celery-pg", "dramatiq", "pgqueuer-b1")
"""The systems beside errands and Temporal."""
EXTRAS = ("pgqueuer-b1",)
"""Peers that run only when named (--systems): variants beside a peer's
throughput configuration."""


def load(system: str) -> Peer:
    """The Peer of ``system``; raises Unavailable when its library is not installed."""
    module, attribute = SYSTEMS[system].peer.split(":")
    try:
        found = importlib.import_module(module)
    except ImportError as e:
        raise Unavailable(f"not installed ({e}; pip install -e '.[bench]')") from e
    peer: Peer = getattr(found, attribute)
    return peer
