"""Run every benchmark and print its figures: `python -m bench` (or `make bench`)."""

from __future__ import annotations

import sys

from bench import detector, latency, simulator


def main() -> int:
    detector.main()
    latency.main()
    simulator.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
