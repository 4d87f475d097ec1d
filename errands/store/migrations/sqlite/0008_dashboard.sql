-- errands schema 8: what the dashboard reads among millions of executions.
--
-- execution_counts: how many executions there are per namespace, task queue,
-- activity type and status as reported (PAUSED for a RUNNING execution whose
-- run state is PAUSED), kept by triggers, so counts by status, queue or type
-- (and any query over only those three) read a few rows, never the table.
-- shard: 0 here (SQLite has one writer at a time); PostgreSQL gives each
-- connection its own rows, so that writers never wait for each other on them.
CREATE TABLE execution_counts (
    namespace TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    activity_type TEXT NOT NULL,
    status TEXT NOT NULL,
    shard INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (namespace, status, task_queue, activity_type, shard)
);

INSERT INTO execution_counts (namespace, task_queue, activity_type, status, shard, n)
SELECT namespace, task_queue, activity_type,
    CASE WHEN run_state = 'PAUSED' THEN 'PAUSED' ELSE status END, 0, count(*)
FROM executions GROUP BY 1, 2, 3, 4;

CREATE TRIGGER execution_counts_insert AFTER INSERT ON executions BEGIN
    INSERT INTO execution_counts (namespace, task_queue, activity_type, status, shard, n)
    VALUES (NEW.namespace, NEW.task_queue, NEW.activity_type,
        CASE WHEN NEW.run_state = 'PAUSED' THEN 'PAUSED' ELSE NEW.status END, 0, 1)
    ON CONFLICT (namespace, status, task_queue, activity_type, shard) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER execution_counts_delete AFTER DELETE ON executions BEGIN
    UPDATE execution_counts SET n = n - 1
    WHERE namespace = OLD.namespace AND task_queue = OLD.task_queue
        AND activity_type = OLD.activity_type AND shard = 0
        AND status = CASE WHEN OLD.run_state = 'PAUSED' THEN 'PAUSED' ELSE OLD.status END;
END;

CREATE TRIGGER execution_counts_update
AFTER UPDATE OF status, run_state, task_queue, activity_type ON executions
WHEN (CASE WHEN OLD.run_state = 'PAUSED' THEN 'PAUSED' ELSE OLD.status END)
        <> (CASE WHEN NEW.run_state = 'PAUSED' THEN 'PAUSED' ELSE NEW.status END)
    OR OLD.task_queue <> NEW.task_queue OR OLD.activity_type <> NEW.activity_type
BEGIN
    UPDATE execution_counts SET n = n - 1
    WHERE namespace = OLD.namespace AND task_queue = OLD.task_queue
        AND activity_type = OLD.activity_type AND shard = 0
        AND status = CASE WHEN OLD.run_state = 'PAUSED' THEN 'PAUSED' ELSE OLD.status END;
    INSERT INTO execution_counts (namespace, task_queue, activity_type, status, shard, n)
    VALUES (NEW.namespace, NEW.task_queue, NEW.activity_type,
        CASE WHEN NEW.run_state = 'PAUSED' THEN 'PAUSED' ELSE NEW.status END, 0, 1)
    ON CONFLICT (namespace, status, task_queue, activity_type, shard) DO UPDATE SET n = n + 1;
END;

-- Listings newest first (the dashboard's first page), and newest first among
-- one status (as reported: the expression is the query field's): each a walk
-- down an index that stops after a page. (Not per task queue: an index on
-- (namespace, task_queue, ...) would draw the backlog read off the claim index.)
CREATE INDEX executions_newest ON executions (namespace, id);
CREATE INDEX executions_status_newest ON executions
    (namespace, (CASE WHEN run_state = 'PAUSED' THEN 'PAUSED' ELSE status END), id);
