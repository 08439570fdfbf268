"""``python -m bench NAME [--quick]``: run one benchmark; the last stdout line is its JSON report."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from bench.harness import report_line

# name -> module with ``run(*, quick: bool) -> list[Result]``; imported only when chosen
BENCHMARKS: dict[str, str] = {
    "dispatch": "bench.dispatch",
    "movement": "bench.movement",
    "scheduling": "bench.scheduling",
    "health": "bench.health",
    "heartbeats": "bench.heartbeats",
    "alerts": "bench.alerts",
    "logs": "bench.logs",
    "metrics": "bench.metrics",
}

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"bench: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m bench", description="Run one benchmark and print its figures as JSON.")
    parser.add_argument("name", metavar="NAME", help=f"benchmark to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="a smaller run that finishes within a minute")
    args = parser.parse_args(argv)

    module_name = BENCHMARKS.get(args.name)
    if module_name is None:
        known = ", ".join(sorted(BENCHMARKS))
        print(f"bench: error: unknown benchmark {args.name!r} (known: {known})", file=sys.stderr)
        return EXIT_BAD_INPUT
    module = importlib.import_module(module_name)
    results = module.run(quick=args.quick)
    print(report_line(args.name, results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
