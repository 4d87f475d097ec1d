-- errands schema 10 (SQLite): cheaper triggers for execution_counts.
--
-- The triggers of schema 8 added a start or a status change to its count with
-- an upsert (INSERT ... ON CONFLICT DO UPDATE) in an AFTER trigger. In SQLite
-- that upsert cost about 25 us a row, more than inserting the execution itself
-- (measured 2026-12-07: 36 us a start with it, 13 us with the triggers below).
-- Now a BEFORE trigger creates a count's row (with n = 0) only when it is
-- missing, and the AFTER triggers only add and subtract, by primary key.
--
-- A row made for a start that then conflicts (INSERT OR IGNORE of a running
-- id) stays at 0, as rows whose executions were all pruned do.

DROP TRIGGER execution_counts_insert;
DROP TRIGGER execution_counts_update;

CREATE TRIGGER execution_counts_insert_row BEFORE INSERT ON executions
WHEN NOT EXISTS (
    SELECT 1 FROM execution_counts
    WHERE namespace = NEW.namespace
        AND status = CASE WHEN NEW.run_state = 'PAUSED' THEN 'PAUSED' ELSE NEW.status END
        AND task_queue = NEW.task_queue AND activity_type = NEW.activity_type AND shard = 0)
BEGIN
    INSERT OR IGNORE INTO execution_counts (namespace, task_queue, activity_type, status, shard, n)
    VALUES (NEW.namespace, NEW.task_queue, NEW.activity_type,
        CASE WHEN NEW.run_state = 'PAUSED' THEN 'PAUSED' ELSE NEW.status END, 0, 0);
END;

CREATE TRIGGER execution_counts_insert AFTER INSERT ON executions BEGIN
    UPDATE execution_counts SET n = n + 1
    WHERE namespace = NEW.namespace
        AND status = CASE WHEN NEW.run_state = 'PAUSED' THEN 'PAUSED' ELSE NEW.status END
        AND task_queue = NEW.task_queue AND activity_type = NEW.activity_type AND shard = 0;
END;

CREATE TRIGGER execution_counts_update_row
BEFORE UPDATE OF status, run_state, task_queue, activity_type ON executions
WHEN ((CASE WHEN OLD.run_state = 'PAUSED' THEN 'PAUSED' ELSE OLD.status END)
        <> (CASE WHEN NEW.run_state = 'PAUSED' THEN 'PAUSED' ELSE NEW.status END)
    OR OLD.task_queue <> NEW.task_queue OR OLD.activity_type <> NEW.activity_type)
    AND NOT EXISTS (
        SELECT 1 FROM execution_counts
        WHERE namespace = NEW.namespace
            AND status = CASE WHEN NEW.run_state = 'PAUSED' THEN 'PAUSED' ELSE NEW.status END
            AND task_queue = NEW.task_queue AND activity_type = NEW.activity_type AND shard = 0)
BEGIN
    INSERT OR IGNORE INTO execution_counts (namespace, task_queue, activity_type, status, shard, n)
    VALUES (NEW.namespace, NEW.task_queue, NEW.activity_type,
        CASE WHEN NEW.run_state = 'PAUSED' THEN 'PAUSED' ELSE NEW.status END, 0, 0);
END;

CREATE TRIGGER execution_counts_update
AFTER UPDATE OF status, run_state, task_queue, activity_type ON executions
WHEN (CASE WHEN OLD.run_state = 'PAUSED' THEN 'PAUSED' ELSE OLD.status END)
        <> (CASE WHEN NEW.run_state = 'PAUSED' THEN 'PAUSED' ELSE NEW.status END)
    OR OLD.task_queue <> NEW.task_queue OR OLD.activity_type <> NEW.activity_type
BEGIN
    UPDATE execution_counts SET n = n - 1
    WHERE namespace = OLD.namespace
        AND status = CASE WHEN OLD.run_state = 'PAUSED' THEN 'PAUSED' ELSE OLD.status END
        AND task_queue = OLD.task_queue AND activity_type = OLD.activity_type AND shard = 0;
    UPDATE execution_counts SET n = n + 1
    WHERE namespace = NEW.namespace
        AND status = CASE WHEN NEW.run_state = 'PAUSED' THEN 'PAUSED' ELSE NEW.status END
        AND task_queue = NEW.task_queue AND activity_type = NEW.activity_type AND shard = 0;
END;
