"""Saved detection state of format 1 still loads, and the detector goes on from it unchanged.

`snapshots/format-1/state.json` is a gateway state file as the gateway wrote it, with format 1
in every part, after `head()` below; `tail-events.json` beside it holds the events the detector
then gave for `tail()`. Both were written once and are never regenerated: a detector whose
state changes shape must still read them (through a migration) and give the same events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from roadwatch.adapters.state import StateStore
from roadwatch.domain.detector import Detector
from roadwatch.domain.events import Event, EventType
from roadwatch.domain.geo import destination
from roadwatch.domain.messages import Cam, Denm, Termination
from roadwatch.domain.zones import Zone

FORMAT_1 = Path(__file__).parent / "snapshots" / "format-1"
TAIL_EVENTS_V1 = FORMAT_1 / "tail-events.json"

T0 = 1_700_000_000_000
SECOND = 1000
MINUTE = 60_000
LAT, LON = 49.25, 4.03
HALF = 0.002
CENTRE = Zone(
    "centre",
    "Centre",
    (
        (
            (
                (LON - HALF, LAT - HALF),
                (LON + HALF, LAT - HALF),
                (LON + HALF, LAT + HALF),
                (LON - HALF, LAT + HALF),
                (LON - HALF, LAT - HALF),
            ),
        ),
    ),
)
# East of the centre, with a hysteresis band of its own.
EAST = Zone(
    "east",
    "East",
    (
        (
            (
                (LON + HALF, LAT - HALF),
                (LON + 3 * HALF, LAT - HALF),
                (LON + 3 * HALF, LAT + HALF),
                (LON + HALF, LAT + HALF),
                (LON + HALF, LAT - HALF),
            ),
        ),
    ),
    hysteresis_m=20.0,
)
# The phase with every kind of state starts here; before it, stations that will be forgotten.
BUSY_MS = T0 + 45 * MINUTE
Message = Cam | Denm


def cam(station: str, t: int, lat: float, lon: float, speed: float = 50.0) -> Cam:
    return Cam(station, 5, t, lat, lon, speed, 90.0)


def denm(
    station: str,
    t: int,
    cause: int,
    bearing_m: tuple[float, float] = (0.0, 0.0),
    station_type: int = 5,
    termination: Termination | None = None,
) -> Denm:
    lat, lon = destination(LAT, LON, *bearing_m)
    return Denm(station, station_type, t, lat, lon, cause, None, termination)


def head() -> list[Message]:
    """Forgotten stations, a lead, a jam, zone members, a pending and an active accident..."""
    trace: list[Message] = [
        cam("early", T0, LAT + 0.05, LON),
        denm("old-hazard", T0 + SECOND, 6, (0.0, 3000.0)),
    ]
    # A lone ticker moves the clock through a quiet 45 minutes: the early ones are forgotten.
    for k in range(1, 45 * 12):
        trace.append(cam("ticker", T0 + k * 5 * SECOND, LAT + 0.05, LON + 0.01))
    for s in range(150):
        t = BUSY_MS + s * SECOND
        for n in range(4):
            lat, lon = destination(LAT, LON, 90, -300 + s * 2.0 + n * 10)
            trace.append(cam(f"car-{n}", t + n * 10, lat, lon, 8.0))
        if s == 5:
            trace.append(cam("parker", t, LAT + 0.001, LON))
            trace.append(cam("eastern", t, LAT, LON + 2 * HALF))
        if s == 20:
            trace.append(denm("w1", t, 2))
            trace.append(denm("w2", t + SECOND, 2, (0.0, 50.0)))
        if s == 40:
            trace.append(denm("lonely", t, 2, (180.0, 2000.0)))
        if s == 60:
            trace.append(denm("works", t, 3, (180.0, 900.0), 15))
            trace.append(denm("works-2", t + SECOND, 3, (180.0, 950.0)))
        if s == 80:
            trace.append(denm("fog", t, 18, (270.0, 1500.0)))
            trace.append(cam("car-0", t - 5 * SECOND, LAT, LON))  # late: stale
        if s == 100:
            trace.append(denm("reporter", t, 1))
        if s == 140:
            trace.append(cam("fast", t + 4 * MINUTE, LAT - 0.05, LON))  # a lead, unconfirmed
    return trace


def tail() -> list[Message]:
    """The traffic speeds up and leaves; later everything times out and expires."""
    trace: list[Message] = []
    start = BUSY_MS + 150 * SECOND
    for s in range(200):
        t = start + s * SECOND
        for n in range(4):
            lat, lon = destination(LAT, LON, 90, s * 20.0 + n * 10)
            trace.append(cam(f"car-{n}", t + n * 10, lat, lon, 70.0))
        if s == 10:
            trace.append(denm("works", t, 3, (180.0, 900.0), 15, Termination.NEGATION))
        if s == 30:
            trace.append(cam("eastern", t, LAT, LON + 2 * HALF + 0.0002))  # in the band
        if s == 50:
            trace.append(denm("w3", t, 2, (90.0, 30.0)))
    trace.append(cam("ticker", start + 50 * MINUTE, LAT + 0.05, LON + 0.01))
    return trace


def v1_detector_state() -> dict[str, Any]:
    loaded = StateStore(FORMAT_1).load()
    assert loaded.problems == []
    assert loaded.detector is not None
    return loaded.detector


def test_a_format_1_state_file_restores_to_exactly_its_state() -> None:
    saved = v1_detector_state()
    detector = Detector()
    detector.restore(saved)
    assert detector.zones == (CENTRE, EAST)
    # The gateway keeps its own part beside the detector's, which the detector leaves alone.
    assert detector.snapshot() == {k: v for k, v in saved.items() if k != "gateway_partition"}


def test_a_detector_restored_from_format_1_gives_the_events_it_gave_then() -> None:
    detector = Detector()
    detector.restore(v1_detector_state())
    events = detector.process_batch(tail())
    expected = [Event.from_dict(item) for item in orjson.loads(TAIL_EVENTS_V1.read_bytes())]
    assert events == expected
    assert {event.type for event in expected} == set(EventType)


def test_the_detector_still_writes_format_1_as_it_did() -> None:
    detector = Detector(zones=[CENTRE, EAST])
    detector.process_batch(head())
    saved = v1_detector_state()
    assert detector.snapshot() == {k: v for k, v in saved.items() if k != "gateway_partition"}
