"""The event object of docs/contract/events.md §1: one shape in XMPP, MySQL, the REST API and the
web app."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson


class EventType(StrEnum):
    ACCIDENT = "accident"
    TRAFFIC_JAM = "traffic_jam"
    ZONE_ENTER = "zone_enter"
    ZONE_EXIT = "zone_exit"
    HAZARD = "hazard"

    @property
    def pubsub_node(self) -> str:
        """The PubSub node that carries this kind of event (docs/contract/xmpp.md §5)."""
        if self in (EventType.ZONE_ENTER, EventType.ZONE_EXIT):
            return "zone"
        return self.value


class EventStatus(StrEnum):
    ACTIVE = "active"
    CLEARED = "cleared"
    INSTANT = "instant"


PUBSUB_NODES: tuple[str, ...] = ("accident", "traffic_jam", "zone", "hazard")


class InvalidEvent(ValueError):
    """An event object that does not follow docs/contract/events.md §7."""


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_event_id(started_ms: int, *origin: str) -> str:
    """Return a ULID-shaped id: 10 characters of time, then 16 derived from the event's origin.

    Derived, not random, so that replaying a trace yields the same ids
    (docs/contract/detection.md §1: replay gives the same events) and a restarted gateway cannot
    mint a second id for one event.
    """
    if started_ms < 0:
        raise InvalidEvent("event time before 1970")
    time_part = "".join(_CROCKFORD[(started_ms >> (5 * i)) & 31] for i in reversed(range(10)))
    digest = int.from_bytes(hashlib.blake2b("\x1f".join(origin).encode(), digest_size=10).digest())
    rest = "".join(_CROCKFORD[(digest >> (5 * i)) & 31] for i in reversed(range(16)))
    return time_part + rest


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def ms_to_rfc3339(ms: int) -> str:
    """Render epoch milliseconds as RFC 3339 UTC with millisecond precision."""
    # Integer arithmetic: through a float, 9999-12-31T23:59:59.999Z came back as .998.
    return (_EPOCH + ms * _MILLISECOND).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_to_ms(text: str) -> int:
    """Parse an RFC 3339 timestamp into epoch milliseconds (UTC)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidEvent(f"not an RFC 3339 time: {text!r}") from exc
    if moment.tzinfo is None:
        raise InvalidEvent(f"time without a UTC offset: {text!r}")
    # Exact, in whole microseconds, rounded to the nearest millisecond (half up).
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    return (micros + 500) // 1000


