"""Statistics routes of docs/contract/rest-api.md §9: counts per type and status, per time bucket,
per place.

Start times bound every count: `since` inclusive, `until` exclusive, RFC 3339, as in
`/api/events`. Hotspots are squares of a fixed latitude/longitude grid.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from roadwatch.adapters.mysql.stats import DAY_MS, HOUR_MS, TimeRange, bucket_starts
from roadwatch.adapters.mysql.store import (
    DATETIME_MAX_MS,
    DATETIME_MIN_MS,
    GRID_STEPS_PER_DEGREE,
    grid_cell_bounds,
)
from roadwatch.domain.events import EventStatus, EventType, ms_to_rfc3339
from roadwatch.services.api.dependencies import StatsStoreDep, parse_time
from roadwatch.services.api.errors import QUERY_ERRORS, invalid_parameter
from roadwatch.services.api.formats import json_response
from roadwatch.services.api.routers import PREFIX

# A chart of more buckets than this is unreadable, and the answer would grow without bound.
MAX_BUCKETS = 1000
DEFAULT_HOTSPOTS = 20
MAX_HOTSPOTS = 500
# The range a time series covers when `since` is not given, per bucket size.
_DEFAULT_SPAN_MS = {"hour": DAY_MS, "day": 30 * DAY_MS}
_BUCKET_MS = {"hour": HOUR_MS, "day": DAY_MS}
_TIME_DOC = "RFC 3339; events started at or after"
_UNTIL_DOC = "RFC 3339; events started before"

router = APIRouter(prefix=PREFIX, tags=["stats"])


# --- Documented shapes (OpenAPI) -------------------------------------------------------------


class SummaryOut(BaseModel):
    """Counts of the events started in the range, per type, per status and per both."""

    since: str | None = Field(description="RFC 3339 UTC; null: from the first event")
    until: str | None = Field(description="RFC 3339 UTC, exclusive; null: up to the last event")
    total: int
    by_type: dict[str, int] = Field(
        description="every event type, zero included", examples=[{"accident": 3, "hazard": 0}]
    )
    by_status: dict[str, int] = Field(
        description="every status, zero included", examples=[{"active": 1, "cleared": 2}]
    )
    by_type_and_status: dict[str, dict[str, int]] = Field(
        description="type, then status; every pair, zero included"
    )


class BucketOut(BaseModel):
    """One time bucket: the events started in it, per requested type."""

    start: str = Field(description="RFC 3339 UTC start of the bucket (a UTC hour or day)")
    total: int
    counts: dict[str, int] = Field(description="each requested type, zero included")


class TimeseriesOut(BaseModel):
    """Event counts per time bucket, oldest first, every bucket of the range present."""

    bucket: Literal["hour", "day"]
    since: str = Field(description="RFC 3339 UTC, inclusive")
    until: str = Field(description="RFC 3339 UTC, exclusive")
    types: list[EventType]
    buckets: list[BucketOut]


class PolygonOut(BaseModel):
    """A GeoJSON Polygon (RFC 7946): one closed ring of [lon, lat]."""

    type: Literal["Polygon"]
    coordinates: list[list[list[float]]]


class HotspotOut(BaseModel):
    """One grid square and the number of events started in it."""

    id: str = Field(description="stable identifier of the grid square")
    count: int
    lat: float = Field(description="centre of the square")
    lon: float = Field(description="centre of the square")
    bbox: list[float] = Field(description="minLon, minLat, maxLon, maxLat")
    polygon: PolygonOut


class HotspotsOut(BaseModel):
    """The grid squares holding the most events, most first."""

    since: str | None
    until: str | None
    types: list[EventType]
    cell_size_deg: float = Field(description="side of a grid square, in degrees of lat and lon")
    cells: list[HotspotOut]


# --- Parameters -------------------------------------------------------------------------------

SinceQuery = Annotated[str | None, Query(max_length=64, description=_TIME_DOC)]
UntilQuery = Annotated[str | None, Query(max_length=64, description=_UNTIL_DOC)]
TypesQuery = Annotated[
    list[EventType] | None, Query(alias="type", description="repeatable; all types if absent")
]


def _parse_bounded_time(name: str, text: str | None) -> int | None:
    moment = parse_time(name, text)
    if moment is not None and not DATETIME_MIN_MS <= moment <= DATETIME_MAX_MS:
        # Exact bounds: 9999-12-31T23:59:59.9999Z is in year 9999 yet after the last millisecond.
        raise invalid_parameter(
            name,
            f"must be from {ms_to_rfc3339(DATETIME_MIN_MS)} to {ms_to_rfc3339(DATETIME_MAX_MS)}, "
            "the times the database holds",
        )
    return moment


def parse_range(since: str | None, until: str | None) -> TimeRange:
    """Parse the `since` and `until` parameters; since must not be after until."""
    span = TimeRange(_parse_bounded_time("since", since), _parse_bounded_time("until", until))
    if span.since_ms is not None and span.until_ms is not None and span.since_ms > span.until_ms:
        raise invalid_parameter("since", "since is after until")
    return span


def series_range(span: TimeRange, bucket: str, now_ms: int) -> TimeRange:
    """Fill in the bounds a time series needs: until now, since a day or a month before."""
    until = span.until_ms if span.until_ms is not None else min(now_ms, DATETIME_MAX_MS)
    since = span.since_ms
    if since is None:
        since = max(until - _DEFAULT_SPAN_MS[bucket], DATETIME_MIN_MS)
    if since > until:
        raise invalid_parameter("since", "since is after until (which defaults to now)")
    return TimeRange(since, until)


def _time_or_none(ms: int | None) -> str | None:
    return None if ms is None else ms_to_rfc3339(ms)


def _chosen_types(types: list[EventType] | None) -> list[EventType]:
    chosen = set(types or EventType)
    return [kind for kind in EventType if kind in chosen]


def hotspot(cell: int, count: int) -> dict[str, Any]:
    """Describe one grid square: its centre, box and outline."""
    min_lon, min_lat, max_lon, max_lat = grid_cell_bounds(cell)
    ring = [
        [min_lon, min_lat],
        [max_lon, min_lat],
        [max_lon, max_lat],
        [min_lon, max_lat],
        [min_lon, min_lat],
    ]
    return {
        "id": str(cell),
        "count": count,
        "lat": round((min_lat + max_lat) / 2, 6),
        "lon": round((min_lon + max_lon) / 2, 6),
        "bbox": [min_lon, min_lat, max_lon, max_lat],
        "polygon": {"type": "Polygon", "coordinates": [ring]},
    }


# --- Routes -----------------------------------------------------------------------------------


@router.get("/stats/summary", response_model=SummaryOut, responses=QUERY_ERRORS)
def stats_summary(
    stats: StatsStoreDep, since: SinceQuery = None, until: UntilQuery = None
) -> Response:
    """Count the events per type and status, over an optional range of start times."""
    span = parse_range(since, until)
    counts = stats.summary(span)
    by_pair = {
        kind.value: {
            status.value: counts.get((kind.value, status.value), 0) for status in EventStatus
        }
        for kind in EventType
    }
    return json_response(
        {
            "since": _time_or_none(span.since_ms),
            "until": _time_or_none(span.until_ms),
            "total": sum(counts.values()),
            "by_type": {kind: sum(row.values()) for kind, row in by_pair.items()},
            "by_status": {
                status.value: sum(row[status.value] for row in by_pair.values())
                for status in EventStatus
            },
            "by_type_and_status": by_pair,
        }
    )


@router.get("/stats/timeseries", response_model=TimeseriesOut, responses=QUERY_ERRORS)
def stats_timeseries(
    stats: StatsStoreDep,
    bucket: Annotated[Literal["hour", "day"], Query(description="UTC hours or UTC days")] = "hour",
    type_: TypesQuery = None,
    since: Annotated[
        str | None,
        Query(
            max_length=64,
            description=f"{_TIME_DOC}; default: a day (hour buckets) "
            "or 30 days (day buckets) before until",
        ),
    ] = None,
    until: Annotated[
        str | None, Query(max_length=64, description=f"{_UNTIL_DOC}; default: now")
    ] = None,
) -> Response:
    """Count the events per time bucket and type; empty buckets are listed with zeros."""
    span = series_range(parse_range(since, until), bucket, int(time.time() * 1000))
    unit = _BUCKET_MS[bucket]
    starts = bucket_starts(span, unit)
    if len(starts) > MAX_BUCKETS:
        raise invalid_parameter(
            "since",
            f"the range holds {len(starts)} {bucket} buckets; at most {MAX_BUCKETS}: "
            "narrow since/until or use larger buckets",
        )
    kinds = _chosen_types(type_)
    counts = stats.timeseries(span, unit, type_)
    buckets = []
    for start in starts:
        row = {kind.value: counts.get((start, kind.value), 0) for kind in kinds}
        buckets.append({"start": ms_to_rfc3339(start), "total": sum(row.values()), "counts": row})
    return json_response(
        {
            "bucket": bucket,
            "since": _time_or_none(span.since_ms),
            "until": _time_or_none(span.until_ms),
            "types": kinds,
            "buckets": buckets,
        }
    )


@router.get("/stats/hotspots", response_model=HotspotsOut, responses=QUERY_ERRORS)
def stats_hotspots(
    stats: StatsStoreDep,
    type_: TypesQuery = None,
    since: SinceQuery = None,
    until: UntilQuery = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_HOTSPOTS, description="number of squares")
    ] = DEFAULT_HOTSPOTS,
) -> Response:
    """List the grid squares where most events started, most first."""
    span = parse_range(since, until)
    kinds = _chosen_types(type_)
    ranked = stats.hotspots(span, type_, limit)
    return json_response(
        {
            "since": _time_or_none(span.since_ms),
            "until": _time_or_none(span.until_ms),
            "types": kinds,
            "cell_size_deg": 1 / GRID_STEPS_PER_DEGREE,
            "cells": [hotspot(cell, count) for cell, count in ranked],
        }
    )
