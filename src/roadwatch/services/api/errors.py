"""Errors of the REST API: every refusal and failure is JSON `{"error": code, "detail": …}`.

Routes raise ApiError or let the store's exceptions through; the handlers installed here answer
each in that shape, FastAPI's validation errors (as 400, never 422) and Starlette's 404 and 405
included.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from roadwatch.adapters.mysql.connection import StoreError, StoreUnavailable
from roadwatch.adapters.mysql.store import InvalidCursor
from roadwatch.domain.zones import InvalidZone
from roadwatch.services.api.formats import json_response

log = logging.getLogger(__name__)

# Seconds a client should wait before asking again while the database is down.
RETRY_AFTER_S = 5
# Longest piece of a client's input quoted back in an error message.
MAX_ECHO_CHARS = 80
# The methods a 405's `Allow` header may name.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


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


def invalid_parameter(parameter: str, message: str) -> ApiError:
    """Return the 400 refusing one query or path parameter, saying what is wrong with it."""
    return ApiError(400, "invalid_parameter", [{"parameter": parameter, "message": message}])


def echo_input(value: str) -> str:
    """Quote a client's value for an error message, cut short: a path may be kilobytes long."""
    if len(value) <= MAX_ECHO_CHARS:
        return repr(value)
    return repr(value[:MAX_ECHO_CHARS]) + "…"


def error_response(
    status_code: int, error: str, detail: Any, headers: Mapping[str, str] | None = None
) -> Response:
    """Answer with the JSON error shape."""
    return json_response({"error": error, "detail": detail}, status_code, headers)


# --- Documented shapes (OpenAPI) -------------------------------------------------------------


class ErrorOut(BaseModel):
    """A JSON error: a stable code and what exactly is wrong."""

    error: str
    detail: Any


def error_doc(description: str) -> dict[str, Any]:
    """Document a JSON error answer."""
    # Spelled out rather than as `model`: FastAPI files a model under the route's own media
    # type, which is GeoJSON for the zone routes, while errors are always plain JSON.
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
    }


NOT_FOUND = error_doc("No such resource")
UNAVAILABLE = error_doc("Database unavailable")
# The errors any query of the stored events can answer.
QUERY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_doc("Invalid parameters"),
    503: UNAVAILABLE,
}


# --- Handlers ---------------------------------------------------------------------------------


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception a request can raise with the JSON error shape."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(InvalidCursor, _on_invalid_cursor)
    app.add_exception_handler(InvalidZone, _on_invalid_zone)
    app.add_exception_handler(StoreUnavailable, _on_unavailable)
    app.add_exception_handler(StoreError, _on_store_error)
    app.add_exception_handler(Exception, _on_unexpected)


async def _on_validation(request: Request, exc: Exception) -> Response:
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
    return error_response(400, "invalid_parameter", problems)


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names only the methods of the first route on this path; RFC 9110
        # §15.5.6 wants every method the resource supports.
        headers["Allow"] = _allowed_methods(request)
    return error_response(exc.status_code, _error_code(exc.status_code), exc.detail, headers)


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.error, exc.detail, exc.headers)


async def _on_invalid_cursor(request: Request, exc: Exception) -> Response:
    return error_response(400, "invalid_parameter", [{"parameter": "cursor", "message": str(exc)}])


async def _on_invalid_zone(request: Request, exc: Exception) -> Response:
    return error_response(400, "invalid_zone", str(exc))


async def _on_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return error_response(
        503,
        "database_unavailable",
        "the database is not reachable; retry later",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


async def _on_store_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s: %s", request.method, request.url.path, exc, exc_info=exc)
    return error_response(500, "internal_error", "the request could not be completed")


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # A bug, never the client's input; the answer stays JSON and says nothing internal.
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "the request could not be completed")


def _error_code(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def _allowed_methods(request: Request) -> str:
    """Return the `Allow` value for the request's path: every method some route takes there."""
    # Each route is asked rather than its `methods` read: since FastAPI 0.137 an included
    # router is a single route of the application, holding the routes of a whole module.
    allowed = {
        method
        for method in _METHODS
        for route in request.app.router.routes
        if route.matches({**request.scope, "method": method})[0] is Match.FULL
    }
    return ", ".join(sorted(allowed))
