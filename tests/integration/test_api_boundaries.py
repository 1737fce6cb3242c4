"""Every query and path parameter of every API route driven through its edge values, against the
real API and MariaDB (docs/contract/rest-api.md §2, docs/contract/targets.md §6): never a 5xx; a 400
JSON error naming the parameter where the input is wrong; otherwise the exact answer, checked
against the seeded events.

Edges: times from year 0000 to 9999 with offsets up to ±23:59, leap seconds and fractions of
any length, bounds inverted or equal; numbers at 0, -1, the maximum and beyond, 2**63, NaN and
infinities; boxes on the poles and the antimeridian, inverted; ids at 64 characters and beyond,
unicode, NUL and trailing spaces; repeated parameters (the last one counts). Zone writes are in
tests/integration/test_zone_boundaries.py.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from roadwatch.adapters.mysql.store import (
    DATETIME_MAX_MS,
    DATETIME_MIN_MS,
    GRID_COLUMNS,
    EventStore,
    encode_cursor,
    grid_column,
    grid_row,
)
from roadwatch.adapters.mysql.zones import ZoneStore
from roadwatch.domain.events import Event, EventStatus, EventType, ms_to_rfc3339
from roadwatch.domain.zones import zone_from_feature
from roadwatch.runner.mariadb import MariaDB
from roadwatch.services.api.app import create_app
from roadwatch.services.api.dependencies import MAX_LIMIT
from roadwatch.services.api.routers.stats import DEFAULT_HOTSPOTS, MAX_BUCKETS, MAX_HOTSPOTS
from roadwatch.settings import Settings
from tests.integration.api_server import serve
from tests.integration.db import clear_events, reset_zones
from tests.integration.test_zone_store import square_feature

pytestmark = pytest.mark.integration

# Each example is one request of a few milliseconds: the whole module stays within seconds.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# --- Seeded events: at the edges of time and of the map ----------------------------------------

LEAP_MIDNIGHT_MS = 1_483_228_800_000  # 2017-01-01T00:00:00Z, after the leap second 23:59:60
BASE_MS = 1_717_228_800_000  # 2024-06-01T08:00:00Z
EDGE_TIMES = (
    DATETIME_MIN_MS,
    DATETIME_MIN_MS + 1,
    -1,
    0,
    1,
    LEAP_MIDNIGHT_MS - 1,
    LEAP_MIDNIGHT_MS,
    BASE_MS - 1,
    BASE_MS,
    BASE_MS,
    BASE_MS + 1,
    BASE_MS + 999,
    BASE_MS + 1000,
    DATETIME_MAX_MS - 1,
    DATETIME_MAX_MS,
)
# (lat, lon): the poles at both ends of the antimeridian, the origin, and cells beside them.
PLACES = (
    (90.0, 180.0),
    (-90.0, -180.0),
    (0.0, 0.0),
    (90.0, -180.0),
    (-90.0, 180.0),
    (49.25, 4.03),
    (-0.005, 179.995),
    (0.005, -179.995),
)
LONG_STATION = "s" * 64
STATIONS = ("car-0", "car-1", LONG_STATION)
ZONE_ID = "zone-a"
ZONE_EVENTS = (EventType.ZONE_ENTER, EventType.ZONE_EXIT)
YEAR_1_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
YEAR_10000_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z
_EPOCH = datetime(1970, 1, 1)


def seed_events() -> list[Event]:
    events = []
    kinds = list(EventType)
    for n, started in enumerate(EDGE_TIMES):
        kind = kinds[n % len(kinds)]
        lat, lon = PLACES[n % len(PLACES)]
        status = (
            EventStatus.INSTANT
            if kind in ZONE_EVENTS
            else (EventStatus.ACTIVE if n % 2 else EventStatus.CLEARED)
        )
        stations = (STATIONS[n % 3],) if n % 4 else (STATIONS[n % 3], "car-9")
        events.append(
            Event(
                id=f"edge-{n:02d}",
                type=kind,
                status=status,
                version=1,
                started_ms=started,
                updated_ms=started,
                ended_ms=None if status is EventStatus.ACTIVE else started,
                lat=lat,
                lon=lon,
                station_ids=stations,
                zone_id=(ZONE_ID if n % 3 else "Zone-B") if kind in ZONE_EVENTS else None,
                zone_name="Zone" if kind in ZONE_EVENTS else None,
            )
        )
    return events


SEEDS = seed_events()
SEED_IDS = frozenset(e.id for e in SEEDS)

BBox = tuple[float, float, float, float]


def expected_ids(
    *,
    since: int | None = None,
    until: int | None = None,
    types: list[EventType] | None = None,
    status: EventStatus | None = None,
    station: str | None = None,
    zone: str | None = None,
    bbox: BBox | None = None,
) -> list[str]:
    """The seeded events a listing must return, newest first: the reference for every check."""

    def keep(e: Event) -> bool:
        if since is not None and e.started_ms < since:
            return False
        if until is not None and e.started_ms >= until:
            return False
        if types and e.type not in types:
            return False
        if status is not None and e.status is not status:
            return False
        if station is not None and station not in e.station_ids:
            return False
        if zone is not None and e.zone_id != zone:
            return False
        if bbox is not None:
            min_lon, min_lat, max_lon, max_lat = bbox
            if not min_lat <= e.lat <= max_lat:
                return False
            if min_lon <= max_lon:
                return min_lon <= e.lon <= max_lon
            return e.lon >= min_lon or e.lon <= max_lon  # across the antimeridian
        return True

    chosen = sorted((e for e in SEEDS if keep(e)), key=lambda e: (e.started_ms, e.id), reverse=True)
    return [e.id for e in chosen]


@pytest.fixture(scope="module")
def client(mariadb: MariaDB, test_settings: Settings) -> Iterator[httpx.Client]:
    clear_events(test_settings)
    reset_zones(test_settings)
    with EventStore.connect(test_settings) as store:
        assert len(store.upsert(SEEDS)) == len(SEEDS)
        ZoneStore(store.source).create_zone(zone_from_feature(square_feature(ZONE_ID)))
    with serve(test_settings) as api:
        yield api
    reset_zones(test_settings)
    clear_events(test_settings)


# --- What a parameter's text means ------------------------------------------------------------


class Value(NamedTuple):
    """A parameter's text as sent, and what it means: WRONG when the API must refuse it."""

    text: str
    meaning: Any


