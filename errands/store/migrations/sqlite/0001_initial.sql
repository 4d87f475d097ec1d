-- errands schema 1: executions, cancel/terminate requests, task-queue rate buckets.
-- Times are REAL seconds since the epoch; 1e15 stands for "no deadline".

CREATE TABLE executions (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    activity_id TEXT NOT NULL,
    run_id TEXT NOT NULL UNIQUE,
    activity_type TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    status TEXT NOT NULL,               -- RUNNING COMPLETED FAILED CANCELED TERMINATED TIMED_OUT
    run_state TEXT,                     -- SCHEDULED STARTED CANCEL_REQUESTED while RUNNING, else NULL
    attempt INTEGER NOT NULL,
    input BLOB NOT NULL,
    result BLOB,
    failure BLOB,                       -- the last attempt's encoded failure
    timeout_type INTEGER,               -- set when a timeout fired (lifecycle TimeoutType)
    heartbeat_details BLOB,
    heartbeat_count INTEGER NOT NULL DEFAULT 0,
    last_heartbeat_time REAL,
    schedule_time REAL NOT NULL,
    ready_at REAL NOT NULL,             -- when the current attempt became (or becomes) claimable
    started_time REAL,
    close_time REAL,
    s2c_deadline REAL NOT NULL,         -- schedule_time + schedule_to_close, or 1e15
    attempt_deadline REAL NOT NULL,     -- min(start + start_to_close, s2c_deadline) while started
    deadline REAL NOT NULL,             -- the next timeout of the current state
    schedule_to_close_s REAL,
    schedule_to_start_s REAL,
    start_to_close_s REAL,
    heartbeat_s REAL,
    retry_policy TEXT NOT NULL,
    priority_key INTEGER NOT NULL,
    start_delay_s REAL,
    canceled_reason TEXT,
    identity TEXT,
    summary TEXT,
    retry_interval_s REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);

-- Claims: a range scan over the ready tasks of one queue, in priority order.
CREATE INDEX executions_claim ON executions (namespace, task_queue, priority_key, ready_at, id)
    WHERE run_state = 'SCHEDULED';
-- Timers: the open executions whose next deadline has passed.
CREATE INDEX executions_deadline ON executions (namespace, deadline) WHERE status = 'RUNNING';
-- One running execution per id; the latest run of an id.
CREATE UNIQUE INDEX executions_running_id ON executions (namespace, activity_id)
    WHERE status = 'RUNNING';
CREATE INDEX executions_id ON executions (namespace, activity_id, id);
-- Retention and listing.
CREATE INDEX executions_closed ON executions (namespace, close_time) WHERE status != 'RUNNING';

CREATE TABLE interrupts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    kind TEXT NOT NULL,                 -- cancel | terminate
    created REAL NOT NULL
);

CREATE TABLE queue_rates (
    namespace TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    tokens REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (namespace, task_queue)
);
