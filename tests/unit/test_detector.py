"""The detector: ordering, event time and dispatch to the sub-detectors."""

from __future__ import annotations

from roadwatch.domain.accident import AccidentRules
from roadwatch.domain.detector import DetectionRules, Detector
from roadwatch.domain.events import EventStatus, EventType
from roadwatch.domain.geo import destination
from roadwatch.domain.messages import Cam, Denm, Termination

T0 = 1_700_000_000_000
LAT, LON = 45.764, 4.8357
MINUTE = 60_000


def cam(station: str, t: int, lat: float = LAT, lon: float = LON, speed: float = 50.0) -> Cam:
    return Cam(station, 5, t, lat, lon, speed, 90.0)


def accident_denm(
    station: str, t: int, station_type: int = 5, termination: Termination | None = None
) -> Denm:
    return Denm(station, station_type, t, LAT, LON, 2, None, termination)


def test_cams_alone_never_raise_anything() -> None:
    detector = Detector()
    events = detector.process_batch(cam(f"car-{i % 50}", T0 + i * 100) for i in range(2000))
    assert events == []
    assert detector.accepted == 2000


def test_two_accident_reports_raise_one_accident() -> None:
    detector = Detector()
    assert detector.process(accident_denm("a", T0)) == []
    [event] = detector.process(accident_denm("b", T0 + 5000))
    assert event.type is EventType.ACCIDENT
    assert event.station_ids == ("a", "b")
    assert detector.active_events() == [event]


def test_other_denm_causes_raise_no_accident() -> None:
    detector = Detector()
    for i, cause in enumerate((1, 3, 6, 18, 94, 97, 99)):
        denm = Denm(f"car-{i}", 15, T0 + i, LAT, LON, cause, None, None)
        assert all(event.type is not EventType.ACCIDENT for event in detector.process(denm))
    assert all(event.type is not EventType.ACCIDENT for event in detector.active_events())


def test_a_duplicate_denm_is_counted_stale_and_changes_nothing() -> None:
    detector = Detector()
    detector.process(accident_denm("a", T0))
    assert detector.process(accident_denm("a", T0)) == []
    assert detector.stale == 1
    # Had the duplicate counted as a second report, "a" would now be paired.
    assert detector.process(accident_denm("a", T0 + 1)) == []
    assert detector.active_events() == []


def test_an_older_denm_from_the_same_station_is_dropped() -> None:
    detector = Detector()
    detector.process(accident_denm("amb", T0 + 10_000, station_type=10))
    late_cancel = accident_denm("amb", T0 + 5_000, 10, Termination.CANCELLATION)
    assert detector.process(late_cancel) == []
    assert detector.stale == 1
    assert len(detector.active_events()) == 1


def test_an_older_cam_is_dropped_but_a_denm_at_the_same_time_is_not() -> None:
    detector = Detector()
    detector.process(cam("amb", T0 + 2000))
    assert detector.process(cam("amb", T0 + 1000)) == []
    assert detector.stale == 1
    # MQTT orders messages per topic only: a DENM behind a newer CAM is still news.
    [event] = detector.process(accident_denm("amb", T0 + 1000, station_type=10))
    assert event.status is EventStatus.ACTIVE
    assert detector.stale == 1


def test_a_stale_message_does_not_move_the_clock() -> None:
    detector = Detector()
    detector.process(cam("a", T0 + 1000))
    detector.process(cam("b", T0))
    assert detector.clock_ms == T0 + 1000
    detector.process(cam("a", T0 + 500))
    assert detector.clock_ms == T0 + 1000


def test_the_clock_is_the_newest_timestamp_seen_not_the_last() -> None:
    detector = Detector()
    assert detector.clock_ms is None
    detector.process(cam("a", T0 + 9000))
    detector.process(cam("b", T0 + 3000))
    assert detector.clock_ms == T0 + 9000


def test_cam_traffic_drives_accident_expiry_on_event_time() -> None:
    detector = Detector()
    [raised] = detector.process(accident_denm("rsu", T0, station_type=15))
    assert detector.process_batch(cam("car", T0 + s * 1000) for s in range(1, 1800)) == []
    [expired] = detector.process(cam("car", T0 + 30 * MINUTE))
    assert expired.id == raised.id
    assert expired.status is EventStatus.CLEARED
    assert expired.details["clear_reason"] == "expired"


def test_a_single_message_far_ahead_expires_everything_due_before_it() -> None:
    detector = Detector()
    detector.process(accident_denm("rsu", T0, station_type=15))
    [expired] = detector.process(cam("car", T0 + 24 * 60 * MINUTE))
    assert expired.ended_ms == T0 + 30 * MINUTE


def test_batch_gives_the_same_events_as_one_by_one() -> None:
    far_lat, far_lon = destination(LAT, LON, 45.0, 5000)
    trace: list[Cam | Denm] = [
        accident_denm("a", T0),
        cam("a", T0 + 100),
        accident_denm("b", T0 + 200),
        Denm("c", 5, T0 + 300, far_lat, far_lon, 2, None, None),
        accident_denm("a", T0 + 400, termination=Termination.CANCELLATION),
        Denm("d", 5, T0 + 500, far_lat, far_lon, 2, None, None),
        cam("z", T0 + 90 * MINUTE),
    ]
    one_by_one = Detector()
    expected = [event for message in trace for event in one_by_one.process(message)]
    assert len(expected) == 5
    assert Detector().process_batch(trace) == expected


def test_custom_rules_reach_the_accident_detector() -> None:
    rules = DetectionRules(accident=AccidentRules(radius_m=50.0))
    detector = Detector(rules)
    detector.process(accident_denm("a", T0))
    lat, lon = destination(LAT, LON, 0.0, 100.0)
    assert detector.process(Denm("b", 5, T0 + 1, lat, lon, 2, None, None)) == []
    assert len(Detector().process_batch([accident_denm("a", T0), accident_denm("b", T0 + 1)])) == 1


def test_default_rules_follow_the_spec() -> None:
    rules = DetectionRules().accident
    assert rules.radius_m == 200.0
    assert rules.window_ms == 10 * MINUTE
    assert rules.expiry_ms == 30 * MINUTE
    assert rules.trusted_station_types == frozenset({10, 15})
