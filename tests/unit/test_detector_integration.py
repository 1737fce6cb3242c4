"""The whole detector: dispatch by kind and cause, the detection clock, memory, snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roadwatch.domain.accident import AccidentDetector, AccidentRules
from roadwatch.domain.detector import DetectionRules, Detector
from roadwatch.domain.events import Event, EventStatus, EventType
from roadwatch.domain.geo import destination
from roadwatch.domain.hazard import HazardRules
from roadwatch.domain.messages import Cam, Denm, Termination
from roadwatch.domain.traffic_jam import JamRules
from roadwatch.domain.zones import Zone, ZoneRules
from roadwatch.settings import Settings

T0 = 1_700_000_000_000
SECOND = 1000
MINUTE = 60_000
LAT, LON = 49.25, 4.03
# A square zone of about 440 m around (LAT, LON), in GeoJSON (lon, lat) order.
HALF = 0.002
RING = (
    (LON - HALF, LAT - HALF),
    (LON + HALF, LAT - HALF),
    (LON + HALF, LAT + HALF),
    (LON - HALF, LAT + HALF),
    (LON - HALF, LAT - HALF),
)
CENTRE = Zone("centre", "Centre", ((RING,),))
FAR_LAT, FAR_LON = 49.30, 4.10  # 7 km away: outside the zone, its own cells
Message = Cam | Denm


def cam(
    station: str,
    t: int,
    lat: float = FAR_LAT,
    lon: float = FAR_LON,
    speed: float = 80.0,
    heading: float = 90.0,
) -> Cam:
    return Cam(station, 5, t, lat, lon, speed, heading)


def denm(
    station: str,
    t: int,
    cause: int,
    lat: float = LAT,
    lon: float = LON,
    station_type: int = 5,
    termination: Termination | None = None,
) -> Denm:
    return Denm(station, station_type, t, lat, lon, cause, None, termination)


def kinds(events: Sequence[Event]) -> list[tuple[str, str]]:
    return [(event.type.value, event.status.value) for event in events]


def traffic(start: int, seconds: int, stations: int = 5, lat: float = FAR_LAT) -> list[Cam]:
    """Ordinary free-flowing traffic at 1 Hz, far from everything else."""
    return [
        cam(f"traffic-{n}", start + s * SECOND + n, lat, FAR_LON + n * 0.001)
        for s in range(seconds)
        for n in range(stations)
    ]


# -- dispatch ---------------------------------------------------------------------------------


def test_denms_go_to_the_detector_of_their_cause() -> None:
    detector = Detector()
    [accident] = detector.process(denm("rsu", T0, 2, station_type=15))
    [hazard] = detector.process(denm("car", T0 + 1, 6, *destination(LAT, LON, 0, 1000)))
    assert accident.type is EventType.ACCIDENT
    assert hazard.type is EventType.HAZARD
    assert hazard.details["cause_name"] == "slippery road"
    assert detector.active_counts() == {
        EventType.ACCIDENT: 1,
        EventType.TRAFFIC_JAM: 0,
        EventType.HAZARD: 1,
    }


def test_traffic_jam_denms_and_slow_cams_make_a_jam() -> None:
    detector = Detector()
    events: list[Event] = []
    for s in range(40):
        for n in range(2):
            events += detector.process(cam(f"slow-{n}", T0 + s * SECOND, LAT, LON, 5.0, 90.0))
        if s == 10:
            events += detector.process(denm("reporter", T0 + s * SECOND, 1))
    assert (EventType.TRAFFIC_JAM.value, "active") in kinds(events)
    assert [e.type for e in detector.active_events()] == [EventType.TRAFFIC_JAM]


def test_cams_make_zone_crossings() -> None:
    detector = Detector(zones=[CENTRE])
    assert kinds(detector.process(cam("car", T0, LAT, LON))) == [("zone_enter", "instant")]
    assert detector.occupancy() == {"centre": ["car"]}
    assert kinds(detector.process(cam("car", T0 + SECOND))) == [("zone_exit", "instant")]
    assert detector.occupancy() == {"centre": []}


def test_denm_positions_do_not_cross_zones() -> None:
    detector = Detector(zones=[CENTRE])
    detector.process(denm("car", T0, 3))
    assert detector.occupancy() == {"centre": []}


def test_setting_zones_exits_the_stations_of_a_removed_zone() -> None:
    detector = Detector(zones=[CENTRE])
    detector.process(cam("car", T0, LAT, LON))
    [exit_] = detector.set_zones([])
    assert exit_.type is EventType.ZONE_EXIT
    assert exit_.details["reason"] == "zone_removed"
    assert detector.zones == ()
    assert Detector().set_zones([CENTRE]) == []


# -- staleness --------------------------------------------------------------------------------


def test_staleness_is_per_station_and_per_kind_for_every_cause() -> None:
    detector = Detector(zones=[CENTRE])
    detector.process(cam("car", T0 + 5 * SECOND, LAT, LON))
    assert detector.process(cam("car", T0 + SECOND)) == []  # an older CAM: no exit
    assert detector.occupancy() == {"centre": ["car"]}
    for i, cause in enumerate((1, 2, 3)):
        detector.process(denm("car", T0 + 2 * SECOND + i, cause, station_type=15))
    assert detector.stale == 1
    for cause in (1, 2, 3, 99):
        assert detector.process(denm("car", T0 + 2 * SECOND, cause, station_type=15)) == []
    assert detector.stale == 5
    assert detector.accepted == 4


# -- the detection clock ----------------------------------------------------------------------


def test_a_vehicle_running_minutes_fast_does_not_expire_anyone_early() -> None:
    detector = Detector(zones=[CENTRE])
    emitted = [(T0, e) for e in detector.process(denm("rsu", T0, 2, station_type=15))]
    emitted += [
        (T0, e) for e in detector.process(denm("op", T0, 3, *destination(LAT, LON, 90, 2000), 15))
    ]
    emitted += [(T0, e) for e in detector.process(cam("parked", T0, LAT, LON))]
    fast = 4 * MINUTE + 30 * SECOND
    for s in range(0, 31 * 60, 2):
        t = T0 + s * SECOND
        emitted += [(t, e) for e in detector.process_batch(traffic(t, 1))]
        # Its clock is ahead, yet within the 5-minute tolerance validation lets through.
        emitted += [
            (t, e) for e in detector.process(cam("fast", t + fast, FAR_LAT + 0.01, FAR_LON))
        ]
    assert kinds([e for _, e in emitted]) == [
        ("accident", "active"),
        ("hazard", "active"),
        ("zone_enter", "instant"),
        ("zone_exit", "instant"),
        ("accident", "cleared"),
        ("hazard", "cleared"),
    ]
    # Each timeout came when the ordinary traffic's time reached it, not minutes before.
    for traffic_time, event in emitted[3:]:
        assert event.updated_ms <= traffic_time < event.updated_ms + 10 * SECOND
    assert detector.leads > 0


def test_a_vehicle_alone_after_a_quiet_spell_moves_the_clock_after_the_slack() -> None:
    detector = Detector()
    detector.process(cam("a", T0))
    detector.process(cam("b", T0 + 2 * MINUTE))
    assert detector.clock_ms == T0
    detector.process(cam("b", T0 + 2 * MINUTE + 5 * SECOND))
    assert detector.clock_ms == T0
    detector.process(cam("b", T0 + 2 * MINUTE + 10 * SECOND))
    assert detector.clock_ms == T0 + 2 * MINUTE + 10 * SECOND


def test_a_lone_run_is_interrupted_by_anyone_moving_the_clock() -> None:
    detector = Detector()
    detector.process(cam("a", T0))
    detector.process(cam("b", T0 + 2 * MINUTE))
    detector.process(cam("a", T0 + SECOND))  # the others are still here
    detector.process(cam("b", T0 + 2 * MINUTE + 10 * SECOND))
    assert detector.clock_ms == T0 + SECOND
    detector.process(cam("a", T0 + 500))  # behind the clock: neither moves it nor interrupts
    detector.process(cam("b", T0 + 2 * MINUTE + 20 * SECOND))
    assert detector.clock_ms == T0 + 2 * MINUTE + 20 * SECOND


def test_two_stations_ahead_move_the_clock_to_the_lesser_lead() -> None:
    detector = Detector()
    detector.process(cam("a", T0))
    detector.process(cam("b", T0 + 3 * MINUTE))
    detector.process(cam("c", T0 + MINUTE))
    assert detector.clock_ms == T0 + MINUTE
    detector.process(cam("d", T0 + MINUTE + 30 * SECOND))
    assert detector.clock_ms == T0 + MINUTE + 30 * SECOND


def test_a_timestamp_beyond_the_future_tolerance_ahead_moves_the_clock_at_once() -> None:
    detector = Detector()
    detector.process(cam("a", T0))
    detector.process(cam("b", T0 + 5 * MINUTE + 1))
    assert detector.clock_ms == T0 + 5 * MINUTE + 1


def test_a_small_step_ahead_moves_the_clock() -> None:
    detector = Detector()
    detector.process(cam("a", T0))
    detector.process(cam("b", T0 + 10 * SECOND))
    assert detector.clock_ms == T0 + 10 * SECOND


def test_clock_rules_are_validated() -> None:
    with pytest.raises(ValueError, match="slack"):
        DetectionRules(clock_slack_ms=-1)
    with pytest.raises(ValueError, match="tolerance"):
        DetectionRules(clock_slack_ms=10_000, future_tolerance_ms=5_000)


# -- memory -----------------------------------------------------------------------------------


def test_silent_stations_are_forgotten_and_their_duplicates_stay_stale() -> None:
    detector = Detector()
    detector.process_batch(cam(f"car-{n}", T0 + n) for n in range(1000))
    detector.process(denm("witness", T0, 3))
    assert detector.station_count == 1001
    detector.process_batch(traffic(T0 + MINUTE, 60 * 45, stations=1))
    assert detector.station_count == 1  # only the one still driving
    before = detector.stale
    assert detector.process(cam("car-5", T0 + 5)) == []
    assert detector.process(denm("witness", T0, 3)) == []
    assert detector.process(cam("newcomer", T0 + 5)) == []
    assert detector.stale == before + 3
    assert detector.process(cam("car-5", T0 + 50 * MINUTE)) == []
    assert detector.stale == before + 3


def test_memory_spans_follow_the_longest_rule() -> None:
    rules = DetectionRules(
        accident=AccidentRules(window_ms=MINUTE, expiry_ms=2 * MINUTE),
        zones=ZoneRules(timeout_ms=5 * MINUTE),
        hazard=HazardRules(expiry_ms=7 * MINUTE),
        traffic_jam=JamRules(window_ms=MINUTE, clear_after_ms=6 * MINUTE),
    )
    assert rules.cam_memory_ms == 6 * MINUTE
    assert rules.denm_memory_ms == 7 * MINUTE


def test_the_settings_build_the_rules_from_every_threshold() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="development",
        accident_radius_m=150.0,
        jam_window_s=90.0,
        jam_min_stations=4,
        zone_timeout_s=300.0,
        zone_hysteresis_m=15.0,
        hazard_radius_m=250.0,
        hazard_expiry_s=600.0,
        future_tolerance_s=120.0,
    )
    rules = settings.detection_rules
    assert rules.accident.radius_m == 150.0
    assert rules.traffic_jam.window_ms == 90_000
    assert rules.traffic_jam.min_stations == 4
    assert rules.zones == ZoneRules(timeout_ms=300_000, hysteresis_m=15.0)
    assert rules.hazard == HazardRules(radius_m=250.0, expiry_ms=600_000)
    assert rules.future_tolerance_ms == 120_000
    assert Settings(_env_file=None).detection_rules == DetectionRules()  # type: ignore[call-arg]


# -- snapshots --------------------------------------------------------------------------------


def mixed_trace() -> list[Message]:
    """Every rule at work: a jam, zone crossings and a timeout, an accident, hazards, late mail."""
    trace: list[Message] = []
    for s in range(0, 400):
        t = T0 + s * SECOND
        for n in range(4):
            speed = 8.0 if s < 150 else 70.0
            lat, lon = destination(LAT, LON, 90, -300 + s * 2.0 + n * 10)
            trace.append(cam(f"car-{n}", t + n * 10, lat, lon, speed, 90.0))
        if s == 20:
            trace.append(cam("parker", t, LAT + 0.001, LON))
        if s == 30:
            trace.append(denm("w1", t, 2))
        if s == 45:
            trace.append(denm("w2", t, 2, *destination(LAT, LON, 0, 50)))
            trace.append(cam("car-0", t - 5 * SECOND))  # late: stale
        if s == 60:
            trace.append(denm("op", t, 3, *destination(LAT, LON, 180, 900), 15))
        if s == 90:
            trace.append(
                denm("op", t, 3, *destination(LAT, LON, 180, 900), 15, Termination.NEGATION)
            )
        if s == 120:
            trace.append(denm("fog", t, 18, *destination(LAT, LON, 270, 1500)))
        if s == 200:
            trace.append(cam("fast", t + 4 * MINUTE, FAR_LAT, FAR_LON))
    trace.append(cam("car-0", T0 + 40 * MINUTE))
    return trace


def run_restoring_at(trace: Sequence[Message], cut: int, rules: DetectionRules) -> list[Event]:
    first = Detector(rules, zones=[CENTRE])
    events = first.process_batch(trace[:cut])
    restored = Detector(rules)
    restored.restore(orjson.loads(orjson.dumps(first.snapshot())))
    events += restored.process_batch(trace[cut:])
    reference = Detector(rules, zones=[CENTRE])
    reference.process_batch(trace)
    assert comparable(restored.snapshot()) == comparable(reference.snapshot())
    return events


def comparable(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The state that can still matter: the jam detector forgets stale headings on its own
    schedule, which a restore resets (they are older than its window, so never used)."""
    jams = {key: value for key, value in snapshot["traffic_jam"].items() if key != "headings"}
    return {**snapshot, "traffic_jam": jams}


