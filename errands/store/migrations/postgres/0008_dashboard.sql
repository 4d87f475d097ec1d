-- errands schema 8: what the dashboard reads among millions of executions.
--
-- execution_counts: how many executions there are per namespace, task queue,
-- activity type and status as reported (PAUSED for a RUNNING execution whose
-- run state is PAUSED), kept by triggers, so counts by status, queue or type
-- (and any query over only those three) read a few rows, never the table.
-- Each connection adds to rows of its own (shard: its backend pid), so that
-- concurrent writers never wait for each other on a counter row (nor
-- deadlock over two); the rows of connections gone are folded into shard 0
-- when executions are pruned (fold_counts). The triggers are per statement,
-- over transition tables: one upsert per key a statement changed, however
-- many rows it changed.
CREATE TABLE execution_counts (
    namespace text NOT NULL,
    task_queue text NOT NULL,
    activity_type text NOT NULL,
    status text NOT NULL,
    shard integer NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (namespace, status, task_queue, activity_type, shard)
);

INSERT INTO execution_counts (namespace, task_queue, activity_type, status, shard, n)
SELECT namespace, task_queue, activity_type,
    CASE WHEN run_state = 'PAUSED' THEN 'PAUSED' ELSE status END, 0, count(*)
FROM executions GROUP BY 1, 2, 3, 4;

CREATE FUNCTION execution_counts_added() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO execution_counts AS c (namespace, task_queue, activity_type, status, shard, n)
    SELECT namespace, task_queue, activity_type,
        CASE WHEN run_state = 'PAUSED' THEN 'PAUSED' ELSE status END, pg_backend_pid(), count(*)
    FROM added GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (namespace, status, task_queue, activity_type, shard)
    DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

CREATE FUNCTION execution_counts_removed() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO execution_counts AS c (namespace, task_queue, activity_type, status, shard, n)
    SELECT namespace, task_queue, activity_type,
        CASE WHEN run_state = 'PAUSED' THEN 'PAUSED' ELSE status END, pg_backend_pid(), -count(*)
    FROM removed GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (namespace, status, task_queue, activity_type, shard)
    DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

CREATE FUNCTION execution_counts_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO execution_counts AS c (namespace, task_queue, activity_type, status, shard, n)
    SELECT namespace, task_queue, activity_type, status, pg_backend_pid(), sum(d)
    FROM (
        SELECT namespace, task_queue, activity_type,
            CASE WHEN run_state = 'PAUSED' THEN 'PAUSED' ELSE status END AS status, -1 AS d
        FROM removed
        UNION ALL
        SELECT namespace, task_queue, activity_type,
            CASE WHEN run_state = 'PAUSED' THEN 'PAUSED' ELSE status END, 1
        FROM added
    ) AS moved
    GROUP BY 1, 2, 3, 4 HAVING sum(d) <> 0 ORDER BY 1, 2, 3, 4
    ON CONFLICT (namespace, status, task_queue, activity_type, shard)
    DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

CREATE TRIGGER execution_counts_insert AFTER INSERT ON executions
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION execution_counts_added();
CREATE TRIGGER execution_counts_delete AFTER DELETE ON executions
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION execution_counts_removed();
CREATE TRIGGER execution_counts_update AFTER UPDATE ON executions
    REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION execution_counts_changed();

-- Listings newest first (the dashboard's first page), and newest first among
-- one status (as reported: the expression is the query field's): each a walk
-- down an index that stops after a page. (Not per task queue: an index on
-- (namespace, task_queue, ...) would draw the backlog read off the claim index.)
CREATE INDEX executions_newest ON executions (namespace, id);
CREATE INDEX executions_status_newest ON executions
    (namespace, (CASE WHEN run_state = 'PAUSED' THEN 'PAUSED' ELSE status END), id);
