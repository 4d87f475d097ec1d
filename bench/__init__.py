"""errands' benchmark: throughput, round-trip latency and cancel-delivery latency
with the worker in the client's process or in a child, and sync activities on a
thread pool (64 threads) or a process pool (2 processes, spawn, with a
SharedStateManager), the latter with a breakdown of where one activity's time
goes; throughput with 1, 2 and 4 worker processes (scaling); claims with and
without a million closed executions in the table, and the prune rate
(retention).

Every workload runs on a fresh SQLite file by default, or with
``--url postgresql://...`` on a fresh schema of that database (see
bench/stores.py); the targets depend on the store (workloads.TARGETS).

Run it from the repository root with ``python -m bench`` (``make bench``);
``python -m bench --help`` lists the workload names and size flags.
"""
