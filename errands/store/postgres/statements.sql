-- The PostgreSQL store's statements. Parameters are named (%(name)s); a list
-- parameter is an array. Times are float8 seconds since the epoch on the
-- database clock; 1e15 stands for "no deadline" (lifecycle.FAR, passed in as
-- %(far)s). Bulk statements (insert_execution, heartbeat, complete) take their
-- rows as one JSON array of objects (%(rows)s; bytes in base64) and their keys
-- as an array (%(keys)s): "run_id = ANY(...)" steers the planner to the
-- run_id index. Rows another transaction changes are locked (FOR UPDATE)
-- before a decision is taken on them. %(now)s is read when a transaction
-- begins, and under READ COMMITTED a claim begun later may commit first: an
-- execution closes at GREATEST(%(now)s, started_time), never before its last
-- attempt started (SQLite's writers take turns, so its "now" needs no such care).

-- name: latest_of_id
-- The latest run of an activity id: its status and run id.
SELECT status, run_id FROM executions WHERE namespace = %(ns)s AND activity_id = %(activity_id)s
ORDER BY id DESC LIMIT 1

-- name: insert_execution
-- Record new SCHEDULED executions in bulk; returns the run ids inserted (an
-- id running already, or a run id taken, inserts nothing).
INSERT INTO executions (namespace, activity_id, run_id, activity_type, task_queue, status,
    run_state, attempt, input, schedule_time, ready_at, s2c_deadline, attempt_deadline,
    deadline, schedule_to_close_s, schedule_to_start_s, start_to_close_s, heartbeat_s,
    retry_policy, priority_key, start_delay_s, summary, search_attributes, headers)
SELECT r.namespace, r.activity_id, r.run_id, r.activity_type, r.task_queue, 'RUNNING',
    'SCHEDULED', 1, decode(r.input, 'base64'), %(now)s, r.ready_at, r.s2c_deadline, %(far)s,
    r.deadline, r.schedule_to_close_s, r.schedule_to_start_s, r.start_to_close_s, r.heartbeat_s,
    r.retry_policy, r.priority_key, r.start_delay_s, r.summary, r.search_attributes,
    decode(r.headers, 'base64')
FROM json_to_recordset(%(rows)s::json) AS r(namespace text, activity_id text, run_id text,
    activity_type text, task_queue text, input text, ready_at float8, s2c_deadline float8,
    deadline float8, schedule_to_close_s float8, schedule_to_start_s float8,
    start_to_close_s float8, heartbeat_s float8, retry_policy text, priority_key int,
    start_delay_s float8, summary text, search_attributes text, headers text)
ON CONFLICT DO NOTHING
RETURNING run_id

-- name: running_of_id
-- The running execution of an activity id, if any.
SELECT run_id FROM executions WHERE namespace = %(ns)s AND activity_id = %(activity_id)s
AND status = 'RUNNING'

-- name: run_id_taken
-- Whether a run id is in use.
SELECT run_id FROM executions WHERE run_id = %(run_id)s

-- name: claim
-- Start up to %(n)s ready attempts of a queue (smallest priority key first,
-- then in the order they became ready; rows other claims hold are skipped)
-- and, when fewer than %(max)s are taken, find when the queue's next one
-- becomes claimable, in one round trip. Always returns a row: with nothing
-- claimed its task columns are NULL. xact: the transaction's id once the claim
-- took a row (the writer needs it before COMMIT, to ask a lost commit's fate).
WITH claimed AS (
    UPDATE executions SET run_state = 'STARTED', started_time = %(now)s,
        identity = %(identity)s, owner = %(owner)s,
        attempt_start_to_close_s = start_to_close_s, attempt_heartbeat_s = heartbeat_s,
        attempt_deadline = least(s2c_deadline, %(now)s + coalesce(start_to_close_s, %(far)s)),
        deadline = least(s2c_deadline, %(now)s + coalesce(start_to_close_s, %(far)s),
            %(now)s + coalesce(heartbeat_s, %(far)s))
    WHERE id IN (SELECT id FROM executions WHERE namespace = %(ns)s AND task_queue = %(tq)s
        AND run_state = 'SCHEDULED' AND ready_at <= %(now)s AND deadline > %(now)s
        AND (%(only)s::text[] IS NULL OR activity_type = ANY(%(only)s::text[]))
        AND (%(skip)s::text[] IS NULL OR activity_type <> ALL(%(skip)s::text[]))
        ORDER BY priority_key, ready_at, id LIMIT %(n)s FOR UPDATE SKIP LOCKED)
    RETURNING *)
SELECT c.*, nxt.next_ready, pg_current_xact_id_if_assigned()::text AS xact FROM (
    SELECT CASE WHEN (SELECT count(*) FROM claimed) < %(max)s THEN (
        SELECT min(ready_at) FROM executions WHERE namespace = %(ns)s AND task_queue = %(tq)s
        AND run_state = 'SCHEDULED'
        AND (%(only)s::text[] IS NULL OR activity_type = ANY(%(only)s::text[]))
        AND (%(skip)s::text[] IS NULL OR activity_type <> ALL(%(skip)s::text[]))
        AND id NOT IN (SELECT id FROM claimed)) END AS next_ready) AS nxt
LEFT JOIN claimed AS c ON true

-- name: next_ready
-- When the queue's next scheduled execution becomes claimable.
SELECT min(ready_at) AS next_ready FROM executions WHERE namespace = %(ns)s
AND task_queue = %(tq)s AND run_state = 'SCHEDULED'
AND (%(only)s::text[] IS NULL OR activity_type = ANY(%(only)s::text[]))
AND (%(skip)s::text[] IS NULL OR activity_type <> ALL(%(skip)s::text[]))

-- name: queue_backlog
-- Per queue of a namespace: how many executions are claimable now and when
-- the first of them became claimable. Reads only the claim index
-- (executions_claim, partial on SCHEDULED rows), one entry per waiting row.
-- Times are the database's (:now is not used).
SELECT task_queue, count(*) AS backlog, min(ready_at) AS oldest_ready,
    extract(epoch FROM statement_timestamp())::float8 AS db_now FROM executions
WHERE namespace = %(ns)s AND run_state = 'SCHEDULED'
    AND ready_at <= extract(epoch FROM statement_timestamp())::float8
GROUP BY task_queue

-- name: queue_rate_add
-- Make a queue's token bucket, full, if it has none.
INSERT INTO queue_rates (namespace, task_queue, tokens, updated)
VALUES (%(ns)s, %(tq)s, %(tokens)s, %(now)s) ON CONFLICT DO NOTHING

-- name: queue_rate_lock
-- A queue's token bucket, locked until commit (so two processes never spend
-- the same tokens).
SELECT tokens, updated FROM queue_rates WHERE namespace = %(ns)s AND task_queue = %(tq)s
FOR UPDATE

-- name: queue_rate_spend
-- Leave %(tokens)s in a queue's bucket.
UPDATE queue_rates SET tokens = %(tokens)s, updated = %(now)s
WHERE namespace = %(ns)s AND task_queue = %(tq)s

-- name: heartbeat
-- Record heartbeats of current attempts in bulk (NULL details keep the old
-- ones) and push their heartbeat deadlines; stale attempts return no row.
UPDATE executions e SET
    heartbeat_details = coalesce(decode(r.data, 'base64'), e.heartbeat_details),
    heartbeat_count = e.heartbeat_count + 1, last_heartbeat_time = %(now)s,
    deadline = CASE WHEN e.attempt_heartbeat_s IS NULL THEN e.attempt_deadline
        ELSE least(e.attempt_deadline, %(now)s + e.attempt_heartbeat_s) END
FROM json_to_recordset(%(rows)s::json) AS r(run_id text, attempt int, data text)
WHERE e.run_id = ANY(%(keys)s) AND e.run_id = r.run_id AND e.attempt = r.attempt
AND e.run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED') AND e.deadline > %(now)s
RETURNING e.run_id, e.attempt, e.cancel_requested, e.run_state

-- name: complete
-- Close current attempts' executions COMPLETED in bulk (keeping the last
-- attempt's failure for describe); stale attempts return no row.
UPDATE executions e SET status = 'COMPLETED', run_state = NULL,
    result = decode(r.data, 'base64'), close_time = GREATEST(%(now)s, e.started_time), deadline = %(far)s
FROM json_to_recordset(%(rows)s::json) AS r(run_id text, attempt int, data text)
WHERE e.run_id = ANY(%(keys)s) AND e.run_id = r.run_id AND e.attempt = r.attempt
AND e.run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED') AND e.deadline > %(now)s
RETURNING e.run_id, e.attempt

-- name: close_cancelled
-- Close the current attempt's execution CANCELED; no row if the attempt is stale.
UPDATE executions SET status = 'CANCELED', run_state = NULL, failure = %(failure)s,
    timeout_type = NULL, close_time = GREATEST(%(now)s, started_time), deadline = %(far)s
WHERE run_id = %(run_id)s AND attempt = %(attempt)s
AND run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED') AND deadline > %(now)s
RETURNING run_id

-- name: current_attempt
-- What the lifecycle needs to decide a failure of the current attempt, locked;
-- no row if the attempt is stale.
SELECT id, namespace, task_queue, run_id, attempt, run_state, retry_policy, cancel_requested,
    s2c_deadline, ready_at, started_time, last_heartbeat_time, schedule_to_start_s,
    start_to_close_s, heartbeat_s, deadline, attempt_base, attempt_start_to_close_s,
    attempt_heartbeat_s
FROM executions WHERE run_id = %(run_id)s AND attempt = %(attempt)s
AND run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED') AND deadline > %(now)s FOR UPDATE

-- name: due_of_run
-- The lifecycle's view of a run whose deadline has passed, if it has, locked.
SELECT id, namespace, task_queue, run_id, attempt, run_state, retry_policy, cancel_requested,
    s2c_deadline, ready_at, started_time, last_heartbeat_time, schedule_to_start_s,
    start_to_close_s, heartbeat_s, deadline, attempt_base, attempt_start_to_close_s,
    attempt_heartbeat_s
FROM executions WHERE run_id = %(run_id)s AND status = 'RUNNING' AND deadline <= %(now)s
FOR UPDATE

-- name: due
-- Open executions of a namespace whose deadline has passed, locked; rows
-- another transaction holds are skipped (it is changing them; the next pass
-- looks again).
SELECT id, namespace, task_queue, run_id, attempt, run_state, retry_policy, cancel_requested,
    s2c_deadline, ready_at, started_time, last_heartbeat_time, schedule_to_start_s,
    start_to_close_s, heartbeat_s, deadline, attempt_base, attempt_start_to_close_s,
    attempt_heartbeat_s
FROM executions WHERE namespace = %(ns)s AND status = 'RUNNING' AND deadline <= %(now)s
LIMIT %(limit)s FOR UPDATE SKIP LOCKED

-- name: due_of_runs
-- Those of some runs whose deadline has passed, locked (held ones skipped).
SELECT id, namespace, task_queue, run_id, attempt, run_state, retry_policy, cancel_requested,
    s2c_deadline, ready_at, started_time, last_heartbeat_time, schedule_to_start_s,
    start_to_close_s, heartbeat_s, deadline, attempt_base, attempt_start_to_close_s,
    attempt_heartbeat_s
FROM executions WHERE run_id = ANY(%(ids)s) AND status = 'RUNNING' AND deadline <= %(now)s
LIMIT %(limit)s FOR UPDATE SKIP LOCKED

-- name: next_deadline
-- The earliest deadline of a namespace's open executions, and the database clock.
SELECT min(deadline) AS next_deadline, extract(epoch FROM clock_timestamp())::float8 AS db_now
FROM executions WHERE namespace = %(ns)s AND status = 'RUNNING'

-- name: next_deadline_of_runs
-- The earliest deadline of some open runs, and the database clock.
SELECT min(deadline) AS next_deadline, extract(epoch FROM clock_timestamp())::float8 AS db_now
FROM executions WHERE run_id = ANY(%(ids)s) AND status = 'RUNNING'

-- name: retry
-- Schedule the next attempt (run_state SCHEDULED), or hold it for
-- unpause (PAUSED), if the row is still as the decision read it.
UPDATE executions SET run_state = %(run_state)s, attempt = %(next_attempt)s, owner = NULL,
    ready_at = %(ready_at)s, deadline = %(deadline)s, attempt_deadline = %(far)s,
    failure = %(failure)s, timeout_type = %(timeout_type)s, retry_interval_s = %(interval_s)s
WHERE id = %(id)s AND attempt = %(attempt)s AND deadline = %(deadline_was)s

-- name: close_failed
-- Close FAILED or TIMED_OUT after an attempt's failure, if the row is still as
-- the decision read it.
UPDATE executions SET status = %(status)s, run_state = NULL, failure = %(failure)s,
    timeout_type = %(timeout_type)s, close_time = GREATEST(%(now)s, started_time), deadline = %(far)s
WHERE id = %(id)s AND attempt = %(attempt)s AND deadline = %(deadline_was)s

-- name: reset_deadline
-- Put back a row's real deadline (a timer found the stored one stale).
UPDATE executions SET deadline = %(deadline)s WHERE id = %(id)s AND deadline = %(deadline_was)s

-- name: find_latest
-- The execution a steering verb (cancel, pause, reset ...) without a run id is about, locked.
SELECT id, run_id, status, run_state, attempt, attempt_base, cancel_requested, namespace,
    task_queue, schedule_time, ready_at, deadline, s2c_deadline, started_time, retry_interval_s,
    schedule_to_close_s, schedule_to_start_s, start_to_close_s, heartbeat_s, start_delay_s,
    retry_policy, priority_key, original_options, attempt_start_to_close_s FROM executions
WHERE namespace = %(ns)s AND activity_id = %(activity_id)s ORDER BY id DESC LIMIT 1 FOR UPDATE

-- name: find_run
-- The execution a steering verb of one run is about, locked.
SELECT id, run_id, status, run_state, attempt, attempt_base, cancel_requested, namespace,
    task_queue, schedule_time, ready_at, deadline, s2c_deadline, started_time, retry_interval_s,
    schedule_to_close_s, schedule_to_start_s, start_to_close_s, heartbeat_s, start_delay_s,
    retry_policy, priority_key, original_options, attempt_start_to_close_s FROM executions
WHERE namespace = %(ns)s AND activity_id = %(activity_id)s AND run_id = %(run_id)s FOR UPDATE

-- name: cancel_scheduled
-- Close a scheduled execution CANCELED.
UPDATE executions SET status = 'CANCELED', run_state = NULL, close_time = GREATEST(%(now)s, started_time),
    canceled_reason = %(reason)s, cancel_requested = true, deadline = %(far)s WHERE id = %(id)s

-- name: cancel_started
-- Ask a started attempt to stop (its worker learns it through the change feed).
UPDATE executions SET run_state = 'CANCEL_REQUESTED', cancel_requested = true,
    canceled_reason = %(reason)s WHERE id = %(id)s

-- name: terminate
-- Close an open execution TERMINATED.
UPDATE executions SET status = 'TERMINATED', run_state = NULL, close_time = GREATEST(%(now)s, started_time),
    canceled_reason = %(reason)s, deadline = %(far)s WHERE id = %(id)s

-- name: describe_latest
-- The latest run of an activity id.
SELECT * FROM executions WHERE namespace = %(ns)s AND activity_id = %(activity_id)s
ORDER BY id DESC LIMIT 1

-- name: describe_run
-- One run of an activity id.
SELECT * FROM executions WHERE namespace = %(ns)s AND activity_id = %(activity_id)s
AND run_id = %(run_id)s

-- name: records_of_runs
-- The executions with these run ids.
SELECT * FROM executions WHERE run_id = ANY(%(ids)s)

-- name: states_of_runs
-- Status, state, attempt and result of these runs. (Open ones are not left
-- out in SQL: "status <> 'RUNNING'" would let the planner scan the retention
-- index of every closed execution.)
SELECT run_id, status, run_state, attempt, attempt_base, result FROM executions WHERE run_id = ANY(%(ids)s)

-- name: list_executions
-- Executions matching a visibility query ({where}) in an order ({order}:
-- newest first, or by a time).
SELECT * FROM executions WHERE {where} ORDER BY {order} LIMIT %(limit)s

-- name: list_by_attribute
-- Executions with a search attribute value ({driver}, of the name
-- %(d_name)s) that match the rest of a visibility query ({where}), newest
-- first: a walk down the attribute's index that stops after %(limit)s rows.
SELECT e.* FROM (SELECT execution_id FROM search_attributes
    WHERE namespace = %(ns)s AND name = %(d_name)s AND {driver}) AS d
JOIN executions AS e ON e.id = d.execution_id
WHERE {where} ORDER BY d.execution_id DESC LIMIT %(limit)s

-- name: count_executions
-- How many executions match a visibility query ({where}), per status as
-- reported (a paused execution is a RUNNING row whose run state is PAUSED).
SELECT CASE WHEN run_state = 'PAUSED' THEN 'PAUSED' ELSE status END AS status,
    count(*) AS n FROM executions WHERE {where} GROUP BY 1

-- name: count_counted
-- How many executions match a visibility query over task queue, activity
-- type and status only ({where}, over execution_counts), per status.
SELECT status, sum(n) AS n FROM execution_counts WHERE {where} GROUP BY status

-- name: count_counted_by
-- How many executions match a visibility query over task queue, activity
-- type and status only ({where}, over execution_counts), per value of a
-- column ({group}: task_queue or activity_type).
SELECT {group} AS value, sum(n) AS n FROM execution_counts WHERE {where} GROUP BY 1

-- name: count_executions_by
-- How many executions match a visibility query ({where}), per value of a
-- column ({group}: task_queue or activity_type).
SELECT {group} AS value, count(*) AS n FROM executions WHERE {where} GROUP BY 1

-- name: notify_and_commit
-- Tell the other processes' listeners what this transaction changed (each
-- payload on its group's channel, under PostgreSQL's 8,000 bytes) and
-- commit, in one round trip. {channels} and {payloads} are filled in as
-- literals.
SELECT pg_notify(c, p) FROM unnest({channels}::text[], {payloads}::text[]) AS t(c, p); COMMIT

