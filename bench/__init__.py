"""errands' benchmark: throughput, round-trip latency and cancel-delivery latency
on a SQLite store, with the worker in the client's process or in a child.

Run it from the repository root with ``python -m bench`` (``make bench``);
``python -m bench --help`` lists the workload names and size flags.
"""
