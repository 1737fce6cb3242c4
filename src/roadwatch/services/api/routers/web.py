"""What the web app asks the API for besides events: where the live feed is, and the roads."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from roadwatch.domain.events import PUBSUB_NODES
from roadwatch.services.api.dependencies import SettingsDep
from roadwatch.services.api.errors import error_doc, error_response
from roadwatch.services.api.formats import (
    NOT_MODIFIED,
    GeoJSONResponse,
    geojson_unless_cached,
    json_response,
)
from roadwatch.services.api.routers import PREFIX
from roadwatch.simulation.network import REIMS_NETWORK_PATH

log = logging.getLogger(__name__)

router = APIRouter(prefix=PREFIX, tags=["web"])


class ClientConfig(BaseModel):
    """What the browser needs to reach the live feed; never any credential."""

    bosh_path: str
    xmpp_domain: str
    anonymous_domain: str
    pubsub_service: str
    pubsub_nodes: list[str]


class NetworkOut(BaseModel):
    """The road network: a GeoJSON FeatureCollection of LineStrings (`road_class`, limits)."""

    type: Literal["FeatureCollection"]
    features: list[dict[str, Any]]


@router.get("/client-config", response_model=ClientConfig)
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


@router.get(
    "/network",
    response_model=NetworkOut,
    response_class=GeoJSONResponse,
    responses={304: NOT_MODIFIED, 503: error_doc("Network file unreadable")},
)
def get_network(request: Request, settings: SettingsDep) -> Response:
    """Return the road network drawn by the web map: GeoJSON LineStrings with classes."""
    network_path = settings.network_file or REIMS_NETWORK_PATH
    try:
        body = network_path.read_bytes()
    except OSError as exc:
        log.error("road network %s unreadable: %s", network_path, exc)
        return error_response(503, "network_unavailable", "the road network file cannot be read")
    return geojson_unless_cached(request, body, "max-age=300")
