"""Properties of detection that must hold for any trace (docs/contract/detection.md §1), checked
with hypothesis."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roadwatch.domain.detector import Detector
from roadwatch.domain.events import Event, EventStatus, EventType
from roadwatch.domain.geo import GeoGrid, destination, haversine_m, mean_position
from roadwatch.domain.messages import Cam, Denm, Termination
from tests.unit.event_checks import assert_next_version

T0 = 1_700_000_000_000
MINUTE = 60_000
TRUSTED = (10, 15)
UNTRUSTED = st.sampled_from([0, 1, 2, 5, 6, 7, 8, 9, 11])

Message = Cam | Denm

# Anywhere a road may be, including both sides of the antimeridian.
latitudes = st.floats(min_value=-80.0, max_value=80.0)
longitudes = st.floats(min_value=-180.0, max_value=180.0)
bearings = st.floats(min_value=0.0, max_value=360.0, exclude_max=True)


def report(
    station: str,
    t: int,
    lat: float,
    lon: float,
    station_type: int = 5,
    *,
    termination: Termination | None = None,
) -> Denm:
    return Denm(station, station_type, t, lat, lon, 2, None, termination)


@st.composite
def traces(draw: st.DrawFn, max_size: int = 60) -> list[Message]:
    """A messy trace: clustered accident reports, cancellations, CAMs, late and duplicate ones."""
    centres = [
        (draw(latitudes), draw(longitudes))
        for _ in range(draw(st.integers(min_value=1, max_value=3)))
    ]
    stations = [f"s{i}" for i in range(8)]
    types = {s: draw(st.sampled_from([5, 5, 5, 6, 10, 15])) for s in stations}
    last_sent: dict[str, int] = {}
    clock = T0
    trace: list[Message] = []
    for _ in range(draw(st.integers(min_value=1, max_value=max_size))):
        clock += draw(st.sampled_from([0, 1, 1000, 30_000, 4 * MINUTE, 11 * MINUTE, 31 * MINUTE]))
        station = draw(st.sampled_from(stations))
        t = clock
        if station in last_sent and draw(st.integers(min_value=0, max_value=9)) == 0:
            t = last_sent[station] - draw(st.sampled_from([0, 1, 5000]))  # late or duplicate
        last_sent[station] = max(t, last_sent.get(station, t))
        lat0, lon0 = draw(st.sampled_from(centres))
        lat, lon = destination(
            lat0, lon0, draw(bearings), draw(st.floats(min_value=0.0, max_value=350.0))
        )
        kind = draw(st.sampled_from(["cam", "report", "report", "report", "cancel", "negate"]))
        if kind == "cam":
            trace.append(Cam(station, types[station], t, lat, lon, 20.0, 90.0))
        else:
            termination = {
                "report": None,
                "cancel": Termination.CANCELLATION,
                "negate": Termination.NEGATION,
            }[kind]
            trace.append(Denm(station, types[station], t, lat, lon, 2, None, termination))
    return trace


def run(trace: Sequence[Message]) -> list[Event]:
    detector = Detector()
    return [event for message in trace for event in detector.process(message)]


@settings(max_examples=150, deadline=None)
@given(trace=traces(), cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=10))
def test_events_do_not_depend_on_batching(trace: list[Message], cuts: list[int]) -> None:
    bounds = [0, *sorted(c for c in cuts if c < len(trace)), len(trace)]
    detector = Detector()
    batched: list[Event] = []
    for start, end in itertools.pairwise(bounds):
        batched.extend(detector.process_batch(trace[start:end]))
    assert batched == run(trace)


@settings(max_examples=150, deadline=None)
@given(trace=traces(), data=st.data())
def test_events_do_not_depend_on_how_often_the_clock_is_observed(
    trace: list[Message], data: st.DataObject
) -> None:
    reference = Detector()
    slack = reference.rules.clock_slack_ms
    clocks: list[int | None] = []
    for message in trace:
        clocks.append(reference.clock_ms)
        reference.process(message)
    clocks.append(reference.clock_ms)
    # CAMs from fresh stations, far from the trace and driving freely, at times the clock
    # passes through anyway: behind it, or on an ordinary step between two messages. (A tick
    # within a step that confirmed a lead would be a witness of the time, not a mere look.)
    ticked: list[Message] = []
    for i, message in enumerate(trace):
        before, after = clocks[i], clocks[i + 1]
        if before is not None and after is not None and data.draw(st.booleans()):
            latest = after if after - before <= slack else before
            t = data.draw(st.integers(min_value=before - MINUTE, max_value=latest))
            ticked.append(Cam(f"tick-{i}", 5, t, 85.0, 0.0, 100.0, 0.0))
        ticked.append(message)
    assert run(ticked) == run(trace)


@settings(max_examples=200, deadline=None)
@given(trace=traces())
def test_ids_start_at_version_one_once_and_versions_then_count_up(trace: list[Message]) -> None:
    latest: dict[str, Event] = {}
    for event in run(trace):
        previous = latest.get(event.id)
        assert_next_version(previous, event)
        if event.type is EventType.ACCIDENT:
            assert event.details["reporter_count"] == len(event.station_ids) >= 1
        assert event.station_ids
        assert list(event.station_ids) == sorted(set(event.station_ids))
        if event.status is EventStatus.CLEARED:
            assert event.ended_ms is not None and event.ended_ms >= event.started_ms
        latest[event.id] = event


@settings(max_examples=150, deadline=None)
@given(trace=traces(), data=st.data())
def test_duplicate_and_out_of_order_messages_change_nothing(
    trace: list[Message], data: st.DataObject
) -> None:
    reference = Detector()
    baseline = [event for message in trace for event in reference.process(message)]
    newest: dict[tuple[str, type], Message] = {}
    replayed: list[Message] = []
    inserted = 0
    for message in trace:
        replayed.append(message)
        key = (message.station_id, type(message))
        if key not in newest or message.timestamp_ms > newest[key].timestamp_ms:
            newest[key] = message
        if data.draw(st.booleans()):
            # Redeliver, or deliver late, something this station already sent newer than.
            old = data.draw(st.sampled_from(sorted(newest.values(), key=repr)))
            delay = data.draw(st.sampled_from([0, 1, 10 * MINUTE]))
            replayed.append(_with_time(old, old.timestamp_ms - delay))
            inserted += 1
    detector = Detector()
    assert [e for m in replayed for e in detector.process(m)] == baseline
    assert detector.stale == reference.stale + inserted


def _with_time(message: Message, t: int) -> Message:
    if isinstance(message, Cam):
        return Cam(
            message.station_id,
            message.station_type,
            t,
            message.lat,
            message.lon,
            message.speed_kmh,
            message.heading_deg,
        )
    return Denm(
        message.station_id,
        message.station_type,
        t,
        message.lat,
        message.lon,
        message.cause_code,
        message.sub_cause_code,
        message.termination,
    )


@given(lat=latitudes, lon=longitudes, station_type=UNTRUSTED, repeats=st.integers(1, 20))
def test_a_single_untrusted_reporter_raises_nothing_however_often(
    lat: float, lon: float, station_type: int, repeats: int
) -> None:
    trace = [report("lone", T0 + i * 20_000, lat, lon, station_type) for i in range(repeats)]
    assert run(trace) == []


@given(lat=latitudes, lon=longitudes, station_type=st.sampled_from(TRUSTED))
def test_a_single_trusted_reporter_raises_one_accident(
    lat: float, lon: float, station_type: int
) -> None:
    [event] = run([report("rsu", T0, lat, lon, station_type)])
    assert event.status is EventStatus.ACTIVE
    assert event.station_ids == ("rsu",)


@given(lat=latitudes, lon=longitudes, bearing=bearings, gap=st.integers(0, 10 * MINUTE))
def test_two_reporters_199_m_apart_raise_one_accident(
    lat: float, lon: float, bearing: float, gap: int
) -> None:
    lat2, lon2 = destination(lat, lon, bearing, 199.0)
    assert haversine_m(lat, lon, lat2, lon2) == pytest.approx(199.0, abs=0.01)
    [event] = run([report("a", T0, lat, lon), report("b", T0 + gap, lat2, lon2)])
    assert event.station_ids == ("a", "b")
    assert haversine_m(event.lat, event.lon, lat, lon) == pytest.approx(99.5, abs=0.5)


@given(lat=latitudes, lon=longitudes, bearing=bearings)
def test_two_reporters_201_m_apart_raise_nothing(lat: float, lon: float, bearing: float) -> None:
    lat2, lon2 = destination(lat, lon, bearing, 201.0)
    assert run([report("a", T0, lat, lon), report("b", T0 + 1000, lat2, lon2)]) == []


@given(lat=latitudes, lon=longitudes, bearing=bearings, gap=st.integers(1, 20 * MINUTE))
def test_two_reporters_pair_only_within_ten_minutes(
    lat: float, lon: float, bearing: float, gap: int
) -> None:
    lat2, lon2 = destination(lat, lon, bearing, 50.0)
    events = run([report("a", T0, lat, lon), report("b", T0 + gap, lat2, lon2)])
    assert len(events) == (1 if gap <= 10 * MINUTE else 0)


@given(
    lat=latitudes,
    lon=longitudes,
    spots=st.lists(st.tuples(bearings, st.floats(0.0, 90.0)), min_size=2, max_size=6),
    order=st.randoms(use_true_random=False),
)
def test_all_reporters_cancelling_clears_the_accident(
    lat: float,
    lon: float,
    spots: list[tuple[float, float]],
    order: random.Random,
) -> None:
    positions = [destination(lat, lon, b, d) for b, d in spots]
    trace: list[Message] = [report(f"r{i}", T0 + i * 1000, *p) for i, p in enumerate(positions)]
    cancellers = list(range(len(positions)))
    order.shuffle(cancellers)
    start = T0 + MINUTE
    for n, i in enumerate(cancellers):
        trace.append(
            report(f"r{i}", start + n, *positions[i], termination=Termination.CANCELLATION)
        )
    events = run(trace)
    assert len({e.id for e in events}) == 1
    final = events[-1]
    assert final.status is EventStatus.CLEARED
    assert final.details["clear_reason"] == "cancelled"
    assert [e.status for e in events[:-1]] == [EventStatus.ACTIVE] * (len(events) - 1)
    counts = [e.details["reporter_count"] for e in events]
    assert counts[len(positions) - 2] == len(positions)  # all joined before anyone cancelled
    assert counts[-2:] == [1, 1]


@given(
    lat=latitudes,
    lon=longitudes,
    refreshes=st.lists(st.integers(1, 29 * MINUTE), max_size=5),
)
def test_an_accident_expires_after_thirty_minutes_of_event_time_without_reports(
    lat: float, lon: float, refreshes: list[int]
) -> None:
    trace: list[Message] = [report("a", T0, lat, lon), report("b", T0 + 1, lat, lon)]
    t = T0 + 1
    for step in refreshes:
        t += step
        trace.append(report("a", t, lat, lon))
    quiet = Cam("car", 5, t + 30 * MINUTE - 1, lat, lon, 80.0, 0.0)
    assert [e.status for e in run([*trace, quiet])] == [EventStatus.ACTIVE]
    expired = run([*trace, Cam("car", 5, t + 30 * MINUTE, lat, lon, 80.0, 0.0)])[-1]
    assert expired.status is EventStatus.CLEARED
    assert expired.ended_ms == t + 30 * MINUTE
    assert expired.details["clear_reason"] == "expired"


@given(
    lat=latitudes,
    lon=longitudes,
    bearing=bearings,
    distance=st.floats(0.0, 199.0),
    later=st.integers(0, 29 * MINUTE),
)
def test_a_later_report_within_the_radius_updates_instead_of_creating(
    lat: float, lon: float, bearing: float, distance: float, later: int
) -> None:
    detector = Detector()
    [raised] = detector.process_batch([report("a", T0, lat, lon), report("b", T0 + 1, lat, lon)])
    lat3, lon3 = destination(raised.lat, raised.lon, bearing, distance)
    [update] = detector.process(report("c", T0 + 1 + later, lat3, lon3))
    assert update.id == raised.id
    assert update.version == 2
    assert update.details["reporter_count"] == 3
    assert len(detector.active_events()) == 1


@given(
    lat=st.floats(-90.0, 90.0),
    lon=longitudes,
    points=st.lists(
        st.tuples(st.floats(-90.0, 90.0), longitudes, bearings, st.floats(0.0, 400.0)),
        max_size=30,
    ),
    radius=st.sampled_from([50.0, 200.0, 1000.0]),
)
def test_grid_lookup_finds_every_point_within_the_radius(
    lat: float,
    lon: float,
    points: list[tuple[float, float, float, float]],
    radius: float,
) -> None:
    grid: GeoGrid[int] = GeoGrid(radius)
    placed: list[tuple[float, float]] = []
    for i, (any_lat, any_lon, bearing, distance) in enumerate(points):
        # Half the points near the query point (across poles and the antimeridian), half anywhere.
        if i % 2:
            point = destination(lat, lon, bearing, distance * radius / 200.0)
        else:
            point = (any_lat, any_lon)
        placed.append(point)
        grid.add(grid.cell_of(*point), i)
    found = set(grid.near(lat, lon, radius))
    within = {
        i for i, (plat, plon) in enumerate(placed) if haversine_m(lat, lon, plat, plon) <= radius
    }
    assert within <= found


@given(lat=latitudes, lon=longitudes, bearing=bearings, distance=st.floats(0.0, 500.0))
def test_mean_of_two_points_is_halfway_even_across_the_antimeridian(
    lat: float, lon: float, bearing: float, distance: float
) -> None:
    lat2, lon2 = destination(lat, lon, bearing, distance)
    mlat, mlon = mean_position([(lat, lon), (lat2, lon2)])
    assert -180.0 <= mlon <= 180.0
    assert haversine_m(mlat, mlon, lat, lon) == pytest.approx(distance / 2, abs=0.5)
