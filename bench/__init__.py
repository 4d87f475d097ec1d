"""errands' benchmark: throughput, round-trip latency and cancel-delivery latency
on a SQLite store, with the worker in the client's process or in a child, and
sync activities on a thread pool (64 threads) or a process pool (2 processes,
spawn, with a SharedStateManager), the latter with a breakdown of where one
activity's time goes.

Run it from the repository root with ``python -m bench`` (``make bench``);
``python -m bench --help`` lists the workload names and size flags.
"""
