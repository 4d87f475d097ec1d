-- The SQLite store's statements. Parameters are named (:name); a parameter
-- holding a list arrives as JSON text and is read with json_each. Times are
-- REAL seconds since the epoch; 1e15 stands for "no deadline" (lifecycle.FAR,
-- passed in as :far). A statement that closes an execution also sets its
-- close_seq: the changes table's next position (schema 9).

-- name: latest_of_id
-- The latest run of an activity id: its status and run id.
SELECT status, run_id FROM executions WHERE namespace = :ns AND activity_id = :activity_id
ORDER BY id DESC LIMIT 1

-- name: insert_execution
-- Record a new SCHEDULED execution, one row per call; returns its run id, or
-- no row when the id is running already (or the run id is taken).
INSERT OR IGNORE INTO executions (namespace, activity_id, run_id, activity_type, task_queue,
    status, run_state, attempt, input, schedule_time, ready_at, s2c_deadline, attempt_deadline,
    deadline, schedule_to_close_s, schedule_to_start_s, start_to_close_s, heartbeat_s,
    retry_policy, priority_key, start_delay_s, summary, search_attributes, headers)
VALUES (:namespace, :activity_id, :run_id, :activity_type, :task_queue, 'RUNNING', 'SCHEDULED',
    1, :input, :now, :ready_at, :s2c_deadline, :far, :deadline, :schedule_to_close_s,
    :schedule_to_start_s, :start_to_close_s, :heartbeat_s, :retry_policy, :priority_key,
    :start_delay_s, :summary, :search_attributes, :headers)
RETURNING run_id

-- name: running_of_id
-- The running execution of an activity id, if any.
SELECT run_id FROM executions WHERE namespace = :ns AND activity_id = :activity_id
AND status = 'RUNNING'

-- name: run_id_taken
-- Whether a run id is in use.
SELECT run_id FROM executions WHERE run_id = :run_id

-- name: claim
-- Start up to :n ready attempts of a queue: smallest priority key first, then
-- in the order they became ready (:only / :skip filter types, JSON or NULL).
UPDATE executions SET run_state = 'STARTED', started_time = :now, identity = :identity,
    owner = :owner,
    attempt_start_to_close_s = start_to_close_s, attempt_heartbeat_s = heartbeat_s,
    attempt_deadline = min(s2c_deadline, :now + coalesce(start_to_close_s, :far)),
    deadline = min(s2c_deadline, :now + coalesce(start_to_close_s, :far),
        :now + coalesce(heartbeat_s, :far))
WHERE id IN (SELECT id FROM executions WHERE namespace = :ns AND task_queue = :tq
    AND run_state = 'SCHEDULED' AND ready_at <= :now AND deadline > :now
    AND (:only IS NULL OR activity_type IN (SELECT value FROM json_each(:only)))
    AND (:skip IS NULL OR activity_type NOT IN (SELECT value FROM json_each(:skip)))
    ORDER BY priority_key, ready_at, id LIMIT :n)
RETURNING *

-- name: next_ready
-- When the queue's next scheduled execution becomes claimable.
SELECT min(ready_at) AS next_ready FROM executions WHERE namespace = :ns AND task_queue = :tq
AND run_state = 'SCHEDULED'
AND (:only IS NULL OR activity_type IN (SELECT value FROM json_each(:only)))
AND (:skip IS NULL OR activity_type NOT IN (SELECT value FROM json_each(:skip)))

-- name: queue_backlog
-- Per queue of a namespace: how many executions are claimable now and when
-- the first of them became claimable. Reads only the claim index
-- (executions_claim, partial on SCHEDULED rows), one entry per waiting row.
SELECT task_queue, count(*) AS backlog, min(ready_at) AS oldest_ready, :now AS db_now
FROM executions WHERE namespace = :ns AND run_state = 'SCHEDULED' AND ready_at <= :now
GROUP BY task_queue

