"""Traffic-jam detection (docs/contract/detection.md §5) on hand-built CAMs and DENMs."""

from __future__ import annotations

import itertools
from typing import Any

import h3
import orjson
import pytest

from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.domain.messages import Cam, Denm, Termination
from roadwatch.domain.traffic_jam import JamRules, TrafficJamDetector

T0 = 1_700_000_000_000
SECOND = 1000
MINUTE = 60 * SECOND
NORTH, EAST, SOUTH, WEST = 0.0, 90.0, 180.0, 270.0

# Five H3 resolution-9 cells in a row, each one the neighbour of the next: a stretch of road.
_START = h3.latlng_to_cell(49.25, 4.03, 9)
ROAD: list[str] = list(h3.grid_path_cells(_START, min(h3.grid_ring(_START, 4))))
A, B, C, D, E = ROAD


def centre(cell: str) -> tuple[float, float]:
    lat, lon = h3.cell_to_latlng(cell)
    return lat, lon


class Feed:
    """Drive a TrafficJamDetector as the detector does: the clock is the newest timestamp."""

    def __init__(self, rules: JamRules | None = None) -> None:
        self.detector = TrafficJamDetector(rules)
        self.clock = 0
        self.events: list[Event] = []

    def cam(
        self, station: str, t: int, cell: str, speed: float, heading: float = NORTH
    ) -> list[Event]:
        lat, lon = centre(cell)
        self.clock = max(self.clock, t)
        produced = self.detector.on_cam(Cam(station, 5, t, lat, lon, speed, heading), self.clock)
        self.events.extend(produced)
        return produced

    def denm(
        self,
        station: str,
        t: int,
        cell: str,
        cause: int = 1,
        termination: Termination | None = None,
    ) -> list[Event]:
        lat, lon = centre(cell)
        self.clock = max(self.clock, t)
        message = Denm(station, 5, t, lat, lon, cause, None, termination)
        produced = self.detector.on_denm(message, self.clock)
        self.events.extend(produced)
        return produced

    def tick(self, t: int) -> list[Event]:
        self.clock = max(self.clock, t)
        produced = self.detector.expire(self.clock)
        self.events.extend(produced)
        return produced

    def traffic(
        self,
        cars: dict[str, tuple[str, float]],
        start: int,
        end: int,
        heading: float = NORTH,
        every: int = SECOND,
    ) -> None:
        """Each car (station: cell, speed) reports every `every` ms in [start, end)."""
        for t in range(start, end, every):
            for station, (cell, speed) in cars.items():
                self.cam(station, t, cell, speed, heading)

    def ids(self) -> list[str]:
        return list(dict.fromkeys(event.id for event in self.events))

    def latest(self) -> dict[str, Event]:
        return {event.id: event for event in self.events}


def slow_cars(
    cell: str, n: int = 3, speed: float = 10.0, prefix: str = ""
) -> dict[str, tuple[str, float]]:
    """Return `n` cars reporting from `cell` at `speed`, named after the cell."""
    return {f"{prefix}{cell[-6:]}-{i}": (cell, speed) for i in range(n)}


# ------------------------------------------------------------------ starting


def test_three_slow_stations_in_one_cell_start_a_jam_with_the_spec_fields() -> None:
    feed = Feed()
    feed.cam("car-b", T0, A, 12.0)
    feed.cam("car-a", T0 + 200, A, 6.0)
    [event] = feed.cam("car-c", T0 + 500, A, 0.0)
    assert event.type is EventType.TRAFFIC_JAM
    assert event.status is EventStatus.ACTIVE
    assert event.version == 1
    assert event.cause_code == 1
    assert event.station_ids == ("car-a", "car-b", "car-c")
    assert event.started_ms == event.updated_ms == T0 + 500
    assert event.ended_ms is None
    assert event.id == new_event_id(T0 + 500, "traffic_jam", A, "N", str(T0 + 500))
    details = event.details
    assert details["vehicle_count"] == 3
    assert details["mean_speed_kmh"] == 6.0
    assert details["cells"] == 1
    assert details["direction"] == "N"
    lat, lon = centre(A)
    assert (event.lat, event.lon) == pytest.approx((lat, lon), abs=1e-6)
    extent = details["extent"]
    assert extent["type"] == "Polygon"
    # GeoJSON order is lon, lat; the ring is closed and surrounds the cell.
    ring = extent["coordinates"][0]
    assert ring[0] == ring[-1]
    assert all(abs(x - lon) < 0.01 and abs(y - lat) < 0.01 for x, y in ring)
    assert set(h3.geo_to_cells(extent, 9)) == {A}
    assert orjson.loads(event.to_json())["details"] == details


