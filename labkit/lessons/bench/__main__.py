"""`python -m labkit.lessons.bench [options]` runs the benchmark;
`python -m labkit.lessons.bench client ...` is its load client.

The two entry points share one command so that the orchestrator can start the client with the same
interpreter and package as itself; the client path imports only what the client needs.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "client":
        from labkit.lessons.bench.client import main as client_main

        return client_main(args[1:])
    from labkit.lessons.bench.runner import main as runner_main

    return runner_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