-- name: queue_rate_add
-- Make a queue's token bucket, full, if it has none.
INSERT INTO queue_rates (namespace, task_queue, tokens, updated) VALUES (:ns, :tq, :tokens, :now)
ON CONFLICT DO NOTHING

-- name: queue_rate_lock
-- A queue's token bucket (the writer holds the database's write lock).
SELECT tokens, updated FROM queue_rates WHERE namespace = :ns AND task_queue = :tq

-- name: queue_rate_spend
-- Leave :tokens in a queue's bucket.
UPDATE queue_rates SET tokens = :tokens, updated = :now WHERE namespace = :ns AND task_queue = :tq

-- name: heartbeat
-- Record a heartbeat of the current attempt (NULL details keep the old ones)
-- and push its heartbeat deadline; no row if the attempt is stale.
UPDATE executions SET heartbeat_details = coalesce(:data, heartbeat_details),
    heartbeat_count = heartbeat_count + 1, last_heartbeat_time = :now,
    deadline = CASE WHEN attempt_heartbeat_s IS NULL THEN attempt_deadline
        ELSE min(attempt_deadline, :now + attempt_heartbeat_s) END
WHERE run_id = :run_id AND attempt = :attempt AND run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED')
AND deadline > :now
RETURNING run_id, attempt, cancel_requested, run_state

-- name: complete
-- Close the current attempt's execution COMPLETED (keeping the last attempt's
-- failure for describe); no row if the attempt is stale.
UPDATE executions SET status = 'COMPLETED', run_state = NULL, result = :data,
    close_time = :now, close_seq = (SELECT coalesce(max(seq), 0) + 1 FROM changes), deadline = :far
WHERE run_id = :run_id AND attempt = :attempt AND run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED')
AND deadline > :now
RETURNING run_id, attempt

-- name: close_cancelled
-- Close the current attempt's execution CANCELED; no row if the attempt is stale.
UPDATE executions SET status = 'CANCELED', run_state = NULL, failure = :failure,
    timeout_type = NULL, close_time = :now, close_seq = (SELECT coalesce(max(seq), 0) + 1 FROM changes), deadline = :far
WHERE run_id = :run_id AND attempt = :attempt AND run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED')
AND deadline > :now
RETURNING run_id

-- name: current_attempt
-- What the lifecycle needs to decide a failure of the current attempt; no row
-- if the attempt is stale.
SELECT id, namespace, task_queue, run_id, attempt, run_state, retry_policy, cancel_requested,
    s2c_deadline, ready_at, started_time, last_heartbeat_time, schedule_to_start_s,
    start_to_close_s, heartbeat_s, deadline, attempt_base, attempt_start_to_close_s,
    attempt_heartbeat_s
FROM executions WHERE run_id = :run_id AND attempt = :attempt
AND run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED') AND deadline > :now

-- name: due_of_run
-- The lifecycle's view of a run whose deadline has passed, if it has.
SELECT id, namespace, task_queue, run_id, attempt, run_state, retry_policy, cancel_requested,
    s2c_deadline, ready_at, started_time, last_heartbeat_time, schedule_to_start_s,
    start_to_close_s, heartbeat_s, deadline, attempt_base, attempt_start_to_close_s,
    attempt_heartbeat_s
FROM executions WHERE run_id = :run_id AND status = 'RUNNING' AND deadline <= :now

-- name: due
-- Open executions of a namespace whose deadline has passed.
SELECT id, namespace, task_queue, run_id, attempt, run_state, retry_policy, cancel_requested,
    s2c_deadline, ready_at, started_time, last_heartbeat_time, schedule_to_start_s,
    start_to_close_s, heartbeat_s, deadline, attempt_base, attempt_start_to_close_s,
    attempt_heartbeat_s
FROM executions WHERE namespace = :ns AND status = 'RUNNING' AND deadline <= :now LIMIT :limit

