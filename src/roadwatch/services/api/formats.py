"""Renderings of a page of events: JSON (docs/contract/events.md §1), GeoJSON (RFC 7946)
and CSV (RFC 4180).

Also the responses carrying them: every body is serialised by orjson, not by FastAPI's encoder.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from roadwatch.domain.events import Event

# RFC 7946 §12: the media type of GeoJSON.
GEOJSON_MEDIA_TYPE = "application/geo+json"
# RFC 4180 §3 with RFC 7111's `header` parameter: the first row names the columns.
CSV_MEDIA_TYPE = "text/csv; charset=utf-8; header=present"

# The CSV columns, in this order for good: spreadsheets and scripts address them by position.
CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "type",
    "status",
    "version",
    "started_at",
    "updated_at",
    "ended_at",
    "lat",
    "lon",
    "cause_code",
    "station_ids",
    "zone_id",
    "zone_name",
    "details",
)
# Separates the station ids inside one cell; a stationId never holds a space
# (docs/contract/mqtt.md §2).
STATION_SEPARATOR = " "
# A spreadsheet reads a cell starting with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class EventFormat(StrEnum):
    """The renderings of `GET /api/events`."""

    JSON = "json"
    GEOJSON = "geojson"
    CSV = "csv"


def event_feature(event: Event) -> dict[str, Any]:
    """Return the event as a GeoJSON Feature: a Point at [lon, lat], the event as properties.

    A jam's extent (a Polygon or MultiPolygon) stays in `properties.details.extent`: a Feature
    has one geometry, and the Point keeps every feature of a collection the same kind.
    """
    return {
        "type": "Feature",
        "id": event.id,
        "geometry": {"type": "Point", "coordinates": [event.lon, event.lat]},
        "properties": event.to_dict(),
    }


def geojson_page(events: Iterable[Event], next_cursor: str | None) -> bytes:
    """Return a page as a FeatureCollection; `next_cursor` is a foreign member (RFC 7946 §6.1)."""
    return orjson.dumps(
        {
            "type": "FeatureCollection",
            "features": [event_feature(event) for event in events],
            "next_cursor": next_cursor,
        }
    )


def json_page(events: Iterable[Event], next_cursor: str | None) -> bytes:
    """Return a page as `{"items": [event…], "next_cursor": str | null}`
    (docs/contract/rest-api.md §5)."""
    return orjson.dumps(
        {"items": [event.to_dict() for event in events], "next_cursor": next_cursor}
    )


def csv_cell(text: str) -> str:
    """Return a text cell that no spreadsheet would evaluate as a formula.

    A leading apostrophe makes spreadsheets show the text as typed; numbers are written as
    numbers and never pass through here, so a negative longitude stays a number.
    """
    if text.startswith(_FORMULA_STARTS):
        return "'" + text
    return text


def csv_row(event: Event) -> list[str | int | float]:
    """Return the CSV cells of one event, in the order of CSV_COLUMNS."""
    data = event.to_dict()
    return [
        csv_cell(data["id"]),
        data["type"],
        data["status"],
        event.version,
        data["started_at"],
        data["updated_at"],
        data["ended_at"] or "",
        event.lat,
        event.lon,
        "" if event.cause_code is None else event.cause_code,
        csv_cell(STATION_SEPARATOR.join(event.station_ids)),
        csv_cell(event.zone_id or ""),
        csv_cell(event.zone_name or ""),
        csv_cell(orjson.dumps(event.details).decode()),
    ]


def csv_page(events: Iterable[Event]) -> bytes:
    """Return the events as CSV: a header row, then one row per event, CRLF line ends."""
    out = io.StringIO()
    # QUOTE_MINIMAL quotes exactly the cells holding a comma, a quote or a line break.
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_row(event) for event in events)
    return out.getvalue().encode()


def next_link(path: str, query: Sequence[tuple[str, str]], next_cursor: str) -> str:
    """Return an RFC 8288 `Link` header value pointing at the next page of the same query.

    The target is a relative reference, resolved against the request's own URL, so it stays
    right behind a reverse proxy whatever host name the client used.
    """
    kept = [(name, value) for name, value in query if name != "cursor"]
    kept.append(("cursor", next_cursor))
    return f'<{quote(path, safe="/")}?{urlencode(kept)}>; rel="next"'


# --- Responses --------------------------------------------------------------------------------

NOT_MODIFIED: dict[str, Any] = {
    "description": "Not modified: the ETag sent in If-None-Match still holds"
}


class GeoJSONResponse(JSONResponse):
    """A GeoJSON answer; as a route's response_class it files the schema under this type."""

    media_type = GEOJSON_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        """Serialise with orjson; bytes are taken as already serialised."""
        return content if isinstance(content, bytes) else orjson.dumps(content)


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """Answer with `content` as JSON."""
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def geojson_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """Answer with `content` as GeoJSON."""
    return GeoJSONResponse(orjson.dumps(content), status_code=status_code, headers=headers)


def geojson_unless_cached(request: Request, body: bytes, cache_control: str) -> Response:
    """Answer with a GeoJSON body and its ETag, or 304 when the client already holds it."""
    # A content hash, so a client polling for changes downloads them only when they change.
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": cache_control}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return GeoJSONResponse(body, headers=headers)
