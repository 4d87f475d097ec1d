"""The servers the peers run on: the given PostgreSQL (a database of the
bench's own on it, ``bench_peers``, and a fresh schema per run in it), the
local RabbitMQ and Redis; and which of their processes count as a run's."""

from __future__ import annotations

import os
import socket
import urllib.parse
from pathlib import Path

DATABASE = "bench_peers"
"""The peers' database on the given PostgreSQL: never one the test suite uses."""
RABBITMQ = ("127.0.0.1", 5672)
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS = ("127.0.0.1", 6379)
REDIS_URL = "redis://127.0.0.1:6379/0"
CONNECT_TIMEOUT_S = 2.0


def reachable(address: tuple[str, int], what: str) -> None:
    """Raise Unavailable unless something accepts connections at ``address``."""
    from bench.peers import Unavailable

    try:
        socket.create_connection(address, CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise Unavailable(f"{what} is not reachable at {address[0]}:{address[1]} ({e})") from e


def database_url(postgres: str, database: str = DATABASE) -> str:
    """``postgres`` (a postgresql:// URL) naming ``database`` instead, without a query."""
    parts = urllib.parse.urlsplit(postgres)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}", query=""))


def ensure_database(postgres: str) -> str:
    """Create the peers' database on ``postgres`` unless it exists; its URL.
    Raises Unavailable when no PostgreSQL was given or it is not reachable."""
    from bench.peers import Unavailable

    if not postgres:
        raise Unavailable("no PostgreSQL given (--postgres URL)")
    import psycopg

    try:
        with psycopg.connect(postgres, autocommit=True, connect_timeout=5) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if found.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
    except psycopg.errors.DuplicateDatabase:
        pass  # made by a concurrent run in between
    except psycopg.Error as e:
        raise Unavailable(f"PostgreSQL at {postgres} refused ({e})") from e
    return database_url(postgres)


def create_schema(postgres: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(database_url(postgres), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')


def drop_schema(postgres: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(database_url(postgres), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def application(namespace: str) -> str:
    """The application_name every connection of the run ``namespace`` gives,
    by which its backends are told from the rest of the server's."""
    return f"bench-peers:{namespace}"


def backends(postgres: str, namespace: str) -> list[int]:
    """The pids of the PostgreSQL backends serving the run ``namespace``."""
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (application(namespace),),
        ).fetchall()
    return [int(row[0]) for row in rows]


def _listening_inodes(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(inode)
    return found


def listener_pids(port: int) -> list[int]:
    """The processes holding a socket that listens on ``port`` (the broker
    server; root sees every process's descriptors)."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue
        if links & inodes:
            pids.append(int(entry.name))
    return pids
