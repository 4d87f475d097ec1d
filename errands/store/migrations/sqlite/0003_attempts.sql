-- errands schema 3: every attempt's history (the last 100 per execution),
-- deleted with its execution.

CREATE TABLE attempts (
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_time REAL NOT NULL,
    closed_time REAL,                   -- NULL while the attempt runs
    identity TEXT,                      -- the worker that ran it
    outcome TEXT NOT NULL,              -- RUNNING COMPLETED FAILED TIMED_OUT CANCELED ...
    failure BLOB,                       -- its encoded failure, if it failed
    heartbeats_before INTEGER NOT NULL, -- the execution's heartbeat count when it began
    heartbeat_count INTEGER,            -- this attempt's heartbeats, once closed
    last_heartbeat_time REAL,           -- this attempt's last heartbeat, once closed
    PRIMARY KEY (run_id, attempt)
);
