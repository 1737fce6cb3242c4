"""Properties of traffic-jam detection that must hold for any trace (docs/contract/detection.md §5),
with hypothesis."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from fractions import Fraction

import h3
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from roadwatch.domain.events import Event, EventStatus
from roadwatch.domain.messages import Cam, Denm, Termination
from roadwatch.domain.traffic_jam import MAX_STATION_IDS, JamRules, TrafficJamDetector
from tests.unit.event_checks import assert_next_version

T0 = 1_700_000_000_000
RULES = JamRules()
# Long enough for every report to leave the window and every cell to stay free until cleared.
SETTLE_MS = RULES.window_ms + RULES.clear_after_ms

_START = h3.latlng_to_cell(45.76, 4.84, 9)
ROAD: list[str] = list(h3.grid_path_cells(_START, min(h3.grid_ring(_START, 4))))
STATIONS = [f"v{i}" for i in range(12)]
# Mostly the two carriageways of a north-south road, sometimes across it or on the quadrant edge.
HEADINGS = [0.0, 0.0, 10.0, 350.0, 180.0, 180.0, 200.0, 45.0, 90.0]
SPEEDS = [0.0, 5.0, 12.0, 29.9, 30.0, 30.1, 40.0, 49.9, 50.0, 50.1, 70.0, 110.0]

Message = Cam | Denm
# A report further ahead than this does not move the clock (its vehicle's clock runs ahead),
# as the detector that combines the rules may decide; it is then handed over before its time.
LEAD_MS = 100_000


def centre(cell: str) -> tuple[float, float]:
    lat, lon = h3.cell_to_latlng(cell)
    return lat, lon


@st.composite
def traces(draw: st.DrawFn, max_steps: int = 30) -> list[Message]:
    """Groups of vehicles reporting together on a short road, interleaved and sometimes late."""
    clock = T0
    last: dict[tuple[str, bool], int] = {}
    trace: list[Message] = []
    for _ in range(draw(st.integers(min_value=1, max_value=max_steps))):
        clock += draw(st.sampled_from([0, 1, 500, 1000, 3000, 15_000, 31_000, 61_000, 125_000]))
        lat, lon = centre(draw(st.sampled_from(ROAD)))
        heading = draw(st.sampled_from(HEADINGS))
        speed = draw(st.sampled_from(SPEEDS))
        lag = draw(st.sampled_from([0, 0, 0, 400, 20_000, 59_000, 70_000, -150_000]))
        kind = draw(st.sampled_from(["cam"] * 8 + ["jam", "jam", "other", "cancel"]))
        is_cam = kind == "cam"
        group = draw(st.lists(st.sampled_from(STATIONS), min_size=1, max_size=4, unique=True))
        for station in group:
            # The caller delivers each station's CAMs, and its DENMs, in increasing time.
            t = max(clock - lag, last.get((station, is_cam), 0) + 1)
            last[(station, is_cam)] = t
            clock = advance(clock, t)
            if is_cam:
                trace.append(Cam(station, 5, t, lat, lon, speed, heading))
            else:
                cause = 2 if kind == "other" else 1
                end = Termination.CANCELLATION if kind == "cancel" else None
                trace.append(Denm(station, 5, t, lat, lon, cause, None, end))
    return trace


@st.composite
def road_traces(draw: st.DrawFn, duration_ms: int = 6 * 60_000) -> list[Message]:
    """Both carriageways of a road, each cell going through phases of slow, fast or no traffic.

    Jams start, grow, merge, split and clear here far more often than in random reports.
    """
    # A seeded generator rather than st.randoms(): thousands of choices per trace, drawn fast.
    rng = random.Random(draw(st.integers(min_value=0, max_value=2**32)))
    plans: dict[tuple[str, float], list[tuple[int, int, float]]] = {}
    for cell in ROAD:
        for heading in (0.0, 180.0):
            if heading and rng.random() < 0.5:
                continue
            phases = []
            start = 0
            while start < duration_ms:
                cars = rng.choice([0, 2, 3, 3, 4])
                phases.append((start, cars, rng.choice([5.0, 25.0, 40.0, 60.0, 90.0])))
                start += rng.choice([20_000, 60_000, 130_000, 200_000])
            plans[(cell, heading)] = phases
    trace: list[Message] = []
    for step in range(0, duration_ms, 10_000):
        batch: list[Message] = []
        for (cell, heading), phases in plans.items():
            _, cars, speed = max(p for p in phases if p[0] <= step)
            lat, lon = centre(cell)
            for k in range(cars):
                station = f"{cell[-6:-3]}{int(heading)}-{k}"
                t = T0 + step + rng.choice([0, 0, 1, 2000, 9000])
                if rng.random() < 0.03:
                    batch.append(Denm(station, 5, t, lat, lon, 1))
                else:
                    batch.append(Cam(station, 5, t, lat, lon, speed, heading))
        rng.shuffle(batch)  # stations interleave freely within the clock
        trace.extend(batch)
    return trace


any_traces = st.one_of(traces(), road_traces())


def advance(clock: int, t: int) -> int:
    """Return the detection clock after a report stamped `t`."""
    if clock and t - clock > LEAD_MS:
        return clock
    return max(clock, t)


def feed(detector: TrafficJamDetector, message: Message, clock: int) -> tuple[int, list[Event]]:
    clock = advance(clock, message.timestamp_ms)
    if isinstance(message, Cam):
        return clock, detector.on_cam(message, clock)
    return clock, detector.on_denm(message, clock)


def run(trace: Sequence[Message], settle: bool = True) -> list[Event]:
    detector = TrafficJamDetector()
    clock = 0
    events: list[Event] = []
    for message in trace:
        clock, produced = feed(detector, message, clock)
        events.extend(produced)
    if settle:
        events.extend(detector.expire(clock + SETTLE_MS))
    return events


@settings(max_examples=120, deadline=None)
@given(
    trace=any_traces,
    everywhere=st.booleans(),
    looks=st.lists(st.tuples(st.integers(min_value=0), st.fractions(0, 1)), max_size=30),
)
def test_events_do_not_depend_on_how_often_expire_is_called(
    trace: list[Message], everywhere: bool, looks: list[tuple[int, Fraction]]
) -> None:
    # Looks at the clock before some messages (or all), part of the way towards their time.
    where: dict[int, list[Fraction]] = {}
    for index, fraction in looks:
        where.setdefault(index % len(trace), []).append(fraction)
    detector = TrafficJamDetector()
    clock = 0
    events: list[Event] = []
    for i, message in enumerate(trace):
        target = advance(clock, message.timestamp_ms)
        fractions = where.get(i, [Fraction(1, 2)] if everywhere else [])
        if clock:
            for fraction in sorted(fractions):
                events.extend(detector.expire(clock + int((target - clock) * fraction)))
        clock, produced = feed(detector, message, clock)
        events.extend(produced)
    events.extend(detector.expire(clock + SETTLE_MS))
    assert events == run(trace)


@settings(max_examples=60, deadline=None)
@given(trace=any_traces)
def test_driving_expire_by_next_due_gives_the_same_events_at_their_due_times(
    trace: list[Message],
) -> None:
    detector = TrafficJamDetector()
    clock = 0
    events: list[Event] = []
    for message in trace:
        target = advance(clock, message.timestamp_ms)
        while (due := detector.next_due_ms()) is not None and due <= target:
            produced = detector.expire(max(clock, due))
            assert all(e.updated_ms == max(clock, due) for e in produced)
            clock = max(clock, due)
            events.extend(produced)
        clock, produced = feed(detector, message, clock)
        events.extend(produced)
    events.extend(detector.expire(clock + SETTLE_MS))
    assert events == run(trace)


@settings(max_examples=150, deadline=None)
@given(trace=any_traces)
def test_ids_start_at_version_one_once_and_versions_then_count_up(trace: list[Message]) -> None:
    latest: dict[str, Event] = {}
    for event in run(trace):
        previous = latest.get(event.id)
        assert_next_version(previous, event)
        if previous is not None and event.status is EventStatus.ACTIVE:
            assert event.updated_ms - previous.updated_ms >= RULES.update_interval_ms
        assert event.cause_code == 1
        assert list(event.station_ids) == sorted(set(event.station_ids))
        assert 1 <= len(event.station_ids) == min(event.details["vehicle_count"], MAX_STATION_IDS)
        assert event.details["direction"] in {"N", "E", "S", "W"}
        assert event.details["cells"] >= 1
        assert event.details["extent"]["type"] in {"Polygon", "MultiPolygon"}
        if event.status is EventStatus.CLEARED:
            assert event.ended_ms == event.updated_ms >= event.started_ms
            assert event.details["reason"] in {"free_flow", "few_reports", "merged"}
        latest[event.id] = event


@settings(max_examples=80, deadline=None)
@given(trace=any_traces)
def test_every_jam_clears_once_reports_stop(trace: list[Message]) -> None:
    detector = TrafficJamDetector()
    clock = 0
    events: list[Event] = []
    for message in trace:
        clock, produced = feed(detector, message, clock)
        events.extend(produced)
    events.extend(detector.expire(clock + SETTLE_MS))
    latest = {event.id: event for event in events}
    assert all(event.status is EventStatus.CLEARED for event in latest.values())
    assert all(event.ended_ms is not None for event in latest.values())
    assert detector.active_events() == []
    assert detector.next_due_ms() is None


@settings(max_examples=40, deadline=None)
@given(trace=any_traces)
def test_every_jam_clears_after_free_flow(trace: list[Message]) -> None:
    detector = TrafficJamDetector()
    clock = 0
    events: list[Event] = []
    for message in trace:
        clock, produced = feed(detector, message, clock)
        events.extend(produced)
    started = {event.id for event in events}
    free_from = clock + 1
    # Fast traffic in every direction of every cell, from fresh vehicles, every 10 s; at
    # 120 km/h even two stopped cars and one of them average above 30 km/h.
    for t in range(free_from, free_from + SETTLE_MS + 10_000, 10_000):
        for n, (cell, heading) in enumerate(itertools.product(ROAD, (0.0, 90.0, 180.0, 270.0))):
            lat, lon = centre(cell)
            for k in range(3):
                cam = Cam(f"free-{n}-{k}", 5, t, lat, lon, 120.0, heading)
                events.extend(detector.on_cam(cam, t))
    latest = {event.id: event for event in events}
    if not started:
        assert events == []  # fast traffic alone starts nothing
    assert all(event.status is EventStatus.CLEARED for event in latest.values())
    deadline = free_from + SETTLE_MS
    assert all((event.ended_ms or 0) <= deadline for event in latest.values())


@settings(max_examples=120, deadline=None)
@given(trace=any_traces, data=st.data())
def test_a_snapshot_at_any_point_restores_to_the_same_events(
    trace: list[Message], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(trace)))
    first = TrafficJamDetector()
    clock = 0
    events: list[Event] = []
    for message in trace[:cut]:
        clock, produced = feed(first, message, clock)
        events.extend(produced)
    if data.draw(st.booleans()):
        events.extend(first.expire(clock))  # snapshot right after a look at the clock, or not
    stored = orjson.loads(orjson.dumps(first.snapshot()))
    second = TrafficJamDetector()
    second.restore(stored)
    assert second.active_events() == first.active_events()
    assert second.next_due_ms() == first.next_due_ms()
    for message in trace[cut:]:
        clock, produced = feed(second, message, clock)
        events.extend(produced)
    events.extend(second.expire(clock + SETTLE_MS))
    assert events == run(trace)


@settings(max_examples=40, deadline=None)
@given(trace=any_traces)
def test_a_snapshot_is_plain_json(trace: list[Message]) -> None:
    detector = TrafficJamDetector()
    clock = 0
    for message in trace:
        clock, _ = feed(detector, message, clock)
    snapshot = detector.snapshot()
    assert orjson.loads(orjson.dumps(snapshot)) == snapshot
