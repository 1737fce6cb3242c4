"""The REST API of SPEC §7: read the stored events over HTTP, behind Apache at `/api/`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal
from urllib.parse import quote

import orjson
import uvicorn
from fastapi import FastAPI, Path, Query, Request, Security
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from roadwatch import __version__
from roadwatch.adapters.metrics import STAGE_BUCKETS
from roadwatch.adapters.mysql.connection import ConnectionPool, StoreError
from roadwatch.adapters.mysql.store import EventStore
from roadwatch.adapters.mysql.zones import ZoneExists, ZoneStore
from roadwatch.domain.events import (
    PUBSUB_NODES,
    Event,
    EventStatus,
    EventType,
    ms_to_rfc3339,
)
from roadwatch.domain.zones import MAX_HYSTERESIS_M, MAX_ZONE_NAME_LEN, MAX_ZONE_POSITIONS
from roadwatch.services.api.dependencies import (
    MAX_BODY_BYTES,
    EventQueryDep,
    SettingsDep,
    StoreDep,
    ZoneBodyDep,
    ZoneStoreDep,
    require_token,
)
from roadwatch.services.api.docs import install_docs_routes
from roadwatch.services.api.errors import (
    NOT_FOUND,
    QUERY_ERRORS,
    UNAVAILABLE,
    ApiError,
    ErrorOut,
    echo_input,
    error_doc,
    error_response,
    install_error_handlers,
)
from roadwatch.services.api.formats import (
    CSV_COLUMNS,
    CSV_MEDIA_TYPE,
    GEOJSON_MEDIA_TYPE,
    NOT_MODIFIED,
    EventFormat,
    GeoJSONResponse,
    csv_page,
    geojson_page,
    geojson_response,
    geojson_unless_cached,
    json_page,
    json_response,
    next_link,
)
from roadwatch.settings import Settings
from roadwatch.simulation.network import REIMS_NETWORK_PATH

log = logging.getLogger(__name__)

PREFIX = "/api"
# Sync routes run in the server's thread pool (40 threads); a few sessions are enough for
# short indexed queries and keep MariaDB's connection count low.
POOL_SIZE = 8
# A vehicle's stationId, or a phone's `{user}.{device}` (SPEC §2: the phones' own namespace);
# likewise a zone id. The filename of a station's CSV export relies on it too.
STATION_ID_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?$"
MAX_STATION_ID_LEN = 64
ZONE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


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
    **QUERY_ERRORS,
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_doc("Not a valid zone Feature"),
    401: error_doc("Missing or wrong bearer token"),
    403: error_doc("Writes disabled: no API token configured"),
    413: error_doc(f"Body larger than {MAX_BODY_BYTES} bytes"),
    415: error_doc("Body not sent as JSON"),
    503: error_doc("Database unavailable"),
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
    # Read by the routes through dependencies.get_settings.
    app.state.settings = settings
    install_error_handlers(app)
    _install_metrics(app)
    _install_routes(app)
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
            # Invalid input is answered 400 with ErrorOut (errors.py), never FastAPI's 422.
            for path_item in document.get("paths", {}).values():
                for operation in path_item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    # FastAPI's documented way to adjust the generated document.
    app.openapi = openapi  # type: ignore[method-assign]


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


def _install_routes(app: FastAPI) -> None:
    @app.get(f"{PREFIX}/client-config", response_model=ClientConfig, tags=["web"])
    def get_client_config(settings: SettingsDep) -> Response:
        """Tell the web app where the live feed is: the BOSH path and XMPP addresses."""
        client_config = ClientConfig(
            bosh_path="/http-bind",
            xmpp_domain=settings.xmpp_domain,
            anonymous_domain=settings.anonymous_domain,
            pubsub_service=settings.pubsub_service,
            pubsub_nodes=list(PUBSUB_NODES),
        )
        return json_response(client_config.model_dump(), 200, {"Cache-Control": "max-age=60"})

    @app.get(
        f"{PREFIX}/network",
        response_model=NetworkOut,
        response_class=GeoJSONResponse,
        responses={304: NOT_MODIFIED, 503: error_doc("Network file unreadable")},
        tags=["web"],
    )
    def get_network(request: Request, settings: SettingsDep) -> Response:
        """Return the road network drawn by the web map: GeoJSON LineStrings with classes."""
        network_path = settings.network_file or REIMS_NETWORK_PATH
        try:
            body = network_path.read_bytes()
        except OSError as exc:
            log.error("road network %s unreadable: %s", network_path, exc)
            return error_response(
                503, "network_unavailable", "the road network file cannot be read"
            )
        return geojson_unless_cached(request, body, "max-age=300")

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
            return json_response(body, 503, headers)
        return json_response(
            {"status": "ok", "database": "ok", "version": __version__}, 200, headers
        )

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
        responses={404: NOT_FOUND, 503: UNAVAILABLE},
        tags=["events"],
    )
    def get_event(event_id: str, store: StoreDep) -> Response:
        """Return the latest version of one event."""
        event = store.get_event(event_id)
        if event is None:
            return error_response(404, "not_found", f"no event with id {echo_input(event_id)}")
        return json_response(event.to_dict())

    _install_zone_routes(app)
    from roadwatch.services.api.stats import install_stats_routes  # noqa: PLC0415 (imports app)

    install_stats_routes(app)


def _zone_location(zone_id: str) -> dict[str, str]:
    return {"Location": f"{PREFIX}/zones/{quote(zone_id, safe='')}"}


def _install_zone_routes(app: FastAPI) -> None:
    authorised = [Security(require_token)]

    def not_found(zone_id: str) -> Response:
        return error_response(404, "not_found", f"no zone with id {echo_input(zone_id)}")

    @app.get(
        f"{PREFIX}/zones",
        response_model=ZoneCollectionOut,
        response_class=GeoJSONResponse,
        responses={304: NOT_MODIFIED, 503: UNAVAILABLE},
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
        return geojson_unless_cached(request, body, "no-cache")

    @app.get(
        f"{PREFIX}/zones/{{zone_id}}",
        response_model=ZoneFeatureOut,
        response_class=GeoJSONResponse,
        responses={404: NOT_FOUND, 503: UNAVAILABLE},
        tags=["zones"],
    )
    def get_zone(zone_id: str, zones: ZoneStoreDep) -> Response:
        """Return one zone as a GeoJSON Feature."""
        zone = zones.get_zone(zone_id)
        if zone is None:
            return not_found(zone_id)
        return geojson_response(zone.to_feature())

    @app.post(
        f"{PREFIX}/zones",
        status_code=201,
        response_model=ZoneFeatureOut,
        response_class=GeoJSONResponse,
        responses={**_WRITE_ERRORS, 409: error_doc("Id taken")},
        dependencies=authorised,
        openapi_extra=_ZONE_BODY_DOC,
        tags=["zones"],
    )
    def create_zone(zone: ZoneBodyDep, zones: ZoneStoreDep) -> Response:
        """Create a zone; its id is `properties.id`."""
        try:
            zones.create_zone(zone)
        except ZoneExists:
            return error_response(
                409,
                "conflict",
                f"a zone with id {zone.id!r} already exists; PUT /api/zones/{{id}} replaces it",
            )
        log.info("zone %r created", zone.id)
        return geojson_response(zone.to_feature(), 201, _zone_location(zone.id))

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
                f"properties.id {zone.id!r} does not match the id in the path "
                f"{echo_input(zone_id)}",
            )
        created = zones.update_zone(zone)
        log.info("zone %r %s", zone.id, "created" if created else "replaced")
        if created:
            return geojson_response(zone.to_feature(), 201, _zone_location(zone.id))
        return geojson_response(zone.to_feature())

    @app.delete(
        f"{PREFIX}/zones/{{zone_id}}",
        status_code=204,
        response_class=Response,
        responses={
            401: _WRITE_ERRORS[401],
            403: _WRITE_ERRORS[403],
            404: NOT_FOUND,
            503: UNAVAILABLE,
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
        responses={404: NOT_FOUND, 503: UNAVAILABLE},
        tags=["zones"],
    )
    def zone_occupancy(zone_id: str, zones: ZoneStoreDep) -> Response:
        """List the stations inside a zone now: those whose latest event there is an enter."""
        if zones.get_zone(zone_id) is None:
            return not_found(zone_id)
        occupants = zones.occupancy(zone_id)
        return json_response(
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