-- name: due_of_runs
-- Those of some runs (:ids, JSON) whose deadline has passed.
SELECT id, namespace, task_queue, run_id, attempt, run_state, retry_policy, cancel_requested,
    s2c_deadline, ready_at, started_time, last_heartbeat_time, schedule_to_start_s,
    start_to_close_s, heartbeat_s, deadline, attempt_base, attempt_start_to_close_s,
    attempt_heartbeat_s
FROM executions WHERE run_id IN (SELECT value FROM json_each(:ids)) AND status = 'RUNNING'
AND deadline <= :now LIMIT :limit

-- name: next_deadline
-- The earliest deadline of a namespace's open executions, and the clock.
SELECT min(deadline) AS next_deadline, :now AS db_now FROM executions
WHERE namespace = :ns AND status = 'RUNNING'

-- name: next_deadline_of_runs
-- The earliest deadline of some open runs (:ids, JSON), and the clock.
SELECT min(deadline) AS next_deadline, :now AS db_now FROM executions
WHERE run_id IN (SELECT value FROM json_each(:ids)) AND status = 'RUNNING'

-- name: retry
-- Schedule the next attempt (run_state SCHEDULED), or hold it for
-- unpause (PAUSED), if the row is still as the decision read it.
UPDATE executions SET run_state = :run_state, attempt = :next_attempt, owner = NULL,
    ready_at = :ready_at,
    deadline = :deadline, attempt_deadline = :far, failure = :failure,
    timeout_type = :timeout_type, retry_interval_s = :interval_s
WHERE id = :id AND attempt = :attempt AND deadline = :deadline_was

-- name: close_failed
-- Close FAILED or TIMED_OUT after an attempt's failure, if the row is still as
-- the decision read it.
UPDATE executions SET status = :status, run_state = NULL, failure = :failure,
    timeout_type = :timeout_type, close_time = :now, close_seq = (SELECT coalesce(max(seq), 0) + 1 FROM changes), deadline = :far
WHERE id = :id AND attempt = :attempt AND deadline = :deadline_was

-- name: reset_deadline
-- Put back a row's real deadline (a timer found the stored one stale).
UPDATE executions SET deadline = :deadline WHERE id = :id AND deadline = :deadline_was

-- name: find_latest
-- The execution a steering verb (cancel, pause, reset ...) without a run id is about.
SELECT id, run_id, status, run_state, attempt, attempt_base, cancel_requested, namespace,
    task_queue, schedule_time, ready_at, deadline, s2c_deadline, started_time, retry_interval_s,
    schedule_to_close_s, schedule_to_start_s, start_to_close_s, heartbeat_s, start_delay_s,
    retry_policy, priority_key, original_options, attempt_start_to_close_s FROM executions
WHERE namespace = :ns AND activity_id = :activity_id ORDER BY id DESC LIMIT 1

-- name: find_run
-- The execution a steering verb of one run is about.
SELECT id, run_id, status, run_state, attempt, attempt_base, cancel_requested, namespace,
    task_queue, schedule_time, ready_at, deadline, s2c_deadline, started_time, retry_interval_s,
    schedule_to_close_s, schedule_to_start_s, start_to_close_s, heartbeat_s, start_delay_s,
    retry_policy, priority_key, original_options, attempt_start_to_close_s FROM executions
WHERE namespace = :ns AND activity_id = :activity_id AND run_id = :run_id

-- name: cancel_scheduled
-- Close a scheduled execution CANCELED.
UPDATE executions SET status = 'CANCELED', run_state = NULL, close_time = :now, close_seq = (SELECT coalesce(max(seq), 0) + 1 FROM changes),
    canceled_reason = :reason, cancel_requested = 1, deadline = :far WHERE id = :id

-- name: cancel_started
-- Ask a started attempt to stop (its worker learns it through the change feed).
UPDATE executions SET run_state = 'CANCEL_REQUESTED', cancel_requested = 1,
    canceled_reason = :reason WHERE id = :id

-- name: terminate
-- Close an open execution TERMINATED.
UPDATE executions SET status = 'TERMINATED', run_state = NULL, close_time = :now, close_seq = (SELECT coalesce(max(seq), 0) + 1 FROM changes),
    canceled_reason = :reason, deadline = :far WHERE id = :id

