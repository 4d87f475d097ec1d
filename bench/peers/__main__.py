"""``python -m bench.peers worker SYSTEM RUN``: a worker process of SYSTEM
for the run described by the JSON RUN (bench.peers.Run); it serves until
SIGTERM and prints "ready" once it serves. The module of SYSTEM defines
``serve(run)``."""

from __future__ import annotations

import importlib
import sys

from bench.peers import SYSTEMS, Run


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "worker" or argv[1] not in SYSTEMS:
        print(__doc__, file=sys.stderr)
        return 2
    module = importlib.import_module(SYSTEMS[argv[1]].peer.split(":")[0])
    module.serve(argv[1], Run.from_json(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
