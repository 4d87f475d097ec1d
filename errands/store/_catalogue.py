"""A dialect's SQL: one file of named, described statements.

Each statement starts with a ``-- name: <name>`` line, then ``--`` lines that
describe it, then the SQL up to the next name::

    -- name: complete
    -- Close the current attempt's execution COMPLETED; no row if stale.
    UPDATE executions SET ...

Both dialects name the same statements and take the same named parameters
(each in its driver's placeholder style), so the store core runs either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$")


@dataclass(frozen=True)
class Statement:
    """One named statement of a catalogue."""

    name: str
    doc: str
    sql: str


class Catalogue:
    """The statements of one dialect, by name."""

    def __init__(self, dialect: str, text: str) -> None:
        self.dialect = dialect
        self._statements: dict[str, Statement] = {}
        name: str | None = None
        doc: list[str] = []
        sql: list[str] = []
        for line in [*text.splitlines(), "-- name: _end"]:
            found = _NAME.match(line)
            if found is None:
                if name is None:
                    continue  # the file's own comments
                if line.startswith("--") and not sql:
                    doc.append(line[2:].strip())
                elif line.strip() and not line.lstrip().startswith("--"):
                    sql.append(line)
                continue
            if name is not None:
                if name in self._statements:
                    raise ValueError(f"{dialect} catalogue names {name!r} twice")
                if not sql or not doc:
                    raise ValueError(f"{dialect} statement {name!r} needs a description and SQL")
                self._statements[name] = Statement(name, " ".join(doc), "\n".join(sql).strip())
            name, doc, sql = found.group(1), [], []

    @classmethod
    def load(cls, dialect: str, package: str, filename: str = "statements.sql") -> Catalogue:
        """The catalogue in a package's data file."""
        return cls(dialect, resources.files(package).joinpath(filename).read_text())

    def __getitem__(self, name: str) -> str:
        try:
            return self._statements[name].sql
        except KeyError:
            raise KeyError(f"the {self.dialect} catalogue has no statement {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._statements

    def names(self) -> set[str]:
        """Every statement name."""
        return set(self._statements)
