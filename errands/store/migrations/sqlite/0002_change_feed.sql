-- errands schema 2: the change feed replaces the interrupt log.
-- One row per kind of change and key (a queue, a bucket of run ids),
-- bumped to a new seq by every transaction that makes such a
-- change; other processes read the rows past the last seq they saw, only when
-- PRAGMA data_version says another connection committed. Interrupts are now
-- read from the executions themselves.

DROP TABLE interrupts;

CREATE TABLE changes (
    kind TEXT NOT NULL,                 -- started claimable closed interrupt options
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL,                            -- claimable: the earliest time still ahead
    PRIMARY KEY (kind, key)
);
CREATE INDEX changes_seq ON changes (seq);