-- name: describe_latest
-- The latest run of an activity id.
SELECT * FROM executions WHERE namespace = :ns AND activity_id = :activity_id
ORDER BY id DESC LIMIT 1

-- name: describe_run
-- One run of an activity id.
SELECT * FROM executions WHERE namespace = :ns AND activity_id = :activity_id
AND run_id = :run_id

-- name: records_of_runs
-- The executions with these run ids (:ids, JSON).
SELECT * FROM executions WHERE run_id IN (SELECT value FROM json_each(:ids))

-- name: closed_since
-- The runs closed since change-log position :seq (see close_seq).
SELECT run_id FROM executions WHERE close_seq > :seq

-- name: states_of_runs
-- Status, state, attempt and result of these runs (:ids, JSON).
SELECT run_id, status, run_state, attempt, attempt_base, result FROM executions
WHERE run_id IN (SELECT value FROM json_each(:ids))

-- name: list_executions
-- Executions matching a visibility query ({where}) in an order ({order}:
-- newest first, or by a time).
SELECT * FROM executions WHERE {where} ORDER BY {order} LIMIT :limit

-- name: list_by_attribute
-- Executions with a search attribute value ({driver}, of the name
-- :d_name) that match the rest of a visibility query ({where}), newest
-- first: a walk down the attribute's index that stops after :limit rows.
SELECT e.* FROM (SELECT execution_id FROM search_attributes
    WHERE namespace = :ns AND name = :d_name AND {driver}) AS d
JOIN executions AS e ON e.id = d.execution_id
WHERE {where} ORDER BY d.execution_id DESC LIMIT :limit

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

-- name: announce
-- Record that a transaction changed something of a kind and key, for the
-- other processes' change watchers (read with changes_since).
INSERT INTO changes (kind, key, seq, at) VALUES (:kind, :key,
    (SELECT coalesce(max(seq), 0) + 1 FROM changes), :at)
ON CONFLICT (kind, key) DO UPDATE SET seq = excluded.seq,
    at = CASE WHEN changes.at < :now THEN excluded.at ELSE min(changes.at, excluded.at) END

-- name: changes_since
-- What other transactions changed since the watcher last looked.
SELECT kind, key, seq, at FROM changes WHERE seq > :seq ORDER BY seq

-- name: changes_head
-- Where the change log ends now.
SELECT coalesce(max(seq), 0) AS seq FROM changes

-- name: attempt_begin
-- Record that an attempt began (one row per call), forgetting attempts more
-- than 100 before it.
INSERT OR REPLACE INTO attempts (run_id, attempt, attempt_number, started_time, identity,
    outcome, heartbeats_before) VALUES (:run_id, :attempt, :attempt_number, :now, :identity,
    'RUNNING', :heartbeats_before)

-- name: attempts_forget
-- Forget attempts more than 100 before a run's current one.
DELETE FROM attempts WHERE run_id = :run_id AND attempt <= :attempt - 100

-- name: attempt_end
-- Close a running attempt with its outcome, counting its heartbeats from the
-- execution's. Never closed before it started (as PostgreSQL's; SQLite's
-- writers take turns, so :now is never earlier here).
UPDATE attempts SET closed_time = max(:now, started_time), outcome = :outcome, failure = :failure,
    timeout_type = :timeout, heartbeat_count = (SELECT e.heartbeat_count FROM executions e
        WHERE e.run_id = attempts.run_id) - heartbeats_before,
    last_heartbeat_time = (SELECT CASE WHEN e.last_heartbeat_time >= attempts.started_time
        THEN e.last_heartbeat_time END FROM executions e WHERE e.run_id = attempts.run_id)
WHERE run_id = :run_id AND attempt = :attempt AND closed_time IS NULL

-- name: attempts_of_run
-- Every attempt kept of a run, oldest first.
SELECT * FROM attempts WHERE run_id = :run_id ORDER BY attempt

