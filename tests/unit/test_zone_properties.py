"""Properties of zones that must hold for any zones and any trace (docs/contract/detection.md §6),
with hypothesis."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import orjson
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from roadwatch.domain.events import Event, EventType
from roadwatch.domain.zones import (
    InvalidZone,
    Polygon,
    Ring,
    Zone,
    ZoneDetector,
    ZoneIndex,
    ZoneRules,
)

T0 = 1_700_000_000_000
MINUTE = 60_000
TIMEOUT_MS = 10 * MINUTE
# A lattice of 1/1024° (about 110 m) near Reims: such coordinates and their products are exact
# in floating point, so points land exactly on edges and vertices, the hard cases.
STEP = 1 / 1024
BASE_LON, BASE_LAT = 4.0, 49.25


def lattice(i: int, j: int) -> tuple[float, float]:
    """Return the (lon, lat) of lattice node (i, j)."""
    return BASE_LON + i * STEP, BASE_LAT + j * STEP


# --- A reference point-in-polygon, in exact arithmetic ----------------------------------------


def _on_segment(
    p: tuple[Fraction, Fraction], a: tuple[Fraction, Fraction], b: tuple[Fraction, Fraction]
) -> bool:
    cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    return (
        cross == 0
        and min(a[0], b[0]) <= p[0] <= max(a[0], b[0])
        and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])
    )


_Exact = list[tuple[Fraction, Fraction]]


def _reference_ring(ring: _Exact, p: tuple[Fraction, Fraction]) -> str:
    """Return "on", "in" or "out" for p and one ring, in exact arithmetic."""
    crossings = 0
    for a, b in itertools.pairwise(ring):
        if _on_segment(p, a, b):
            return "on"
        # Count the edge when it spans the horizontal line through p (half-open in y) and
        # meets it east of p.
        if (a[1] <= p[1] < b[1]) or (b[1] <= p[1] < a[1]):
            x = a[0] + (p[1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
            if x > p[0]:
                crossings += 1
    return "in" if crossings % 2 else "out"


class Reference:
    """A zone judged point by point in exact arithmetic: in or on a polygon's exterior, and
    not strictly inside one of its holes."""

    def __init__(self, zone: Zone) -> None:
        self.polygons = [
            [[(Fraction(x), Fraction(y)) for x, y in ring] for ring in polygon]
            for polygon in zone.polygons
        ]

    def contains(self, lat: float, lon: float) -> bool:
        p = (Fraction(lon), Fraction(lat))
        return any(
            _reference_ring(exterior, p) != "out"
            and all(_reference_ring(hole, p) != "in" for hole in holes)
            for exterior, *holes in self.polygons
        )


@st.composite
def star_rings(draw: st.DrawFn, centre: tuple[int, int], max_radius: int) -> Ring:
    """A ring of lattice nodes around `centre`, in angle order (simple, or close to it)."""
    count = draw(st.integers(min_value=3, max_value=10))
    angles = sorted(
        draw(
            st.lists(
                st.floats(0, 2 * math.pi, exclude_max=True),
                min_size=count,
                max_size=count,
                unique=True,
            )
        )
    )
    ci, cj = centre
    nodes: list[tuple[float, float]] = []
    for angle in angles:
        radius = draw(st.integers(min_value=1, max_value=max_radius))
        node = lattice(ci + round(radius * math.cos(angle)), cj + round(radius * math.sin(angle)))
        if not nodes or nodes[-1] != node:
            nodes.append(node)
    if draw(st.booleans()):
        nodes.reverse()
    return (*nodes, nodes[0])


@st.composite
def polygons(draw: st.DrawFn) -> Polygon:
    centre = (draw(st.integers(-20, 20)), draw(st.integers(-20, 20)))
    outer = draw(star_rings(centre, 24))
    holes = [draw(star_rings(centre, 6)) for _ in range(draw(st.integers(0, 1)))]
    return (outer, *holes)


@st.composite
def zones(draw: st.DrawFn, zone_id: str = "z") -> Zone:
    shapes = tuple(draw(st.lists(polygons(), min_size=1, max_size=3)))
    try:
        return Zone(zone_id, zone_id.upper(), shapes)
    except InvalidZone:
        assume(False)  # a ring rounded onto a line encloses nothing
        raise


@st.composite
def probe_points(draw: st.DrawFn, zone_list: Sequence[Zone]) -> list[tuple[float, float]]:
    """Vertices and their neighbours, lattice nodes and half-nodes, and arbitrary points."""
    vertices = [
        p for zone in zone_list for polygon in zone.polygons for ring in polygon for p in ring
    ]
    points: list[tuple[float, float]] = []
    for lon, lat in draw(st.lists(st.sampled_from(vertices), max_size=30)):
        points.extend((lat, lon + k * STEP / 2) for k in (-1, 0, 1))
    nodes = draw(st.lists(st.tuples(st.integers(-50, 50), st.integers(-50, 50)), max_size=40))
    for i, j in nodes:
        lon, lat = lattice(i, j)
        points.extend(((lat, lon), (lat + STEP / 2, lon), (lat, lon + STEP / 2)))
    anywhere = st.tuples(
        st.floats(BASE_LAT - 0.06, BASE_LAT + 0.06), st.floats(BASE_LON - 0.06, BASE_LON + 0.06)
    )
    points.extend(draw(st.lists(anywhere, max_size=20)))
    return points


@settings(max_examples=100, deadline=None)
@given(zone=zones(), data=st.data())
def test_point_in_zone_agrees_with_an_exact_reference(zone: Zone, data: st.DataObject) -> None:
    index = ZoneIndex([zone])
    reference = Reference(zone)
    for lat, lon in data.draw(probe_points([zone])):
        expected = reference.contains(lat, lon)
        assert zone.contains(lat, lon) is expected, (lat, lon)
        assert index.ids_at(lat, lon) == (("z",) if expected else ()), (lat, lon)


@settings(max_examples=30, deadline=None)
@given(zone_list=st.lists(zones(), min_size=2, max_size=4), data=st.data())
def test_the_index_over_many_zones_finds_exactly_the_zones_holding_a_point(
    zone_list: list[Zone], data: st.DataObject
) -> None:
    named = [Zone(f"z{i}", f"Zone {i}", zone.polygons) for i, zone in enumerate(zone_list)]
    index = ZoneIndex(reversed(named))
    references = [(zone.id, Reference(zone)) for zone in named]
    for lat, lon in data.draw(probe_points(named)):
        expected = tuple(zone_id for zone_id, ref in references if ref.contains(lat, lon))
        assert index.ids_at(lat, lon) == expected, (lat, lon)


# --- Detection traces -------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    station: str
    t: int
    lat: float
    lon: float


@dataclass(frozen=True)
class NewZones:
    zones: tuple[Zone, ...]


Step = Position | NewZones

RING_A = tuple(lattice(i, j) for i, j in ((0, 0), (8, 0), (8, 8), (0, 8), (0, 0)))
RING_B = tuple(lattice(i, j) for i, j in ((8, 0), (16, 0), (16, 8), (8, 8), (8, 0)))
RING_C = tuple(lattice(i, j) for i, j in ((4, 4), (12, 4), (12, 12), (4, 12), (4, 4)))
RING_A_SMALL = tuple(lattice(i, j) for i, j in ((0, 0), (4, 0), (4, 4), (0, 4), (0, 0)))
ZONE_SETS: list[tuple[Zone, ...]] = [
    (
        Zone("a", "A", ((RING_A,),)),
        Zone("b", "B", ((RING_B,),), hysteresis_m=150.0),
        Zone("c", "C", ((RING_C,),)),
    ),
    (Zone("a", "A", ((RING_A_SMALL,),)), Zone("c", "C renamed", ((RING_C,),))),
    (Zone("b", "B", ((RING_B,),)), Zone("d", "D", ((RING_A,),))),
    (),
]


@st.composite
def traces(draw: st.DrawFn, max_size: int = 50) -> list[Step]:
    """Stations wandering over adjacent, overlapping and changing zones; late, duplicate, silent."""
    stations = [f"s{i}" for i in range(5)]
    last_sent: dict[str, int] = {}
    clock = T0
    trace: list[Step] = []
    for _ in range(draw(st.integers(min_value=1, max_value=max_size))):
        clock += draw(
            st.sampled_from([0, 1, 1000, MINUTE, TIMEOUT_MS - 1, TIMEOUT_MS, TIMEOUT_MS + 1])
        )
        if draw(st.integers(0, 15)) == 0:
            trace.append(NewZones(draw(st.sampled_from(ZONE_SETS))))
            continue
        station = draw(st.sampled_from(stations))
        t = clock
        if station in last_sent and draw(st.integers(0, 7)) == 0:
            t = last_sent[station] - draw(st.sampled_from([0, 1, 5000]))  # late or duplicate
        last_sent[station] = max(t, last_sent.get(station, t))
        lon, lat = lattice(draw(st.integers(-2, 18)), draw(st.integers(-2, 14)))
        if draw(st.booleans()):
            lon += draw(st.sampled_from([-1, 1])) * STEP * draw(st.sampled_from([0.1, 0.5, 1.5]))
        trace.append(Position(station, t, lat, lon))
    return trace


class Runner:
    """Feeds a trace with the clock at the newest time seen, optionally calling expire() too."""

    def __init__(self, detector: ZoneDetector | None = None, clock: int = 0) -> None:
        self.detector = (
            detector if detector is not None else ZoneDetector(ZoneRules(), ZONE_SETS[0])
        )
        self.clock = clock

    def step(self, step: Step) -> list[Event]:
        if isinstance(step, NewZones):
            return self.detector.set_zones(step.zones, self.clock)
        self.clock = max(self.clock, step.t)
        return self.detector.on_position(step.station, step.t, step.lat, step.lon, self.clock)

    def run(self, trace: Sequence[Step]) -> list[Event]:
        return [event for step in trace for event in self.step(step)]


@settings(max_examples=100, deadline=None)
@given(trace=traces())
def test_enters_and_exits_alternate_per_station_and_zone_starting_with_an_enter(
    trace: list[Step],
) -> None:
    last: dict[tuple[str, str | None], EventType] = {}
    for event in Runner().run(trace):
        key = (event.station_ids[0], event.zone_id)
        expected = (
            EventType.ZONE_EXIT if last.get(key) == EventType.ZONE_ENTER else EventType.ZONE_ENTER
        )
        assert event.type == expected, key
        last[key] = event.type


@settings(max_examples=100, deadline=None)
@given(trace=traces())
def test_no_event_id_is_emitted_twice(trace: list[Step]) -> None:
    ids = [event.id for event in Runner().run(trace)]
    assert len(ids) == len(set(ids))


@settings(max_examples=100, deadline=None)
@given(trace=traces(), data=st.data())
def test_events_do_not_depend_on_how_often_expire_is_called(
    trace: list[Step], data: st.DataObject
) -> None:
    expected = Runner().run(trace)
    runner = Runner()
    events: list[Event] = []
    for step in trace:
        if data.draw(st.booleans()):
            # Any time the clock passes through anyway on its way to the next step.
            upcoming = max(runner.clock, step.t) if isinstance(step, Position) else runner.clock
            at = data.draw(st.integers(min_value=min(runner.clock, upcoming), max_value=upcoming))
            runner.clock = max(runner.clock, at)
            events.extend(runner.detector.expire(runner.clock))
        if data.draw(st.booleans()):
            runner.detector.next_due_ms()
        events.extend(runner.step(step))
    assert events == expected


@settings(max_examples=100, deadline=None)
@given(trace=traces(), data=st.data())
def test_a_snapshot_restored_anywhere_gives_the_same_events(
    trace: list[Step], data: st.DataObject
) -> None:
    expected = Runner().run(trace)
    cut = data.draw(st.integers(min_value=0, max_value=len(trace)))
    first = Runner()
    events = first.run(trace[:cut])
    saved = orjson.loads(orjson.dumps(first.detector.snapshot()))
    restored = ZoneDetector(ZoneRules(), data.draw(st.sampled_from(ZONE_SETS)))
    restored.restore(saved)
    events += Runner(restored, first.clock).run(trace[cut:])
    assert events == expected


@settings(max_examples=100, deadline=None)
@given(trace=traces())
def test_next_due_is_exactly_when_the_next_timeout_fires(trace: list[Step]) -> None:
    runner = Runner()
    runner.run(trace)
    due = runner.detector.next_due_ms()
    if due is None:
        assert all(not stations for stations in runner.detector.occupancy().values())
        return
    probe = ZoneDetector()
    probe.restore(runner.detector.snapshot())
    assert probe.expire(due - 1) == []
    fired = probe.expire(due)
    assert fired and all(event.details == {"reason": "timeout"} for event in fired)
    assert {event.updated_ms for event in fired} == {due - 1}
