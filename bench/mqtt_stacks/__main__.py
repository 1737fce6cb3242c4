"""`python -m bench.mqtt_stacks [--scale S] [CANDIDATE...]`: the MQTT stacks benchmark alone."""

from __future__ import annotations

import argparse
import sys

from bench.mqtt_stacks.candidates import CANDIDATES
from bench.mqtt_stacks.run import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt_stacks")
    parser.add_argument("--scale", type=float, default=1.0, help="share of the message counts")
    keys = [candidate.key for candidate in CANDIDATES]
    parser.add_argument("candidates", nargs="*", help=f"some of {', '.join(keys)} (all)")
    arguments = parser.parse_args()
    unknown = sorted(set(arguments.candidates) - set(keys))
    if unknown:
        parser.error(f"unknown candidate {', '.join(unknown)}")
    try:
        main(arguments.scale, arguments.candidates)
    except KeyboardInterrupt:
        print("interrupted; the broker and the candidates' processes are stopped")
        sys.exit(130)
