"""The MQTT wire values of docs/contract/mqtt.md §3 to §5 (CAM, DENM, OwnTracks location), validated
at the boundary."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

# docs/contract/mqtt.md §6: payloads above 4 KiB are rejected before parsing.
MAX_PAYLOAD_BYTES = 4096
# docs/contract/mqtt.md §6: timestamps more than 5 minutes ahead of the gateway's clock are
# rejected.
DEFAULT_FUTURE_TOLERANCE_MS = 300_000
# docs/contract/mqtt.md §5: OwnTracks positions are treated as passenger cars.
OWNTRACKS_STATION_TYPE = 5
MAX_STATION_ID_LEN = 64

_STATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# docs/contract/mqtt.md §5: phones' stations live in their own namespace, marked by a character no
# vehicle has.
PHONE_SEPARATOR = "."
# ETSI TS 102 894-2 encodes StationType, CauseCode and SubCauseCode on 0..255.
_BYTE_MAX = 255


class Termination(StrEnum):
    CANCELLATION = "cancellation"
    NEGATION = "negation"


class RejectReason(StrEnum):
    BAD_TOPIC = "bad_topic"
    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    BAD_STATION_ID = "bad_station_id"
    STATION_MISMATCH = "station_mismatch"
    FUTURE_TIMESTAMP = "future_timestamp"
    IGNORED_TYPE = "ignored_type"


class Rejected(Exception):
    """A message that breaks docs/contract/mqtt.md §6; `detail` names the field, never echoes the
    payload."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Cam:
    """A vehicle's periodic status (docs/contract/mqtt.md §3); speed in km/h, heading in degrees
    from north."""

    station_id: str
    station_type: int
    timestamp_ms: int
    lat: float
    lon: float
    speed_kmh: float
    heading_deg: float


@dataclass(frozen=True, slots=True)
class Denm:
    """A vehicle's event notification (docs/contract/mqtt.md §4), possibly withdrawing an earlier
    one."""

    station_id: str
    station_type: int
    timestamp_ms: int
    lat: float
    lon: float
    cause_code: int
    sub_cause_code: int | None = None
    termination: Termination | None = None


def phone_station_id(user: str, device: str) -> str:
    """The station of an OwnTracks device: `{user}.{device}`, in the phones' own namespace.

    No vehicle stationId holds a dot, and neither user nor device may, so a phone can equal
    neither a vehicle nor another user's device.
    """
    return f"{user}{PHONE_SEPARATOR}{device}"


def is_station_id(value: str) -> bool:
    """Tell whether `value` is a valid stationId: 1 to 64 characters of [A-Za-z0-9_-]."""
    return _STATION_ID.fullmatch(value) is not None


