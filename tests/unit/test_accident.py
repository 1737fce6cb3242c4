"""Accident detection (docs/contract/detection.md §4) on hand-built DENMs."""

from __future__ import annotations

import time

import pytest

from roadwatch.domain.accident import AccidentDetector, AccidentRules
from roadwatch.domain.events import EventStatus, EventType, new_event_id
from roadwatch.domain.geo import destination, haversine_m
from roadwatch.domain.messages import Denm, Termination
from tests.unit.report_feed import Feed as ReportFeed

T0 = 1_700_000_000_000
LAT, LON = 48.8566, 2.3522
MINUTE = 60_000
CAR, BUS, EMERGENCY, ROAD_OPERATOR = 5, 6, 10, 15


def denm(
    station: str,
    t: int,
    lat: float = LAT,
    lon: float = LON,
    *,
    station_type: int = CAR,
    termination: Termination | None = None,
) -> Denm:
    return Denm(station, station_type, t, lat, lon, 2, None, termination)


def near(metres: float, bearing: float = 90.0) -> tuple[float, float]:
    return destination(LAT, LON, bearing, metres)


def new_feed(rules: AccidentRules | None = None) -> ReportFeed[AccidentDetector]:
    """Drive an AccidentDetector with the newest timestamp as the clock."""
    return ReportFeed(AccidentDetector(rules), AccidentDetector.handle)


def test_a_single_car_report_raises_nothing_and_waits() -> None:
    feed = new_feed()
    assert feed.send(denm("a", T0)) == []
    assert feed.detector.pending_count == 1
    assert feed.detector.active_events() == []


def test_two_cars_near_each_other_raise_one_accident_with_the_spec_fields() -> None:
    feed = new_feed()
    lat_b, lon_b = near(120)
    feed.send(denm("b-car", T0))
    [event] = feed.send(denm("a-car", T0 + 3 * MINUTE, lat_b, lon_b))
    assert event.type is EventType.ACCIDENT
    assert event.status is EventStatus.ACTIVE
    assert event.version == 1
    assert event.cause_code == 2
    assert event.station_ids == ("a-car", "b-car")
    assert event.details == {"reporter_count": 2}
    assert event.lat == pytest.approx((LAT + lat_b) / 2)
    assert event.lon == pytest.approx((LON + lon_b) / 2)
    assert event.started_ms == T0
    assert event.updated_ms == T0 + 3 * MINUTE
    assert event.ended_ms is None
    assert event.id == new_event_id(T0, "accident", "b-car", str(T0))
    assert feed.detector.pending_count == 0


def test_reports_exactly_ten_minutes_apart_still_pair() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    assert len(feed.send(denm("b", T0 + 10 * MINUTE))) == 1


def test_reports_more_than_ten_minutes_apart_do_not_pair() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    assert feed.send(denm("b", T0 + 10 * MINUTE + 1)) == []
    assert feed.detector.pending_count == 1  # only b waits now


def test_a_repeated_report_keeps_a_single_station_waiting_longer() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    feed.send(denm("a", T0 + 8 * MINUTE))
    assert feed.detector.pending_count == 1
    assert len(feed.send(denm("b", T0 + 17 * MINUTE))) == 1


def test_the_same_station_twice_is_not_two_reporters() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    assert feed.send(denm("a", T0 + 1000)) == []
    assert feed.detector.active_events() == []


@pytest.mark.parametrize("station_type", [EMERGENCY, ROAD_OPERATOR])
def test_one_trusted_station_raises_alone(station_type: int) -> None:
    feed = new_feed()
    [event] = feed.send(denm("rsu-1", T0, station_type=station_type))
    assert event.station_ids == ("rsu-1",)
    assert event.details == {"reporter_count": 1}
    assert (event.lat, event.lon) == (LAT, LON)


@pytest.mark.parametrize("station_type", [0, CAR, BUS, 8])
def test_one_untrusted_station_type_does_not_raise_alone(station_type: int) -> None:
    assert new_feed().send(denm("x", T0, station_type=station_type)) == []


def test_trusted_station_types_are_configurable() -> None:
    feed = new_feed(AccidentRules(trusted_station_types=frozenset({BUS})))
    assert len(feed.send(denm("bus-1", T0, station_type=BUS))) == 1
    assert feed.send(denm("amb-1", T0, LAT + 1, station_type=EMERGENCY)) == []


