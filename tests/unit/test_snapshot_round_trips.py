"""Every detector's snapshot: any reachable state -> snapshot -> restore -> the same state and
the same future.

One property per detector, all checked the same way (`assert_round_trip`): a random trace is
cut anywhere; the state reached there is saved as JSON, restored into a detector that held
something else, and must then be the state saved and behave exactly like the detector that
was never stopped. The versioning rule they share is tested at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roadwatch.domain.accident import AccidentDetector, AccidentRules
from roadwatch.domain.detector import DetectionRules, Detector
from roadwatch.domain.events import Event
from roadwatch.domain.geo import destination
from roadwatch.domain.hazard import HazardDetector, HazardRules
from roadwatch.domain.messages import Cam, Denm, Termination
from roadwatch.domain.snapshots import InvalidSnapshot, SnapshotFormat, Snapshotting
from roadwatch.domain.traffic_jam import JamRules, TrafficJamDetector
from roadwatch.domain.zones import Zone, ZoneDetector, ZoneRules

T0 = 1_700_000_000_000
LAT, LON = 49.25, 4.03
# Short windows, so that a trace of a few dozen steps reaches expiries, clears and forgetting.
ACCIDENT = AccidentRules(window_ms=60_000, expiry_ms=180_000)
HAZARD = HazardRules(expiry_ms=120_000)
JAM = JamRules(
    window_ms=30_000,
    min_stations=2,
    clear_after_ms=60_000,
    clear_min_stations=1,
    update_interval_ms=10_000,
)
ZONES = ZoneRules(timeout_ms=120_000, hysteresis_m=30.0)
RULES = DetectionRules(accident=ACCIDENT, traffic_jam=JAM, zones=ZONES, hazard=HAZARD)
# Places a few tens to hundreds of metres apart: within one radius, across H3 cells, in and out
# of the zones and their hysteresis bands.
PLACES = [
    destination(LAT, LON, bearing, metres)
    for bearing, metres in [(0.0, 0.0), (90.0, 40.0), (90.0, 160.0), (0.0, 230.0), (270.0, 700.0)]
]
STATIONS = [f"s{i}" for i in range(6)]
# Time between steps, from none to longer than any window.
GAPS = [0, 1, 500, 1000, 5000, 20_000, 70_000, 200_000]


def _square(half_deg: float, east_deg: float = 0.0) -> tuple[tuple[tuple[float, float], ...]]:
    west, east = LON + east_deg - half_deg, LON + east_deg + half_deg
    ring = (
        (west, LAT - half_deg),
        (east, LAT - half_deg),
        (east, LAT + half_deg),
        (west, LAT + half_deg),
        (west, LAT - half_deg),
    )
    return (ring,)


CENTRE = Zone("centre", "Centre", (_square(0.0015),))
GROWN = Zone("centre", "Centre", (_square(0.0025),))
EAST = Zone("east", "East", (_square(0.001, 0.0025),), hysteresis_m=60.0)
ZONE_SETS: list[tuple[Zone, ...]] = [(CENTRE, EAST), (CENTRE,), (GROWN, EAST), ()]


@dataclass(frozen=True)
class Quiet:
    """Time passes with no message: whatever falls due expires."""

    after_ms: int


@dataclass(frozen=True)
class NewZones:
    """The zones in force change (for the zone detectors)."""

    zones: tuple[Zone, ...]


Step = Cam | Denm | Quiet | NewZones
D = TypeVar("D", bound=Snapshotting)


@st.composite
def traces(
    draw: st.DrawFn,
    causes: Sequence[int],
    cams: bool = True,
    zone_changes: bool = False,
    dense: bool = False,
    max_size: int = 40,
) -> list[Step]:
    """A messy trace: late and duplicate messages, trusted stations, terminations, gaps.

    A `dense` one is mostly slow traffic eastwards at two places a few metres apart, with short
    gaps and clocks that agree: what it takes to make jams, and to clear them.
    """
    skews = [0, 0, 0, 2000] if dense else [0, 0, 0, 20_000, 240_000]
    skew = {s: draw(st.sampled_from(skews)) for s in STATIONS}
    gaps = [0, 1, 500, 1000, 3000, 10_000, 40_000] if dense else GAPS
    places = PLACES[:2] if dense else PLACES
    speeds = [0.0, 8.0, 8.0, 25.0, 70.0] if dense else [0.0, 8.0, 25.0, 70.0]
    headings = [90.0, 90.0, 100.0, 270.0] if dense else [10.0, 90.0, 100.0, 270.0]
    last: dict[str, int] = {}
    clock = T0
    trace: list[Step] = []
    kinds = (["cam"] * 3 if cams else []) + (["denm"] if causes else [])
    kinds += ["quiet"] + (["zones"] if zone_changes else [])
    for _ in range(draw(st.integers(min_value=10 if dense else 1, max_value=max_size))):
        clock += draw(st.sampled_from(gaps))
        kind = draw(st.sampled_from(kinds))
        if kind == "quiet":
            trace.append(Quiet(draw(st.sampled_from([1, 30_000, 130_000, 400_000]))))
            continue
        if kind == "zones":
            trace.append(NewZones(draw(st.sampled_from(ZONE_SETS))))
            continue
        station = draw(st.sampled_from(STATIONS))
        t = clock + skew[station]
        if station in last and draw(st.integers(0, 6)) == 0:
            t = last[station] - draw(st.sampled_from([0, 1, 3000]))  # late, or a duplicate
        last[station] = max(t, last.get(station, t))
        lat, lon = draw(st.sampled_from(places))
        if kind == "cam":
            speed = draw(st.sampled_from(speeds))
            heading = draw(st.sampled_from(headings))
            trace.append(Cam(station, 5, t, lat, lon, speed, heading))
        else:
            trace.append(
                Denm(
                    station,
                    draw(st.sampled_from([5, 5, 5, 10, 15])),
                    t,
                    lat,
                    lon,
                    draw(st.sampled_from(causes)),
                    None,
                    draw(st.sampled_from([None, None, None, *Termination])),
                )
            )
    return trace


def run(
    detector: D,
    steps: Sequence[Step],
    clock: int,
    feed: Callable[[D, Step, int], list[Event]],
) -> tuple[list[Event], int]:
    """Feed the steps on a clock that never goes back; return the events and the clock."""
    events: list[Event] = []
    for step in steps:
        if isinstance(step, Quiet):
            clock += step.after_ms
        elif isinstance(step, Cam | Denm):
            clock = max(clock, step.timestamp_ms)
        events += feed(detector, step, clock)
    return events, clock


def assert_round_trip(
    make: Callable[[], D],
    feed: Callable[[D, Step, int], list[Event]],
    trace: list[Step],
    cut: int,
    before: list[Step],
) -> None:
    """Restore the state reached at `cut` over one reached by `before`; check state and future."""
    cut = min(cut, len(trace))
    original = make()
    _, clock = run(original, trace[:cut], T0, feed)
    saved = original.snapshot()
    data = orjson.loads(orjson.dumps(saved))
    assert data == saved, "a snapshot holds JSON values only (no tuple, no object)"

    restored = make()
    run(restored, before, T0, feed)  # whatever it held is replaced whole
    restored.restore(data)
    assert restored.snapshot() == saved

    rest = trace[cut:]
    assert run(restored, rest, clock, feed) == run(original, rest, clock, feed)
    assert comparable(restored.snapshot(), clock) == comparable(original.snapshot(), clock)


def comparable(snapshot: dict[str, Any], clock: int) -> dict[str, Any]:
    """The state that can still matter.

    The jam detector forgets headings older than its window on a schedule of its own, which a
    restore starts afresh: those are never used again, so they are left out of the comparison.
    """
    if "traffic_jam" in snapshot:
        return {**snapshot, "traffic_jam": comparable(snapshot["traffic_jam"], clock)}
    if "headings" in snapshot:
        horizon = clock - JAM.window_ms
        fresh = [heading for heading in snapshot["headings"] if heading[1] > horizon]
        return {**snapshot, "headings": fresh}
    return snapshot


# -- one property per detector ----------------------------------------------------------------


def feed_accidents(detector: AccidentDetector, step: Step, clock: int) -> list[Event]:
    if isinstance(step, Denm):
        return detector.handle(step, clock)
    return detector.expire(clock)


@settings(max_examples=80, deadline=None)
@given(trace=traces(causes=[2], cams=False), cut=st.integers(0, 40), before=traces([2], False))
def test_the_accident_detector_round_trips(trace: list[Step], cut: int, before: list[Step]) -> None:
    assert_round_trip(lambda: AccidentDetector(ACCIDENT), feed_accidents, trace, cut, before)


def feed_hazards(detector: HazardDetector, step: Step, clock: int) -> list[Event]:
    if isinstance(step, Denm):
        return detector.on_denm(step, clock)
    return detector.expire(clock)


@settings(max_examples=80, deadline=None)
@given(
    trace=traces(causes=[3, 6, 18], cams=False),
    cut=st.integers(0, 40),
    before=traces([3], False),
)
def test_the_hazard_detector_round_trips(trace: list[Step], cut: int, before: list[Step]) -> None:
    assert_round_trip(lambda: HazardDetector(HAZARD), feed_hazards, trace, cut, before)


def feed_jams(detector: TrafficJamDetector, step: Step, clock: int) -> list[Event]:
    if isinstance(step, Cam):
        return detector.on_cam(step, clock)
    if isinstance(step, Denm):
        return detector.on_denm(step, clock)
    return detector.expire(clock)


@settings(max_examples=80, deadline=None)
@given(trace=traces(causes=[1], dense=True), cut=st.integers(0, 40), before=traces(causes=[1]))
def test_the_traffic_jam_detector_round_trips(
    trace: list[Step], cut: int, before: list[Step]
) -> None:
    assert_round_trip(lambda: TrafficJamDetector(JAM), feed_jams, trace, cut, before)


def feed_zones(detector: ZoneDetector, step: Step, clock: int) -> list[Event]:
    if isinstance(step, Cam):
        return detector.on_position(step.station_id, step.timestamp_ms, step.lat, step.lon, clock)
    if isinstance(step, NewZones):
        return detector.set_zones(step.zones, clock)
    return detector.expire(clock)


@settings(max_examples=80, deadline=None)
@given(
    trace=traces(causes=[], zone_changes=True),
    cut=st.integers(0, 40),
    before=traces(causes=[], zone_changes=True),
)
def test_the_zone_detector_round_trips(trace: list[Step], cut: int, before: list[Step]) -> None:
    assert_round_trip(lambda: ZoneDetector(ZONES, [CENTRE, EAST]), feed_zones, trace, cut, before)


def feed_detector(detector: Detector, step: Step, clock: int) -> list[Event]:
    if isinstance(step, Cam | Denm):
        return detector.process(step)  # the whole detector keeps its own clock
    if isinstance(step, NewZones):
        return detector.set_zones(step.zones)
    # What an instance sharing the load does with messages other instances handle.
    return detector.tick("elsewhere", clock)


@settings(max_examples=80, deadline=None)
@given(
    trace=traces(causes=[1, 2, 3, 18], zone_changes=True),
    cut=st.integers(0, 40),
    before=traces(causes=[2, 6], zone_changes=True),
)
def test_the_whole_detector_round_trips(trace: list[Step], cut: int, before: list[Step]) -> None:
    assert_round_trip(lambda: Detector(RULES, [CENTRE, EAST]), feed_detector, trace, cut, before)


# -- the versioning rule ----------------------------------------------------------------------


def test_every_detector_writes_its_format_number_first() -> None:
    for detector in (
        AccidentDetector(),
        HazardDetector(),
        TrafficJamDetector(),
        ZoneDetector(),
        Detector(),
    ):
        snapshot = detector.snapshot()
        assert next(iter(snapshot.items())) == ("format", type(detector).SNAPSHOT.version)


@pytest.mark.parametrize("bad", [None, [], {}, {"format": 0}, {"format": 3}, {"format": True}])
def test_a_format_that_is_not_known_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidSnapshot, match="not a thing snapshot of a known format"):
        SnapshotFormat("a thing", 2, {1: lambda state: state}).read(bad)


def test_an_older_format_is_upgraded_step_by_step() -> None:
    steps = {
        1: lambda state: {**state, "seen": [*state["seen"], 1]},
        2: lambda state: {**state, "seen": [*state["seen"], 2]},
    }
    three = SnapshotFormat("a thing", 3, steps)
    assert three.read({"format": 1, "seen": []}) == {"format": 3, "seen": [1, 2]}
    assert three.read({"format": 2, "seen": []}) == {"format": 3, "seen": [2]}
    assert three.read({"format": 3, "seen": []}) == {"format": 3, "seen": []}
    with pytest.raises(InvalidSnapshot, match="cannot upgrade format 1"):
        three.read({"format": 1})


def test_a_format_without_its_migrations_is_a_bug_found_at_once() -> None:
    with pytest.raises(ValueError, match="no migration from format"):
        SnapshotFormat("a thing", 2)


def test_a_damaged_snapshot_leaves_every_detector_as_it_was() -> None:
    detector = Detector(RULES, [CENTRE])
    detector.process(Cam("car", 5, T0, LAT, LON, 5.0, 90.0))
    detector.process(Denm("w1", 5, T0, LAT, LON, 2))
    good = detector.snapshot()
    for part in ("accident", "hazard", "traffic_jam", "zones"):
        damaged = {**good, part: {**good[part], "format": 99}}
        with pytest.raises(InvalidSnapshot, match=f"not a detector snapshot: .*{part[:4]}"):
            detector.restore(damaged)
        assert detector.snapshot() == good