-- name: attempt_begin
-- Record that attempts began, in bulk.
INSERT INTO attempts (run_id, attempt, attempt_number, started_time, identity, outcome,
    heartbeats_before)
SELECT r.run_id, r.attempt, r.attempt_number, %(now)s, r.identity, 'RUNNING', r.heartbeats_before
FROM json_to_recordset(%(rows)s::json) AS r(run_id text, attempt int, attempt_number int,
    identity text, heartbeats_before int)
ON CONFLICT (run_id, attempt) DO UPDATE SET started_time = excluded.started_time,
    attempt_number = excluded.attempt_number,
    identity = excluded.identity, outcome = 'RUNNING', closed_time = NULL, failure = NULL,
    heartbeats_before = excluded.heartbeats_before

-- name: attempts_forget
-- Forget attempts more than 100 before a run's current one.
DELETE FROM attempts WHERE run_id = %(run_id)s AND attempt <= %(attempt)s - 100

-- name: attempt_end
-- Close running attempts with their outcomes, in bulk (%(rows)s: run_id,
-- attempt, outcome, failure, timeout type), counting each one's heartbeats from its
-- execution's. Never closed before it started: %(now)s is read when this
-- transaction began, and under READ COMMITTED it can close an attempt that a
-- transaction begun later committed meanwhile.
UPDATE attempts a SET closed_time = GREATEST(%(now)s, a.started_time), outcome = r.outcome,
    failure = decode(r.failure, 'base64'), timeout_type = r.timeout,
    heartbeat_count = e.heartbeat_count - a.heartbeats_before,
    last_heartbeat_time = CASE WHEN e.last_heartbeat_time >= a.started_time
        THEN e.last_heartbeat_time END
