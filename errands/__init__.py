"""errands: durable activities for Python, written as for Temporal's SDK, run
on an embedded SQLite file or PostgreSQL with no server."""

from errands import activity

__all__ = ["activity"]