def test_trusted_report_takes_in_waiting_reports_nearby() -> None:
    feed = new_feed()
    feed.send(denm("a", T0, *near(50)))
    [event] = feed.send(denm("amb", T0 + MINUTE, station_type=EMERGENCY))
    assert event.station_ids == ("a", "amb")
    assert event.started_ms == T0


def test_a_new_reporter_updates_the_accident_to_the_next_version() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    [first] = feed.send(denm("b", T0 + 1000, *near(100)))
    lat_c, lon_c = near(150, bearing=0)
    [second] = feed.send(denm("c", T0 + 2000, lat_c, lon_c))
    assert second.id == first.id
    assert second.version == 2
    assert second.status is EventStatus.ACTIVE
    assert second.station_ids == ("a", "b", "c")
    assert second.details == {"reporter_count": 3}
    lat_b, lon_b = near(100)
    assert second.lat == pytest.approx((LAT + lat_b + lat_c) / 3)
    assert second.lon == pytest.approx((LON + lon_b + lon_c) / 3)
    assert second.updated_ms == T0 + 2000
    assert second.started_ms == first.started_ms


def test_a_later_report_near_an_accident_joins_it_even_after_the_window() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    feed.send(denm("b", T0 + 1000))
    [update] = feed.send(denm("c", T0 + 25 * MINUTE, *near(190)))
    assert update.version == 2
    assert len(feed.detector.active_events()) == 1


def test_repeat_reports_from_a_reporter_emit_nothing() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    feed.send(denm("b", T0 + 1000))
    assert feed.send(denm("a", T0 + 2000)) == []
    assert feed.send(denm("b", T0 + 3000, *near(30))) == []


def test_a_report_beyond_the_radius_of_an_accident_starts_its_own() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    feed.send(denm("b", T0 + 1000))
    far = near(1000)
    assert feed.send(denm("c", T0 + 2000, *far)) == []
    [other] = feed.send(denm("d", T0 + 3000, *far))
    assert other.station_ids == ("c", "d")
    assert len(feed.detector.active_events()) == 2


def test_a_trusted_termination_near_the_accident_clears_it() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    [raised] = feed.send(denm("b", T0 + 1000))
    [cleared] = feed.send(
        denm(
            "police",
            T0 + 5 * MINUTE,
            *near(80),
            station_type=EMERGENCY,
            termination=Termination.NEGATION,
        )
    )
    assert cleared.id == raised.id
    assert cleared.version == 2
    assert cleared.status is EventStatus.CLEARED
    assert cleared.ended_ms == T0 + 5 * MINUTE
    assert cleared.updated_ms == T0 + 5 * MINUTE
    assert cleared.details == {"reporter_count": 2, "clear_reason": "termination"}
    assert cleared.station_ids == ("a", "b")
    assert feed.detector.active_events() == []


def test_a_trusted_termination_far_away_changes_nothing() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    feed.send(denm("b", T0 + 1000))
    far = near(500)
    assert (
        feed.send(
            denm(
                "rsu", T0 + 2000, *far, station_type=ROAD_OPERATOR, termination=Termination.NEGATION
            )
        )
        == []
    )
    assert len(feed.detector.active_events()) == 1


def test_an_untrusted_stranger_cannot_clear_an_accident() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    feed.send(denm("b", T0 + 1000))
    for termination in Termination:
        assert feed.send(denm("troll", T0 + 2000 + len(termination), termination=termination)) == []
    assert len(feed.detector.active_events()) == 1


def test_every_reporter_cancelling_clears_the_accident() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    feed.send(denm("b", T0 + 1000))
    [partial] = feed.send(denm("a", T0 + 2000, termination=Termination.CANCELLATION))
    assert partial.status is EventStatus.ACTIVE
    assert partial.version == 2
    assert partial.station_ids == ("b",)
    assert partial.details == {"reporter_count": 1}
    [cleared] = feed.send(denm("b", T0 + 3000, termination=Termination.CANCELLATION))
    assert cleared.status is EventStatus.CLEARED
    assert cleared.version == 3
    assert cleared.details == {"reporter_count": 1, "clear_reason": "cancelled"}
    assert cleared.ended_ms == T0 + 3000
    assert feed.detector.active_events() == []


def test_a_cancelled_waiting_report_can_no_longer_pair() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    feed.send(denm("a", T0 + 1000, termination=Termination.CANCELLATION))
    assert feed.detector.pending_count == 0
    assert feed.send(denm("b", T0 + 2000)) == []


