"""The GeoJSON and CSV renderings of event pages: shapes, quoting, formula defusing, links."""

from __future__ import annotations

import csv
import io
from urllib.parse import parse_qsl, urlsplit

import orjson
from hypothesis import given
from hypothesis import strategies as st

from roadwatch.domain.events import Event, EventStatus, EventType
from roadwatch.services.api.formats import (
    CSV_COLUMNS,
    csv_cell,
    csv_page,
    event_feature,
    geojson_page,
    json_page,
    next_link,
)

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def zone_event(
    name: str, *, station: str = "car-1", details: dict[str, object] | None = None
) -> Event:
    return Event(
        id="01J1ZZZZZZZZZZZZZZZZZZZZZZ",
        type=EventType.ZONE_ENTER,
        status=EventStatus.INSTANT,
        version=3,
        started_ms=1_719_820_800_000,
        updated_ms=1_719_820_800_000,
        ended_ms=None,
        lat=49.25,
        lon=-4.5,
        station_ids=(station, "bus-7"),
        zone_id="centre",
        zone_name=name,
        details=details or {},
    )


def parse(body: bytes) -> list[dict[str, str]]:
    header, *rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert tuple(header) == CSV_COLUMNS
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_a_feature_is_a_point_at_lon_lat_with_the_event_as_properties() -> None:
    event = zone_event("Centre")
    assert event_feature(event) == {
        "type": "Feature",
        "id": event.id,
        "geometry": {"type": "Point", "coordinates": [-4.5, 49.25]},
        "properties": event.to_dict(),
    }
    collection = orjson.loads(geojson_page([event], "abc"))
    assert collection == {
        "type": "FeatureCollection",
        "features": [event_feature(event)],
        "next_cursor": "abc",
    }
    assert orjson.loads(json_page([event], None)) == {
        "items": [event.to_dict()],
        "next_cursor": None,
    }


def test_an_empty_page_is_a_header_row_only() -> None:
    assert csv_page([]) == (",".join(CSV_COLUMNS) + "\r\n").encode()


@given(
    name=st.text(min_size=1, max_size=40),
    note=st.text(max_size=20),
)
def test_csv_cells_read_back_as_written_and_never_start_a_formula(name: str, note: str) -> None:
    event = zone_event(name, details={"note": note})
    (row,) = parse(csv_page([event]))
    expected = "'" + name if name.startswith(FORMULA_STARTS) else name
    # The csv module reads a lone CR inside a quoted cell as a line end of its own.
    assert row["zone_name"].replace("\r\n", "\n") == expected.replace("\r\n", "\n")
    assert orjson.loads(row["details"]) == {"note": note}
    assert row["lon"] == "-4.5"
    assert row["station_ids"] == "car-1 bus-7"
    for column in ("id", "station_ids", "zone_id", "zone_name", "details"):
        assert not row[column].startswith(FORMULA_STARTS)


def test_text_starting_like_a_formula_gets_an_apostrophe() -> None:
    for text in ("=1+1", "+33 6", "-lead", "@SUM(A1)", "\tx"):
        assert csv_cell(text) == "'" + text
    for text in ("Centre", "", "'=quoted already", "1-2", "{}"):
        assert csv_cell(text) == text


def test_the_next_link_keeps_the_query_and_replaces_the_cursor() -> None:
    link = next_link(
        "/api/stations/car-1/events",
        [("type", "accident"), ("cursor", "old"), ("type", "hazard"), ("format", "csv")],
        "new-cursor_1",
    )
    assert link.endswith('>; rel="next"')
    target = urlsplit(link[1 : link.index(">")])
    assert target.path == "/api/stations/car-1/events"
    assert parse_qsl(target.query) == [
        ("type", "accident"),
        ("type", "hazard"),
        ("format", "csv"),
        ("cursor", "new-cursor_1"),
    ]


def test_the_next_link_escapes_what_would_break_the_header() -> None:
    link = next_link("/api/events", [("zone", 'a>b"; rel="prev'), ("station", "x y")], "c")
    target = link[1 : link.index(">")]
    assert link == f'<{target}>; rel="next"'
    assert dict(parse_qsl(urlsplit(target).query))["zone"] == 'a>b"; rel="prev'
