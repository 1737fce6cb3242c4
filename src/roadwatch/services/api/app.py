"""The REST API of SPEC §7: read the stored events over HTTP, behind Apache at `/api/`."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Annotated, Any

import orjson
import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from roadwatch import __version__
from roadwatch.adapters.mysql.connection import ConnectionPool, StoreError, StoreUnavailable
from roadwatch.adapters.mysql.store import BBox, EventStore, InvalidCursor
from roadwatch.domain.events import (
    PUBSUB_NODES,
    EventStatus,
    EventType,
    InvalidEvent,
    rfc3339_to_ms,
)
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "/api"
# Sync routes run in the server's thread pool (40 threads); a few sessions are enough for
# short indexed queries and keep MariaDB's connection count low.
POOL_SIZE = 8
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Seconds a client should wait before asking again while the database is down.
RETRY_AFTER_S = 5


class ApiError(Exception):
    """A client error with its HTTP status, error code and human detail."""

    def __init__(self, status_code: int, error: str, detail: Any) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.error = error
        self.detail = detail


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


class Health(BaseModel):
    """Status of the API and of its database."""

    status: str = Field(examples=["ok", "degraded"])
    database: str = Field(examples=["ok", "unavailable"])
    version: str


class ErrorOut(BaseModel):
    """A JSON error: a stable code and what exactly is wrong."""

    error: str
    detail: Any


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Invalid parameters"},
    503: {"model": ErrorOut, "description": "Database unavailable"},
}


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


def _error_code(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


# --- Parameter parsing ------------------------------------------------------------------------


def _parse_time(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        # RFC 3339 allows lower-case `t` and `z`.
        return rfc3339_to_ms(text.strip().upper())
    except InvalidEvent as exc:
        raise ApiError(
            400,
            "invalid_parameter",
            [
                {
                    "parameter": name,
                    "message": "not an RFC 3339 time with a UTC offset, "
                    "e.g. 2024-05-01T08:00:00Z or 2024-05-01T10:00:00+02:00",
                }
            ],
        ) from exc


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


# --- Application ------------------------------------------------------------------------------


def get_store(request: Request) -> EventStore:
    """Return the store opened by the lifespan of this application."""
    store = request.app.state.store
    if not isinstance(store, EventStore):
        raise RuntimeError("the API store is not open")
    return store


StoreDep = Annotated[EventStore, Depends(get_store)]


def create_app(settings: Settings) -> FastAPI:
    """Build the API application; the database pool opens with its lifespan, not before."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = EventStore(ConnectionPool(settings, POOL_SIZE))
        app.state.store = store
        log.info("api using MySQL at %s:%d", settings.mysql_host, settings.mysql_port)
        try:
            yield
        finally:
            store.close()

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
    _install_routes(app, settings)
    return app


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
        return _error(exc.status_code, _error_code(exc.status_code), exc.detail, exc.headers)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status_code, exc.error, exc.detail)

    async def on_invalid_cursor(request: Request, exc: Exception) -> Response:
        return _error(400, "invalid_parameter", [{"parameter": "cursor", "message": str(exc)}])

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

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(InvalidCursor, on_invalid_cursor)
    app.add_exception_handler(StoreUnavailable, on_unavailable)
    app.add_exception_handler(StoreError, on_store_error)


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

    @app.get(f"{PREFIX}/events", response_model=EventPage, responses=_ERRORS, tags=["events"])
    def list_events(
        *,
        store: StoreDep,
        type_: Annotated[
            list[EventType] | None, Query(alias="type", description="repeatable")
        ] = None,
        status: EventStatus | None = None,
        since: Annotated[
            str | None, Query(max_length=64, description="RFC 3339; events started at or after")
        ] = None,
        until: Annotated[
            str | None, Query(max_length=64, description="RFC 3339; events started before")
        ] = None,
        bbox: Annotated[
            str | None, Query(max_length=200, description="minLon,minLat,maxLon,maxLat")
        ] = None,
        zone: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        station: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[
            str | None, Query(max_length=256, description="`next_cursor` of the previous page")
        ] = None,
    ) -> Response:
        """List events, newest start first, one page at a time."""
        since_ms = _parse_time("since", since)
        until_ms = _parse_time("until", until)
        if since_ms is not None and until_ms is not None and since_ms > until_ms:
            raise ApiError(
                400,
                "invalid_parameter",
                [{"parameter": "since", "message": "since is after until"}],
            )
        events, next_cursor = store.list_events(
            types=type_,
            status=status,
            since_ms=since_ms,
            until_ms=until_ms,
            station=station,
            limit=limit,
            cursor=cursor,
            zone=zone,
            bbox=_parse_bbox(bbox),
        )
        return _json({"items": [event.to_dict() for event in events], "next_cursor": next_cursor})

    @app.get(
        f"{PREFIX}/events/{{event_id}}",
        response_model=EventOut,
        responses={404: {"model": ErrorOut}, 503: _ERRORS[503]},
        tags=["events"],
    )
    def get_event(event_id: str, store: StoreDep) -> Response:
        """Return the latest version of one event."""
        event = store.get_event(event_id)
        if event is None:
            return _error(404, "not_found", f"no event with id {event_id!r}")
        return _json(event.to_dict())


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
