"""Partitioning stage: which instance handles a message, and which one sends an event.

Gateway instances sharing the load (docs/SCALING.md, domain/partition.py) take vehicle
messages through MQTT 5 shared subscriptions and pass each one on to the other instances
that own its station (zone state) or its place (accidents, hazards, jams).
"""

from __future__ import annotations

import logging
from typing import Any

from roadwatch.domain.events import Event, EventStatus, EventType
from roadwatch.domain.partition import Partitioning, Route
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

# Where an instance keeps which place-bound events it owns, inside the detector's snapshot
# (the detector ignores keys it does not know).
SNAPSHOT_KEY = "gateway_partition"
# Place-bound events belong to the instance owning their first position; zone crossings to
# the instance owning their station, the only one that tracks it.
_PLACE_BOUND = frozenset({EventType.ACCIDENT, EventType.TRAFFIC_JAM, EventType.HAZARD})
# Messages passed on from instance to instance: roadwatch/partition/{instance}/{topic}.
PARTITION_PREFIX = "roadwatch/partition/"


def partition_topic(instance: int, topic: str = "#") -> str:
    """Return the topic on which `instance` receives messages passed on to it."""
    return f"{PARTITION_PREFIX}{instance}/{topic}"


class Ownership:
    """This instance's share: routes for messages, and which events it sends."""

    def __init__(self, settings: Settings) -> None:
        self.partitioning: Partitioning = settings.gateway_partitioning
        self.instance = settings.gateway_instance
        # Place-bound events seen here, active ones only: id -> whether this instance sends it.
        self._owned: dict[str, bool] = {}
        self.passed_on_received = 0
        self.events_elsewhere = 0

    @property
    def partitioned(self) -> bool:
        return self.partitioning.partitions > 1

    def routes(self, station_id: str, lat: float, lon: float, cam: bool) -> dict[int, Route]:
        """Return every instance owning the message, with what each does with it."""
        return self.partitioning.routes(station_id, lat, lon, cam=cam)

    def keep_owned(self, events: list[Event]) -> list[Event]:
        """Keep the events this instance sends.

        A place-bound event is sent by the owner of its first version's position, for its
        whole life: the instances that see it through their halo compute it too but stay
        silent, so each version leaves once.
        """
        owned_ids = self._owned
        kept: list[Event] = []
        for event in events:
            if event.type not in _PLACE_BOUND:
                kept.append(event)
                continue
            owned = owned_ids.get(event.id)
            if owned is None:
                owned = self.partitioning.area_owner(event.lat, event.lon) == self.instance
            if event.status is EventStatus.ACTIVE:
                owned_ids[event.id] = owned
            else:
                owned_ids.pop(event.id, None)
            if owned:
                kept.append(event)
            else:
                self.events_elsewhere += 1
        return kept

    def snapshot(self) -> dict[str, Any]:
        partitioning = self.partitioning
        return {
            "instance": self.instance,
            "partitions": partitioning.partitions,
            "cell_m": partitioning.cell_m,
            "margin_m": partitioning.margin_m,
            "owned": dict(self._owned),
        }

    def restore(self, saved: Any) -> None:
        if not self.partitioned:
            return
        if not isinstance(saved, dict):
            log.warning("gateway state: no partition in the snapshot; owners decided afresh")
            return
        current = self.snapshot()
        changed = [
            key
            for key in ("instance", "partitions", "cell_m", "margin_m")
            if saved.get(key) != current[key]
        ]
        if changed:
            # The saved state was detected under other owners (docs/SCALING.md).
            log.warning("gateway state: partitioning changed (%s) since the snapshot", changed)
        owned = saved.get("owned")
        if isinstance(owned, dict):
            self._owned = {str(key): bool(value) for key, value in owned.items()}

    def counters(self) -> dict[str, int]:
        if not self.partitioned:
            return {}
        return {
            "instance": self.instance,
            "passed_on_received": self.passed_on_received,
            "events_elsewhere": self.events_elsewhere,
        }


def check_margin(settings: Settings) -> None:
    """Warn when the halo is too narrow for the owner of an event to see all of it."""
    reach = 2 * max(settings.accident_radius_m, settings.hazard_radius_m)
    if settings.gateway_partition_margin_m < reach:
        log.warning(
            "ROADWATCH_GATEWAY_PARTITION_MARGIN_M (%.0f m) is below twice the accident and"
            " hazard radius (%.0f m): events near a cell border may be missed or doubled",
            settings.gateway_partition_margin_m,
            reach,
        )
