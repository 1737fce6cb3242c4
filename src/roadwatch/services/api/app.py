"""The REST API of SPEC §7: read the stored events over HTTP, behind Apache at `/api/`."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any, Literal
from urllib.parse import quote

import orjson
import uvicorn
from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from roadwatch import __version__
from roadwatch.adapters.metrics import STAGE_BUCKETS
from roadwatch.adapters.mysql.connection import ConnectionPool, StoreError, StoreUnavailable
from roadwatch.adapters.mysql.store import BBox, EventStore, InvalidCursor
from roadwatch.adapters.mysql.zones import ZoneExists, ZoneStore
from roadwatch.domain.events import (
    PUBSUB_NODES,
    Event,
    EventStatus,
    EventType,
    InvalidEvent,
    ms_to_rfc3339,
    rfc3339_ceil_ms,
)
from roadwatch.domain.zones import (
    MAX_HYSTERESIS_M,
    MAX_ZONE_NAME_LEN,
    MAX_ZONE_POSITIONS,
    InvalidZone,
    Zone,
    zone_from_feature,
)
from roadwatch.services.api.docs import install_docs_routes
from roadwatch.services.api.formats import (
    CSV_COLUMNS,
    CSV_MEDIA_TYPE,
    GEOJSON_MEDIA_TYPE,
    EventFormat,
    csv_page,
    geojson_page,
    json_page,
    next_link,
)
from roadwatch.settings import Settings
from roadwatch.simulation.network import REIMS_NETWORK_PATH

log = logging.getLogger(__name__)

PREFIX = "/api"
# Sync routes run in the server's thread pool (40 threads); a few sessions are enough for
# short indexed queries and keep MariaDB's connection count low.
POOL_SIZE = 8
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Seconds a client should wait before asking again while the database is down.
RETRY_AFTER_S = 5
# A zone Feature is a few kilobytes; anything near this is a mistake or an attack.
MAX_BODY_BYTES = 1024 * 1024
# A vehicle's stationId, or a phone's `{user}.{device}` (SPEC §2: the phones' own namespace);
# likewise a zone id. The filename of a station's CSV export relies on it too.
STATION_ID_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?$"
MAX_STATION_ID_LEN = 64
ZONE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# A time whose offset's '+' became a space: sent unencoded, it is decoded as one.
_SPACED_OFFSET = re.compile(r":[0-9]{2}(\.[0-9]+)? [0-9]{2}:[0-9]{2}$")
# Longest piece of a client's input quoted back in an error message.
MAX_ECHO_CHARS = 80
# Plain JSON is accepted on input too, beside GeoJSON's own media type (RFC 7946 §12).
_JSON_MEDIA_TYPES = frozenset({"application/json", GEOJSON_MEDIA_TYPE})


class ApiError(Exception):
    """A client error with its HTTP status, error code and human detail."""

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.headers = headers


# --- Documented shapes (OpenAPI); responses are serialised directly with orjson. -----------


class EventOut(BaseModel):
    """The event object of SPEC §4."""

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


class Health(BaseModel):
    """Status of the API and of its database."""

    status: str = Field(examples=["ok", "degraded"])
    database: str = Field(examples=["ok", "unavailable"])
    version: str


class ErrorOut(BaseModel):
    """A JSON error: a stable code and what exactly is wrong."""

    error: str
    detail: Any


class ZoneFeatureOut(BaseModel):
    """A zone: a GeoJSON Feature with a Polygon or MultiPolygon and properties id and name."""

    type: Literal["Feature"]
    geometry: dict[str, Any] = Field(description="GeoJSON Polygon or MultiPolygon, [lon, lat]")
    properties: dict[str, Any] = Field(description="`id`, `name`, optional `hysteresis_m`")


class ZoneCollectionOut(BaseModel):
    """Every zone, as a GeoJSON FeatureCollection."""

    type: Literal["FeatureCollection"]
    features: list[ZoneFeatureOut]


class OccupantOut(BaseModel):
    """A station inside a zone now."""

    station_id: str
    since: str = Field(description="RFC 3339 UTC event time of its entry")


class OccupancyOut(BaseModel):
    """The stations inside one zone now, from the stored zone_enter and zone_exit events."""

    zone_id: str
    stations: list[OccupantOut]
    count: int


def _error_doc(description: str) -> dict[str, Any]:
    """Document a JSON error answer."""
    # Spelled out rather than as `model`: FastAPI files a model under the route's own media
    # type, which is GeoJSON for the zone routes, while errors are always plain JSON.
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
    }


_NOT_FOUND = _error_doc("No such resource")
_NOT_MODIFIED: dict[str, Any] = {
    "description": "Not modified: the ETag sent in If-None-Match still holds"
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error_doc("Invalid parameters"),
    503: _error_doc("Database unavailable"),
}
# The other renderings of an event page, beside the JSON of `EventPage` (format=geojson|csv).
_EVENT_PAGE_FORMATS: dict[int | str, dict[str, Any]] = {
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
    **_ERRORS,
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error_doc("Not a valid zone Feature"),
    401: _error_doc("Missing or wrong bearer token"),
    403: _error_doc("Writes disabled: no API token configured"),
    413: _error_doc(f"Body larger than {MAX_BODY_BYTES} bytes"),
    415: _error_doc("Body not sent as JSON"),
    503: _error_doc("Database unavailable"),
}
# The request body of zone writes, read by hand (size limit, GeoJSON validation in the domain),
# so it is described here for the OpenAPI document.
_ZONE_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A GeoJSON Feature (RFC 7946) with a Polygon or MultiPolygon geometry",
        "content": {
            media_type: {
                "schema": {
                    "type": "object",
                    "required": ["type", "geometry", "properties"],
                    "properties": {
                        "type": {"type": "string", "enum": ["Feature"]},
                        "id": {
                            "type": ["string", "null"],
                            "description": "optional; when present, equal to properties.id",
                        },
                        "geometry": {
                            "type": "object",
                            "required": ["type", "coordinates"],
                            "description": "Polygon or MultiPolygon; positions are [lon, lat], "
                            f"rings closed, at most {MAX_ZONE_POSITIONS} positions in all",
                            "properties": {
                                "type": {"type": "string", "enum": ["Polygon", "MultiPolygon"]},
                                "coordinates": {"type": "array", "minItems": 1},
                            },
                        },
                        "properties": {
                            "type": "object",
                            "required": ["id", "name"],
                            "properties": {
                                "id": {"type": "string", "pattern": ZONE_ID_PATTERN},
                                "name": {
                                    "type": "string",
                                    "minLength": 1,
                                    "maxLength": MAX_ZONE_NAME_LEN,
                                    "description": "plain text, not blank",
                                },
                                "hysteresis_m": {
                                    "type": ["number", "null"],
                                    "minimum": 0,
                                    "maximum": MAX_HYSTERESIS_M,
                                    "description": "metres outside before an exit counts; "
                                    "0 or null for the server's default",
                                },
                            },
                        },
                    },
                },
                "example": {
                    "type": "Feature",
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [
                            [[4.02, 49.25], [4.04, 49.25], [4.04, 49.26], [4.02, 49.25]]
                        ],
                    },
                    "properties": {"id": "station-square", "name": "Station square"},
                },
            }
            for media_type in ("application/json", GEOJSON_MEDIA_TYPE)
        },
    }
}


class GeoJSONResponse(JSONResponse):
    """A GeoJSON answer; as a route's response_class it files the schema under this type."""

    media_type = GEOJSON_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        """Serialise with orjson; bytes are taken as already serialised."""
        return content if isinstance(content, bytes) else orjson.dumps(content)


