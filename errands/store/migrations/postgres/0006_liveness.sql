-- errands schema 6: workers and their liveness.
--
-- An owner is one process's hold on the store, with a liveness token that
-- the operating system or the database drops when the process dies (a lock
-- on a file beside a SQLite database; a session advisory lock, key
-- lock_key, on PostgreSQL). The attempts its workers run name it (owner);
-- whoever sees its token gone fails them as WorkerLost.

CREATE TABLE owners (
    owner text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    started float8 NOT NULL,
    lock_key integer                       -- PostgreSQL: the advisory lock's key
);

CREATE TABLE workers (
    worker_id text PRIMARY KEY,
    owner text NOT NULL,
    namespace text NOT NULL,
    identity text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    task_queue text NOT NULL,
    slots integer NOT NULL,
    executor text NOT NULL,               -- async, thread or process
    started float8 NOT NULL,
    last_seen float8 NOT NULL               -- its last claim that took work, or its start
);
CREATE INDEX workers_namespace ON workers (namespace, started);

-- The owner whose worker runs the current attempt (NULL: claimed by no worker,
-- or no attempt runs).
ALTER TABLE executions ADD COLUMN owner text;
CREATE INDEX executions_owner ON executions (owner) WHERE status = 'RUNNING' AND owner IS NOT NULL;