FROM json_to_recordset(%(rows)s::json) AS r(run_id text, attempt int, outcome text,
    failure text, timeout int), executions e
WHERE a.run_id = ANY(%(keys)s) AND a.run_id = r.run_id AND a.attempt = r.attempt
AND a.closed_time IS NULL AND e.run_id = a.run_id

-- name: attempts_of_run
-- Every attempt kept of a run, oldest first.
SELECT * FROM attempts WHERE run_id = %(run_id)s ORDER BY attempt

-- name: prunable
-- The run ids of a batch of a namespace's executions closed before a time.
SELECT run_id FROM executions WHERE namespace = %(ns)s AND status <> 'RUNNING'
AND close_time < %(before)s LIMIT %(limit)s

-- name: prune_attempts
-- Delete the attempts of these runs.
DELETE FROM attempts WHERE run_id IN (SELECT unnest(%(ids)s::text[]))

-- name: prune_runs
-- Delete these executions.
DELETE FROM executions WHERE run_id IN (SELECT unnest(%(ids)s::text[]))

-- name: retry_now
-- Make a scheduled execution that waits (a retry backoff, a start delay)
-- claimable now, if it still waits as it was read.
UPDATE executions SET ready_at = %(now)s, deadline = %(deadline)s
WHERE id = %(id)s AND run_state = 'SCHEDULED' AND ready_at = %(ready_was)s