-- name: prunable
-- The run ids of a batch of a namespace's executions closed before a time.
SELECT run_id FROM executions WHERE namespace = :ns AND status <> 'RUNNING'
AND close_time < :before LIMIT :limit

-- name: prune_attempts
-- Delete the attempts of these runs.
DELETE FROM attempts WHERE run_id IN (SELECT value FROM json_each(:ids))

-- name: prune_runs
-- Delete these executions.
DELETE FROM executions WHERE run_id IN (SELECT value FROM json_each(:ids))

-- name: retry_now
-- Make a scheduled execution that waits (a retry backoff, a start delay)
-- claimable now, if it still waits as it was read.
UPDATE executions SET ready_at = :now, deadline = :deadline
WHERE id = :id AND run_state = 'SCHEDULED' AND ready_at = :ready_was

-- name: pause_scheduled
-- Pause an execution no attempt of which runs (only schedule_to_close counts
-- while it is paused: :deadline).
UPDATE executions SET run_state = 'PAUSED', deadline = :deadline
WHERE id = :id AND run_state = 'SCHEDULED'

-- name: move_run_state
-- Move a running execution from one state to another (a pause requested of
-- its attempt, or withdrawn), if it is still in the first.
UPDATE executions SET run_state = :to_state WHERE id = :id AND run_state = :from_state

-- name: unpause
-- Make a paused execution dispatchable again at :ready_at.
UPDATE executions SET run_state = 'SCHEDULED', ready_at = :ready_at, deadline = :deadline
WHERE id = :id AND run_state = 'PAUSED'

-- name: close_at_once
-- Close with :status (CANCELED or TERMINATED) those of these executions
-- (:ids, JSON) still open in one of :states (JSON: the states in which no
-- attempt runs); the row and run ids of those it closed.
UPDATE executions SET status = :status, run_state = NULL, close_time = :now, close_seq = (SELECT coalesce(max(seq), 0) + 1 FROM changes),
    canceled_reason = :reason, cancel_requested = (cancel_requested OR :cancel_requested),
    deadline = :far
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'RUNNING'
AND run_state IN (SELECT value FROM json_each(:states))
RETURNING id, run_id

-- name: open_matching
-- The open executions matching a visibility query ({where}), in id order,
-- for a bulk action.
SELECT id FROM executions WHERE {where} AND status = 'RUNNING' ORDER BY id

-- name: open_matching_of
-- Those of these executions (:ids, JSON) still open and matching a
-- visibility query ({where}), in id order, for a batch of a bulk action (NOT
-- INDEXED: looked up by id, not through an index on the query's columns).
SELECT id, activity_id, run_id FROM executions NOT INDEXED
WHERE id IN (SELECT value FROM json_each(:ids)) AND {where} AND status = 'RUNNING' ORDER BY id

-- name: reset
-- Reset an execution whose attempt and state are still as read: the next
-- attempt is number 1 (attempt_base moves up to the serial so far), ready at
-- :ready_at (:run_state: SCHEDULED, or PAUSED to keep it paused); heartbeat
-- details go if :reset_heartbeat.
UPDATE executions SET run_state = :run_state, attempt = attempt + 1, attempt_base = attempt,
    owner = NULL,
    ready_at = :ready_at, deadline = :deadline, attempt_deadline = :far, retry_interval_s = NULL,
    heartbeat_details = CASE WHEN :reset_heartbeat THEN NULL ELSE heartbeat_details END
WHERE id = :id AND attempt = :attempt_was AND run_state = :state_was

-- name: update_options
-- Set an open execution's options, and the times they move, if its attempt
-- and state are still as read; :original keeps the start's options (NULL
-- once restored).
UPDATE executions SET task_queue = :task_queue, schedule_to_close_s = :schedule_to_close_s,
    schedule_to_start_s = :schedule_to_start_s, start_to_close_s = :start_to_close_s,
    heartbeat_s = :heartbeat_s, start_delay_s = :start_delay_s, retry_policy = :retry_policy,
    priority_key = :priority_key, original_options = :original, ready_at = :ready_at,
    s2c_deadline = :s2c_deadline, deadline = :deadline, attempt_deadline = :attempt_deadline,
    retry_interval_s = :interval_s