WRONG = object()
# Forms outside the documented grammar that a lenient parser may take: no 5xx, nothing more.
EITHER = object()


def check_answer(response: httpx.Response) -> None:
    """Whatever the input: no 5xx, and an error is JSON with a code and a detail."""
    assert response.status_code < 500, (response.request.url, response.text[:500])
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json"), response.text
        body = response.json()
        assert set(body) == {"error", "detail"}, body
        assert body["error"]
        assert body["detail"]


def assert_refused(response: httpx.Response, wrong: set[str]) -> None:
    """A 400 `invalid_parameter` naming at least one of the wrong parameters and no other."""
    assert response.status_code == 400, (response.request.url, response.text[:500], wrong)
    body = response.json()
    assert body["error"] == "invalid_parameter", body
    named = {problem["parameter"] for problem in body["detail"]}
    assert named, body
    assert named <= wrong, (named, wrong)
    assert all(problem["message"] for problem in body["detail"]), body


def send(client: httpx.Client, path: str, params: list[tuple[str, str]]) -> httpx.Response:
    note(f"GET {path} {params!r}")
    response = client.get(path, params=[(name, value) for name, value in params])
    check_answer(response)
    return response


def optional(strategy: st.SearchStrategy[Value]) -> st.SearchStrategy[Value | None]:
    return st.one_of(st.none(), strategy)


# --- Times ---------------------------------------------------------------------------------------

TIME_ANCHORS = (*EDGE_TIMES, YEAR_1_MS, YEAR_10000_MS - 1, LEAP_MIDNIGHT_MS)
# Minutes east of UTC: the extremes in use (+14:00, -12:00), the extremes of the grammar
# (±23:59) and a few half and quarter hours.
OFFSETS = (0, 0, 14 * 60, -12 * 60, 23 * 60 + 59, -(23 * 60 + 59), 5 * 60 + 30, 5 * 60 + 45, -570)
NS = 1_000_000_000


def offset_text(minutes: int, zero: str) -> str:
    if minutes == 0:
        return zero
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