-- name: pause_scheduled
-- Pause an execution no attempt of which runs (only schedule_to_close counts
-- while it is paused: %(deadline)s).
UPDATE executions SET run_state = 'PAUSED', deadline = %(deadline)s
WHERE id = %(id)s AND run_state = 'SCHEDULED'

-- name: move_run_state
-- Move a running execution from one state to another (a pause requested of
-- its attempt, or withdrawn), if it is still in the first.
UPDATE executions SET run_state = %(to_state)s WHERE id = %(id)s AND run_state = %(from_state)s

-- name: unpause
-- Make a paused execution dispatchable again at %(ready_at)s.
UPDATE executions SET run_state = 'SCHEDULED', ready_at = %(ready_at)s, deadline = %(deadline)s
WHERE id = %(id)s AND run_state = 'PAUSED'

-- name: close_at_once
-- Close with %(status)s (CANCELED or TERMINATED) those of these executions
-- (%(ids)s) still open in one of %(states)s (the states in which no attempt
-- runs); the row and run ids of those it closed. A closed row's run_state is
-- NULL, so the state test is the open test too; status is not tested, so the
-- planner looks the ids up by primary key and not through a partial index on
-- status = 'RUNNING' (whose statistics lag after a burst of starts).
UPDATE executions SET status = %(status)s, run_state = NULL, close_time = GREATEST(%(now)s, started_time),
    canceled_reason = %(reason)s, cancel_requested = (cancel_requested OR %(cancel_requested)s),
    deadline = %(far)s
