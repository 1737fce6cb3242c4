"""What routes ask FastAPI for: the stores, the settings, the bearer token check, and the
query string and request body, parsed and validated."""

from __future__ import annotations

import hmac
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import orjson
from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import ClientDisconnect

from roadwatch.adapters.mysql.stats import StatsStore
from roadwatch.adapters.mysql.store import BBox, EventStore
from roadwatch.adapters.mysql.zones import ZoneStore
from roadwatch.domain.events import Event, EventStatus, EventType, InvalidEvent, rfc3339_ceil_ms
from roadwatch.domain.zones import InvalidZone, Zone, zone_from_feature
from roadwatch.services.api.errors import ApiError, invalid_parameter
from roadwatch.services.api.formats import GEOJSON_MEDIA_TYPE, EventFormat
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# A zone Feature is a few kilobytes; anything near this is a mistake or an attack.
MAX_BODY_BYTES = 1024 * 1024
# A time whose offset's '+' became a space: sent unencoded, it is decoded as one.
_SPACED_OFFSET = re.compile(r":[0-9]{2}(\.[0-9]+)? [0-9]{2}:[0-9]{2}$")
# Plain JSON is accepted on input too, beside GeoJSON's own media type (RFC 7946 §12).
_JSON_MEDIA_TYPES = frozenset({"application/json", GEOJSON_MEDIA_TYPE})


# --- The application's own objects, opened by create_app and its lifespan --------------------


async def get_settings(request: Request) -> Settings:
    """Return the settings the application was created with."""
    settings = request.app.state.settings
    if not isinstance(settings, Settings):
        raise RuntimeError("the API has no settings")
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_store(request: Request) -> EventStore:
    """Return the store opened by the lifespan of this application."""
    store = request.app.state.store
    if not isinstance(store, EventStore):
        raise RuntimeError("the API store is not open")
    return store


StoreDep = Annotated[EventStore, Depends(get_store)]


def get_zone_store(request: Request) -> ZoneStore:
    """Return the zone store opened by the lifespan of this application."""
    zones = request.app.state.zones
    if not isinstance(zones, ZoneStore):
        raise RuntimeError("the API zone store is not open")
    return zones


ZoneStoreDep = Annotated[ZoneStore, Depends(get_zone_store)]


def get_stats_store(store: StoreDep) -> StatsStore:
    """Return a statistics reader over the API's connection pool."""
    return StatsStore(store.source)


StatsStoreDep = Annotated[StatsStore, Depends(get_stats_store)]


