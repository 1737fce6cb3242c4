"""Plane geometry of zones: rings and polygons in (lon, lat), point in polygon, edge distances.

Nothing here knows what a zone is: these are the tests `Zone`, `ZoneIndex` and the detector
share. A polygon is judged through its `PolygonTest`, its rings' edges made flat for a fast
inner loop; a point on any boundary is inside (docs/contract/detection.md §6).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

from roadwatch.domain.geo import METRES_PER_DEGREE

# A position is (longitude, latitude): GeoJSON order (RFC 7946 §3.1.1).
Position = tuple[float, float]
Ring = tuple[Position, ...]
Polygon = tuple[Ring, ...]
# (min_lon, min_lat, max_lon, max_lat)
BBox = tuple[float, float, float, float]
# One polygon edge as (lon1, lat1, lon2, lat2), flat for a fast inner loop.
Edge = tuple[float, float, float, float]
# A ring to test: the edges a ray cast east from the point may meet, and whether the ray's far
# end lies inside the ring (False for a ray to infinity; a grid cell may know better).
RingTest = tuple[tuple[Edge, ...], bool]
# A polygon to test: its exterior ring, then its holes.
PolygonTest = tuple[RingTest, tuple[RingTest, ...]]


def polygon_test(polygon: Polygon) -> PolygonTest:
    """Return the polygon's rings as edges to test, exterior first; repeated positions drop out."""
    rings = [
        (
            tuple(
                (x1, y1, x2, y2)
                for (x1, y1), (x2, y2) in itertools.pairwise(ring)
                if (x1, y1) != (x2, y2)
            ),
            False,
        )
        for ring in polygon
    ]
    return rings[0], tuple(rings[1:])


OUT, IN, ON = 0, 1, 2


def ring_state(edges: Iterable[Edge], inside: bool, x: float, y: float) -> int:
    """Tell whether (x, y) is outside, inside or on a ring, casting a ray towards +x.

    `inside` is the state at the ray's far end; each edge crossed flips it (even-odd rule).
    Orientation signs instead of an intersection abscissa keep the test exact on grid-aligned
    coordinates, so a point on an edge is always found there.
    """
    for x1, y1, x2, y2 in edges:
        if (y1 > y) != (y2 > y):
            side = (x2 - x1) * (y - y1) - (x - x1) * (y2 - y1)
            if side == 0.0:
                return ON
            if (side > 0.0) == (y2 > y1):
                inside = not inside
        elif y in (y1, y2):
            # Touches the ray's line without crossing it: only the boundary test matters.
            if (x1 == x and y1 == y) or (x2 == x and y2 == y):
                return ON
            if y1 == y2 and (x1 <= x <= x2 or x2 <= x <= x1):
                return ON
    return IN if inside else OUT


def in_polygons(polygons: Iterable[PolygonTest], x: float, y: float) -> bool:
    """Tell whether (x, y) is in any polygon: inside or on its exterior, not strictly in a hole.

    docs/contract/detection.md §6: the boundary is inside, a hole's edge included. Judging rings one
    by one keeps a hole that strays outside its exterior from adding area, whatever a client sends.
    """
    for (edges, far), holes in polygons:
        if ring_state(edges, far, x, y) == OUT:
            continue
        for hole_edges, hole_far in holes:
            if ring_state(hole_edges, hole_far, x, y) == IN:
                break
        else:
            return True
    return False


def boundary_distance_m(polygons: Iterable[PolygonTest], lat: float, lon: float) -> float:
    """Return the distance in metres from the point to the nearest edge of the polygons."""
    # A local flat projection around the point: exact enough over hysteresis distances.
    kx = METRES_PER_DEGREE * math.cos(math.radians(lat))
    ky = METRES_PER_DEGREE
    best = math.inf
    for exterior, holes in polygons:
        for x1, y1, x2, y2 in itertools.chain(exterior[0], *(hole[0] for hole in holes)):
            ax = (x1 - lon) * kx
            ay = (y1 - lat) * ky
            dx = (x2 - lon) * kx - ax
            dy = (y2 - lat) * ky - ay
            length2 = dx * dx + dy * dy
            t = 0.0 if length2 == 0.0 else min(1.0, max(0.0, -(ax * dx + ay * dy) / length2))
            px = ax + t * dx
            py = ay + t * dy
            d2 = px * px + py * py
            best = min(best, d2)
    return math.sqrt(best)


def near_m(
    polygons: Iterable[PolygonTest], bbox: BBox, lat: float, lon: float, metres: float
) -> bool:
    """Tell whether a point outside the polygons is at most `metres` from them.

    `bbox` bounds the polygons: points far from it are told apart without looking at an edge.
    """
    min_lon, min_lat, max_lon, max_lat = bbox
    # The distance to the bounding box is a lower bound: far points skip the exact search.
    dy = max(0.0, min_lat - lat, lat - max_lat) * METRES_PER_DEGREE
    dx = max(0.0, min_lon - lon, lon - max_lon) * METRES_PER_DEGREE * math.cos(math.radians(lat))
    if dx * dx + dy * dy > metres * metres:
        return False
    return boundary_distance_m(polygons, lat, lon) <= metres