def test_the_mixed_trace_exercises_every_rule() -> None:
    events = Detector(zones=[CENTRE]).process_batch(mixed_trace())
    assert {event.type for event in events} == set(EventType)
    assert {event.status for event in events} == set(EventStatus)


def test_a_detector_restored_at_any_point_of_a_mixed_trace_continues_identically() -> None:
    trace = mixed_trace()
    rules = DetectionRules()
    expected = Detector(rules, zones=[CENTRE]).process_batch(trace)
    step = 37  # every cut would take minutes; a prime stride lands everywhere in the cycles
    for cut in [*range(0, len(trace), step), len(trace) - 1, len(trace)]:
        assert run_restoring_at(trace, cut, rules) == expected, f"cut at {cut}"


def test_restore_refuses_a_damaged_snapshot_and_keeps_its_state() -> None:
    detector = Detector(zones=[CENTRE])
    detector.process(cam("car", T0, LAT, LON))
    good = detector.snapshot()
    for bad in ({}, {**good, "format": 2}, {**good, "zones": {"format": 1}}, {**good, "leads": 3}):
        with pytest.raises(ValueError, match="snapshot"):
            detector.restore(bad)
    assert detector.occupancy() == {"centre": ["car"]}
    assert detector.snapshot() == good


@st.composite
def traces(draw: st.DrawFn, max_size: int = 50) -> list[Message]:
    """A messy mixed trace near one zone: every kind, cause, lead, late and duplicate."""
    stations = [f"s{i}" for i in range(7)]
    types = {s: draw(st.sampled_from([5, 5, 6, 10, 15])) for s in stations}
    skew = {s: draw(st.sampled_from([0, 0, 0, 20 * SECOND, 4 * MINUTE])) for s in stations}
    last: dict[str, int] = {}
    clock = T0
    trace: list[Message] = []
    for _ in range(draw(st.integers(min_value=1, max_value=max_size))):
        clock += draw(st.sampled_from([0, 1, 700, 1000, 5000, 30_000, 3 * MINUTE, 11 * MINUTE]))
        station = draw(st.sampled_from(stations))
        t = clock + skew[station]
        if station in last and draw(st.integers(0, 7)) == 0:
            t = last[station] - draw(st.sampled_from([0, 1, 5000]))
        last[station] = max(t, last.get(station, t))
        lat, lon = destination(
            LAT,
            LON,
            draw(st.sampled_from([0.0, 90.0, 200.0])),
            draw(st.sampled_from([0, 150, 400])),
        )
        kind = draw(st.sampled_from(["cam", "cam", "cam", "denm"]))
        if kind == "cam":
            speed = draw(st.sampled_from([5.0, 20.0, 60.0]))
            trace.append(Cam(station, types[station], t, lat, lon, speed, 90.0))
        else:
            cause = draw(st.sampled_from([1, 2, 3, 6]))
            termination = draw(st.sampled_from([None, None, *Termination]))
            trace.append(Denm(station, types[station], t, lat, lon, cause, None, termination))
    return trace


