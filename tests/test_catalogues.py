"""The two dialects' SQL catalogues: each statement named and described once,
the same names in both (but for each one's own wake-up mechanics), so the
store core runs on either."""

from __future__ import annotations

import pytest

from errands.store._catalogue import Catalogue
from errands.store.postgres import CATALOGUE as POSTGRES
from errands.store.sqlite import CATALOGUE as SQLITE

OWN = {
    "SQLite": {"announce", "changes_since", "changes_head", "closed_since"},  # the change table
    "PostgreSQL": {"notify_and_commit", "owners_liveness"},  # NOTIFY with the COMMIT; liveness
}


def test_both_dialects_name_the_same_statements_but_their_own_wake_up_ones() -> None:
    assert SQLITE.names() - OWN["SQLite"] == POSTGRES.names() - OWN["PostgreSQL"]


@pytest.mark.parametrize("catalogue", [SQLITE, POSTGRES], ids=lambda c: c.dialect)
def test_no_statement_pastes_a_sentinel_time_into_sql(catalogue: Catalogue) -> None:
    for name in catalogue.names():
        assert "1e15" not in catalogue[name], name


def test_a_statement_named_twice_or_without_a_description_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        Catalogue("T", "-- name: a\n-- one\nSELECT 1\n-- name: a\n-- two\nSELECT 2\n")
    with pytest.raises(ValueError, match="description"):
        Catalogue("T", "-- name: a\nSELECT 1\n")


def test_an_unknown_statement_is_a_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="no statement 'nope'"):
        SQLITE["nope"]
