"""Schema migrations: numbered SQL files per dialect
(``errands/store/migrations/<dialect>/NNNN_name.sql``), applied in order by
each dialect under its own lock."""

from __future__ import annotations

from collections.abc import Collection
from importlib import resources

from errands.exceptions import StoreError


def migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of a dialect's migrations, oldest first."""
    folder = resources.files("errands.store").joinpath("migrations").joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


def newest(dialect: str) -> int:
    """The newest schema version this code knows for a dialect."""
    return max(version for version, _, _ in migrations(dialect))


def pending(dialect: str, applied: Collection[int], label: str) -> list[tuple[int, str, str]]:
    """The migrations a store that has ``applied`` these versions still needs,
    oldest first: every known version it lacks, also one below its newest
    (versions are handed out to changes as they are made, and a store may
    have been migrated by a build that had a later version but not an
    earlier one).

    Raises StoreError if the store's schema is newer than this code.
    """
    known = newest(dialect)
    current = max(applied, default=0)
    if current > known:
        raise StoreError(
            f"{label} has schema version {current}, newer than this errands "
            f"(knows up to {known}); upgrade errands"
        )
    done = set(applied)
    return [m for m in migrations(dialect) if m[0] not in done]