def _json(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def _error(
    status_code: int, error: str, detail: Any, headers: Mapping[str, str] | None = None
) -> Response:
    return _json({"error": error, "detail": detail}, status_code, headers)


def _echo(value: str) -> str:
    """Quote a client's value for an error message, cut short: a path may be kilobytes long."""
    if len(value) <= MAX_ECHO_CHARS:
        return repr(value)
    return repr(value[:MAX_ECHO_CHARS]) + "…"


def _error_code(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


# --- Parameter parsing ------------------------------------------------------------------------


def _parse_time(name: str, text: str | None) -> int | None:
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
        raise ApiError(400, "invalid_parameter", [{"parameter": name, "message": message}]) from exc


def _parse_bbox(text: str | None) -> BBox | None:
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
    raise ApiError(400, "invalid_parameter", [{"parameter": "bbox", "message": problem}])


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
    since_ms = _parse_time("since", since)
    until_ms = _parse_time("until", until)
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        raise ApiError(
            400,
            "invalid_parameter",
            [{"parameter": "since", "message": "since is after until"}],
        )
    return EventQuery(
        types=type_,
        status=status,
        since_ms=since_ms,
        until_ms=until_ms,
        bbox=_parse_bbox(bbox),
        zone=zone,
        limit=limit,
        cursor=cursor,
        format=format_,
    )


EventQueryDep = Annotated[EventQuery, Depends(event_query)]


def _event_page(
    request: Request,
    page_format: EventFormat,
    events: list[Event],
    next_cursor: str | None,
    filename: str,
) -> Response:
    """Render one page of events in the format asked for, with a `Link` to the next page."""
    headers: dict[str, str] = {}
    if next_cursor is not None:
        headers["Link"] = next_link(
            request.url.path, request.query_params.multi_items(), next_cursor
        )
    if page_format is EventFormat.GEOJSON:
        body, media_type = geojson_page(events, next_cursor), GEOJSON_MEDIA_TYPE
    elif page_format is EventFormat.CSV:
        body, media_type = csv_page(events), CSV_MEDIA_TYPE
        headers["Content-Disposition"] = f'attachment; filename="{filename}.csv"'
    else:
        body, media_type = json_page(events, next_cursor), "application/json"
    return Response(body, media_type=media_type, headers=headers)


# --- Application ------------------------------------------------------------------------------


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

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiToken",
    description="`Authorization: Bearer <ROADWATCH_API_TOKEN>`; required by every write.",
)


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


def create_app(settings: Settings) -> FastAPI:
    """Build the API application; the database pool opens with its lifespan, not before."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = ConnectionPool(settings, POOL_SIZE)
        app.state.store = EventStore(pool)
        app.state.zones = ZoneStore(pool)
        log.info("api using MySQL at %s:%d", settings.mysql_host, settings.mysql_port)
        try:
            yield
        finally:
            pool.close()

    app = FastAPI(
        title="RoadWatch API",
        version=__version__,
        description="Road events detected from connected vehicles (CAM/DENM).",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    _install_metrics(app)
    _install_routes(app, settings)
    install_docs_routes(app, PREFIX, app.openapi_url or f"{PREFIX}/openapi.json")
    _install_openapi(app)
    return app


# Prometheus figures at /metrics on the API's own port, outside PREFIX: Apache proxies only
# /api/ (deploy/apache/httpd.conf), so they are never served to the outside world.
METRICS_PATH = "/metrics"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """Count and time every request by method, route template and status (ASGI middleware)."""

    def __init__(self, app: ASGIApp, requests: Counter, seconds: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the application answers: an exception escaped

        async def note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, note_status)
        finally:
            # The template, never the raw path: ids in paths would make endless label sets.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _KNOWN_METHODS else "other"
            labels = (method, route, str(status))
            self.requests.labels(*labels).inc()
            self.seconds.labels(*labels).observe(time.perf_counter() - started)


def _install_metrics(app: FastAPI) -> None:
    # One registry per application, none global: tests run several in one process.
    registry = CollectorRegistry(auto_describe=True)
    labels = ("method", "route", "status")
    requests = Counter(
        "roadwatch_api_requests", "HTTP requests answered", labels, registry=registry
    )
    seconds = Histogram(
        "roadwatch_api_request_seconds",
        "time to answer an HTTP request",
        labels,
        registry=registry,
        buckets=STAGE_BUCKETS,
    )
    app.add_middleware(RequestMetrics, requests=requests, seconds=seconds)

    @app.get(METRICS_PATH, include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _install_openapi(app: FastAPI) -> None:
    """Build the OpenAPI document with the schemas that only other media types refer to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            collection = EventFeatureCollectionOut.model_json_schema(
                mode="serialization", ref_template="#/components/schemas/{model}"
            )
            for name, schema in collection.pop("$defs", {}).items():
                schemas.setdefault(name, schema)
            schemas[EventFeatureCollectionOut.__name__] = collection
            schemas.setdefault(
                ErrorOut.__name__,
                ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}"),
            )
            # Invalid input is answered 400 with ErrorOut (on_validation), never FastAPI's 422.
            for path_item in document.get("paths", {}).values():
                for operation in path_item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    # FastAPI's documented way to adjust the generated document.
    app.openapi = openapi  # type: ignore[method-assign]