def test_two_slow_stations_are_not_a_jam() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A, 2, speed=0.0), T0, T0 + 5 * MINUTE)
    assert feed.events == []


@pytest.mark.parametrize(("speeds", "jammed"), [((20, 30, 40), True), ((20, 30, 40.5), False)])
def test_a_jam_needs_a_mean_of_at_most_30_kmh(speeds: tuple[float, ...], jammed: bool) -> None:
    feed = Feed()
    feed.traffic({f"s{i}": (A, v) for i, v in enumerate(speeds)}, T0, T0 + MINUTE)
    assert bool(feed.events) is jammed


def test_the_mean_uses_each_stations_latest_speed_not_its_report_count() -> None:
    feed = Feed()
    # A fast car reporting ten times a second does not outweigh two crawling ones.
    for t in range(T0, T0 + 10 * SECOND, 100):
        feed.cam("fast", t, A, 45.0)
    feed.cam("slow-1", T0 + 10 * SECOND, A, 20.0)
    [event] = feed.cam("slow-2", T0 + 10 * SECOND, A, 20.0)
    assert event.details["mean_speed_kmh"] == pytest.approx(28.3)


def test_a_station_counts_once_however_often_it_reports() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A, 2), T0, T0 + 2 * MINUTE, every=100)
    assert feed.events == []


def test_reports_older_than_the_window_are_forgotten() -> None:
    feed = Feed()
    feed.cam("a", T0, A, 0.0)
    feed.cam("b", T0, A, 0.0)
    assert feed.cam("c", T0 + MINUTE, A, 0.0) == []  # the first two just left the window
    feed = Feed()
    feed.cam("a", T0, A, 0.0)
    feed.cam("b", T0, A, 0.0)
    assert len(feed.cam("c", T0 + MINUTE - 1, A, 0.0)) == 1


def test_a_report_already_out_of_the_window_when_it_arrives_is_ignored() -> None:
    feed = Feed()
    feed.cam("clock", T0 + 2 * MINUTE, E, 90.0)
    for station in ("a", "b", "c"):
        feed.cam(station, T0, A, 0.0)  # delivered two minutes late
    assert feed.events == []


def test_stations_may_interleave_within_the_clock() -> None:
    feed = Feed()
    feed.cam("a", T0 + 30 * SECOND, A, 5.0)
    feed.cam("b", T0 + 10 * SECOND, A, 5.0)  # older than the clock, still in the window
    [event] = feed.cam("c", T0 + 20 * SECOND, A, 5.0)
    assert event.started_ms == T0 + 30 * SECOND
    assert event.details["vehicle_count"] == 3


def test_a_report_stamped_ahead_of_the_clock_counts_as_made_now() -> None:
    detector = TrafficJamDetector()
    lat, lon = centre(A)
    ahead = T0 + 4 * MINUTE  # a vehicle whose clock runs fast: the detection clock stays
    detector.on_cam(Cam("skewed", 5, ahead, lat, lon, 0.0, NORTH), T0)
    detector.on_cam(Cam("b", 5, T0, lat, lon, 0.0, NORTH), T0)
    [event] = detector.on_cam(Cam("c", 5, T0, lat, lon, 0.0, NORTH), T0)
    assert event.started_ms == T0
    # All three leave the window together, a minute later; two more minutes and it clears.
    [end] = detector.expire(T0 + 3 * MINUTE)
    assert end.status is EventStatus.CLEARED
    assert end.ended_ms == T0 + 3 * MINUTE


# ------------------------------------------------------------------ directions


def test_the_two_carriageways_of_a_road_are_separate() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A, prefix="north-"), T0, T0 + MINUTE, heading=NORTH)
    feed.traffic(slow_cars(A, speed=100.0, prefix="south-"), T0, T0 + MINUTE, heading=SOUTH)
    [jam] = feed.detector.active_events()
    assert jam.details["direction"] == "N"
    assert all(s.startswith("north-") for s in jam.station_ids)

    feed.traffic(slow_cars(A, prefix="south-"), T0 + MINUTE, T0 + 2 * MINUTE, heading=SOUTH)
    jams = feed.detector.active_events()
    assert [j.details["direction"] for j in jams] == ["N", "S"]
    assert len({j.id for j in jams}) == 2