@st.composite
def rfc3339_times(draw: st.DrawFn) -> Value:
    """A valid RFC 3339 time near an edge; it means the first millisecond at or after it."""
    anchor_ms = draw(st.sampled_from(TIME_ANCHORS) | st.integers(YEAR_1_MS, YEAR_10000_MS - 1))
    nudge_ns = draw(
        st.sampled_from((0, 0, 1, -1, 499_999, 500_000, 999_999, -999_999))
        | st.integers(-2 * NS, 2 * NS)
    )
    instant_ns = anchor_ms * 1_000_000 + nudge_ns
    offset = draw(st.sampled_from(OFFSETS) | st.integers(-(24 * 60 - 1), 24 * 60 - 1))
    whole_s, frac_ns = divmod(instant_ns, NS)
    # 23:59:60 UTC is, in POSIX time, the first second of the next day.
    leap = whole_s % 86_400 == 0 and draw(st.booleans())
    local_s = whole_s - leap + offset * 60
    if not YEAR_1_MS // 1000 <= local_s < YEAR_10000_MS // 1000:
        offset, local_s = 0, whole_s - leap
    if not YEAR_1_MS // 1000 <= local_s < YEAR_10000_MS // 1000:
        return Value("10000-01-01T00:00:00Z", WRONG)  # four digits of year cannot say it
    local = _EPOCH + timedelta(seconds=local_s)
    digits = f"{frac_ns:09d}".rstrip("0")
    fraction = digits.ljust(draw(st.integers(len(digits), 40)), "0")
    # Digits past the nanosecond: the time lies strictly inside its millisecond.
    beyond = draw(st.sampled_from(("", "", "", "1", "00000000000000000001")))
    if beyond:
        fraction = fraction.ljust(9, "0") + beyond
    separator = draw(st.sampled_from("TTt "))
    text = (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}{separator}"
        f"{local.hour:02d}:{local.minute:02d}:{60 if leap else local.second:02d}"
        + (f".{fraction}" if fraction else "")
        + offset_text(offset, draw(st.sampled_from(("Z", "z", "+00:00", "-00:00"))))
    )
    ms = instant_ns // 1_000_000 + 1 if beyond else -(-instant_ns // 1_000_000)
    # The documented length limit of `since` and `until`.
    return Value(text, ms if len(text) <= 64 else WRONG)


ODD_TIMES = (
    # Valid, with a year Python's datetime cannot hold or an instant beyond year 9999.
    Value("0000-01-01T00:00:00Z", -62_167_219_200_000),
    Value("0000-12-31T23:59:59.999+14:00", YEAR_1_MS - 14 * 3_600_000 - 1),
    Value("9999-12-31T23:59:59.999999999-23:59", YEAR_10000_MS + 86_340_000),
    Value("2016-12-31T23:59:60Z", LEAP_MIDNIGHT_MS),
    Value("2017-01-01T05:29:60.5+05:30", LEAP_MIDNIGHT_MS + 500),
    # Wrong: not RFC 3339, or no such time.
    *(
        Value(text, WRONG)
        for text in (
            "",
            "now",
            "2024-06-01",
            "2024-06-01T08:00:00",
            "2024-06-01T08:00Z",
            "2024-06-01T08Z",
            "20240601T080000Z",
            "2024-W22-6T08:00:00Z",
            "2024-153T08:00:00Z",
            "2024-06-01T08:00:00,5Z",
            "2024-06-01T08:00:00.Z",
            "2024-06-01T08:00:00+0200",
            "2024-06-01T08:00:00+02",
            "2024-06-01T08:00:00+02:00:30",
            "2024-06-01T08:00:00 02:00",  # a '+' sent unencoded arrives as a space
            "2024-06-01T08:00:00+24:00",
            "2024-06-01T08:00:00-00:60",
            "2024-13-01T08:00:00Z",
            "2024-00-01T08:00:00Z",
            "2024-06-31T08:00:00Z",
            "2023-02-29T08:00:00Z",
            "1900-02-29T00:00:00Z",
            "2024-06-01T24:00:00Z",
            "2024-06-01T08:60:00Z",
            "2024-06-01T08:00:61Z",
            "2024-06-01T08:00:60Z",  # a leap second only ends a UTC day
            "2016-12-31T23:59:60+01:00",
            "10000-01-01T00:00:00Z",
            "+2024-06-01T08:00:00Z",
            "-0001-01-01T00:00:00Z",
            "24-06-01T08:00:00Z",
            "\u0662\u0660\u0662\u0664-06-01T08:00:00Z",  # Arabic-Indic digits
            "\uff12\uff10\uff12\uff14-06-01T08:00:00Z",  # full-width digits
            " 2024-06-01T08:00:00Z",
            "2024-06-01T08:00:00Z ",
            "2024-06-01T08:00:00ZZ",
            "2024-06-01T08:00:00\x00Z",
            "NaN",
            "-1",
            "1717228800000",
            "9" * 64,
            "2024-06-01T08:00:00." + "0" * 45 + "Z",  # past the 64-character limit
        )
    ),
)


def times() -> st.SearchStrategy[Value]:
    return st.one_of(rfc3339_times(), st.sampled_from(ODD_TIMES))


def time_problem(value: Value | None, *, stored_range: bool) -> bool:
    """Whether the API must refuse this bound; the statistics only count storable times."""
    if value is None:
        return False
    if value.meaning is WRONG:
        return True
    return stored_range and not DATETIME_MIN_MS <= value.meaning <= DATETIME_MAX_MS


