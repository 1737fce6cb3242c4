"""Health: whether the API and its database answer, for probes and the supervisor."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from roadwatch import __version__
from roadwatch.adapters.mysql.connection import StoreError
from roadwatch.services.api.dependencies import StoreDep
from roadwatch.services.api.formats import json_response
from roadwatch.services.api.routers import PREFIX

log = logging.getLogger(__name__)

router = APIRouter(prefix=PREFIX, tags=["health"])


class Health(BaseModel):
    """Status of the API and of its database."""

    status: str = Field(examples=["ok", "degraded"])
    database: str = Field(examples=["ok", "unavailable"])
    version: str


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "Database unavailable"}},
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
    return json_response({"status": "ok", "database": "ok", "version": __version__}, 200, headers)
