"""Each service's status file: state and counters, read by `roadwatch status` and healthchecks."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

# A status file older than this means the service is stuck or gone.
STALE_AFTER_S = 15.0
STATUS_INTERVAL_S = 2.0


class StatusFile:
    """Writes `run_dir/status/NAME.json` atomically."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.path = status_path(run_dir, name)
        self.name = name

    def write(self, state: str, counters: Mapping[str, Any] | None = None) -> None:
        record = {
            "service": self.name,
            "state": state,
            "pid": os.getpid(),
            "updated_at": time.time(),
            "counters": dict(counters or {}),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(record))
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("cannot write status file %s: %s", self.path, exc)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def status_path(run_dir: Path, name: str) -> Path:
    return run_dir / "status" / f"{name}.json"


def read_status(run_dir: Path, name: str) -> dict[str, Any] | None:
    """Return the service's last status if it is fresh, else None."""
    path = status_path(run_dir, name)
    try:
        record: dict[str, Any] = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if time.time() - float(record.get("updated_at", 0)) > STALE_AFTER_S:
        return None
    return record