TIME_ROUTES = (
    "/api/events",
    "/api/stations/car-1/events",
    "/api/stats/summary",
    "/api/stats/hotspots",
    "/api/stats/timeseries",
)
BUCKET_MS = {"hour": 3_600_000, "day": 86_400_000}
DEFAULT_SPAN_MS = {"hour": 86_400_000, "day": 30 * 86_400_000}


@pytest.mark.parametrize("route", TIME_ROUTES)
@FUZZ
@given(
    since=optional(times()),
    until=optional(times()),
    decoy=optional(times()),
    repeated=st.sampled_from(("since", "until")),
    bucket=st.sampled_from(("hour", "day")),
)
def test_time_bounds_are_refused_clearly_or_answered_exactly(
    client: httpx.Client,
    route: str,
    since: Value | None,
    until: Value | None,
    decoy: Value | None,
    repeated: str,
    bucket: str,
) -> None:
    params: list[tuple[str, str]] = []
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            if decoy is not None and name == repeated:
                params.append((name, decoy.text))  # sent first: the last one counts
            params.append((name, value.text))
    stats = route.startswith("/api/stats/")
    station = "car-1" if route.startswith("/api/stations/") else None
    if route.endswith("/timeseries"):
        params.append(("bucket", bucket))
    elif route.endswith("/hotspots"):
        params.append(("limit", str(MAX_HOTSPOTS)))
    elif not stats:
        params.append(("limit", str(MAX_LIMIT)))
    now_ms = int(time.time() * 1000)
    response = send(client, route, params)

    wrong = {
        name
        for name, value in (("since", since), ("until", until))
        if time_problem(value, stored_range=stats)
    }
    if wrong:
        assert_refused(response, wrong)
        return
    since_ms = None if since is None else since.meaning
    until_ms = None if until is None else until.meaning
    if route.endswith("/timeseries"):
        until_ms = until_ms if until_ms is not None else min(now_ms, DATETIME_MAX_MS)
        if since_ms is None:
            since_ms = max(until_ms - DEFAULT_SPAN_MS[bucket], DATETIME_MIN_MS)
        unit = BUCKET_MS[bucket]
        count = (
            0 if since_ms >= until_ms else len(range(since_ms - since_ms % unit, until_ms, unit))
        )
        if since_ms > until_ms or count > MAX_BUCKETS:
            assert_refused(response, {"since"})
            return
    elif since_ms is not None and until_ms is not None and since_ms > until_ms:
        assert_refused(response, {"since"})
        return
    assert response.status_code == 200, response.text
    body = response.json()
    ids = expected_ids(since=since_ms, until=until_ms, station=station)
    if not stats:
        assert [item["id"] for item in body["items"]] == ids
    elif route.endswith("/summary"):
        assert body["total"] == len(ids)
        for bound, ms in (("since", since_ms), ("until", until_ms)):
            assert body[bound] == (None if ms is None else ms_to_rfc3339(ms))
    elif route.endswith("/hotspots"):
        assert sum(cell["count"] for cell in body["cells"]) == len(ids)
    else:
        assert len(body["buckets"]) == count
        assert sum(b["total"] for b in body["buckets"]) == len(ids)


# --- The other parameters of an event listing ---------------------------------------------------


def integers(low: int, high: int) -> st.SearchStrategy[Value]:
    """Integers in [low, high] as text, those outside it, and text that is no integer."""
    inside = st.sampled_from((low, low + 1, high - 1, high)) | st.integers(low, high)
    outside = st.sampled_from(
        (low - 1, high + 1, 0, -1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400)
    ).filter(lambda n: not low <= n <= high) | st.integers(max_value=low - 1)
    not_integers = (
        "",
        "1e308",
        "1e3",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "Infinity",
        "1.5",
        "0x10",
        "ten",
        "\u0661\u0660",  # Arabic-Indic 10
        "\uff11\uff10",  # full-width 10
        "1,000",
        "5;",
        "\x00",
    )
    return st.one_of(
        inside.map(lambda n: Value(str(n), n)),
        outside.map(lambda n: Value(str(n), WRONG)),
        st.sampled_from(not_integers).map(lambda text: Value(text, WRONG)),
        st.sampled_from(("+5", " 5", "5 ", "5.0", "0005", "1_000")).map(
            lambda text: Value(text, EITHER)
        ),
    )


DEGREES = (
    -180.0,
    -90.0,
    -0.0,
    0.0,
    90.0,
    180.0,
    4.03,
    49.25,
    -179.995,
    179.995,
    -0.005,
    0.005,
    5e-324,
    -180.0000001,
    180.0000001,
    -90.0000001,
    90.0000001,
    1e308,
    -1e308,
)