def _allowed_methods(request: Request) -> str:
    """Return the `Allow` value for the request's path: the methods of every route there."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


def _install_error_handlers(app: FastAPI) -> None:
    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for item in exc.errors():
            location = [str(part) for part in item.get("loc", ())]
            problems.append(
                {
                    # ("query", "type", 0) -> "type"; the raw input is left out on purpose.
                    "parameter": location[1] if len(location) > 1 else ".".join(location),
                    "in": location[0] if location else None,
                    "message": str(item.get("msg", "invalid value")),
                }
            )
        return _error(400, "invalid_parameter", problems)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the methods of the first route on this path; RFC 9110
            # §15.5.6 wants every method the resource supports.
            headers["Allow"] = _allowed_methods(request)
        return _error(exc.status_code, _error_code(exc.status_code), exc.detail, headers)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status_code, exc.error, exc.detail, exc.headers)

    async def on_invalid_cursor(request: Request, exc: Exception) -> Response:
        return _error(400, "invalid_parameter", [{"parameter": "cursor", "message": str(exc)}])

    async def on_invalid_zone(request: Request, exc: Exception) -> Response:
        return _error(400, "invalid_zone", str(exc))

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _error(
            503,
            "database_unavailable",
            "the database is not reachable; retry later",
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    async def on_store_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s: %s", request.method, request.url.path, exc, exc_info=exc)
        return _error(500, "internal_error", "the request could not be completed")

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # A bug, never the client's input; the answer stays JSON and says nothing internal.
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", "the request could not be completed")

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(InvalidCursor, on_invalid_cursor)
    app.add_exception_handler(InvalidZone, on_invalid_zone)
    app.add_exception_handler(StoreUnavailable, on_unavailable)
    app.add_exception_handler(StoreError, on_store_error)
    app.add_exception_handler(Exception, on_unexpected)


class NetworkOut(BaseModel):
    """The road network: a GeoJSON FeatureCollection of LineStrings (`road_class`, limits)."""

    type: Literal["FeatureCollection"]
    features: list[dict[str, Any]]


class ClientConfig(BaseModel):
    """What the browser needs to reach the live feed; never any credential."""

    bosh_path: str
    xmpp_domain: str
    anonymous_domain: str
    pubsub_service: str
    pubsub_nodes: list[str]


def _install_routes(app: FastAPI, settings: Settings) -> None:
    client_config = ClientConfig(
        bosh_path="/http-bind",
        xmpp_domain=settings.xmpp_domain,
        anonymous_domain=settings.anonymous_domain,
        pubsub_service=settings.pubsub_service,
        pubsub_nodes=list(PUBSUB_NODES),
    ).model_dump()

    @app.get(f"{PREFIX}/client-config", response_model=ClientConfig, tags=["web"])
    def get_client_config() -> Response:
        """Tell the web app where the live feed is: the BOSH path and XMPP addresses."""
        return _json(client_config, 200, {"Cache-Control": "max-age=60"})

    network_path = settings.network_file or REIMS_NETWORK_PATH

    @app.get(
        f"{PREFIX}/network",
        response_model=NetworkOut,
        response_class=GeoJSONResponse,
        responses={304: _NOT_MODIFIED, 503: _error_doc("Network file unreadable")},
        tags=["web"],
    )
    def get_network(request: Request) -> Response:
        """Return the road network drawn by the web map: GeoJSON LineStrings with classes."""
        try:
            body = network_path.read_bytes()
        except OSError as exc:
            log.error("road network %s unreadable: %s", network_path, exc)
            return _error(503, "network_unavailable", "the road network file cannot be read")
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        headers = {"ETag": etag, "Cache-Control": "max-age=300"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return GeoJSONResponse(body, headers=headers)

    @app.get(
        f"{PREFIX}/health",
        response_model=Health,
        responses={503: {"model": Health, "description": "Database unavailable"}},
        tags=["health"],
    )
    def health(store: StoreDep) -> Response:
        """Report whether the API and its database answer."""
        headers = {"Cache-Control": "no-store"}
        try:
            store.ping()
        except StoreError as exc:
            log.warning("health: database unavailable: %s", exc)
            body = {"status": "degraded", "database": "unavailable", "version": __version__}
            return _json(body, 503, headers)
        return _json({"status": "ok", "database": "ok", "version": __version__}, 200, headers)

    @app.get(
        f"{PREFIX}/events",
        response_model=EventPage,
        responses=_EVENT_PAGE_FORMATS,
        tags=["events"],
    )
    def list_events(
        request: Request,
        store: StoreDep,
        query: EventQueryDep,
        station: Annotated[
            str | None, Query(min_length=1, max_length=64, description="a stationId involved")
        ] = None,
    ) -> Response:
        """List events, newest start first, one page at a time, as JSON, GeoJSON or CSV."""
        events, next_cursor = query.run(store, station)
        return _event_page(request, query.format, events, next_cursor, "roadwatch-events")

    @app.get(
        f"{PREFIX}/stations/{{station_id}}/events",
        response_model=EventPage,
        responses=_EVENT_PAGE_FORMATS,
        tags=["events"],
    )
    def list_station_events(
        request: Request,
        store: StoreDep,
        query: EventQueryDep,
        station_id: Annotated[
            str,
            Path(
                pattern=STATION_ID_PATTERN,
                max_length=MAX_STATION_ID_LEN,
                description="a stationId (SPEC §2): 1 to 64 of A-Z a-z 0-9 _ -, or a phone's"
                " `{user}.{device}`",
            ),
        ],
    ) -> Response:
        """List the events a station is involved in, newest first; an unknown one has none."""
        events, next_cursor = query.run(store, station_id)
        return _event_page(
            request, query.format, events, next_cursor, f"roadwatch-events-{station_id}"
        )

    @app.get(
        f"{PREFIX}/events/{{event_id}}",
        response_model=EventOut,
        responses={404: _NOT_FOUND, 503: _ERRORS[503]},
        tags=["events"],
    )
    def get_event(event_id: str, store: StoreDep) -> Response:
        """Return the latest version of one event."""
        event = store.get_event(event_id)
        if event is None:
            return _error(404, "not_found", f"no event with id {_echo(event_id)}")
        return _json(event.to_dict())

    _install_zone_routes(app, settings)
    from roadwatch.services.api.stats import install_stats_routes  # noqa: PLC0415 (imports app)

    install_stats_routes(app)


def _geojson(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return GeoJSONResponse(orjson.dumps(content), status_code=status_code, headers=headers)


def _zone_location(zone_id: str) -> dict[str, str]:
    return {"Location": f"{PREFIX}/zones/{quote(zone_id, safe='')}"}


def _install_zone_routes(app: FastAPI, settings: Settings) -> None:
    expected_token = settings.api_token.get_secret_value().encode()

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> None:
        """Let the request through only with the configured bearer token (RFC 6750)."""
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

    authorised = [Security(require_token)]

    def not_found(zone_id: str) -> Response:
        return _error(404, "not_found", f"no zone with id {_echo(zone_id)}")

    @app.get(
        f"{PREFIX}/zones",
        response_model=ZoneCollectionOut,
        response_class=GeoJSONResponse,
        responses={304: _NOT_MODIFIED, 503: _ERRORS[503]},
        tags=["zones"],
    )
    def list_zones(request: Request, zones: ZoneStoreDep) -> Response:
        """List every zone as a GeoJSON FeatureCollection."""
        body = orjson.dumps(
            {
                "type": "FeatureCollection",
                "features": [zone.to_feature() for zone in zones.list_zones()],
            }
        )
        # A content hash, so a client polling for changes downloads them only when they change.
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return GeoJSONResponse(body, headers=headers)

    @app.get(
        f"{PREFIX}/zones/{{zone_id}}",
        response_model=ZoneFeatureOut,
        response_class=GeoJSONResponse,
        responses={404: _NOT_FOUND, 503: _ERRORS[503]},
        tags=["zones"],
    )
    def get_zone(zone_id: str, zones: ZoneStoreDep) -> Response:
        """Return one zone as a GeoJSON Feature."""
        zone = zones.get_zone(zone_id)
        if zone is None:
            return not_found(zone_id)
        return _geojson(zone.to_feature())

    @app.post(
        f"{PREFIX}/zones",
        status_code=201,
        response_model=ZoneFeatureOut,
        response_class=GeoJSONResponse,
        responses={**_WRITE_ERRORS, 409: _error_doc("Id taken")},
        dependencies=authorised,
        openapi_extra=_ZONE_BODY_DOC,
        tags=["zones"],
    )
    def create_zone(zone: ZoneBodyDep, zones: ZoneStoreDep) -> Response:
        """Create a zone; its id is `properties.id`."""
        try:
            zones.create_zone(zone)
        except ZoneExists:
            return _error(
                409,
                "conflict",
                f"a zone with id {zone.id!r} already exists; PUT /api/zones/{{id}} replaces it",
            )
        log.info("zone %r created", zone.id)
        return _geojson(zone.to_feature(), 201, _zone_location(zone.id))

    @app.put(
        f"{PREFIX}/zones/{{zone_id}}",
        response_model=ZoneFeatureOut,
        response_class=GeoJSONResponse,
        responses={**_WRITE_ERRORS, 201: {"model": ZoneFeatureOut, "description": "Created"}},
        dependencies=authorised,
        openapi_extra=_ZONE_BODY_DOC,
        tags=["zones"],
    )
    def replace_zone(zone_id: str, zone: ZoneBodyDep, zones: ZoneStoreDep) -> Response:
        """Create or replace the zone with this id; `properties.id` must be the same id."""
        if zone.id != zone_id:
            raise ApiError(
                400,
                "invalid_zone",
                f"properties.id {zone.id!r} does not match the id in the path {_echo(zone_id)}",
            )
        created = zones.update_zone(zone)
        log.info("zone %r %s", zone.id, "created" if created else "replaced")
        if created:
            return _geojson(zone.to_feature(), 201, _zone_location(zone.id))
        return _geojson(zone.to_feature())

    @app.delete(
        f"{PREFIX}/zones/{{zone_id}}",
        status_code=204,
        response_class=Response,
        responses={
            401: _WRITE_ERRORS[401],
            403: _WRITE_ERRORS[403],
            404: _NOT_FOUND,
            503: _ERRORS[503],
        },
        dependencies=authorised,
        tags=["zones"],
    )
    def delete_zone(zone_id: str, zones: ZoneStoreDep) -> Response:
        """Delete a zone."""
        if not zones.delete_zone(zone_id):
            return not_found(zone_id)
        log.info("zone %r deleted", zone_id)
        return Response(status_code=204)

    @app.get(
        f"{PREFIX}/zones/{{zone_id}}/occupancy",
        response_model=OccupancyOut,
        responses={404: _NOT_FOUND, 503: _ERRORS[503]},
        tags=["zones"],
    )
    def zone_occupancy(zone_id: str, zones: ZoneStoreDep) -> Response:
        """List the stations inside a zone now: those whose latest event there is an enter."""
        if zones.get_zone(zone_id) is None:
            return not_found(zone_id)
        occupants = zones.occupancy(zone_id)
        return _json(
            {
                "zone_id": zone_id,
                "stations": [
                    {"station_id": o.station_id, "since": ms_to_rfc3339(o.since_ms)}
                    for o in occupants
                ],
                "count": len(occupants),
            },
            200,
            {"Cache-Control": "no-store"},
        )


def server_config(settings: Settings) -> uvicorn.Config:
    """Return the uvicorn configuration of the API: one process on api_host:api_port."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        # Behind Apache: trust X-Forwarded-* from the addresses in $FORWARDED_ALLOW_IPS
        # (uvicorn's own variable; loopback by default, the proxy's network in containers).
        proxy_headers=True,
        # Logging is configured once by the command line for every service.
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=5,
    )


def main(settings: Settings) -> None:
    """Serve the API in this process until interrupted."""
    uvicorn.Server(server_config(settings)).run()
