"""Zones: GeoJSON polygons read by anyone, written with the bearer token; who is inside now."""

from __future__ import annotations

import logging
from typing import Any, Literal
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request, Security
from fastapi.responses import Response
from pydantic import BaseModel, Field

from roadwatch.adapters.mysql.zones import ZoneExists
from roadwatch.domain.events import ms_to_rfc3339
from roadwatch.domain.zones import MAX_HYSTERESIS_M, MAX_ZONE_NAME_LEN, MAX_ZONE_POSITIONS
from roadwatch.services.api.dependencies import (
    MAX_BODY_BYTES,
    ZoneBodyDep,
    ZoneStoreDep,
    require_token,
)
from roadwatch.services.api.errors import (
    NOT_FOUND,
    UNAVAILABLE,
    ApiError,
    echo_input,
    error_doc,
    error_response,
)
from roadwatch.services.api.formats import (
    GEOJSON_MEDIA_TYPE,
    NOT_MODIFIED,
    GeoJSONResponse,
    geojson_response,
    geojson_unless_cached,
    json_response,
)
from roadwatch.services.api.routers import PREFIX

log = logging.getLogger(__name__)

# A zone id, as the domain accepts it; documented in the request body's schema.
ZONE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

router = APIRouter(prefix=PREFIX, tags=["zones"])
# Every write needs the bearer token.
AUTHORISED = [Security(require_token)]


# --- Documented shapes (OpenAPI) -------------------------------------------------------------


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


WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_doc("Not a valid zone Feature"),
    401: error_doc("Missing or wrong bearer token"),
    403: error_doc("Writes disabled: no API token configured"),
    413: error_doc(f"Body larger than {MAX_BODY_BYTES} bytes"),
    415: error_doc("Body not sent as JSON"),
    503: UNAVAILABLE,
}
# The request body of zone writes, read by hand (size limit, GeoJSON validation in the domain),
# so it is described here for the OpenAPI document.
ZONE_BODY_DOC: dict[str, Any] = {
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


# --- Routes -----------------------------------------------------------------------------------


@router.get(
    "/zones",
    response_model=ZoneCollectionOut,
    response_class=GeoJSONResponse,
    responses={304: NOT_MODIFIED, 503: UNAVAILABLE},
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


@router.get(
    "/zones/{zone_id}",
    response_model=ZoneFeatureOut,
    response_class=GeoJSONResponse,
    responses={404: NOT_FOUND, 503: UNAVAILABLE},
)
def get_zone(zone_id: str, zones: ZoneStoreDep) -> Response:
    """Return one zone as a GeoJSON Feature."""
    zone = zones.get_zone(zone_id)
    if zone is None:
        return _not_found(zone_id)
    return geojson_response(zone.to_feature())


@router.post(
    "/zones",
    status_code=201,
    response_model=ZoneFeatureOut,
    response_class=GeoJSONResponse,
    responses={**WRITE_ERRORS, 409: error_doc("Id taken")},
    dependencies=AUTHORISED,
    openapi_extra=ZONE_BODY_DOC,
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
    return geojson_response(zone.to_feature(), 201, _location(zone.id))


@router.put(
    "/zones/{zone_id}",
    response_model=ZoneFeatureOut,
    response_class=GeoJSONResponse,
    responses={**WRITE_ERRORS, 201: {"model": ZoneFeatureOut, "description": "Created"}},
    dependencies=AUTHORISED,
    openapi_extra=ZONE_BODY_DOC,
)
def replace_zone(zone_id: str, zone: ZoneBodyDep, zones: ZoneStoreDep) -> Response:
    """Create or replace the zone with this id; `properties.id` must be the same id."""
    if zone.id != zone_id:
        raise ApiError(
            400,
            "invalid_zone",
            f"properties.id {zone.id!r} does not match the id in the path {echo_input(zone_id)}",
        )
    created = zones.update_zone(zone)
    log.info("zone %r %s", zone.id, "created" if created else "replaced")
    if created:
        return geojson_response(zone.to_feature(), 201, _location(zone.id))
    return geojson_response(zone.to_feature())


@router.delete(
    "/zones/{zone_id}",
    status_code=204,
    response_class=Response,
    responses={
        401: WRITE_ERRORS[401],
        403: WRITE_ERRORS[403],
        404: NOT_FOUND,
        503: UNAVAILABLE,
    },
    dependencies=AUTHORISED,
)
def delete_zone(zone_id: str, zones: ZoneStoreDep) -> Response:
    """Delete a zone."""
    if not zones.delete_zone(zone_id):
        return _not_found(zone_id)
    log.info("zone %r deleted", zone_id)
    return Response(status_code=204)


@router.get(
    "/zones/{zone_id}/occupancy",
    response_model=OccupancyOut,
    responses={404: NOT_FOUND, 503: UNAVAILABLE},
)
def zone_occupancy(zone_id: str, zones: ZoneStoreDep) -> Response:
    """List the stations inside a zone now: those whose latest event there is an enter."""
    if zones.get_zone(zone_id) is None:
        return _not_found(zone_id)
    occupants = zones.occupancy(zone_id)
    return json_response(
        {
            "zone_id": zone_id,
            "stations": [
                {"station_id": o.station_id, "since": ms_to_rfc3339(o.since_ms)} for o in occupants
            ],
            "count": len(occupants),
        },
        200,
        {"Cache-Control": "no-store"},
    )


def _not_found(zone_id: str) -> Response:
    return error_response(404, "not_found", f"no zone with id {echo_input(zone_id)}")


def _location(zone_id: str) -> dict[str, str]:
    return {"Location": f"{PREFIX}/zones/{quote(zone_id, safe='')}"}
