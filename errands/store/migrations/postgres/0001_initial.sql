-- errands schema 1 on PostgreSQL: executions, cancel/terminate requests, task-queue rate buckets.
-- Runs inside the schema named by the store URL (search_path). Times are float8 seconds since
-- the epoch on the database clock; 1e15 stands for "no deadline" (errands._lifecycle.FAR).

CREATE TABLE executions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace text NOT NULL,
    activity_id text NOT NULL,
    run_id text NOT NULL UNIQUE,
    activity_type text NOT NULL,
    task_queue text NOT NULL,
    status text NOT NULL,               -- RUNNING COMPLETED FAILED CANCELED TERMINATED TIMED_OUT
    run_state text,                     -- SCHEDULED STARTED CANCEL_REQUESTED while RUNNING, else NULL
    attempt integer NOT NULL,
    input bytea NOT NULL,
    result bytea,
    failure bytea,                      -- the last attempt's encoded failure
    timeout_type integer,               -- set when a timeout fired (lifecycle TimeoutType)
    heartbeat_details bytea,
    heartbeat_count integer NOT NULL DEFAULT 0,
    last_heartbeat_time float8,
    schedule_time float8 NOT NULL,
    ready_at float8 NOT NULL,           -- when the current attempt became (or becomes) claimable
    started_time float8,
    close_time float8,
    s2c_deadline float8 NOT NULL,       -- schedule_time + schedule_to_close, or 1e15
    attempt_deadline float8 NOT NULL,   -- min(start + start_to_close, s2c_deadline) while started
    deadline float8 NOT NULL,           -- the next timeout of the current state
    schedule_to_close_s float8,
    schedule_to_start_s float8,
    start_to_close_s float8,
    heartbeat_s float8,
    retry_policy text NOT NULL,
    priority_key integer NOT NULL,
    start_delay_s float8,
    canceled_reason text,
    identity text,
    summary text,
    retry_interval_s float8,
    cancel_requested boolean NOT NULL DEFAULT false
);

-- Claims: a range scan over the ready tasks of one queue, in priority order.
CREATE INDEX executions_claim ON executions (namespace, task_queue, priority_key, ready_at, id)
    WHERE run_state = 'SCHEDULED';
-- Timers: the open executions whose next deadline has passed.
CREATE INDEX executions_deadline ON executions (namespace, deadline) WHERE status = 'RUNNING';
-- One running execution per id (what makes concurrent starts of one id race-free).
CREATE UNIQUE INDEX executions_running_id ON executions (namespace, activity_id)
    WHERE status = 'RUNNING';
-- The latest run of an id.
CREATE INDEX executions_id ON executions (namespace, activity_id, id);
-- Retention and listing.
CREATE INDEX executions_closed ON executions (namespace, close_time) WHERE status <> 'RUNNING';

-- Cancel / terminate requests for started attempts, read by cursor (seq). Writers take
-- LOCK TABLE interrupts IN EXCLUSIVE MODE before inserting, so seq order is commit order and
-- a reader never moves its cursor past a request that commits later.
CREATE TABLE interrupts (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace text NOT NULL,
    run_id text NOT NULL,
    attempt integer NOT NULL,
    kind text NOT NULL,                 -- cancel | terminate
    created float8 NOT NULL
);
CREATE INDEX interrupts_namespace ON interrupts (namespace, seq);

CREATE TABLE queue_rates (
    namespace text NOT NULL,
    task_queue text NOT NULL,
    tokens float8 NOT NULL,
    updated float8 NOT NULL,
    PRIMARY KEY (namespace, task_queue)
);
