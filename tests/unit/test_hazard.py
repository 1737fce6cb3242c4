"""Hazards (docs/contract/detection.md §7) on hand-built DENMs."""

from __future__ import annotations

import orjson
import pytest

from roadwatch.domain.events import EventStatus, EventType
from roadwatch.domain.geo import destination, haversine_m
from roadwatch.domain.hazard import CAUSE_NAMES, HazardDetector, HazardRules, cause_name
from roadwatch.domain.messages import Denm, Termination
from tests.unit.report_feed import Feed as ReportFeed

T0 = 1_700_000_000_000
LAT, LON = 49.27, 4.05
MINUTE = 60_000
CAR, EMERGENCY, ROAD_OPERATOR = 5, 10, 15
ROADWORKS, SLIPPERY, LOW_VISIBILITY = 3, 6, 18


def denm(
    station: str,
    t: int,
    cause: int = ROADWORKS,
    lat: float = LAT,
    lon: float = LON,
    *,
    station_type: int = CAR,
    sub_cause: int | None = None,
    termination: Termination | None = None,
) -> Denm:
    return Denm(station, station_type, t, lat, lon, cause, sub_cause, termination)


def near(metres: float, bearing: float = 90.0) -> tuple[float, float]:
    return destination(LAT, LON, bearing, metres)


def new_feed(rules: HazardRules | None = None) -> ReportFeed[HazardDetector]:
    """Drive a HazardDetector with the newest timestamp as the clock."""
    return ReportFeed(HazardDetector(rules), HazardDetector.on_denm)


def test_the_first_report_of_any_station_raises_a_hazard_with_its_cause_in_words() -> None:
    [event] = new_feed().send(denm("car", T0, SLIPPERY, sub_cause=2))
    assert event.type is EventType.HAZARD
    assert event.status is EventStatus.ACTIVE
    assert event.version == 1
    assert event.cause_code == SLIPPERY
    assert event.station_ids == ("car",)
    assert (event.lat, event.lon) == (LAT, LON)
    assert event.started_ms == event.updated_ms == T0
    assert event.details == {
        "cause_name": "slippery road",
        "sub_cause_code": 2,
        "reporter_count": 1,
    }


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (3, "roadworks"),
        (6, "slippery road"),
        (18, "low visibility"),
        (94, "stationary vehicle"),
        (97, "collision risk"),
        (99, "dangerous situation"),
        (42, "cause 42"),
    ],
)
def test_cause_names_follow_etsi(code: int, name: str) -> None:
    assert cause_name(code) == name
    assert 1 not in CAUSE_NAMES
    assert 2 not in CAUSE_NAMES


def test_a_new_reporter_nearby_updates_the_hazard() -> None:
    feed = new_feed()
    [raised] = feed.send(denm("a", T0))
    [update] = feed.send(denm("b", T0 + 1000, ROADWORKS, *near(100)))
    assert update.id == raised.id
    assert update.version == 2
    assert update.station_ids == ("a", "b")
    assert update.details["reporter_count"] == 2
    assert haversine_m(update.lat, update.lon, LAT, LON) == pytest.approx(50.0, abs=0.5)
    assert feed.detector.active_events() == [update]


def test_a_repeated_report_only_postpones_expiry() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    assert feed.send(denm("a", T0 + 20 * MINUTE)) == []
    assert feed.tick(T0 + 30 * MINUTE) == []
    [expired] = feed.tick(T0 + 50 * MINUTE)
    assert expired.status is EventStatus.CLEARED
    assert expired.ended_ms == T0 + 50 * MINUTE
    assert expired.details["clear_reason"] == "expired"


def test_another_cause_at_the_same_place_is_another_hazard() -> None:
    feed = new_feed()
    [roadworks] = feed.send(denm("a", T0, ROADWORKS))
    [fog] = feed.send(denm("b", T0 + 1, LOW_VISIBILITY))
    assert roadworks.id != fog.id
    assert len(feed.detector.active_events()) == 2


def test_a_report_beyond_the_radius_is_another_hazard() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    [other] = feed.send(denm("b", T0 + 1, ROADWORKS, *near(201)))
    assert other.version == 1
    assert len(feed.detector.active_events()) == 2


def test_a_trusted_termination_clears_hazards_of_its_cause_only() -> None:
    feed = new_feed()
    [roadworks] = feed.send(denm("a", T0, ROADWORKS))
    feed.send(denm("b", T0 + 1, SLIPPERY))
    [cleared] = feed.send(
        denm(
            "rsu",
            T0 + MINUTE,
            ROADWORKS,
            *near(150),
            station_type=ROAD_OPERATOR,
            termination=Termination.NEGATION,
        )
    )
    assert cleared.id == roadworks.id
    assert cleared.status is EventStatus.CLEARED
    assert cleared.ended_ms == T0 + MINUTE
    assert cleared.details["clear_reason"] == "termination"
    assert [e.cause_code for e in feed.detector.active_events()] == [SLIPPERY]