WHERE id = ANY(%(ids)s::bigint[]) AND run_state = ANY(%(states)s)
RETURNING id, run_id

-- name: open_matching
-- The open executions matching a visibility query ({where}), in id order,
-- for a bulk action.
SELECT id FROM executions WHERE {where} AND status = 'RUNNING' ORDER BY id

-- name: open_matching_of
-- Those of these executions (%(ids)s) still open and matching a visibility
-- query ({where}), each looked up by primary key and locked. LATERAL and
-- "run_state IS NOT NULL" (a closed row's run_state is NULL) rather than
-- status = 'RUNNING': the planner cannot pick, per id, a scan of a partial
-- index on status = 'RUNNING' (whose statistics lag after a burst of
-- starts). Not SKIP LOCKED: a row a claim or an outcome holds is waited for
-- (briefly), not passed over.
SELECT e.id, e.activity_id, e.run_id FROM unnest(%(ids)s::bigint[]) AS b(id),
LATERAL (SELECT id, activity_id, run_id FROM executions
    WHERE id = b.id AND {where} AND run_state IS NOT NULL FOR UPDATE) AS e

-- name: reset
-- Reset an execution whose attempt and state are still as read: the next
-- attempt is number 1 (attempt_base moves up to the serial so far), ready at
-- %(ready_at)s (%(run_state)s: SCHEDULED, or PAUSED to keep it paused); heartbeat
-- details go if %(reset_heartbeat)s.
UPDATE executions SET run_state = %(run_state)s, attempt = attempt + 1, attempt_base = attempt,
    owner = NULL,
    ready_at = %(ready_at)s, deadline = %(deadline)s, attempt_deadline = %(far)s, retry_interval_s = NULL,
    heartbeat_details = CASE WHEN %(reset_heartbeat)s THEN NULL ELSE heartbeat_details END
WHERE id = %(id)s AND attempt = %(attempt_was)s AND run_state = %(state_was)s

-- name: update_options
-- Set an open execution's options, and the times they move, if its attempt
-- and state are still as read; %(original)s keeps the start's options (NULL
-- once restored).
UPDATE executions SET task_queue = %(task_queue)s, schedule_to_close_s = %(schedule_to_close_s)s,
    schedule_to_start_s = %(schedule_to_start_s)s, start_to_close_s = %(start_to_close_s)s,
    heartbeat_s = %(heartbeat_s)s, start_delay_s = %(start_delay_s)s, retry_policy = %(retry_policy)s,
    priority_key = %(priority_key)s, original_options = %(original)s, ready_at = %(ready_at)s,
    s2c_deadline = %(s2c_deadline)s, deadline = %(deadline)s, attempt_deadline = %(attempt_deadline)s,
    retry_interval_s = %(interval_s)s
