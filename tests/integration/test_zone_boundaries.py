"""Zone writes with edge bodies and tokens, against the real API and MariaDB
(docs/contract/rest-api.md §8, docs/contract/targets.md §6).

Valid Features at the poles and the antimeridian, at the position and size limits, are stored
as sent; any other body is a 4xx JSON error saying what is wrong (400, 413, 415); any other
token a 401 whatever the body; never a 5xx.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from roadwatch.domain.zones import MAX_HYSTERESIS_M, MAX_ZONE_NAME_LEN, MAX_ZONE_POSITIONS
from roadwatch.runner.mariadb import MariaDB
from roadwatch.services.api.dependencies import MAX_BODY_BYTES
from roadwatch.settings import Settings
from tests.integration.api_server import serve
from tests.integration.db import reset_zones

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(mariadb: MariaDB, test_settings: Settings) -> Iterator[httpx.Client]:
    reset_zones(test_settings)
    with serve(test_settings) as api:
        yield api
    reset_zones(test_settings)


class Body(NamedTuple):
    """What is sent, and the answer it must get with the right token: (status, error code)."""

    content: bytes
    status: int
    error: str | None
    feature: dict[str, Any] | None = None

    def __repr__(self) -> str:
        # Bodies run to megabytes: a failing example names its start.
        return f"Body({self.content[:120]!r}, {len(self.content)} bytes, {self.status})"


ZONE_ID = "fuzz-zone"


# --- Valid Features at the edges ----------------------------------------------------------------

# Corners a ring may start from: the poles at both ends of the antimeridian, the origin.
CORNERS = (
    (-180.0, -90.0),
    (180.0, 90.0),
    (-180.0, 90.0),
    (180.0, -90.0),
    (0.0, 0.0),
    (4.03, 49.25),
)
# Sides from about 10 cm to the whole world.
SIDES = (1e-6, 1e-4, 1.0, 90.0, 180.0, 360.0)


@st.composite
def rings(draw: st.DrawFn, corner: tuple[float, float]) -> list[list[float]]:
    """A closed box from `corner` inward, every position within [-180, 180] x [-90, 90]."""
    lon0, lat0 = corner
    width = min(draw(st.sampled_from(SIDES)), 360.0)
    height = min(draw(st.sampled_from(SIDES)), 180.0)
    # Inward from the corner, clipped to the map.
    lon1 = max(-180.0, min(180.0, lon0 + (width if lon0 < 180.0 else -width)))
    lat1 = max(-90.0, min(90.0, lat0 + (height if lat0 < 90.0 else -height)))
    ring = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
    if draw(st.booleans()):
        ring.reverse()  # either winding
    if draw(st.booleans()):
        altitude = draw(st.sampled_from((0.0, -1e308, 1e308, 8848.86)))
        ring = [[*position, altitude] for position in ring]
    return ring


@st.composite
def valid_features(draw: st.DrawFn) -> dict[str, Any]:
    polygons = [
        [draw(rings(draw(st.sampled_from(CORNERS)))) for _ in range(draw(st.integers(1, 2)))]
        for _ in range(draw(st.integers(1, 3)))
    ]
    if len(polygons) == 1 and draw(st.booleans()):
        geometry = {"type": "Polygon", "coordinates": polygons[0]}
    else:
        geometry = {"type": "MultiPolygon", "coordinates": polygons}
    name = draw(
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_ZONE_NAME_LEN).filter(
            lambda s: s.strip() != ""
        )
    )
    properties: dict[str, Any] = {"id": ZONE_ID, "name": name}
    hysteresis = draw(st.sampled_from((None, 0, 0.0, 5e-324, MAX_HYSTERESIS_M, 25)))
    if hysteresis is not None or draw(st.booleans()):
        properties["hysteresis_m"] = hysteresis
    feature: dict[str, Any] = {"type": "Feature", "geometry": geometry, "properties": properties}
    if draw(st.booleans()):
        feature["id"] = draw(st.sampled_from((ZONE_ID, None)))
    return feature


def largest_ring() -> dict[str, Any]:
    """One ring of exactly MAX_ZONE_POSITIONS positions along the equator and back."""
    steps = (MAX_ZONE_POSITIONS - 2) // 2
    out = [[-180.0 + 360.0 * i / steps, 0.0] for i in range(steps)]
    back = [[180.0 - 360.0 * i / steps, 1.0] for i in range(steps)]
    ring = [*out, [180.0, 0.0], *back]
    ring.append(ring[0])
    assert len(ring) == MAX_ZONE_POSITIONS
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"id": ZONE_ID, "name": "The equator"},
    }


def valid_bodies() -> st.SearchStrategy[Body]:
    features = st.one_of(valid_features(), st.builds(largest_ring))
    return features.map(lambda f: Body(orjson.dumps(f), 201, None, f))


# --- Wrong bodies, each wrong in one known way -----------------------------------------------

SQUARE = [[4.03, 49.25], [4.04, 49.25], [4.04, 49.26], [4.03, 49.26], [4.03, 49.25]]


def feature_with(**changes: Any) -> dict[str, Any]:
    feature: dict[str, Any] = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
        "properties": {"id": ZONE_ID, "name": "Zone"},
    }
    for path, value in changes.items():
        target = feature
        *parents, last = path.split("__")
        for parent in parents:
            target = target[parent]
        if value is _DROP:
            del target[last]
        else:
            target[last] = value
    return feature


_DROP = object()


def with_position(position: Any) -> dict[str, Any]:
    ring = [list(p) for p in SQUARE]
    ring[1] = position
    return feature_with(geometry__coordinates=[ring])


WRONG_FEATURES: tuple[Any, ...] = (
    *(
        with_position(position)
        for position in (
            [180.0000001, 49.25],
            [-180.0000001, 49.25],
            [4.03, 90.0000001],
            [4.03, -90.0000001],
            [1e308, 49.25],
            [4.03, -1e308],
            [2**64, 49.25],
            [-(2**63) - 1, 49.25],
            [True, 49.25],
            ["4.04", 49.25],
            [None, 49.25],
            [4.04],
            [4.04, 49.25, 0.0, 0.0],
            [4.04, 49.25, "high"],
            4.04,
        )
    ),
    feature_with(geometry__coordinates=[SQUARE[:-1]]),  # open ring
    feature_with(geometry__coordinates=[[SQUARE[0], SQUARE[1], SQUARE[0]]]),  # 3 positions
    feature_with(geometry__coordinates=[[SQUARE[0]] * 4]),  # no area
    feature_with(
        geometry__coordinates=[
            [[0.0, float(i % 2)] for i in range(MAX_ZONE_POSITIONS)] + [[0.0, 0.0]]
        ]
    ),
    feature_with(geometry__coordinates=[]),
    feature_with(geometry__coordinates=_DROP),
    feature_with(geometry__type="Point"),
    feature_with(geometry__type="MultiPolygon"),  # a Polygon's coordinates
    feature_with(geometry=None),
    feature_with(type="FeatureCollection"),
    feature_with(type=_DROP),
    feature_with(properties__name=""),
    feature_with(properties__name="   "),
    feature_with(properties__name="n" * (MAX_ZONE_NAME_LEN + 1)),
    feature_with(properties__name=7),
    feature_with(properties__name=_DROP),
    feature_with(properties__id=""),
    feature_with(properties__id="z" * 65),
    feature_with(properties__id="a b"),
    feature_with(properties__id="zone:1"),
    feature_with(properties__id=7),
    feature_with(properties__hysteresis_m=-1),
    feature_with(properties__hysteresis_m=MAX_HYSTERESIS_M + 0.001),
    feature_with(properties__hysteresis_m=1e308),
    feature_with(properties__hysteresis_m="5"),
    feature_with(properties__hysteresis_m=True),
    feature_with(id="another"),
    feature_with(properties=None),
    None,
    [],
    7,
    "Feature",
)
SQUARE_TEXT = orjson.dumps(SQUARE).decode()
POSITION_TEXT = orjson.dumps(SQUARE[0]).decode()
NOT_JSON = (
    b"",
    b"   ",
    b"{",
    b"\xff\xfe",
    # A lone surrogate, escaped and as raw bytes, in an otherwise valid zone's name.
    *(
        b'{"type":"Feature","geometry":{"type":"Polygon","coordinates":['
        + SQUARE_TEXT.encode()
        + b']},"properties":{"id":"fuzz-zone","name":"'
        + name
        + b'"}}'
        for name in (b"\\ud800", b"\xed\xa0\x80")
    ),
    b"[" * 100_000 + b"]" * 100_000,  # deeper than any parser should go
    *(
        f'{{"type":"Feature","geometry":{{"type":"Polygon","coordinates":[[[{token},0],'
        f'{POSITION_TEXT},[1,1],[{token},0]]]}},"properties":{{"id":"z","name":"n"}}}}'.encode()
        for token in ("NaN", "Infinity", "-Infinity", "1e400")
    ),
)


def oversized() -> Body:
    feature = feature_with()
    feature["properties"]["padding"] = "p" * MAX_BODY_BYTES
    return Body(orjson.dumps(feature), 413, "payload_too_large")


# Coordinates nested 1,000 deep: within what the JSON parser takes, no zone either.
DEEP = (
    b'{"type":"Feature","properties":{"id":"fuzz-zone","name":"Deep"},'
    b'"geometry":{"type":"Polygon","coordinates":' + b"[" * 1000 + b"4.03" + b"]" * 1000 + b"}}"
)


def wrong_bodies() -> st.SearchStrategy[Body]:
    return st.one_of(
        # The standard library's encoder: orjson refuses integers past 64 bits.
        st.sampled_from(WRONG_FEATURES).map(
            lambda f: Body(json.dumps(f).encode(), 400, "invalid_zone")
        ),
        st.just(Body(DEEP, 400, "invalid_zone")),
        st.sampled_from(NOT_JSON).map(lambda raw: Body(raw, 400, "invalid_json")),
        st.builds(oversized),
    )


# --- Tokens and media types -----------------------------------------------------------------


def authorization(kind: str, settings: Settings) -> dict[bytes, bytes]:
    token = settings.api_token.get_secret_value()
    return {
        "right": {b"Authorization": f"Bearer {token}".encode()},
        "lower-case scheme": {b"Authorization": f"bearer {token}".encode()},
        "none": {},
        "wrong": {b"Authorization": b"Bearer nope"},
        "prefix": {b"Authorization": f"Bearer {token[:-1]}".encode()},
        "long": {b"Authorization": b"Bearer " + b"x" * 8000},
        "not ascii": {b"Authorization": b"Bearer \xe9\xff"},
        "basic": {b"Authorization": b"Basic dXNlcjpwYXNz"},
        "empty": {b"Authorization": b"Bearer"},
    }[kind]


# The right token most often, so that bodies are read; every other kind is a 401.
TOKENS = (
    *("right", "right", "right", "lower-case scheme"),
    *("none", "wrong", "prefix", "long", "not ascii", "basic", "empty"),
)
MEDIA_TYPES = {
    "application/json": True,
    "application/geo+json; charset=utf-8": True,
    "APPLICATION/JSON": True,
    "": True,  # none said: taken as JSON
    "text/plain": False,
    "application/x-www-form-urlencoded": False,
    "application/json-seq": False,
}


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    body=st.one_of(valid_bodies(), wrong_bodies()),
    token=st.sampled_from(TOKENS),
    media_type=st.sampled_from(sorted(MEDIA_TYPES)),
    method=st.sampled_from(("POST", "PUT")),
)
def test_zone_bodies_are_stored_as_sent_or_refused_clearly(
    client: httpx.Client,
    test_settings: Settings,
    body: Body,
    token: str,
    media_type: str,
    method: str,
) -> None:
    right = authorization("right", test_settings)
    client.delete(f"/api/zones/{ZONE_ID}", headers=right)
    headers = {**authorization(token, test_settings)}
    if media_type:
        headers[b"Content-Type"] = media_type.encode()
    url = "/api/zones" if method == "POST" else f"/api/zones/{ZONE_ID}"
    note(f"{method} {url} token={token} type={media_type!r} body={body.content[:200]!r}")
    response = client.request(method, url, content=body.content, headers=headers)

    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json"), response.text
        assert set(response.json()) == {"error", "detail"}
    if token not in ("right", "lower-case scheme"):
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "unauthorized"
        return
    if not MEDIA_TYPES[media_type]:
        assert response.status_code == 415, response.text
        return
    assert response.status_code == body.status, response.text
    if body.error is not None:
        assert response.json()["error"] == body.error
        assert client.get(f"/api/zones/{ZONE_ID}").status_code == 404  # nothing stored
        return
    assert body.feature is not None
    stored = client.get(f"/api/zones/{ZONE_ID}").json()
    assert stored["properties"]["name"] == body.feature["properties"]["name"]
    sent = body.feature["geometry"]
    polygons = [sent["coordinates"]] if sent["type"] == "Polygon" else sent["coordinates"]
    got = stored["geometry"]
    got_polygons = [got["coordinates"]] if got["type"] == "Polygon" else got["coordinates"]
    # Positions as sent, to the last bit; an altitude is not kept.
    assert [[[p[:2] for p in ring] for ring in polygon] for polygon in polygons] == got_polygons
    hysteresis = body.feature["properties"].get("hysteresis_m") or 0
    assert math.isclose(stored["properties"].get("hysteresis_m") or 0, hysteresis)
    assert client.delete(f"/api/zones/{ZONE_ID}", headers=right).status_code == 204