@settings(max_examples=60, deadline=None)
@given(trace=traces(), cut=st.integers(min_value=0, max_value=50))
def test_a_snapshot_at_any_point_of_any_trace_restores_to_the_same_future(
    trace: list[Message], cut: int
) -> None:
    rules = DetectionRules(traffic_jam=JamRules(min_stations=2, clear_min_stations=1))
    expected = Detector(rules, zones=[CENTRE]).process_batch(trace)
    assert run_restoring_at(trace, min(cut, len(trace)), rules) == expected


@settings(max_examples=60, deadline=None)
@given(trace=traces())
def test_every_event_starts_at_version_one_and_counts_up(trace: list[Message]) -> None:
    latest: dict[str, Event] = {}
    for event in Detector(zones=[CENTRE]).process_batch(trace):
        previous = latest.get(event.id)
        if previous is None:
            assert event.version == 1
        else:
            assert previous.status is EventStatus.ACTIVE, "an update after the end"
            assert event.version == previous.version + 1
            assert event.started_ms == previous.started_ms
        latest[event.id] = event


def test_the_accident_detector_restores_waiting_reports_and_forgets_old_stations() -> None:
    def denm2(station: str, t: int, metres: float = 0.0, station_type: int = 5) -> Denm:
        return denm(station, t, 2, *destination(LAT, LON, 90, metres), station_type)

    trace = [
        denm2("a", T0),
        denm2("far", T0 + SECOND, 5000),
        denm2("b", T0 + 2 * SECOND, 50),
        denm2("c", T0 + 3 * MINUTE, 120),
        denm(
            "b",
            T0 + 4 * MINUTE,
            2,
            *destination(LAT, LON, 90, 50),
            termination=Termination.CANCELLATION,
        ),
        denm2("late", T0 + 2 * SECOND),
        denm2("rsu", T0 + 90 * MINUTE, 9000, 15),
        denm2("a", T0),
    ]
    reference = AccidentDetector()
    expected = [
        event for message in trace for event in reference.handle(message, message.timestamp_ms)
    ]
    assert kinds(expected) == [
        ("accident", "active"),
        ("accident", "active"),
        ("accident", "active"),
        ("accident", "active"),
        ("accident", "cleared"),
        ("accident", "active"),
    ]
    state = reference.snapshot()
    assert set(state["last_report_ms"]) == {"rsu"}  # the others were forgotten
    assert state["forgotten_ms"] == T0 + 4 * MINUTE
    for cut in range(len(trace) + 1):
        first = AccidentDetector()
        events = [e for m in trace[:cut] for e in first.handle(m, m.timestamp_ms)]
        restored = AccidentDetector()
        restored.restore(orjson.loads(orjson.dumps(first.snapshot())))
        events += [e for m in trace[cut:] for e in restored.handle(m, m.timestamp_ms)]
        assert events == expected, f"cut at {cut}"
    with pytest.raises(ValueError, match="accident"):
        AccidentDetector().restore({"format": 1})