def degree_text(value: float, style: int) -> str:
    if style == 1 and value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.17e}" if style == 2 else repr(value)


@st.composite
def bboxes(draw: st.DrawFn) -> Value:
    """Boxes on the poles and the antimeridian, inverted, out of range, malformed."""
    number = st.sampled_from(DEGREES) | st.floats(-200, 200, allow_nan=False)
    values = draw(st.tuples(number, number, number, number))
    parts = [degree_text(v, draw(st.integers(0, 2))) for v in values]
    damage = draw(st.sampled_from(("none", "none", "none", "nonfinite", "three", "five", "empty")))
    if damage == "nonfinite":
        parts[draw(st.integers(0, 3))] = draw(st.sampled_from(("nan", "NaN", "inf", "-inf")))
    elif damage == "three":
        parts.pop()
    elif damage == "five":
        parts.append("0")
    elif damage == "empty":
        parts[draw(st.integers(0, 3))] = ""
    text = ",".join(parts)
    min_lon, min_lat, max_lon, max_lat = values
    valid = (
        damage == "none"
        and len(text) <= 200
        and all(-180 <= lon <= 180 for lon in (min_lon, max_lon))
        and all(-90 <= lat <= 90 for lat in (min_lat, max_lat))
        and min_lat <= max_lat
    )
    return Value(text, values if valid else WRONG)


def members(valid: tuple[str, ...], wrong: tuple[str, ...]) -> st.SearchStrategy[Value]:
    return st.sampled_from(valid).map(lambda text: Value(text, text)) | st.sampled_from(wrong).map(
        lambda text: Value(text, WRONG)
    )


TYPES = members(
    tuple(kind.value for kind in EventType),
    ("", "Accident", "ACCIDENT", "accident,hazard", "zone", "traffic jam", "\U0001f697", "x" * 500),
)
STATUSES = members(tuple(s.value for s in EventStatus), ("", "Active", "open", "active "))
FORMATS = members(("json", "geojson", "csv"), ("", "JSON", "xml", "csv;", "geo+json"))
# Text of any script, NUL and trailing spaces included (an id column's collation pads with
# spaces: 'car-1 ' must not find car-1's events).
ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=70)


def names(known: tuple[str, ...]) -> st.SearchStrategy[Value]:
    """Station or zone names: known ones, near misses, any text; 1 to 64 characters are valid."""
    near = tuple(f"{name} " for name in known) + tuple(name.upper() for name in known)
    text = st.one_of(
        st.sampled_from(known + near + ("", "x" * 65, "x" * 10_240, "\x00", "' OR 1=1 --")),
        ANY_TEXT,
    )
    return text.map(lambda s: Value(s, s if 1 <= len(s) <= 64 else WRONG))


def cursors() -> st.SearchStrategy[Value]:
    issued = st.sampled_from(SEEDS).map(
        lambda e: Value(encode_cursor(e.started_ms, e.id), (e.started_ms, e.id))
    )
    # Well-formed but never issued: any answer but a 5xx.
    forged = st.tuples(
        st.sampled_from((2**63 - 1, -(2**63), 2**64 - 1, YEAR_10000_MS, YEAR_1_MS)),
        st.sampled_from(("x", "\x00", "z" * 64, "\U0001f697")),
    ).map(lambda pair: Value(encode_cursor(*pair), EITHER))
    junk = st.sampled_from(("", "%", "====", "W10", "bnVsbA", "\u2713", "A" * 257)).map(
        lambda text: Value(text, WRONG)
    )
    return st.one_of(issued, forged, junk)


def weighted(strategy: st.SearchStrategy[Value]) -> st.SearchStrategy[Value | None]:
    """Absent half of the time, so most examples combine a few parameters, not all of them."""
    return st.one_of(st.none(), st.none(), strategy)


def listed_ids(response: httpx.Response, page_format: str) -> list[str]:
    if page_format == "geojson":
        assert response.headers["content-type"].startswith("application/geo+json")
        return [feature["id"] for feature in response.json()["features"]]
    if page_format == "csv":
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(response.text)))
        return [row[0] for row in rows[1:]]
    assert response.headers["content-type"].startswith("application/json")
    return [item["id"] for item in response.json()["items"]]


