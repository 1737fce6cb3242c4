"""Zones changed through the REST API take effect in the running gateway within 5 s."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from roadwatch.settings import Settings
from tests.e2e.ground_truth import stored_events
from tests.e2e.helpers import (
    connected,
    fleet_endpoint,
    report_until_stored,
    square_zone,
    zones_request,
)

pytestmark = pytest.mark.e2e

PICKUP_S = 5.0  # the promise of the zones feature
LAT, LON = 49.3500, 4.2000  # open fields north-east of Reims, outside every shipped zone


def test_zone_created_and_deleted_through_the_api_reaches_the_running_gateway(
    system: Settings,
) -> None:
    settings = system
    zone_id = f"popup-{time.time_ns() % 10**8}"
    station = f"zc-{time.time_ns() % 10**8}"
    zone = square_zone(zone_id, "Pop-up event site", LAT, LON, half_lat=0.002, half_lon=0.003)

    def crossing(kind: str) -> Callable[[list[dict[str, Any]]], bool]:
        return lambda rows: any(row["type"] == kind and row["zone_id"] == zone_id for row in rows)

    with connected(fleet_endpoint(settings)) as car:
        # The car keeps reporting inside the square until the crossing is stored.
        assert zones_request(settings, "POST", "", zone).status == 201
        entered_after = report_until_stored(
            settings,
            car,
            station,
            (LAT, LON),
            crossing("zone_enter"),
            "a zone_enter for the zone created through the API",
            PICKUP_S + 5,
        )
        assert entered_after < PICKUP_S

        assert zones_request(settings, "DELETE", f"/{zone_id}").status == 204
        exited_after = report_until_stored(
            settings,
            car,
            station,
            (LAT, LON),
            crossing("zone_exit"),
            "a zone_exit for the zone deleted through the API",
            PICKUP_S + 5,
        )
        assert exited_after < PICKUP_S
    kinds = sorted(row["type"] for row in stored_events(settings, {station}))
    assert kinds == ["zone_enter", "zone_exit"]
