#!/opt/roadwatch/bin/python
"""Container healthcheck of a RoadWatch Python service: exit 0 when it is ready, else 1.

`roadwatch-healthcheck api` asks the API's own health endpoint (which pings MySQL); the other
services are ready when their status file is fresh and says so. A gateway sharing the load
with others (docs/scaling.md) writes its status under its instance's name,
`gateway-N`.

It runs every few seconds in each container, so it reads the few values it needs straight
from the container's environment (set by the image and compose.yaml) instead of loading the
whole settings model, which would cost four times the CPU.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from roadwatch.services.status import read_status

# `roadwatch simulate` reports under the name of its entity.
_STATUS_NAMES = {"simulate": "simulator"}


def gateway_name() -> str:
    """Return this gateway instance's status name, as `Settings.gateway_name` does."""
    partitions = os.environ.get("ROADWATCH_GATEWAY_PARTITIONS", "1").strip() or "1"
    if int(partitions) == 1:
        return "gateway"
    instance = os.environ.get("ROADWATCH_GATEWAY_INSTANCE", "0").strip() or "0"
    return f"gateway-{int(instance)}"


def status_name(service: str) -> str:
    if service == "gateway":
        return gateway_name()
    return _STATUS_NAMES.get(service, service)


def healthy(service: str) -> bool:
    if service == "api":
        port = os.environ.get("ROADWATCH_API_PORT", "8000")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=3) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False
    try:
        name = status_name(service)
    except ValueError:  # a malformed number: the service itself refuses to start on it
        return False
    run_dir = Path(os.environ.get("ROADWATCH_RUN_DIR", "/var/lib/roadwatch"))
    record = read_status(run_dir, name)
    return record is not None and record.get("state") == "ready"


if __name__ == "__main__":
    sys.exit(0 if len(sys.argv) == 2 and healthy(sys.argv[1]) else 1)