@pytest.mark.parametrize(
    ("heading", "direction"),
    [(0.0, "N"), (44.9, "N"), (45.0, "E"), (134.9, "E"), (180.0, "S"), (270.0, "W"),
     (314.9, "W"), (315.0, "N"), (360.0, "N")],
)  # fmt: skip
def test_headings_fall_into_four_quadrants(heading: float, direction: str) -> None:
    feed = Feed()
    feed.traffic(slow_cars(A), T0, T0 + SECOND, heading=heading)
    [event] = feed.events
    assert event.details["direction"] == direction


# ------------------------------------------------------------------ extent


def test_neighbouring_jammed_cells_form_one_jam_covering_both() -> None:
    feed = Feed()
    feed.traffic({**slow_cars(A), **slow_cars(B, speed=20.0)}, T0, T0 + MINUTE)
    [jam] = feed.detector.active_events()
    assert len(feed.ids()) == 1
    assert jam.details["cells"] == 2
    assert jam.details["vehicle_count"] == 6
    assert jam.details["mean_speed_kmh"] == 15.0
    assert jam.details["extent"]["type"] == "Polygon"  # one outline around both cells
    assert set(h3.geo_to_cells(jam.details["extent"], 9)) == {A, B}
    mid = ((centre(A)[0] + centre(B)[0]) / 2, (centre(A)[1] + centre(B)[1]) / 2)
    assert (jam.lat, jam.lon) == pytest.approx(mid, abs=1e-6)


def test_cells_apart_are_separate_jams() -> None:
    feed = Feed()
    feed.traffic({**slow_cars(A), **slow_cars(C)}, T0, T0 + MINUTE)
    jams = feed.detector.active_events()
    assert len(jams) == 2
    assert sorted(j.details["cells"] for j in jams) == [1, 1]


def test_a_jam_grows_along_the_road_and_counts_every_vehicle_once() -> None:
    feed = Feed()
    # The same three cars crawl from A to B: counted in both cells, but only three vehicles.
    feed.traffic(slow_cars(A, prefix="x"), T0, T0 + 20 * SECOND)
    cars = {s: (B, v) for s, (_, v) in slow_cars(A, prefix="x").items()}
    feed.traffic(cars, T0 + 20 * SECOND, T0 + 40 * SECOND)
    [jam] = feed.detector.active_events()
    assert jam.details["cells"] == 2
    assert jam.details["vehicle_count"] == 3


# ------------------------------------------------------------------ hysteresis and clearing


def test_speeds_jittering_around_30_kmh_raise_one_jam_that_stays() -> None:
    feed = Feed()
    for n, t in enumerate(range(T0, T0 + 10 * MINUTE, SECOND)):
        jitter = 3.0 if n % 2 else -3.0
        for i in range(4):
            feed.cam(f"s{i}", t, A, 30.0 + jitter)
    assert len(feed.ids()) == 1
    assert all(e.status is EventStatus.ACTIVE for e in feed.events)


def test_speeds_jittering_around_50_kmh_never_clear_a_jam() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A, 4), T0, T0 + MINUTE)
    for n, t in enumerate(range(T0 + MINUTE, T0 + 15 * MINUTE, SECOND)):
        speed = 53.0 if (n // 30) % 2 else 47.0  # above 50 for 30 s, below for 30 s
        for i in range(4):
            feed.cam(f"{A[-6:]}-{i}", t, A, speed)
    assert len(feed.ids()) == 1
    assert all(e.status is EventStatus.ACTIVE for e in feed.events)


def test_free_flow_for_120_s_clears_the_jam_once_and_does_not_restart_it() -> None:
    feed = Feed()
    cars = slow_cars(A)
    feed.traffic(cars, T0, T0 + MINUTE)
    fast = {s: (A, 60.0) for s in cars}
    free_from = T0 + MINUTE  # every car's latest speed is 60 km/h from this report on
    feed.traffic(fast, free_from, free_from + 120 * SECOND)
    assert all(e.status is EventStatus.ACTIVE for e in feed.events)
    feed.traffic(fast, free_from + 120 * SECOND, free_from + 10 * MINUTE)
    cleared = [e for e in feed.events if e.status is EventStatus.CLEARED]
    [end] = cleared
    assert end.ended_ms == end.updated_ms == free_from + 120 * SECOND
    assert end.details["reason"] == "free_flow"
    assert end.version == feed.events[-1].version
    assert len(feed.ids()) == 1
    assert feed.detector.active_events() == []


def test_a_jam_clears_120_s_after_fewer_than_two_stations_report() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A), T0, T0 + MINUTE)
    last = T0 + MINUTE - SECOND
    # One car stays, slow; one is not enough to keep the jam.
    feed.traffic({"stayer": (A, 5.0)}, T0 + MINUTE, T0 + 6 * MINUTE)
    [end] = [e for e in feed.events if e.status is EventStatus.CLEARED]
    assert end.ended_ms == last + MINUTE + 120 * SECOND
    assert end.details["reason"] == "few_reports"