WHERE id = %(id)s AND attempt = %(attempt_was)s AND run_state = %(state_was)s

-- name: owner_add
-- Record a process's hold on the store, once its liveness token is held.
INSERT INTO owners (owner, host, pid, started, lock_key)
VALUES (%(owner)s, %(host)s, %(pid)s, %(now)s, %(lock_key)s)

-- name: owners
-- Every process holding the store (liveness: see the migration of schema 6).
SELECT owner, host, pid, started, lock_key FROM owners

-- name: owner_forget
-- Forget a process's hold on the store (it closed, or it died).
DELETE FROM owners WHERE owner = %(owner)s

-- name: workers_of_owner_forget
-- Forget the workers of a process.
DELETE FROM workers WHERE owner = %(owner)s

-- name: running_of_owner
-- The lifecycle's view of the attempts a process's workers run, locked.
SELECT id, namespace, task_queue, run_id, attempt, run_state, retry_policy, cancel_requested,
    s2c_deadline, ready_at, started_time, last_heartbeat_time, schedule_to_start_s,
    start_to_close_s, heartbeat_s, deadline, attempt_base, attempt_start_to_close_s,
    attempt_heartbeat_s
FROM executions WHERE owner = %(owner)s AND status = 'RUNNING'
AND run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED') FOR UPDATE