# --- Writes: the bearer token ----------------------------------------------------------------

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiToken",
    description="`Authorization: Bearer <ROADWATCH_API_TOKEN>`; required by every write.",
)


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Let the request through only with the configured bearer token (RFC 6750)."""
    expected_token = settings.api_token.get_secret_value().encode()
    if not expected_token:
        raise ApiError(
            403,
            "writes_disabled",
            "zone changes are disabled: the server has no API token configured",
        )
    if credentials is None:
        raise ApiError(
            401,
            "unauthorized",
            "this request needs an `Authorization: Bearer <token>` header",
            {"WWW-Authenticate": 'Bearer realm="roadwatch"'},
        )
    # Constant time, so the comparison does not reveal how much of a guess was right.
    if not hmac.compare_digest(credentials.credentials.encode(), expected_token):
        raise ApiError(
            401,
            "unauthorized",
            "the bearer token is not valid",
            {"WWW-Authenticate": 'Bearer realm="roadwatch", error="invalid_token"'},
        )


# --- Query parameters -------------------------------------------------------------------------


def parse_time(name: str, text: str | None) -> int | None:
    """Parse a time bound as the first millisecond at or after it (event times are whole ms)."""
    if text is None:
        return None
    try:
        return rfc3339_ceil_ms(text)
    except InvalidEvent as exc:
        message = (
            f"not an RFC 3339 time with a UTC offset: {exc}; "
            "e.g. 2024-05-01T08:00:00Z or 2024-05-01T10:00:00+02:00"
        )
        if _SPACED_OFFSET.search(text):
            message += "; a '+' in a query string must be sent as %2B"
        raise invalid_parameter(name, message) from exc


def parse_bbox(text: str | None) -> BBox | None:
    """Parse `minLon,minLat,maxLon,maxLat`; a box may cross the antimeridian."""
    if text is None:
        return None
    problem = "expected minLon,minLat,maxLon,maxLat in degrees"
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) == 4 and all(math.isfinite(value) for value in values):
        min_lon, min_lat, max_lon, max_lat = values
        if not all(-180 <= lon <= 180 for lon in (min_lon, max_lon)):
            problem = "longitudes must be within [-180, 180]"
        elif not all(-90 <= lat <= 90 for lat in (min_lat, max_lat)):
            problem = "latitudes must be within [-90, 90]"
        elif min_lat > max_lat:
            problem = "minLat is greater than maxLat"
        else:
            # minLon > maxLon is a box crossing the antimeridian, which the store handles.
            return (min_lon, min_lat, max_lon, max_lat)
    raise invalid_parameter("bbox", problem)


@dataclass(frozen=True, slots=True)
class EventQuery:
    """The validated filters, page and format of an event listing."""

    types: Sequence[EventType] | None
    status: EventStatus | None
    since_ms: int | None
    until_ms: int | None
    bbox: BBox | None
    zone: str | None
    limit: int
    cursor: str | None
    format: EventFormat

    def run(self, store: EventStore, station: str | None) -> tuple[list[Event], str | None]:
        """Return the page of events this query selects, and the cursor of the next page."""
        return store.list_events(
            types=self.types,
            status=self.status,
            since_ms=self.since_ms,
            until_ms=self.until_ms,
            station=station,
            limit=self.limit,
            cursor=self.cursor,
            zone=self.zone,
            bbox=self.bbox,
        )


def event_query(
    *,
    type_: Annotated[list[EventType] | None, Query(alias="type", description="repeatable")] = None,
    status: EventStatus | None = None,
    since: Annotated[
        str | None,
        Query(
            max_length=64,
            description="RFC 3339 with an offset; events started at or after",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    until: Annotated[
        str | None,
        Query(
            max_length=64,
            description="RFC 3339 with an offset; events started before",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    bbox: Annotated[
        str | None, Query(max_length=200, description="minLon,minLat,maxLon,maxLat")
    ] = None,
    zone: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(max_length=256, description="`next_cursor` of the previous page")
    ] = None,
    format_: Annotated[
        EventFormat,
        Query(
            alias="format",
            description="`json` (default), `geojson` (a FeatureCollection) or `csv`",
        ),
    ] = EventFormat.JSON,
) -> EventQuery:
    """Validate the query string of an event listing."""
    since_ms = parse_time("since", since)
    until_ms = parse_time("until", until)
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        raise invalid_parameter("since", "since is after until")
    return EventQuery(
        types=type_,
        status=status,
        since_ms=since_ms,
        until_ms=until_ms,
        bbox=parse_bbox(bbox),
        zone=zone,
        limit=limit,
        cursor=cursor,
        format=format_,
    )


EventQueryDep = Annotated[EventQuery, Depends(event_query)]


# --- Request body -----------------------------------------------------------------------------


async def read_zone_body(request: Request) -> Zone:
    """Read the request body (at most MAX_BODY_BYTES) and validate it as a zone Feature."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type and media_type not in _JSON_MEDIA_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the zone as application/json or {GEOJSON_MEDIA_TYPE}, not {media_type[:80]}",
        )
    too_large = ApiError(
        413, "payload_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes"
    )
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            # Counted while reading, for chunked bodies that announce no length.
            if len(body) > MAX_BODY_BYTES:
                raise too_large
    except ClientDisconnect as exc:
        # Nobody will read the answer; a 4xx keeps it out of the server error log.
        raise ApiError(400, "incomplete_body", "the client left before sending the body") from exc
    if not body.strip():
        raise ApiError(400, "invalid_json", "the body is empty; send a GeoJSON Feature")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc
    try:
        return zone_from_feature(document)
    except InvalidZone as exc:
        raise ApiError(400, "invalid_zone", str(exc)) from exc
    except Exception as exc:
        # The domain validator should explain every refusal; a client still gets a 4xx if not.
        log.warning("zone validation failed unexpectedly: %r", exc)
        raise ApiError(400, "invalid_zone", "the body is not a valid zone Feature") from exc


ZoneBodyDep = Annotated[Zone, Depends(read_zone_body)]