def test_a_trusted_negation_also_discards_waiting_reports_nearby() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    feed.send(
        denm(
            "rsu",
            T0 + 1000,
            *near(100),
            station_type=ROAD_OPERATOR,
            termination=Termination.NEGATION,
        )
    )
    assert feed.send(denm("b", T0 + 2000)) == []


def test_an_accident_expires_thirty_minutes_after_its_last_report() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    [raised] = feed.send(denm("b", T0 + 1000))
    assert feed.tick(T0 + 1000 + 30 * MINUTE - 1) == []
    [expired] = feed.tick(T0 + 1000 + 30 * MINUTE)
    assert expired.id == raised.id
    assert expired.status is EventStatus.CLEARED
    assert expired.ended_ms == T0 + 1000 + 30 * MINUTE
    assert expired.details["clear_reason"] == "expired"
    assert feed.detector.active_events() == []


def test_a_refreshing_report_postpones_expiry() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    feed.send(denm("b", T0 + 1000))
    feed.send(denm("a", T0 + 20 * MINUTE))
    assert feed.tick(T0 + 45 * MINUTE) == []
    [expired] = feed.tick(T0 + 50 * MINUTE)
    assert expired.ended_ms == T0 + 50 * MINUTE


def test_expiry_is_reported_with_its_own_time_even_when_noticed_late() -> None:
    feed = new_feed()
    feed.send(denm("amb", T0, station_type=EMERGENCY))
    [expired] = feed.tick(T0 + 5 * 60 * MINUTE)
    assert expired.ended_ms == T0 + 30 * MINUTE


def test_after_expiry_a_new_report_starts_a_new_accident() -> None:
    feed = new_feed()
    [first] = feed.send(denm("amb", T0, station_type=EMERGENCY))
    events = feed.send(denm("amb", T0 + 31 * MINUTE, station_type=EMERGENCY))
    assert [(e.id, e.status) for e in events] == [
        (first.id, EventStatus.CLEARED),
        (new_event_id(T0 + 31 * MINUTE, "accident", "amb", str(T0 + 31 * MINUTE)), "active"),
    ]


def test_a_report_already_older_than_the_expiry_raises_nothing() -> None:
    feed = new_feed()
    feed.tick(T0 + 40 * MINUTE)
    assert feed.send(denm("amb", T0, station_type=EMERGENCY)) == []


def test_accidents_across_the_antimeridian_are_one() -> None:
    feed = new_feed()
    feed.send(denm("a", T0, -16.5, 179.9995))
    [event] = feed.send(denm("b", T0 + 1000, -16.5, -179.9995))
    assert haversine_m(-16.5, 179.9995, -16.5, -179.9995) < 200
    assert abs(event.lon) == pytest.approx(180.0)


def test_invalid_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="radius"):
        AccidentRules(radius_m=0)
    with pytest.raises(ValueError, match="expiry"):
        AccidentRules(expiry_ms=0)


def test_thousands_of_waiting_reports_do_not_slow_each_report_down() -> None:
    feed = new_feed()
    count = 20_000
    started = time.perf_counter()
    for i in range(count):
        # A 500 m grid of lone reports: nothing pairs, everything waits.
        lat, lon = LAT + (i // 150) * 0.0045, LON + (i % 150) * 0.0068
        feed.send(denm(f"car-{i}", T0 + i, lat, lon))
    elapsed = time.perf_counter() - started
    assert feed.detector.pending_count == count
    assert feed.events == []
    # Comparing each report with all waiting ones would take minutes here.
    assert elapsed < 5.0


def test_a_replayed_report_cannot_raise_the_same_accident_twice() -> None:
    feed = new_feed()
    [raised] = feed.send(denm("amb", T0, station_type=EMERGENCY))
    feed.send(denm("amb", T0 + 1, station_type=EMERGENCY, termination=Termination.NEGATION))
    assert feed.send(denm("amb", T0, station_type=EMERGENCY)) == []
    assert [e.version for e in feed.events if e.id == raised.id] == [1, 2]


@pytest.mark.parametrize(("metres", "raised"), [(199.0, True), (200.0, True), (201.0, False)])
def test_two_reporters_pair_only_within_the_radius(metres: float, raised: bool) -> None:
    feed = new_feed()
    feed.send(denm("first", T0))
    lat_b, lon_b = near(metres, bearing=37.0)
    events = feed.send(denm("second", T0 + MINUTE, lat_b, lon_b))
    assert [event.type for event in events] == ([EventType.ACCIDENT] if raised else [])
    assert feed.detector.pending_count == (0 if raised else 2)