def test_a_silent_jam_clears_by_time_alone() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A), T0, T0 + 10 * SECOND)
    due = T0 + 9 * SECOND + MINUTE + 120 * SECOND
    # No "zero vehicles" version while the last reports leave the window and time runs out.
    assert feed.tick(due - 1) == []
    [end] = feed.tick(due)
    assert end.status is EventStatus.CLEARED
    assert end.ended_ms == due
    assert end.details["vehicle_count"] == 3  # what was last shown
    assert feed.detector.next_due_ms() is None


def test_next_due_tells_when_to_call_expire() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A), T0, T0 + 10 * SECOND)
    clears: list[Event] = []
    while (due := feed.detector.next_due_ms()) is not None:
        clears.extend(feed.tick(due))
    assert [e.status for e in clears][-1] is EventStatus.CLEARED
    assert feed.detector.active_events() == []


# ------------------------------------------------------------------ updates


def test_updates_come_at_most_every_30_s() -> None:
    feed = Feed()
    # One more car joins every 2 s: the count changes constantly.
    for n in range(60):
        feed.traffic({f"s{i}": (A, 10.0) for i in range(3 + n)}, T0 + n * 2000, T0 + n * 2000 + 1)
    times = [e.updated_ms for e in feed.events]
    assert len(times) >= 4
    assert all(b - a >= 30 * SECOND for a, b in itertools.pairwise(times))
    assert [e.version for e in feed.events] == list(range(1, len(times) + 1))
    counts = [e.details["vehicle_count"] for e in feed.events]
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_a_steady_jam_is_not_republished() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A, 5), T0, T0 + 10 * MINUTE)
    # Raised on the third car; the other two, seen the same second, come in the next update.
    assert [(e.version, e.details["vehicle_count"]) for e in feed.events] == [(1, 3), (2, 5)]
    assert feed.events[-1].updated_ms == T0 + 30 * SECOND


def test_a_change_after_a_quiet_spell_is_published_at_once() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A), T0, T0 + MINUTE)
    [update] = feed.cam("newcomer", T0 + MINUTE, A, 10.0)
    assert update.version == 2
    assert update.details["vehicle_count"] == 4
    assert update.updated_ms == T0 + MINUTE


# ------------------------------------------------------------------ DENMs


def test_a_traffic_jam_denm_counts_as_a_stopped_vehicle() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A, 2, speed=40.0), T0, T0 + 5 * SECOND)
    feed.cam("reporter", T0, E, 40.0, NORTH)  # heading known from its CAM
    [event] = feed.denm("reporter", T0 + 5 * SECOND, A)
    assert event.station_ids == (f"{A[-6:]}-0", f"{A[-6:]}-1", "reporter")
    assert event.details["mean_speed_kmh"] == pytest.approx(26.7)
    assert event.details["direction"] == "N"


def test_a_denm_of_unknown_heading_counts_for_every_direction_seen_in_the_cell() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A, 2, prefix="n"), T0, T0 + 5 * SECOND, heading=NORTH)
    feed.traffic(slow_cars(A, 2, prefix="s"), T0, T0 + 5 * SECOND, heading=SOUTH)
    events = feed.denm("stranger", T0 + 5 * SECOND, A)
    assert sorted(e.details["direction"] for e in events) == ["N", "S"]