def test_the_reporting_operator_withdraws_its_roadworks() -> None:
    feed = new_feed()
    feed.send(denm("op", T0, station_type=ROAD_OPERATOR))
    [cleared] = feed.send(
        denm("op", T0 + 195_000, station_type=ROAD_OPERATOR, termination=Termination.CANCELLATION)
    )
    assert cleared.status is EventStatus.CLEARED
    assert cleared.station_ids == ("op",)


def test_a_reporter_withdrawing_leaves_the_others_and_the_last_one_clears() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    feed.send(denm("b", T0 + 1))
    [partial] = feed.send(denm("a", T0 + 2, termination=Termination.CANCELLATION))
    assert partial.status is EventStatus.ACTIVE
    assert partial.station_ids == ("b",)
    [cleared] = feed.send(denm("b", T0 + 3, termination=Termination.NEGATION))
    assert cleared.status is EventStatus.CLEARED
    assert cleared.details["clear_reason"] == "cancelled"
    assert cleared.version == 4


def test_a_stranger_cannot_clear_a_hazard() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    for i, termination in enumerate(Termination):
        assert feed.send(denm("troll", T0 + 1 + i, termination=termination)) == []
    assert len(feed.detector.active_events()) == 1


def test_a_report_already_expired_on_arrival_raises_nothing() -> None:
    feed = new_feed()
    feed.tick(T0 + 31 * MINUTE)
    assert feed.send(denm("late", T0)) == []


def test_a_duplicate_report_is_ignored() -> None:
    feed = new_feed()
    feed.send(denm("op", T0, station_type=ROAD_OPERATOR))
    feed.send(denm("op", T0 + 1, station_type=ROAD_OPERATOR, termination=Termination.NEGATION))
    assert feed.send(denm("op", T0, station_type=ROAD_OPERATOR)) == []
    assert feed.detector.active_events() == []


def test_old_stations_are_forgotten_yet_their_duplicates_stay_ignored() -> None:
    feed = new_feed()
    feed.send(denm("a", T0))
    feed.send(denm("a", T0 + 1, termination=Termination.CANCELLATION))
    feed.tick(T0 + 2 * 30 * MINUTE)
    snapshot = feed.detector.snapshot()
    assert snapshot["last_report_ms"] == {}
    assert snapshot["forgotten_ms"] == T0 + 1
    assert feed.send(denm("a", T0 + 1)) == []
    assert feed.send(denm("fresh", T0 + 1)) == []
    assert len(feed.send(denm("fresh", T0 + 2 * 30 * MINUTE))) == 1


def test_expiry_of_several_hazards_comes_in_time_order() -> None:
    feed = new_feed()
    feed.send(denm("b", T0 + 1000, ROADWORKS, *near(5000)))
    feed.send(denm("a", T0, ROADWORKS))
    expired = feed.tick(T0 + 40 * MINUTE)
    assert [e.ended_ms for e in expired] == [T0 + 30 * MINUTE, T0 + 1000 + 30 * MINUTE]
    assert feed.detector.active_events() == []


def test_next_due_tells_when_expiry_has_work() -> None:
    detector = HazardDetector()
    assert detector.next_due_ms() is None
    detector.on_denm(denm("a", T0), T0)
    due = detector.next_due_ms()
    assert due == T0 + 30 * MINUTE
    assert detector.expire(due - 1) == []
    assert len(detector.expire(due)) == 1


def test_a_snapshot_is_json_and_restores_to_the_same_future() -> None:
    def trace() -> list[Denm]:
        return [
            denm("a", T0),
            denm("b", T0 + 1000, ROADWORKS, *near(80)),
            denm("c", T0 + 2000, SLIPPERY, *near(3000)),
            denm("a", T0 + 5 * MINUTE, termination=Termination.CANCELLATION),
            denm("d", T0 + 6 * MINUTE, ROADWORKS, *near(60, 180.0)),
            denm(
                "rsu",
                T0 + 7 * MINUTE,
                SLIPPERY,
                *near(3000),
                station_type=EMERGENCY,
                termination=Termination.NEGATION,
            ),
            denm("e", T0 + 60 * MINUTE, LOW_VISIBILITY),
        ]

    messages = trace()
    reference = new_feed()
    expected = [event for message in messages for event in reference.send(message)]
    for cut in range(len(messages) + 1):
        first = new_feed()
        for message in messages[:cut]:
            first.send(message)
        restored = new_feed()
        restored.detector.restore(orjson.loads(orjson.dumps(first.detector.snapshot())))
        restored.clock = first.clock
        rest = [event for message in messages[cut:] for event in restored.send(message)]
        assert first.events + rest == expected, f"cut at {cut}"


def test_restore_refuses_what_is_not_a_snapshot() -> None:
    detector = HazardDetector()
    detector.on_denm(denm("a", T0), T0)
    for bad in ({}, {"format": 99}, {"format": 1, "hazards": [{"event": 3}]}):
        with pytest.raises(ValueError, match="hazard"):
            detector.restore(bad)
    assert len(detector.active_events()) == 1


def test_invalid_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="radius"):
        HazardRules(radius_m=0)
    with pytest.raises(ValueError, match="expiry"):
        HazardRules(expiry_ms=0)