@pytest.mark.parametrize("route", ["/api/events", "/api/stations/car-9/events"])
@FUZZ
@given(
    limit=weighted(integers(1, MAX_LIMIT)),
    bbox=weighted(bboxes()),
    types=st.lists(TYPES, max_size=3),
    status=weighted(STATUSES),
    page_format=weighted(FORMATS),
    station=weighted(names(STATIONS)),
    zone=weighted(names((ZONE_ID, "Zone-B"))),
    cursor=weighted(cursors()),
    repeated_limit=st.none() | integers(1, MAX_LIMIT),
)
def test_listing_parameters_are_refused_clearly_or_answered_exactly(
    client: httpx.Client,
    route: str,
    limit: Value | None,
    bbox: Value | None,
    types: list[Value],
    status: Value | None,
    page_format: Value | None,
    station: Value | None,
    zone: Value | None,
    cursor: Value | None,
    repeated_limit: Value | None,
) -> None:
    by_station = route.startswith("/api/stations/")
    given_params: dict[str, Value | None] = {
        "limit": limit,
        "bbox": bbox,
        "status": status,
        "format": page_format,
        "zone": zone,
        "cursor": cursor,
    }
    if not by_station:
        given_params["station"] = station
    params = [("type", value.text) for value in types]
    for name, value in given_params.items():
        if value is not None:
            if name == "limit" and repeated_limit is not None:
                params.append((name, repeated_limit.text))  # sent first: the last one counts
            params.append((name, value.text))
    response = send(client, route, params)

    wrong = {name for name, value in given_params.items() if value and value.meaning is WRONG}
    # Outside the documented forms: a lenient reading may still be out of range.
    either = {name for name, value in given_params.items() if value and value.meaning is EITHER}
    if any(value.meaning is WRONG for value in types):
        wrong.add("type")
    if wrong:
        assert_refused(response, wrong | either)
        return
    if either:
        return  # check_answer was all there is to ask
    assert response.status_code == 200, response.text
    ids = expected_ids(
        types=[EventType(value.meaning) for value in types] or None,
        status=None if status is None else EventStatus(status.meaning),
        station="car-9" if by_station else (None if station is None else station.meaning),
        zone=None if zone is None else zone.meaning,
        bbox=None if bbox is None else bbox.meaning,
    )
    if cursor is not None:
        after = cursor.meaning
        by_key = {e.id: (e.started_ms, e.id) for e in SEEDS}
        ids = [i for i in ids if by_key[i] < after]
    page_size = 100 if limit is None else limit.meaning
    listed = listed_ids(response, "json" if page_format is None else page_format.meaning)
    assert listed == ids[:page_size]
    assert ("link" in response.headers) == (len(ids) > page_size)


# --- Statistics parameters --------------------------------------------------------------------


def top_counts(ids: list[str], limit: int) -> int:
    """The events in the `limit` busiest grid squares: the same whichever way ties fall."""
    cells = Counter(
        grid_row(e.lat) * GRID_COLUMNS + grid_column(e.lon) for e in SEEDS if e.id in set(ids)
    )
    return sum(sorted(cells.values(), reverse=True)[:limit])


# Ranges holding seeded events: all storable time for hotspots; for time series the last 40
# days of year 9999, few enough buckets of either size.
STATS_RANGES = {
    "hotspots": (DATETIME_MIN_MS, DATETIME_MAX_MS),
    "timeseries": (YEAR_10000_MS - 40 * 86_400_000, DATETIME_MAX_MS),
}


@FUZZ
@given(
    limit=weighted(integers(1, MAX_HOTSPOTS)),
    types=st.lists(TYPES, max_size=3),
    bucket=weighted(members(("hour", "day"), ("", "week", "Hour", "3600", "hour "))),
    route=st.sampled_from(("hotspots", "timeseries")),
)
def test_statistics_parameters_are_refused_clearly_or_answered_exactly(
    client: httpx.Client,
    limit: Value | None,
    types: list[Value],
    bucket: Value | None,
    route: str,
) -> None:
    since_ms, until_ms = STATS_RANGES[route]
    params = [("since", ms_to_rfc3339(since_ms)), ("until", ms_to_rfc3339(until_ms))]
    params += [("type", value.text) for value in types]
    own = {"hotspots": {"limit": limit}, "timeseries": {"bucket": bucket}}[route]
    params += [(name, value.text) for name, value in own.items() if value is not None]
    response = send(client, f"/api/stats/{route}", params)

    wrong = {name for name, value in own.items() if value and value.meaning is WRONG}
    either = {name for name, value in own.items() if value and value.meaning is EITHER}
    if any(value.meaning is WRONG for value in types):
        wrong.add("type")
    if wrong:
        assert_refused(response, wrong | either)
        return
    if either:
        return
    assert response.status_code == 200, response.text
    body = response.json()
    kinds = [EventType(value.meaning) for value in types] or None
    ids = expected_ids(since=since_ms, until=until_ms, types=kinds)
    if route == "hotspots":
        most = DEFAULT_HOTSPOTS if limit is None else limit.meaning
        assert len(body["cells"]) <= most
        assert sum(cell["count"] for cell in body["cells"]) == top_counts(ids, most)
    else:
        assert sum(b["total"] for b in body["buckets"]) == len(ids)