# RFC 3339 §5.6, whose notes allow a lower-case `t` and `z` and a space for the `T`. ASCII
# digits only: `\d` would also take other scripts' digits.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_DAY_S = 86_400
# The Gregorian calendar repeats every 400 years, which lets `date` place year 0000 too.
_CYCLE_YEARS, _CYCLE_DAYS = 400, 146_097
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def rfc3339_ceil_ms(text: str) -> int:
    """Parse any RFC 3339 time exactly; return the first whole millisecond at or after it.

    Unlike `rfc3339_to_ms`, every digit of the fraction counts and a leap second
    (23:59:60 UTC, POSIX's first second of the next day) is accepted: a bound on event times,
    which are whole milliseconds, must neither move nor refuse a valid time.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise InvalidEvent("expected YYYY-MM-DDThh:mm:ss, an optional fraction, then Z or ±hh:mm")
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    fraction = match.group(7) or ""
    sign, offset_hours, offset_minutes = match.group(8, 9, 10)
    try:
        cycles, year_in_cycle = divmod(year, _CYCLE_YEARS)
        ordinal = date(2000 + year_in_cycle, month, day).toordinal()
    except ValueError as exc:
        raise InvalidEvent(f"no such date ({exc})") from exc
    if hour > 23 or minute > 59 or second > 60:
        raise InvalidEvent("hour, minute or second out of range")
    offset_s = 0
    if sign is not None:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise InvalidEvent("the offset must be within ±23:59")
        offset_s = (int(offset_hours) * 60 + int(offset_minutes)) * 60 * (-1 if sign == "-" else 1)
    days = ordinal - _EPOCH_ORDINAL + (cycles - 5) * _CYCLE_DAYS
    seconds = days * _DAY_S + hour * 3600 + minute * 60 + second - offset_s
    if second == 60 and seconds % _DAY_S != 0:
        raise InvalidEvent("a leap second is 23:59:60 UTC, at the end of a day")
    # Milliseconds from the first three digits; any further non-zero digit is a remainder.
    millis = int((fraction + "000")[:3])
    remainder = fraction[3:].strip("0") != ""
    return seconds * 1000 + millis + remainder


@dataclass(frozen=True, slots=True)
class Event:
    """A detected road event at one version; times are epoch milliseconds of event time."""

    id: str
    type: EventType
    status: EventStatus
    version: int
    started_ms: int
    updated_ms: int
    ended_ms: int | None
    lat: float
    lon: float
    cause_code: int | None = None
    station_ids: tuple[str, ...] = ()
    zone_id: str | None = None
    zone_name: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def next_version(self, **changes: Any) -> Event:
        """Return this event one version later with `changes` applied."""
        return replace(self, version=self.version + 1, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object of docs/contract/events.md §1."""
        return {
            "id": self.id,
            "type": self.type.value,
            "status": self.status.value,
            "version": self.version,
            "started_at": ms_to_rfc3339(self.started_ms),
            "updated_at": ms_to_rfc3339(self.updated_ms),
            "ended_at": None if self.ended_ms is None else ms_to_rfc3339(self.ended_ms),
            "lat": self.lat,
            "lon": self.lon,
            "cause_code": self.cause_code,
            "station_ids": list(self.station_ids),
            "zone_id": self.zone_id,
            "zone_name": self.zone_name,
            "details": self.details,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Event:
        """Validate an event object (from XMPP or the database) into an Event.

        What is refused: docs/contract/events.md §7.
        """
        if not isinstance(data, dict):
            raise InvalidEvent("event is not a JSON object")
        try:
            ended = data.get("ended_at")
            event = cls(
                id=_text(data["id"], "id", 64),
                type=EventType(data["type"]),
                status=EventStatus(data["status"]),
                version=_int(data["version"], "version"),
                started_ms=rfc3339_to_ms(_text(data["started_at"], "started_at", 40)),
                updated_ms=rfc3339_to_ms(_text(data["updated_at"], "updated_at", 40)),
                ended_ms=None if ended is None else rfc3339_to_ms(_text(ended, "ended_at", 40)),
                lat=_number(data["lat"], "lat", -90, 90),
                lon=_number(data["lon"], "lon", -180, 180),
                cause_code=None
                if data.get("cause_code") is None
                else _int(data["cause_code"], "cause_code"),
                station_ids=tuple(_text(s, "station_ids", 64) for s in data.get("station_ids", [])),
                zone_id=None
                if data.get("zone_id") is None
                else _text(data["zone_id"], "zone_id", 64),
                zone_name=None
                if data.get("zone_name") is None
                else _text(data["zone_name"], "zone_name", 200),
                details=_details(data.get("details", {})),
            )
        except KeyError as exc:
            raise InvalidEvent(f"missing field {exc.args[0]!r}") from exc
        except ValueError as exc:
            if isinstance(exc, InvalidEvent):
                raise
            raise InvalidEvent(str(exc)) from exc
        if event.version < 1:
            raise InvalidEvent("version must be at least 1")
        return event

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("event is not JSON") from exc
        return cls.from_dict(data)

    def summary(self) -> str:
        """One human line, shown by any XMPP client as the message body."""
        where = f"{self.lat:.5f},{self.lon:.5f}"
        label = self.type.value.replace("_", " ")
        zone = f" zone {self.zone_name or self.zone_id}" if self.zone_id else ""
        stations = f", {len(self.station_ids)} station(s)" if self.station_ids else ""
        return (
            f"[{self.status.value}] {label}{zone} at {where}{stations} "
            f"(v{self.version}, {ms_to_rfc3339(self.updated_ms)})"
        )


def _text(value: Any, name: str, max_len: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidEvent(f"{name} must be a string of 1 to {max_len} characters")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(f"{name} must be an integer")
    return value


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidEvent(f"{name} must be a number in [{low}, {high}]")
    return float(value)


def _details(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidEvent("details must be an object")
    return value
