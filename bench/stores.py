"""Where the workloads run, and what the store runs with.

By default every workload gets a fresh SQLite file in the run's temporary
directory. ``--url sqlite:///dir/name.db`` puts those files next to the one it
names (``dir/name-<workload>.db``, refused if present, removed afterwards);
``--url postgresql://...`` gives every workload a fresh schema of that database
(``schema=bench_<workload>_<token>`` replaces any ``schema`` in the URL), which
is dropped afterwards with psycopg.

Also here: the store's settings for the settings block (the pragmas of the
store's own SQLite connection, or the PostgreSQL server's settings as the
store's connection sees them), the bulk fill of closed executions for the
retention workload, and a fresh store filled for a workload (``filled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from errands.client import Client

SQLITE_PRAGMAS = ("journal_mode", "synchronous", "busy_timeout")
SQLITE_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
POSTGRES_SETTINGS = ("server_version", "synchronous_commit", "fsync", "wal_level", "shared_buffers")
FILL_CHUNK = 200_000
"""Closed rows per INSERT ... SELECT (one transaction each)."""
DROP_LOCK_TIMEOUT = "30s"


@dataclass
class StoreTarget:
    """The store the workloads run on: ``kind`` is "sqlite" or "postgresql";
    ``base`` the URL given (None: the temporary directory)."""

    kind: str
    base: str | None
    directory: Path  # SQLite: where the workload files go
    prefix: str  # SQLite: their name prefix
    token: str  # PostgreSQL: makes this run's schema names unique

    @classmethod
    def create(cls, url: str | None, tmp: Path) -> StoreTarget:
        """The target for ``--url`` (None: SQLite files in ``tmp``).

        Raises ValueError for a URL that is neither sqlite: nor postgresql:."""
        token = secrets.token_hex(4)
        if url is None:
            return cls("sqlite", None, tmp, "", token)
        if url.startswith("sqlite:"):
            from errands.store.sqlite import path_from_url

            path = Path(path_from_url(url)).resolve()
            return cls("sqlite", url, path.parent, f"{path.stem}-", token)
        if url.startswith(("postgresql:", "postgres:")):
            from errands.store.postgres import parse_url

            parse_url(url)  # raises ValueError for a bad URL, before any workload runs
            return cls("postgresql", url, tmp, "", token)
        raise ValueError(f"--url {url!r}: expected sqlite:///path.db or postgresql://...")

    def describe(self) -> str:
        """For the settings block (no password)."""
        if self.kind == "sqlite":
            return f"SQLite, a fresh file per workload in {self.directory}"
        assert self.base is not None
        parts = urllib.parse.urlsplit(self.base)
        netloc = parts.netloc.rsplit("@", 1)
        if len(netloc) == 2 and ":" in netloc[0]:
            netloc[0] = netloc[0].split(":", 1)[0] + ":***"
        shown = urllib.parse.urlunsplit(parts._replace(netloc="@".join(netloc), query=""))
        return f"PostgreSQL {shown}, a fresh schema per workload (bench_*_{self.token})"

    def url_for(self, name: str) -> str:
        """A fresh store's URL for workload ``name``.

        Raises FileExistsError when the SQLite file is already there."""
        if self.kind == "sqlite":
            path = self.directory / f"{self.prefix}{name}.db"
            if path.exists():
                raise FileExistsError(f"{path} exists; the bench needs a fresh store")
            return f"sqlite:///{path}"
        assert self.base is not None
        schema = f"bench_{re.sub(r'[^a-z0-9]+', '_', name.lower())}_{self.token}"
        parts = urllib.parse.urlsplit(self.base)
        query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "schema"]
        query.append(("schema", schema))
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    def drop(self, url: str) -> None:
        """Remove the store ``url_for`` made (blocking: call it in a thread)."""
        if self.kind == "sqlite":
            path = Path(sqlite_path(url))
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return
        import psycopg

        from errands.store.postgres import parse_url

        conninfo, schema = parse_url(url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"SET lock_timeout = '{DROP_LOCK_TIMEOUT}'")
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # a checked identifier


def sqlite_path(url: str) -> str:
    from errands.store.sqlite import path_from_url

    return path_from_url(url)


async def read_settings(client: Client, kind: str) -> dict[str, Any]:
    """The pragmas of the SQLite store's own connection, or the PostgreSQL
    settings as the store's connection sees them (the URL may set some)."""
    if kind == "sqlite":
        statements = {f"PRAGMA {n}": f"PRAGMA {n}" for n in SQLITE_PRAGMAS}
    else:
        statements = {n: f"SHOW {n}" for n in POSTGRES_SETTINGS}

    def first(row: Any) -> Any:  # a sqlite3.Row, or a psycopg dict row
        return next(iter(row.values())) if isinstance(row, dict) else row[0]

    def read(tx: Any) -> dict[str, Any]:  # errands.store._dialect.Tx on a reading connection
        return {key: first(tx.cursor.execute(sql).fetchone()) for key, sql in statements.items()}

    found: dict[str, Any] = await client.store._read(read)  # type: ignore[attr-defined]
    if kind == "sqlite":
        level = found["PRAGMA synchronous"]
        found["PRAGMA synchronous"] = SQLITE_SYNCHRONOUS.get(level, level)
    return found