-- name: worker_add
-- Register a worker.
INSERT INTO workers (worker_id, owner, namespace, identity, host, pid, task_queue, slots,
    executor, started, last_seen)
VALUES (%(worker_id)s, %(owner)s, %(namespace)s, %(identity)s, %(host)s, %(pid)s,
    %(task_queue)s, %(slots)s, %(executor)s, %(now)s, %(now)s)

-- name: worker_forget
-- Unregister a worker that stopped.
DELETE FROM workers WHERE worker_id = %(worker_id)s

-- name: worker_seen
-- Note when a worker last claimed work.
UPDATE workers SET last_seen = %(now)s WHERE worker_id = %(worker_id)s

-- name: workers_of_namespace
-- A namespace's workers, oldest first, each with the attempts its process runs
-- on its queue (slots in use).
SELECT w.worker_id, w.owner, w.identity, w.host, w.pid, w.task_queue, w.slots, w.executor,
    w.started, w.last_seen, (SELECT count(*) FROM executions e WHERE e.owner = w.owner
        AND e.namespace = w.namespace AND e.task_queue = w.task_queue AND e.status = 'RUNNING'
        AND e.run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED')) AS used
FROM workers w WHERE w.namespace = %(ns)s ORDER BY w.started, w.worker_id

-- name: owners_liveness
-- Each process holding the store but this one: whether its liveness token (a
-- session advisory lock: class %(class)s, key lock_key) is gone, held by no
-- session of this database, and whether its workers run attempts.
SELECT o.owner, NOT EXISTS (
        SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND l.classid = %(class)s::oid AND l.objid = o.lock_key::oid AND l.objsubid = 2
    ) AS unlocked,
    EXISTS (SELECT 1 FROM executions e WHERE e.owner = o.owner AND e.status = 'RUNNING') AS busy
FROM owners o WHERE o.lock_key IS NOT NULL AND o.owner <> %(me)s

-- name: register_search_attribute
-- Fix the type of a search attribute name, the first time a start uses it.
INSERT INTO search_attribute_names (namespace, name, type) VALUES (%(ns)s, %(attr)s, %(type)s)
ON CONFLICT (namespace, name) DO NOTHING

-- name: search_attribute_type
-- The type a search attribute name was fixed to.
SELECT type FROM search_attribute_names WHERE namespace = %(ns)s AND name = %(attr)s

-- name: search_attribute_types
-- Every search attribute name of a namespace, with its type.
SELECT name, type FROM search_attribute_names WHERE namespace = %(ns)s

-- name: insert_search_attributes
-- Index the search attribute values of new executions, in bulk.
INSERT INTO search_attributes (execution_id, namespace, name, position, text_value,
    int_value, float_value)
SELECT e.id, e.namespace, r.name, r.position, r.text_value, r.int_value, r.float_value
FROM json_to_recordset(%(rows)s::json) AS r(run_id text, name text, position int,
    text_value text, int_value bigint, float_value float8)
JOIN executions AS e ON e.run_id = r.run_id

-- name: prune_search_attributes
-- Delete the search attribute values of these runs.
DELETE FROM search_attributes WHERE execution_id IN (SELECT id FROM executions
WHERE run_id IN (SELECT unnest(%(ids)s::text[])))

-- name: fold_counts
-- Fold the execution counts of connections gone into shard 0, and forget
-- those that are 0.
WITH gone AS (
    DELETE FROM execution_counts
    WHERE shard <> 0 AND shard NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)
    RETURNING namespace, task_queue, activity_type, status, n
), folded AS (
    INSERT INTO execution_counts AS c (namespace, task_queue, activity_type, status, shard, n)
    SELECT namespace, task_queue, activity_type, status, 0, sum(n) FROM gone
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (namespace, status, task_queue, activity_type, shard)
    DO UPDATE SET n = c.n + excluded.n
)
DELETE FROM execution_counts WHERE shard = 0 AND n = 0
