-- errands schema 3: every attempt's history (the last 100 per execution),
-- deleted with its execution.

CREATE TABLE attempts (
    run_id text NOT NULL,
    attempt integer NOT NULL,
    started_time float8 NOT NULL,
    closed_time float8,                 -- NULL while the attempt runs
    identity text,                      -- the worker that ran it
    outcome text NOT NULL,              -- RUNNING COMPLETED FAILED TIMED_OUT CANCELED ...
    failure bytea,                      -- its encoded failure, if it failed
    heartbeats_before integer NOT NULL, -- the execution's heartbeat count when it began
    heartbeat_count integer,            -- this attempt's heartbeats, once closed
    last_heartbeat_time float8,         -- this attempt's last heartbeat, once closed
    PRIMARY KEY (run_id, attempt)
);
