-- errands schema 6: workers and their liveness.
--
-- An owner is one process's hold on the store, with a liveness token that
-- the operating system or the database drops when the process dies (a lock
-- on a file beside a SQLite database; a session advisory lock, key
-- lock_key, on PostgreSQL). The attempts its workers run name it (owner);
-- whoever sees its token gone fails them as WorkerLost.

CREATE TABLE owners (
    owner TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    lock_key INTEGER                       -- PostgreSQL: the advisory lock's key
);

CREATE TABLE workers (
    worker_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    namespace TEXT NOT NULL,
    identity TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    task_queue TEXT NOT NULL,
    slots INTEGER NOT NULL,
    executor TEXT NOT NULL,               -- async, thread or process
    started REAL NOT NULL,
    last_seen REAL NOT NULL               -- its last claim that took work, or its start
);
CREATE INDEX workers_namespace ON workers (namespace, started);

-- The owner whose worker runs the current attempt (NULL: claimed by no worker,
-- or no attempt runs).
ALTER TABLE executions ADD COLUMN owner TEXT;
CREATE INDEX executions_owner ON executions (owner) WHERE status = 'RUNNING' AND owner IS NOT NULL;
