"""CAM triggering follows ETSI EN 302 637-2 thresholds, and CAMs pass the gateway validation."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from roadwatch.domain.geo import destination
from roadwatch.domain.messages import Cam, parse_message
from roadwatch.simulation.cam import CamTrigger, cam_payload, heading_difference_deg

T0 = 1_780_000_000_000
LAT, LON = 49.2536, 4.0340


def primed(speed: float = 10.0, heading: float = 90.0) -> CamTrigger:
    trigger = CamTrigger()
    assert trigger.should_send(T0, LAT, LON, speed, heading)
    return trigger


def test_the_first_state_is_always_sent() -> None:
    trigger = CamTrigger()
    assert trigger.last_sent_ms is None
    assert trigger.should_send(T0, LAT, LON, 0.0, 0.0)
    assert trigger.last_sent_ms == T0


def test_a_heading_change_above_4_degrees_triggers_a_cam() -> None:
    assert not primed(heading=90.0).should_send(T0 + 200, LAT, LON, 10.0, 93.9)
    assert primed(heading=90.0).should_send(T0 + 200, LAT, LON, 10.0, 94.1)
    assert primed(heading=90.0).should_send(T0 + 200, LAT, LON, 10.0, 85.9)


def test_heading_changes_are_measured_across_north() -> None:
    assert heading_difference_deg(358.0, 2.0) == 4.0
    assert not primed(heading=358.0).should_send(T0 + 200, LAT, LON, 10.0, 1.9)
    assert primed(heading=358.0).should_send(T0 + 200, LAT, LON, 10.0, 2.1)


def test_a_position_change_above_4_metres_triggers_a_cam() -> None:
    lat, lon = destination(LAT, LON, 90.0, 3.9)
    assert not primed().should_send(T0 + 200, lat, lon, 10.0, 90.0)
    lat, lon = destination(LAT, LON, 90.0, 4.1)
    assert primed().should_send(T0 + 200, lat, lon, 10.0, 90.0)


def test_a_speed_change_above_half_a_metre_per_second_triggers_a_cam() -> None:
    assert not primed(speed=10.0).should_send(T0 + 200, LAT, LON, 10.49, 90.0)
    assert not primed(speed=10.0).should_send(T0 + 200, LAT, LON, 9.51, 90.0)
    assert primed(speed=10.0).should_send(T0 + 200, LAT, LON, 10.51, 90.0)
    assert primed(speed=10.0).should_send(T0 + 200, LAT, LON, 9.49, 90.0)


def test_changes_are_measured_from_the_last_cam_sent_not_the_last_step() -> None:
    trigger = primed(heading=90.0)
    assert not trigger.should_send(T0 + 200, LAT, LON, 10.0, 92.0)
    assert not trigger.should_send(T0 + 400, LAT, LON, 10.0, 94.0)
    assert trigger.should_send(T0 + 600, LAT, LON, 10.0, 94.5)
    assert not trigger.should_send(T0 + 800, LAT, LON, 10.0, 97.0)


def test_a_cam_is_sent_at_least_once_a_second_when_nothing_changes() -> None:
    trigger = primed()
    assert not trigger.should_send(T0 + 999, LAT, LON, 10.0, 90.0)
    assert trigger.should_send(T0 + 1000, LAT, LON, 10.0, 90.0)
    assert not trigger.should_send(T0 + 1999, LAT, LON, 10.0, 90.0)
    assert trigger.should_send(T0 + 2000, LAT, LON, 10.0, 90.0)


def test_cams_are_never_more_frequent_than_10_hz() -> None:
    trigger = primed()
    assert not trigger.should_send(T0 + 99, LAT, LON, 30.0, 270.0)
    assert trigger.should_send(T0 + 100, LAT, LON, 30.0, 270.0)
    sent = [
        trigger.should_send(T0 + 100 + 50 * i, LAT, LON, 30.0 + i, 90.0 * i) for i in range(1, 41)
    ]
    assert sum(sent) == 20


def test_a_vehicle_standing_still_sends_at_1_hz_and_a_fast_turning_one_at_10_hz() -> None:
    still, turning = CamTrigger(), CamTrigger()
    steps = range(0, 10_000, 50)
    assert sum(still.should_send(T0 + t, LAT, LON, 0.0, 0.0) for t in steps) == 10
    assert sum(turning.should_send(T0 + t, LAT, LON, 20.0, t * 0.1 % 360) for t in steps) == 100


def test_the_payload_has_the_spec_shape_and_units() -> None:
    payload = cam_payload("car-1", 5, T0, 49.123456789, 4.987654321, 13.9, 359.97)
    assert payload == {
        "stationId": "car-1",
        "stationType": 5,
        "timestamp": T0,
        "lat": 49.1234568,
        "lon": 4.9876543,
        "speed": 50.0,
        "heading": 0.0,
    }
    assert cam_payload("car-1", 5, T0, LAT, LON, 0.0, -90.0)["heading"] == 270.0


def test_the_payload_passes_the_gateway_validation() -> None:
    payload = cam_payload("bus-7", 6, T0, LAT, LON, 12.5, 181.24)
    cam = parse_message("vehicles/bus-7/cam", orjson.dumps(payload), T0)
    assert cam == Cam("bus-7", 6, T0, LAT, LON, 45.0, 181.2)


@given(
    station_type=st.sampled_from([5, 6, 8, 10, 15]),
    lat=st.floats(-90.0, 90.0),
    lon=st.floats(-180.0, 180.0),
    speed=st.floats(0.0, 110.0),
    heading=st.floats(-720.0, 720.0),
)
def test_any_plausible_state_gives_a_valid_cam(
    station_type: int, lat: float, lon: float, speed: float, heading: float
) -> None:
    payload = cam_payload("v000001", station_type, T0, lat, lon, speed, heading)
    cam = parse_message("vehicles/v000001/cam", orjson.dumps(payload), T0)
    assert isinstance(cam, Cam)
    assert 0.0 <= cam.heading_deg < 360.0
    assert abs(cam.speed_kmh - speed * 3.6) <= 0.05 + 1e-9
