"""The MQTT wire contract of docs/contract/mqtt.md §3 to §6: what is accepted, and why the rest is
rejected."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadwatch.domain.messages import (
    MAX_PAYLOAD_BYTES,
    Cam,
    Denm,
    Rejected,
    RejectReason,
    Termination,
    is_station_id,
    parse_message,
    phone_station_id,
)

NOW_MS = 1_700_000_000_000


def cam_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "stationId": "car-1",
        "stationType": 5,
        "timestamp": NOW_MS - 1000,
        "lat": 48.8566,
        "lon": 2.3522,
        "speed": 42.5,
        "heading": 270.0,
    }
    payload.update(changes)
    return payload


def denm_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "stationId": "car-1",
        "stationType": 5,
        "timestamp": NOW_MS - 1000,
        "lat": 48.8566,
        "lon": 2.3522,
        "causeCode": 2,
    }
    payload.update(changes)
    return payload


def owntracks_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "_type": "location",
        "tid": "al",
        "lat": 45.75,
        "lon": 4.85,
        "tst": NOW_MS // 1000 - 5,
        "vel": 31,
        "cog": 180,
        "acc": 12,
    }
    payload.update(changes)
    return payload


def without(payload: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if key != name}


def parse(topic: str, payload: Any) -> Cam | Denm:
    return parse_message(topic, orjson.dumps(payload), NOW_MS)


def rejection(topic: str, payload: Any) -> RejectReason:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    with pytest.raises(Rejected) as caught:
        parse_message(topic, raw, NOW_MS)
    return caught.value.reason


def test_cam_is_parsed_with_its_units() -> None:
    assert parse("vehicles/car-1/cam", cam_payload()) == Cam(
        station_id="car-1",
        station_type=5,
        timestamp_ms=NOW_MS - 1000,
        lat=48.8566,
        lon=2.3522,
        speed_kmh=42.5,
        heading_deg=270.0,
    )


def test_integer_coordinates_and_speed_are_accepted_as_numbers() -> None:
    cam = parse("vehicles/car-1/cam", cam_payload(lat=48, lon=2, speed=0, heading=360))
    assert isinstance(cam, Cam)
    assert (cam.lat, cam.lon, cam.speed_kmh, cam.heading_deg) == (48.0, 2.0, 0.0, 360.0)
    assert isinstance(cam.lat, float)


def test_denm_without_optional_fields_has_none() -> None:
    denm = parse("vehicles/car-1/denm", denm_payload())
    assert denm == Denm("car-1", 5, NOW_MS - 1000, 48.8566, 2.3522, 2, None, None)


def test_denm_carries_sub_cause_and_termination() -> None:
    denm = parse("vehicles/car-1/denm", denm_payload(subCauseCode=3, termination="cancellation"))
    assert isinstance(denm, Denm)
    assert denm.sub_cause_code == 3
    assert denm.termination is Termination.CANCELLATION
    negation = parse("vehicles/car-1/denm", denm_payload(termination="negation"))
    assert isinstance(negation, Denm)
    assert negation.termination is Termination.NEGATION


def test_null_optional_denm_fields_count_as_absent() -> None:
    denm = parse("vehicles/car-1/denm", denm_payload(subCauseCode=None, termination=None))
    assert isinstance(denm, Denm)
    assert (denm.sub_cause_code, denm.termination) == (None, None)


def test_unknown_extra_fields_are_ignored() -> None:
    assert isinstance(parse("vehicles/car-1/cam", cam_payload(extra={"x": [1, 2]})), Cam)


def test_owntracks_location_becomes_a_passenger_car_cam() -> None:
    assert parse("owntracks/alice/phone", owntracks_payload()) == Cam(
        station_id="alice.phone",
        station_type=5,
        timestamp_ms=(NOW_MS // 1000 - 5) * 1000,
        lat=45.75,
        lon=4.85,
        speed_kmh=31.0,
        heading_deg=180.0,
    )


def test_owntracks_without_velocity_or_course_is_standing_still_northwards() -> None:
    cam = parse("owntracks/alice/phone", without(without(owntracks_payload(), "vel"), "cog"))
    assert isinstance(cam, Cam)
    assert (cam.speed_kmh, cam.heading_deg) == (0.0, 0.0)


def test_owntracks_negative_velocity_means_unknown() -> None:
    cam = parse("owntracks/alice/phone", owntracks_payload(vel=-1, cog=-1))
    assert isinstance(cam, Cam)
    assert (cam.speed_kmh, cam.heading_deg) == (0.0, 0.0)


@pytest.mark.parametrize("kind", ["transition", "waypoint", "card", "lwt"])
def test_owntracks_messages_other_than_location_are_ignored(kind: str) -> None:
    assert rejection("owntracks/alice/phone", owntracks_payload(_type=kind)) == (
        RejectReason.IGNORED_TYPE
    )


def test_owntracks_sub_topics_are_ignored() -> None:
    payload = {"_type": "transition", "event": "enter"}
    assert rejection("owntracks/alice/phone/event", payload) == RejectReason.IGNORED_TYPE


def test_owntracks_without_type_is_missing_a_field() -> None:
    payload = without(owntracks_payload(), "_type")
    assert rejection("owntracks/alice/phone", payload) == RejectReason.MISSING_FIELD


def test_phone_stations_never_equal_a_vehicle_nor_each_other() -> None:
    # Once "tr8310-car" for both; and user a / device b-c was user a-b / device c.
    phone = parse("owntracks/tr8310/car", owntracks_payload())
    assert phone.station_id == "tr8310.car"
    assert not is_station_id(phone.station_id)
    assert parse("owntracks/a/b-c", owntracks_payload()).station_id != (
        parse("owntracks/a-b/c", owntracks_payload()).station_id
    )


@given(
    st.from_regex(r"[A-Za-z0-9_-]{1,30}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_-]{1,30}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_-]{1,30}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_-]{1,30}", fullmatch=True),
)
def test_phone_station_ids_are_one_to_one(user: str, device: str, user2: str, device2: str) -> None:
    first = phone_station_id(user, device)
    assert not is_station_id(first)
    assert (first == phone_station_id(user2, device2)) == ((user, device) == (user2, device2))


def test_owntracks_station_id_longer_than_64_is_refused() -> None:
    topic = f"owntracks/{'u' * 40}/{'d' * 30}"
    assert rejection(topic, owntracks_payload()) == RejectReason.BAD_STATION_ID


def test_owntracks_future_tst_is_refused() -> None:
    payload = owntracks_payload(tst=NOW_MS // 1000 + 301)
    assert rejection("owntracks/alice/phone", payload) == RejectReason.FUTURE_TIMESTAMP


def test_payload_of_4096_bytes_is_accepted_and_4097_rejected() -> None:
    base = orjson.dumps(cam_payload(pad=""))
    fill = MAX_PAYLOAD_BYTES - len(base)
    exact = orjson.dumps(cam_payload(pad="x" * fill))
    assert len(exact) == MAX_PAYLOAD_BYTES
    assert isinstance(parse_message("vehicles/car-1/cam", exact, NOW_MS), Cam)
    too_big = orjson.dumps(cam_payload(pad="x" * (fill + 1)))
    assert rejection("vehicles/car-1/cam", too_big) == RejectReason.TOO_LARGE


@pytest.mark.parametrize(
    "topic",
    [
        "vehicles/car-1/status",
        "vehicles/car-1",
        "vehicles/car-1/cam/extra",
        "vehicles/car/1/cam",
        "cars/car-1/cam",
        "",
        "owntracks/alice",
    ],
)
def test_unknown_topics_are_rejected(topic: str) -> None:
    assert rejection(topic, cam_payload()) == RejectReason.BAD_TOPIC


@pytest.mark.parametrize(
    "station_id", ["", "a" * 65, "car 1", "car.1", "voiture-é", "car-1\n", "+", "#"]
)
def test_invalid_station_ids_in_the_topic_are_rejected(station_id: str) -> None:
    topic = f"vehicles/{station_id}/cam"
    assert rejection(topic, cam_payload(stationId=station_id)) == RejectReason.BAD_STATION_ID


def test_station_id_of_64_allowed_characters_is_accepted() -> None:
    station_id = "Az09_-" * 10 + "abcd"
    assert len(station_id) == 64
    cam = parse(f"vehicles/{station_id}/cam", cam_payload(stationId=station_id))
    assert cam.station_id == station_id


def test_station_id_that_differs_from_the_topic_is_a_mismatch() -> None:
    assert rejection("vehicles/car-1/cam", cam_payload(stationId="car-2")) == (
        RejectReason.STATION_MISMATCH
    )


def test_invalid_station_id_in_the_payload_is_reported_as_such() -> None:
    assert rejection("vehicles/car-1/cam", cam_payload(stationId="car 1")) == (
        RejectReason.BAD_STATION_ID
    )


@pytest.mark.parametrize("raw", [b"", b"not json", b"{", b"\xff\xfe\x00", b'{"a":NaN}'])
def test_bytes_that_are_not_json_are_rejected(raw: bytes) -> None:
    assert rejection("vehicles/car-1/cam", raw) == RejectReason.NOT_JSON


@pytest.mark.parametrize("payload", [[1, 2], "cam", 3, None, True])
def test_json_that_is_not_an_object_is_rejected(payload: Any) -> None:
    assert rejection("vehicles/car-1/cam", payload) == RejectReason.NOT_OBJECT


@pytest.mark.parametrize(
    "field", ["stationId", "stationType", "timestamp", "lat", "lon", "speed", "heading"]
)
def test_cam_missing_any_field_is_rejected(field: str) -> None:
    assert rejection("vehicles/car-1/cam", without(cam_payload(), field)) == (
        RejectReason.MISSING_FIELD
    )


@pytest.mark.parametrize("field", ["causeCode", "lat", "timestamp"])
def test_denm_missing_a_required_field_is_rejected(field: str) -> None:
    assert rejection("vehicles/car-1/denm", without(denm_payload(), field)) == (
        RejectReason.MISSING_FIELD
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lat", True),
        ("speed", False),
        ("lat", "48.85"),
        ("lon", None),
        ("heading", [90]),
        ("stationId", 17),
        ("stationType", 5.0),
        ("stationType", True),
        ("timestamp", float(NOW_MS)),
        ("timestamp", str(NOW_MS)),
    ],
)
def test_cam_field_of_the_wrong_type_is_rejected(field: str, value: Any) -> None:
    assert rejection("vehicles/car-1/cam", cam_payload(**{field: value})) == (
        RejectReason.WRONG_TYPE
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("causeCode", 2.0), ("causeCode", True), ("subCauseCode", "1"), ("termination", 1)],
)
def test_denm_field_of_the_wrong_type_is_rejected(field: str, value: Any) -> None:
    assert rejection("vehicles/car-1/denm", denm_payload(**{field: value})) == (
        RejectReason.WRONG_TYPE
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lat", 90.0001),
        ("lat", -91),
        ("lon", 180.5),
        ("lon", -181),
        ("speed", -0.1),
        ("speed", 400.01),
        ("heading", 360.5),
        ("heading", -1),
        ("stationType", -1),
        ("stationType", 256),
        ("timestamp", -1),
    ],
)
def test_cam_value_out_of_its_unit_range_is_rejected(field: str, value: Any) -> None:
    assert rejection("vehicles/car-1/cam", cam_payload(**{field: value})) == (
        RejectReason.OUT_OF_RANGE
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("causeCode", -1), ("causeCode", 256), ("subCauseCode", 300), ("termination", "maybe")],
)
def test_denm_value_out_of_range_is_rejected(field: str, value: Any) -> None:
    assert rejection("vehicles/car-1/denm", denm_payload(**{field: value})) == (
        RejectReason.OUT_OF_RANGE
    )


def test_range_edges_are_inclusive() -> None:
    cam = parse(
        "vehicles/car-1/cam",
        cam_payload(lat=-90, lon=180, speed=400, heading=0, stationType=255, timestamp=0),
    )
    assert isinstance(cam, Cam)
    assert (cam.lat, cam.lon, cam.speed_kmh) == (-90.0, 180.0, 400.0)


def test_timestamp_up_to_five_minutes_ahead_is_accepted_beyond_rejected() -> None:
    ahead = parse("vehicles/car-1/cam", cam_payload(timestamp=NOW_MS + 300_000))
    assert ahead.timestamp_ms == NOW_MS + 300_000
    assert rejection("vehicles/car-1/cam", cam_payload(timestamp=NOW_MS + 300_001)) == (
        RejectReason.FUTURE_TIMESTAMP
    )


def test_future_tolerance_is_configurable() -> None:
    raw = orjson.dumps(cam_payload(timestamp=NOW_MS + 2_000))
    with pytest.raises(Rejected) as caught:
        parse_message("vehicles/car-1/cam", raw, NOW_MS, future_tolerance_ms=1_000)
    assert caught.value.reason is RejectReason.FUTURE_TIMESTAMP


def test_old_timestamps_are_accepted_for_late_delivery() -> None:
    assert parse("vehicles/car-1/cam", cam_payload(timestamp=NOW_MS - 86_400_000)) is not None


def test_rejection_detail_names_the_field_but_never_echoes_the_payload() -> None:
    secret = "x" * 50 + "<script>"
    with pytest.raises(Rejected) as caught:
        parse_message("vehicles/car-1/cam", orjson.dumps(cam_payload(lat=secret)), NOW_MS)
    assert "lat" in caught.value.detail
    assert secret not in str(caught.value)
    assert len(str(caught.value)) < 100


@given(topic=st.text(max_size=80), payload=st.binary(max_size=5000))
def test_any_bytes_on_any_topic_either_parse_or_are_rejected(topic: str, payload: bytes) -> None:
    try:
        message = parse_message(topic, payload, NOW_MS)
    except Rejected as exc:
        assert isinstance(exc.reason, RejectReason)
    else:
        assert isinstance(message, Cam | Denm)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@given(
    kind=st.sampled_from(["cam", "denm"]),
    field=st.sampled_from(
        ["stationId", "stationType", "timestamp", "lat", "lon", "speed", "heading", "causeCode"]
    ),
    value=json_values,
)
def test_any_json_value_in_any_field_is_accepted_only_if_valid(
    kind: str, field: str, value: Any
) -> None:
    payload = cam_payload() if kind == "cam" else denm_payload(speed=1.0, heading=1.0)
    payload[field] = value
    try:
        message = parse(f"vehicles/car-1/{kind}", payload)
    except Rejected:
        return
    assert message.station_id == "car-1"
    assert -90 <= message.lat <= 90
    assert -180 <= message.lon <= 180
    assert 0 <= message.timestamp_ms <= NOW_MS + 300_000
    assert type(message.station_type) is int
