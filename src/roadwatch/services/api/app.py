"""The REST API (docs/contract/rest-api.md §1 to §11): read the stored events over HTTP, behind
Apache at `/api/`.

This module builds the application: the routers of `routers/`, the error handlers of
`errors.py`, the request metrics, the OpenAPI document, and the server that runs it all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from roadwatch import __version__
from roadwatch.adapters.metrics import STAGE_BUCKETS
from roadwatch.adapters.mysql.connection import ConnectionPool
from roadwatch.adapters.mysql.store import EventStore
from roadwatch.adapters.mysql.zones import ZoneStore
from roadwatch.services.api.docs import install_docs_routes
from roadwatch.services.api.errors import ErrorOut, install_error_handlers
from roadwatch.services.api.routers import PREFIX, events, health, stats, web, zones
from roadwatch.services.api.routers.events import EventFeatureCollectionOut
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

# Sync routes run in the server's thread pool (40 threads); a few sessions are enough for
# short indexed queries and keep MariaDB's connection count low.
POOL_SIZE = 8
# Prometheus figures at /metrics on the API's own port, outside PREFIX: Apache proxies only
# /api/ (deploy/apache/httpd.conf), so they are never served to the outside world.
METRICS_PATH = "/metrics"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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
    # In this order in the OpenAPI document.
    for router in (web.router, health.router, events.router, zones.router, stats.router):
        app.include_router(router)
    install_docs_routes(app, PREFIX, app.openapi_url or f"{PREFIX}/openapi.json")
    _install_openapi(app)
    return app


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
    app.state.metrics_registry = registry
    app.add_middleware(RequestMetrics, requests=requests, seconds=seconds)
    app.add_api_route(METRICS_PATH, metrics, methods=["GET"], include_in_schema=False)


def metrics(request: Request) -> Response:
    """Serve the request figures of this application in Prometheus's text format."""
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )


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