WHERE id = :id AND attempt = :attempt_was AND run_state = :state_was

-- name: owner_add
-- Record a process's hold on the store, once its liveness token is held.
INSERT INTO owners (owner, host, pid, started, lock_key)
VALUES (:owner, :host, :pid, :now, :lock_key)

-- name: owners
-- Every process holding the store (liveness: see the migration of schema 6).
SELECT owner, host, pid, started, lock_key FROM owners

-- name: owner_forget
-- Forget a process's hold on the store (it closed, or it died).
DELETE FROM owners WHERE owner = :owner

-- name: workers_of_owner_forget
-- Forget the workers of a process.
DELETE FROM workers WHERE owner = :owner

-- name: running_of_owner
-- The lifecycle's view of the attempts a process's workers run.
SELECT id, namespace, task_queue, run_id, attempt, run_state, retry_policy, cancel_requested,
    s2c_deadline, ready_at, started_time, last_heartbeat_time, schedule_to_start_s,
    start_to_close_s, heartbeat_s, deadline, attempt_base, attempt_start_to_close_s,
    attempt_heartbeat_s
FROM executions WHERE owner = :owner AND status = 'RUNNING'
AND run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED')

-- name: worker_add
-- Register a worker.
INSERT INTO workers (worker_id, owner, namespace, identity, host, pid, task_queue, slots,
    executor, started, last_seen)
VALUES (:worker_id, :owner, :namespace, :identity, :host, :pid,
    :task_queue, :slots, :executor, :now, :now)

-- name: worker_forget
-- Unregister a worker that stopped.
DELETE FROM workers WHERE worker_id = :worker_id

-- name: worker_seen
-- Note when a worker last claimed work.
UPDATE workers SET last_seen = :now WHERE worker_id = :worker_id

-- name: workers_of_namespace
-- A namespace's workers, oldest first, each with the attempts its process runs
-- on its queue (slots in use).
SELECT w.worker_id, w.owner, w.identity, w.host, w.pid, w.task_queue, w.slots, w.executor,
    w.started, w.last_seen, (SELECT count(*) FROM executions e WHERE e.owner = w.owner
        AND e.namespace = w.namespace AND e.task_queue = w.task_queue AND e.status = 'RUNNING'
        AND e.run_state IN ('STARTED', 'CANCEL_REQUESTED', 'PAUSE_REQUESTED')) AS used
FROM workers w WHERE w.namespace = :ns ORDER BY w.started, w.worker_id

-- name: register_search_attribute
-- Fix the type of a search attribute name, the first time a start uses it.
INSERT INTO search_attribute_names (namespace, name, type) VALUES (:ns, :attr, :type)
ON CONFLICT (namespace, name) DO NOTHING

-- name: search_attribute_type
-- The type a search attribute name was fixed to.
SELECT type FROM search_attribute_names WHERE namespace = :ns AND name = :attr

-- name: search_attribute_types
-- Every search attribute name of a namespace, with its type.
SELECT name, type FROM search_attribute_names WHERE namespace = :ns

-- name: insert_search_attributes
-- Index a search attribute value of a new execution, one row per call.
INSERT INTO search_attributes (execution_id, namespace, name, position, text_value,
    int_value, float_value)
SELECT id, namespace, :name, :position, :text_value, :int_value, :float_value FROM executions
WHERE run_id = :run_id

-- name: prune_search_attributes
-- Delete the search attribute values of these runs.
DELETE FROM search_attributes WHERE execution_id IN (SELECT id FROM executions
WHERE run_id IN (SELECT value FROM json_each(:ids)))

-- name: fold_counts
-- Forget the execution counts that are 0 (SQLite keeps no shards to fold).
DELETE FROM execution_counts WHERE n = 0