def parse_message(
    topic: str,
    payload: bytes,
    now_ms: int,
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS,
) -> Cam | Denm:
    """Validate one MQTT message into a Cam or Denm, or raise Rejected saying why."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejected(RejectReason.TOO_LARGE, f"payload over {MAX_PAYLOAD_BYTES} bytes")
    parts = topic.split("/")
    root = parts[0]
    if root == "vehicles" and len(parts) == 3:
        topic_station = parts[1]
        if _STATION_ID.fullmatch(topic_station) is None:
            raise Rejected(RejectReason.BAD_STATION_ID, "topic stationId is not valid")
        kind = parts[2]
        if kind == "cam":
            return _parse_cam(_load(payload), topic_station, now_ms + future_tolerance_ms)
        if kind == "denm":
            return _parse_denm(_load(payload), topic_station, now_ms + future_tolerance_ms)
        raise Rejected(RejectReason.BAD_TOPIC, "expected vehicles/{stationId}/cam or /denm")
    if root == "owntracks" and len(parts) >= 3:
        user, device = parts[1], parts[2]
        if _STATION_ID.fullmatch(user) is None or _STATION_ID.fullmatch(device) is None:
            raise Rejected(RejectReason.BAD_STATION_ID, "OwnTracks user or device is not valid")
        if len(parts) > 3:
            # OwnTracks sub-topics (…/event, …/info, …/cmd) carry no location.
            raise Rejected(RejectReason.IGNORED_TYPE, "OwnTracks sub-topic")
        station_id = phone_station_id(user, device)
        if len(station_id) > MAX_STATION_ID_LEN:
            raise Rejected(RejectReason.BAD_STATION_ID, "OwnTracks user.device is too long")
        return _parse_owntracks(_load(payload), station_id, now_ms + future_tolerance_ms)
    raise Rejected(RejectReason.BAD_TOPIC, "not a vehicles/ or owntracks/ topic")


def _load(payload: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise Rejected(RejectReason.NOT_JSON, "payload is not UTF-8 JSON") from None
    if type(data) is not dict:
        raise Rejected(RejectReason.NOT_OBJECT, "payload is not a JSON object")
    return data


def _parse_cam(data: dict[str, Any], topic_station: str, latest_ms: int) -> Cam:
    station_id, station_type, timestamp = _header(data, topic_station, latest_ms)
    return Cam(
        station_id,
        station_type,
        timestamp,
        _number(data, "lat", -90.0, 90.0),
        _number(data, "lon", -180.0, 180.0),
        _number(data, "speed", 0.0, 400.0),
        _number(data, "heading", 0.0, 360.0),
    )


def _parse_denm(data: dict[str, Any], topic_station: str, latest_ms: int) -> Denm:
    station_id, station_type, timestamp = _header(data, topic_station, latest_ms)
    lat = _number(data, "lat", -90.0, 90.0)
    lon = _number(data, "lon", -180.0, 180.0)
    cause_code = _integer(data, "causeCode", 0, _BYTE_MAX)
    sub_cause_code = (
        None if data.get("subCauseCode") is None else _integer(data, "subCauseCode", 0, _BYTE_MAX)
    )
    termination = _termination(data.get("termination"))
    return Denm(
        station_id, station_type, timestamp, lat, lon, cause_code, sub_cause_code, termination
    )


def _parse_owntracks(data: dict[str, Any], station_id: str, latest_ms: int) -> Cam:
    kind = data.get("_type")
    if kind is None:
        raise Rejected(RejectReason.MISSING_FIELD, "_type is missing")
    if kind != "location":
        raise Rejected(RejectReason.IGNORED_TYPE, "OwnTracks _type is not location")
    tst = _integer(data, "tst", 0, None)
    if tst * 1000 > latest_ms:
        raise Rejected(RejectReason.FUTURE_TIMESTAMP, "tst is too far in the future")
    lat = _number(data, "lat", -90.0, 90.0)
    lon = _number(data, "lon", -180.0, 180.0)
    return Cam(
        station_id,
        OWNTRACKS_STATION_TYPE,
        tst * 1000,
        lat,
        lon,
        _optional_motion(data, "vel", 400.0),
        _optional_motion(data, "cog", 360.0),
    )


def _header(data: dict[str, Any], topic_station: str, latest_ms: int) -> tuple[str, int, int]:
    try:
        station_id = data["stationId"]
    except KeyError:
        raise Rejected(RejectReason.MISSING_FIELD, "stationId is missing") from None
    if type(station_id) is not str:
        raise Rejected(RejectReason.WRONG_TYPE, "stationId must be a string")
    if station_id != topic_station:
        if _STATION_ID.fullmatch(station_id) is None:
            raise Rejected(RejectReason.BAD_STATION_ID, "stationId is not valid")
        raise Rejected(RejectReason.STATION_MISMATCH, "stationId differs from the topic's")
    station_type = _integer(data, "stationType", 0, _BYTE_MAX)
    timestamp = _integer(data, "timestamp", 0, None)
    if timestamp > latest_ms:
        raise Rejected(RejectReason.FUTURE_TIMESTAMP, "timestamp is too far in the future")
    return station_id, station_type, timestamp


def _integer(data: dict[str, Any], name: str, low: int, high: int | None) -> int:
    try:
        value = data[name]
    except KeyError:
        raise Rejected(RejectReason.MISSING_FIELD, f"{name} is missing") from None
    # `type(...) is int` also refuses bool, which JSON true/false would otherwise pass as.
    if type(value) is not int:
        raise Rejected(RejectReason.WRONG_TYPE, f"{name} must be an integer")
    if value < low or (high is not None and value > high):
        raise Rejected(RejectReason.OUT_OF_RANGE, f"{name} is out of range")
    return value


def _number(data: dict[str, Any], name: str, low: float, high: float) -> float:
    try:
        value = data[name]
    except KeyError:
        raise Rejected(RejectReason.MISSING_FIELD, f"{name} is missing") from None
    kind = type(value)
    if kind is not float and kind is not int:
        raise Rejected(RejectReason.WRONG_TYPE, f"{name} must be a number")
    if not low <= value <= high:
        raise Rejected(RejectReason.OUT_OF_RANGE, f"{name} must be in [{low:g}, {high:g}]")
    return float(value)


def _optional_motion(data: dict[str, Any], name: str, high: float) -> float:
    value = data.get(name)
    # iOS reports an unknown speed or course as a negative number; treat it like a missing one.
    if value is None or (type(value) in (int, float) and value < 0):
        return 0.0
    return _number(data, name, 0.0, high)


def _termination(value: Any) -> Termination | None:
    if value is None:
        return None
    if type(value) is not str:
        raise Rejected(RejectReason.WRONG_TYPE, "termination must be a string")
    if value == "cancellation":
        return Termination.CANCELLATION
    if value == "negation":
        return Termination.NEGATION
    raise Rejected(RejectReason.OUT_OF_RANGE, "termination must be cancellation or negation")