# --------------------------------------------------------------------------- bulk fill


def _copy_columns(
    columns: list[str], overrides: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """The INSERT column list and the SELECT list that copies template row
    ``t`` as closed execution number ``i`` (closed ``i`` ms before the newest):
    own activity and run ids, times moved back, ``overrides`` (column: SQL
    over ``i``), everything else the template's."""
    at = "(%(newest)s - i * 0.001)"
    moved = {
        "activity_id": "'closed-' || i",
        "run_id": "'closed-run-' || i",
        "schedule_time": at,
        "ready_at": at,
        "started_time": at,
        "close_time": at,
        **(overrides or {}),
    }
    names = [c for c in columns if c != "id"]
    return ", ".join(names), ", ".join(moved.get(c, f"t.{c}") for c in names)


def fill_closed_sqlite(
    url: str,
    count: int,
    template_run_id: str,
    newest: float,
    overrides: Mapping[str, str] | None = None,
    then: Sequence[str] = (),
) -> None:
    """Insert ``count`` closed executions, copies of the template run, with a
    recursive CTE per chunk of FILL_CHUNK rows (one transaction each), on a
    connection of its own (blocking: call it in a thread, with no worker
    writing); then run the statements ``then`` and checkpoint the WAL, as a
    store that grew over time would have done all along."""
    conn = sqlite3.connect(sqlite_path(url), timeout=60, isolation_level=None)
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(executions)")]
        names, selected = _copy_columns(columns, overrides)
        selected = selected.replace("%(newest)s", repr(newest))
        template_id = conn.execute(
            "SELECT id FROM executions WHERE run_id = ?", (template_run_id,)
        ).fetchone()[0]
        for first in range(1, count + 1, FILL_CHUNK):
            last = min(count, first + FILL_CHUNK - 1)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                f"INSERT INTO executions ({names}) "
                "WITH RECURSIVE seq(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM seq WHERE i < ?) "
                f"SELECT {selected} FROM seq, executions AS t WHERE t.id = ?",
                (first, last, template_id),
            )
            conn.execute("COMMIT")
        for statement in then:
            conn.execute(statement)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def fill_closed_postgres(
    url: str,
    count: int,
    template_run_id: str,
    newest: float,
    overrides: Mapping[str, str] | None = None,
    then: Sequence[str] = (),
) -> None:
    """``fill_closed_sqlite`` for PostgreSQL: INSERT ... SELECT FROM
    generate_series per chunk, the statements ``then``, then VACUUM ANALYZE
    (what autovacuum would soon do to a table that grew by a million rows;
    done here so it does not run during the measurement)."""
    import psycopg

    from errands.store.postgres import parse_url

    conninfo, schema = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as conn:
        columns = [
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = 'executions' ORDER BY ordinal_position",
                (schema,),
            )
        ]
        names, selected = _copy_columns(columns, overrides)
        selected = selected.replace("%(newest)s", "%(newest)s::float8")
        for first in range(1, count + 1, FILL_CHUNK):
            last = min(count, first + FILL_CHUNK - 1)
            conn.execute(
                f"INSERT INTO executions ({names}) SELECT {selected} "
                "FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g(i), "
                "executions AS t WHERE t.run_id = %(template)s",
                {"newest": newest, "first": first, "last": last, "template": template_run_id},
            )
        for statement in then:
            conn.execute(statement)  # type: ignore[call-overload]
        conn.execute("VACUUM ANALYZE executions")


def fill_closed(
    kind: str,
    url: str,
    count: int,
    template_run_id: str,
    newest: float,
    *,
    overrides: Mapping[str, str] | None = None,
    then: Sequence[str] = (),
) -> None:
    """Insert ``count`` closed executions (copies of the closed template run,
    closed at ``newest`` and a millisecond apart before it, but for the
    columns in ``overrides``: SQL over their number ``i``, without '%') into
    the store at ``url``, with SQL in bulk, then run the statements ``then``
    (blocking: call it in a thread)."""
    fill = fill_closed_sqlite if kind == "sqlite" else fill_closed_postgres
    fill(url, count, template_run_id, newest, overrides, then)


Fill = Callable[["StoreTarget", str, Client, int], Awaitable[None]]
"""Fills a fresh store (target, its URL, a client of it) with a number of rows."""


@contextlib.asynccontextmanager
async def filled(
    store: StoreTarget, name: str, rows: int, fill: Fill
) -> AsyncIterator[tuple[Client, float]]:
    """A fresh store for workload ``name`` filled by ``fill`` with ``rows``
    rows: a client of it and the seconds filling took (printed too). The
    client is closed and the store dropped afterwards."""
    url = store.url_for(name)
    try:
        client = await Client.connect(url)
        try:
            began = time.perf_counter()
            await fill(store, url, client, rows)
            fill_s = time.perf_counter() - began
            print(f"  {store.kind}: filled {rows:,} rows in {fill_s:.0f} s", file=sys.stderr)
            yield client, fill_s
        finally:
            await client.close()
    finally:
        await asyncio.to_thread(store.drop, url)
