"""Run the benchmarks and print their figures: `python -m bench [NAME...]` (or `make bench`).

Without a name every benchmark runs; `python -m bench api` runs only the REST API one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import api, detector, latency, simulator

BENCHMARKS: dict[str, Callable[[], None]] = {
    "detector": detector.main,
    "latency": latency.main,
    "simulator": simulator.main,
    "api": api.main,
}


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    for name in argv or list(BENCHMARKS):
        BENCHMARKS[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
