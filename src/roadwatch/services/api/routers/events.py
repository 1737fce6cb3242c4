"""Events: listed and filtered a page at a time (all of them, or one station's), or one by id."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from roadwatch.adapters.mysql.store import EventStore
from roadwatch.domain.events import EventStatus, EventType
from roadwatch.services.api.dependencies import EventQuery, EventQueryDep, StoreDep
from roadwatch.services.api.errors import (
    NOT_FOUND,
    QUERY_ERRORS,
    UNAVAILABLE,
    echo_input,
    error_response,
)
from roadwatch.services.api.formats import (
    CSV_COLUMNS,
    CSV_MEDIA_TYPE,
    GEOJSON_MEDIA_TYPE,
    EventFormat,
    csv_page,
    geojson_page,
    json_page,
    json_response,
    next_link,
)
from roadwatch.services.api.routers import PREFIX

# A vehicle's stationId, or a phone's `{user}.{device}` (docs/contract/mqtt.md §5: the phones' own
# namespace).
# The filename of a station's CSV export relies on it too.
STATION_ID_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?$"
MAX_STATION_ID_LEN = 64

router = APIRouter(prefix=PREFIX, tags=["events"])


# --- Documented shapes (OpenAPI); responses are serialised directly with orjson. -----------


class EventOut(BaseModel):
    """One version of a detected road event (the event object)."""

    id: str
    type: EventType
    status: EventStatus
    version: int
    started_at: str = Field(description="RFC 3339 UTC, event time")
    updated_at: str = Field(description="RFC 3339 UTC, event time")
    ended_at: str | None = Field(description="RFC 3339 UTC, event time")
    lat: float
    lon: float
    cause_code: int | None
    station_ids: list[str]
    zone_id: str | None
    zone_name: str | None
    details: dict[str, Any]


class EventPage(BaseModel):
    """One page of events, newest first."""

    items: list[EventOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at end")


class PointOut(BaseModel):
    """A GeoJSON Point: [lon, lat]."""

    type: Literal["Point"]
    coordinates: list[float] = Field(min_length=2, max_length=2)


class EventFeatureOut(BaseModel):
    """An event as a GeoJSON Feature; a jam's extent is in `properties.details.extent`."""

    type: Literal["Feature"]
    id: str
    geometry: PointOut
    properties: EventOut


class EventFeatureCollectionOut(BaseModel):
    """One page of events as a GeoJSON FeatureCollection, newest first."""

    type: Literal["FeatureCollection"]
    features: list[EventFeatureOut]
    next_cursor: str | None = Field(
        description="a foreign member (RFC 7946 §6.1): pass as `cursor` for the next page"
    )


# The other renderings of an event page, beside the JSON of `EventPage` (format=geojson|csv).
EVENT_PAGE_FORMATS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One page of events, newest first, in the `format` asked for",
        "headers": {
            "Link": {
                "description": 'The next page, `<…&cursor=…>; rel="next"` (RFC 8288); '
                "absent on the last page",
                "schema": {"type": "string"},
            },
            "Content-Disposition": {
                "description": "format=csv: `attachment` with a file name",
                "schema": {"type": "string"},
            },
        },
        "content": {
            GEOJSON_MEDIA_TYPE: {
                "schema": {"$ref": "#/components/schemas/EventFeatureCollectionOut"}
            },
            CSV_MEDIA_TYPE.split(";", 1)[0]: {
                "schema": {
                    "type": "string",
                    "description": "RFC 4180 CSV with a header row: " + ",".join(CSV_COLUMNS),
                },
            },
        },
    },
    **QUERY_ERRORS,
}


# --- Routes -----------------------------------------------------------------------------------


@router.get("/events", response_model=EventPage, responses=EVENT_PAGE_FORMATS)
def list_events(
    request: Request,
    store: StoreDep,
    query: EventQueryDep,
    station: Annotated[
        str | None, Query(min_length=1, max_length=64, description="a stationId involved")
    ] = None,
) -> Response:
    """List events, newest start first, one page at a time, as JSON, GeoJSON or CSV."""
    return event_listing(request, store, query, station, "roadwatch-events")


@router.get("/stations/{station_id}/events", response_model=EventPage, responses=EVENT_PAGE_FORMATS)
def list_station_events(
    request: Request,
    store: StoreDep,
    query: EventQueryDep,
    station_id: Annotated[
        str,
        Path(
            pattern=STATION_ID_PATTERN,
            max_length=MAX_STATION_ID_LEN,
            description="a vehicle's stationId: 1 to 64 of A-Z a-z 0-9 _ -, or"
            " a phone's `{user}.{device}`",
        ),
    ],
) -> Response:
    """List the events a station is involved in, newest first; an unknown one has none."""
    return event_listing(request, store, query, station_id, f"roadwatch-events-{station_id}")


@router.get(
    "/events/{event_id}", response_model=EventOut, responses={404: NOT_FOUND, 503: UNAVAILABLE}
)
def get_event(event_id: str, store: StoreDep) -> Response:
    """Return the latest version of one event."""
    event = store.get_event(event_id)
    if event is None:
        return error_response(404, "not_found", f"no event with id {echo_input(event_id)}")
    return json_response(event.to_dict())


def event_listing(
    request: Request, store: EventStore, query: EventQuery, station: str | None, filename: str
) -> Response:
    """Answer one page of the events a listing selects, in the format it asks for.

    Both listings, of every event and of one station's, end here; a `Link` header points at
    the next page, and a CSV export is named `filename`.csv.
    """
    events, next_cursor = query.run(store, station)
    headers: dict[str, str] = {}
    if next_cursor is not None:
        headers["Link"] = next_link(
            request.url.path, request.query_params.multi_items(), next_cursor
        )
    if query.format is EventFormat.GEOJSON:
        body, media_type = geojson_page(events, next_cursor), GEOJSON_MEDIA_TYPE
    elif query.format is EventFormat.CSV:
        body, media_type = csv_page(events), CSV_MEDIA_TYPE
        headers["Content-Disposition"] = f'attachment; filename="{filename}.csv"'
    else:
        body, media_type = json_page(events, next_cursor), "application/json"
    return Response(body, media_type=media_type, headers=headers)