def test_a_denm_uses_the_heading_of_its_reporter_only() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A, 2, prefix="n"), T0, T0 + 5 * SECOND, heading=NORTH)
    feed.traffic(slow_cars(A, 2, prefix="s"), T0, T0 + 5 * SECOND, heading=SOUTH)
    feed.cam("southbound", T0, E, 3.0, SOUTH)
    events = feed.denm("southbound", T0 + 5 * SECOND, A)
    assert [e.details["direction"] for e in events] == ["S"]


@pytest.mark.parametrize(
    ("cause", "termination"),
    [(2, None), (3, None), (1, Termination.CANCELLATION), (1, Termination.NEGATION)],
)
def test_other_denms_count_for_nothing(cause: int, termination: Termination | None) -> None:
    feed = Feed()
    feed.traffic(slow_cars(A, 2), T0, T0 + 5 * SECOND)
    assert feed.denm("other", T0 + 5 * SECOND, A, cause, termination) == []
    assert feed.events == []


def test_three_denms_alone_start_nothing_when_no_direction_is_known() -> None:
    feed = Feed()
    for i in range(3):
        feed.denm(f"d{i}", T0 + i, A)
    assert feed.events == []


# ------------------------------------------------------------------ merge and split


def test_two_jams_that_grow_together_merge_into_the_older_one() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A), T0, T0 + 10 * SECOND)
    feed.traffic(slow_cars(C), T0 + 10 * SECOND, T0 + 40 * SECOND)
    older, younger = feed.ids()
    feed.traffic({**slow_cars(A), **slow_cars(C)}, T0 + 40 * SECOND, T0 + MINUTE)
    merged_at = T0 + MINUTE
    # The middle cell jams: the two become one.
    feed.traffic({**slow_cars(A), **slow_cars(B), **slow_cars(C)}, merged_at, merged_at + MINUTE)
    assert feed.ids() == [older, younger]
    latest = feed.latest()
    survivor, gone = latest[older], latest[younger]
    assert survivor.status is EventStatus.ACTIVE
    assert survivor.details["cells"] == 3
    assert set(h3.geo_to_cells(survivor.details["extent"], 9)) == {A, B, C}
    assert gone.status is EventStatus.CLEARED
    assert gone.details["reason"] == "merged"
    assert gone.details["merged_into"] == older
    # Both appear together, so a map never loses the younger jam's stretch in between.
    assert gone.updated_ms == survivor.updated_ms == gone.ended_ms
    assert [j.id for j in feed.detector.active_events()] == [older]


def test_a_jam_that_splits_keeps_its_id_on_the_founding_cells_side() -> None:
    feed = Feed()
    feed.traffic(slow_cars(C), T0, T0 + SECOND)  # C founds the jam
    cars = {**slow_cars(C), **slow_cars(B), **slow_cars(A)}
    feed.traffic(cars, T0 + SECOND, T0 + MINUTE)
    [original] = feed.ids()
    # B's traffic flows freely again; A and C stay jammed.
    cars.update({s: (B, 70.0) for s in slow_cars(B)})
    feed.traffic(cars, T0 + MINUTE, T0 + 5 * MINUTE)
    latest = feed.latest()
    assert len(latest) == 2
    kept = latest[original]
    [new_id] = [i for i in latest if i != original]
    split = latest[new_id]
    assert kept.status is split.status is EventStatus.ACTIVE
    assert set(h3.geo_to_cells(kept.details["extent"], 9)) == {C}
    assert set(h3.geo_to_cells(split.details["extent"], 9)) == {A}
    assert split.version == 1
    # The new part appears with the parent's shrunk extent, never overlapping it.
    assert split.updated_ms == kept.updated_ms
    assert new_id == new_event_id(split.started_ms, "traffic_jam", A, "N", str(split.started_ms))


def test_a_jam_keeps_its_id_when_its_founding_cell_frees_up() -> None:
    feed = Feed()
    feed.traffic(slow_cars(A), T0, T0 + SECOND)
    cars = {**slow_cars(A), **slow_cars(B), **slow_cars(C)}
    feed.traffic(cars, T0 + SECOND, T0 + MINUTE)
    cars.update({s: (A, 70.0) for s in slow_cars(A)})
    feed.traffic(cars, T0 + MINUTE, T0 + 5 * MINUTE)
    [only] = feed.ids()
    [jam] = feed.detector.active_events()
    assert jam.id == only
    assert set(h3.geo_to_cells(jam.details["extent"], 9)) == {B, C}


