"""Schema migrations: numbered SQL files per dialect
(``errands/store/migrations/<dialect>/NNNN_name.sql``), applied in order by
each dialect under its own lock."""

from __future__ import annotations

from importlib import resources


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