# --- Path parameters --------------------------------------------------------------------------

# Path segments a URL cannot hold as text: invalid UTF-8, a lone surrogate's bytes.
RAW_SEGMENTS = ("%FF", "%FF%FE", "%ED%A0%80", "%C0%AF", "%E2%82")


def segments() -> st.SearchStrategy[tuple[str, str | None]]:
    """(what goes in the URL, the id the API sees, or None for bytes that are not UTF-8)."""
    text = st.one_of(
        st.sampled_from(
            (
                *sorted(SEED_IDS),
                *STATIONS,
                ZONE_ID,
                "edge-01 ",
                "car-1 ",
                f"{ZONE_ID} ",
                "EDGE-01",
                "x" * 64,
                "x" * 65,
                "x" * 10_240,
                "\x00",
                "a/b",
                "car:1",
                "' OR 1=1 --",
                "\U0001f697",
            )
        ),
        ANY_TEXT,
    ).filter(lambda s: s.strip(".") != "")  # '.' and '..' name other resources in a URL
    return st.one_of(
        text.map(lambda s: (quote(s, safe=""), s)),
        st.sampled_from(RAW_SEGMENTS).map(lambda raw: (raw, None)),
    )


def documented_string(schema: dict[str, Any], text: str) -> bool:
    """Whether `text` meets a string schema of the OpenAPI document (ECMA-262 `$`: the end)."""
    pattern = schema.get("pattern", "")
    return (
        schema.get("minLength", 0) <= len(text) <= schema.get("maxLength", len(text))
        and re.search(pattern.removesuffix("$") + r"\Z" if pattern.endswith("$") else pattern, text)
        is not None
    )


def openapi_document() -> dict[str, Any]:
    return create_app(Settings(_env_file=None, environment="test")).openapi()  # type: ignore[call-arg]


DOCUMENT = openapi_document()
STATION_ID_SCHEMA = next(
    parameter["schema"]
    for parameter in DOCUMENT["paths"]["/api/stations/{station_id}/events"]["get"]["parameters"]
    if parameter["name"] == "station_id"
)


PATH_ROUTES = (
    "/api/events/{}",
    "/api/stations/{}/events",
    "/api/zones/{}",
    "/api/zones/{}/occupancy",
)


def occupants(zone_id: str) -> list[str]:
    """The stations whose latest event in the zone is an enter (the seeds' own rule)."""
    latest: dict[str, Event] = {}
    for e in sorted(SEEDS, key=lambda e: (e.started_ms, e.id)):
        if e.zone_id == zone_id and e.type in ZONE_EVENTS:
            for station in e.station_ids:
                latest[station] = e
    return sorted(s for s, e in latest.items() if e.type is EventType.ZONE_ENTER)


@pytest.mark.parametrize("template", PATH_ROUTES)
@FUZZ
@given(segment=segments())
def test_path_ids_are_found_exactly_or_refused_clearly(
    client: httpx.Client, template: str, segment: tuple[str, str | None]
) -> None:
    raw, ident = segment
    note(f"GET {template.format(raw)[:200]}")
    response = client.get(template.format(raw))
    check_answer(response)
    if ident is None or "/" in ident:
        # A decoded '/' makes another path: none, or one with a trailing slash, redirected.
        assert response.status_code in (307, 400, 404), response.text
        return
    if template == "/api/events/{}":
        if ident in SEED_IDS:
            assert response.status_code == 200, response.text
            assert response.json()["id"] == ident
        else:
            assert response.status_code == 404, response.text
    elif template == "/api/stations/{}/events":
        if not documented_string(STATION_ID_SCHEMA, ident):
            assert_refused(response, {"station_id"})
        else:
            assert response.status_code == 200, response.text
            items = [item["id"] for item in response.json()["items"]]
            assert items == expected_ids(station=ident)[:100]
    elif ident != ZONE_ID:
        assert response.status_code == 404, response.text
    elif template == "/api/zones/{}":
        assert response.status_code == 200, response.text
        assert response.json()["properties"]["id"] == ZONE_ID
    else:
        assert response.status_code == 200, response.text
        body = response.json()
        assert [o["station_id"] for o in body["stations"]] == occupants(ZONE_ID)