# ------------------------------------------------------------------ snapshot


def scenario() -> list[Cam | Denm]:
    """Jams that start, grow, merge, split and clear, in both directions, with DENMs."""
    trace: list[Cam | Denm] = []

    def cam(station: str, t: int, cell: str, speed: float, heading: float = NORTH) -> None:
        trace.append(Cam(station, 5, t, *centre(cell), speed, heading))

    for t in range(T0, T0 + 6 * MINUTE, 2 * SECOND):
        elapsed = t - T0
        for cell in (A, C):
            for station in slow_cars(cell):
                cam(station, t, cell, 10.0)
        if elapsed >= 40 * SECOND:
            for station in slow_cars(B):
                cam(station, t, B, 10.0 if elapsed < 2 * MINUTE else 80.0)
            for station in slow_cars(D, 2):
                cam(station, t, D, 20.0)
        for station in slow_cars(E, prefix="s"):
            cam(station, t + 1, E, 8.0 if elapsed < 3 * MINUTE else 90.0, SOUTH)
        if elapsed == 50 * SECOND:
            # Heading unknown: counts for D's only carriageway, which jams and joins the rest.
            trace.append(Denm("walker", 5, t, *centre(D), 1))
    return trace


def play(detector: TrafficJamDetector, trace: list[Cam | Denm], clock: int = 0) -> list[Event]:
    events: list[Event] = []
    for message in trace:
        clock = max(clock, message.timestamp_ms)
        if isinstance(message, Cam):
            events.extend(detector.on_cam(message, clock))
        else:
            events.extend(detector.on_denm(message, clock))
    events.extend(detector.expire(clock + 10 * MINUTE))
    return events


def test_the_snapshot_scenario_exercises_merge_split_and_clear() -> None:
    events = play(TrafficJamDetector(), scenario())
    reasons = {e.details.get("reason") for e in events if e.status is EventStatus.CLEARED}
    assert {"merged", "free_flow", "few_reports"} <= reasons
    assert len({e.id for e in events}) >= 4


@pytest.mark.parametrize("cut", [1, 30, 100, 190, 260, 400, 650, -1])
def test_a_restored_snapshot_continues_exactly_like_the_original(cut: int) -> None:
    trace = scenario()
    cut = cut % len(trace)
    reference = play(TrafficJamDetector(), trace)
    first = TrafficJamDetector()
    before = play_prefix(first, trace[:cut])
    stored = orjson.loads(orjson.dumps(first.snapshot()))
    second = TrafficJamDetector()
    second.restore(stored)
    assert second.active_events() == first.active_events()
    clock = max(m.timestamp_ms for m in trace[:cut])
    assert before + play(second, trace[cut:], clock) == reference


def play_prefix(detector: TrafficJamDetector, trace: list[Cam | Denm]) -> list[Event]:
    events: list[Event] = []
    clock = 0
    for message in trace:
        clock = max(clock, message.timestamp_ms)
        if isinstance(message, Cam):
            events.extend(detector.on_cam(message, clock))
        else:
            events.extend(detector.on_denm(message, clock))
    return events


def test_restore_refuses_something_that_is_not_a_snapshot() -> None:
    with pytest.raises(ValueError, match="snapshot"):
        TrafficJamDetector().restore({"format": 1, "cells": [["x"]], "jams": [], "headings": []})


# ------------------------------------------------------------------ rules


@pytest.mark.parametrize(
    "bad",
    [
        {"cell_resolution": 16},
        {"window_ms": 0},
        {"min_stations": 0},
        {"slow_speed_kmh": 50.0, "free_speed_kmh": 50.0},
        {"slow_speed_kmh": -1.0},
        {"clear_after_ms": 0},
        {"clear_min_stations": 4},
        {"clear_min_stations": 0},
        {"update_interval_ms": -1},
    ],
)
def test_jam_rules_refuse_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        JamRules(**bad)


def test_rules_are_configurable() -> None:
    rules = JamRules(min_stations=2, slow_speed_kmh=10.0, clear_min_stations=1)
    feed = Feed(rules)
    feed.traffic(slow_cars(A, 2, speed=15.0), T0, T0 + MINUTE)
    assert feed.events == []
    feed.traffic(slow_cars(B, 2, speed=5.0), T0 + MINUTE, T0 + 2 * MINUTE)
    assert len(feed.ids()) == 1
