"""Schema migrations: numbered SQL files per dialect
(``errands/store/migrations/<dialect>/NNNN_name.sql``), applied in order by
each dialect under its own lock."""

from __future__ import annotations

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


def pending(dialect: str, current: int, label: str) -> list[tuple[int, str, str]]:
    """The migrations a store at schema ``current`` still needs, oldest first.

    Raises StoreError if the store's schema is newer than this code.
    """
    known = newest(dialect)
    if current > known:
        raise StoreError(
            f"{label} has schema version {current}, newer than this errands "
            f"(knows up to {known}); upgrade errands"
        )
    return [m for m in migrations(dialect) if m[0] > current]