@FUZZ
@given(segment=segments(), with_token=st.booleans())
def test_zone_deletes_by_odd_ids_never_touch_another_zone(
    client: httpx.Client,
    test_settings: Settings,
    segment: tuple[str, str | None],
    with_token: bool,
) -> None:
    raw, ident = segment
    token = test_settings.api_token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"} if with_token else {}
    if ident == ZONE_ID:
        return  # the fixture's zone stays
    response = client.delete(f"/api/zones/{raw}", headers=headers)
    check_answer(response)
    if ident is not None and "/" not in ident:
        assert response.status_code == (404 if with_token else 401), response.text
    assert client.get(f"/api/zones/{ZONE_ID}").status_code == 200


# --- Edges the fuzzing found, kept as plain examples -------------------------------------------


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        # A leap second is the first millisecond of the next day in POSIX time.
        ("since=2016-12-31T23:59:60Z&until=2017-01-01T00:00:00.001Z", ["edge-06"]),
        # Every digit counts: 100 ns after 08:00:00.000 leaves out what started then.
        ("since=2024-06-01T08:00:00.0000001Z&until=2024-06-01T08:00:00.001Z", []),
        (
            "since=2024-06-01T07:59:59.9991Z&until=2024-06-01T08:00:00.0000001Z",
            ["edge-09", "edge-08"],
        ),
        # Bounds past the last storable millisecond: no bound, or nothing.
        ("since=9999-12-31T23:59:59.999Z&until=9999-12-31T23:59:59.9999Z", ["edge-14"]),
        ("since=9999-12-31T23:59:59.999-00:01", []),
        ("since=0000-01-01T00:00:00Z&until=1000-01-01T00:00:00.001Z", ["edge-00"]),
        # Identifiers match exactly, whatever the column's collation does with trailing spaces.
        ("station=car-1%20", []),
        ("zone=zone-a%20", []),
    ],
)
def test_edges_found_by_fuzzing_are_answered_exactly(
    client: httpx.Client, query: str, ids: list[str]
) -> None:
    response = client.get(f"/api/events?{query}")
    assert response.status_code == 200, response.text
    assert [item["id"] for item in response.json()["items"]] == ids


def test_ids_with_a_trailing_space_name_no_other_resource(
    client: httpx.Client, test_settings: Settings
) -> None:
    auth = {"Authorization": f"Bearer {test_settings.api_token.get_secret_value()}"}
    for path in (
        "/api/events/edge-01%20",
        "/api/zones/zone-a%20",
        "/api/zones/zone-a%20/occupancy",
    ):
        response = client.get(path)
        check_answer(response)
        assert response.status_code == 404, (path, response.text)
    response = client.delete("/api/zones/zone-a%20", headers=auth)
    assert response.status_code == 404, response.text
    assert client.get("/api/zones/zone-a").status_code == 200


def test_time_errors_say_what_is_wrong(client: httpx.Client) -> None:
    def message(params: dict[str, str], path: str = "/api/events") -> str:
        response = client.get(path, params=params)
        assert_refused(response, set(params))
        return str(response.json()["detail"][0]["message"])

    # 9999-12-31T23:59:59.9995Z is in year 9999 but after the last storable millisecond.
    text = message({"since": "9999-12-31T23:59:59.9995Z"}, "/api/stats/summary")
    assert "9999-12-31T23:59:59.999Z" in text
    assert "%2B" in message({"since": "2024-06-01T10:00:00 02:00"})
    assert "leap second" in message({"until": "2024-06-01T10:00:60Z"})
    assert "no such date" in message({"until": "2023-02-29T00:00:00Z"})


# Every parameter the OpenAPI document declares, by the test above that drives it: a new one
# fails here until it has its edges too.
DRIVEN = {
    "/api/events": {"since", "until"}
    | {"type", "status", "bbox", "zone", "limit", "cursor", "format", "station"},
    "/api/stations/{station_id}/events": {"station_id", "since", "until"}
    | {"type", "status", "bbox", "zone", "limit", "cursor", "format"},
    "/api/events/{event_id}": {"event_id"},
    "/api/zones/{zone_id}": {"zone_id"},  # GET here; DELETE here, PUT in test_zone_boundaries
    "/api/zones/{zone_id}/occupancy": {"zone_id"},
    "/api/stats/summary": {"since", "until"},
    "/api/stats/timeseries": {"since", "until", "bucket", "type"},
    "/api/stats/hotspots": {"since", "until", "limit", "type"},
}


def test_every_documented_parameter_is_driven_through_its_edges() -> None:
    declared: dict[str, set[str]] = {}
    for path, item in DOCUMENT["paths"].items():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                declared.setdefault(path, set()).add(parameter["name"])
    assert declared == DRIVEN
