"""Run the benchmarks and print their figures: `python -m bench [NAME...]` (or `make bench`).

Without a name every benchmark of DEFAULT runs once (`latency` is part of `pipeline`);
`python -m bench api` runs only the REST API one. What each prints also goes to
docs/PERFORMANCE.md (bench/record.py), with the date and the load average.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import api, detector, latency, mqtt_stacks, pipeline, pubsub, simulator
from bench.record import run_and_record

BENCHMARKS: dict[str, Callable[[], None]] = {
    "detector": detector.main,
    "simulator": simulator.main,
    "pipeline": pipeline.main,
    "latency": latency.main,
    "api": api.main,
    "mqtt": mqtt_stacks.main,
    "pubsub": pubsub.main,
}
# What `make bench` runs: the pipeline benchmark measures the latency too.
DEFAULT = ("detector", "simulator", "pipeline", "api", "mqtt")


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    try:
        for name in argv or DEFAULT:
            run_and_record(name, BENCHMARKS[name])
    except KeyboardInterrupt:
        print("interrupted; every server a benchmark started is stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
