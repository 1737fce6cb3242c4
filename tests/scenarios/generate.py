"""Write the ground-truth scenarios: a JSONL trace and its expected events for each.

Run `python -m tests.scenarios.generate` after changing a scenario; the outputs are committed.
Every scenario is deterministic, uses its own station ids and its own part of Reims, and
describes each expected event by what a user would check: its type, final status, stations
and zone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
T0 = 1_780_000_000_000  # trace time origin; replays shift it to end "now"
M_PER_DEG_LAT = 111_320.0


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """Return the point `north_m` and `east_m` away from (lat, lon)."""
    return (
        lat + north_m / M_PER_DEG_LAT,
        lon + east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat))),
    )


@dataclass
class Trace:
    """A scenario under construction: publications in time order and expected events."""

    name: str
    lines: list[dict[str, Any]] = field(default_factory=list)
    expected: list[dict[str, Any]] = field(default_factory=list)

    def cam(
        self,
        station: str,
        t_s: float,
        lat: float,
        lon: float,
        speed: float,
        heading: float,
        station_type: int = 5,
    ) -> None:
        payload = {
            "stationId": station,
            "stationType": station_type,
            "timestamp": T0 + round(t_s * 1000),
            "lat": round(lat, 7),
            "lon": round(lon, 7),
            "speed": speed,
            "heading": heading,
        }
        self.lines.append({"topic": f"vehicles/{station}/cam", "qos": 0, "payload": payload})

    def denm(
        self,
        station: str,
        t_s: float,
        lat: float,
        lon: float,
        cause: int,
        station_type: int = 5,
        termination: str | None = None,
    ) -> None:
        payload: dict[str, Any] = {
            "stationId": station,
            "stationType": station_type,
            "timestamp": T0 + round(t_s * 1000),
            "lat": round(lat, 7),
            "lon": round(lon, 7),
            "causeCode": cause,
        }
        if termination:
            payload["termination"] = termination
        self.lines.append({"topic": f"vehicles/{station}/denm", "qos": 1, "payload": payload})

    def expect(
        self,
        type_: str,
        status: str,
        stations: list[str],
        zone_id: str | None = None,
        *,
        exact: bool = True,
    ) -> None:
        """Expect one event; `exact=False`: its stations are some of `stations`."""
        self.expected.append(
            {
                "type": type_,
                "status": status,
                "station_ids": sorted(stations),
                "zone_id": zone_id,
                "exact_stations": exact,
            }
        )

    def write(self) -> None:
        self.lines.sort(key=lambda line: line["payload"]["timestamp"])
        with (HERE / f"{self.name}.jsonl").open("wb") as out:
            for line in self.lines:
                out.write(orjson.dumps(line) + b"\n")
        (HERE / f"{self.name}.expected.json").write_bytes(
            orjson.dumps(self.expected, option=orjson.OPT_INDENT_2) + b"\n"
        )


def accident() -> Trace:
    """Two witnesses raise it, a third joins, a road operator clears it; decoys raise nothing."""
    trace = Trace("accident")
    lat, lon = 49.2415, 4.0620  # avenue de Champagne
    trace.denm("gt-acc-w1", 10, lat, lon, 2)
    trace.denm("gt-acc-w2", 40, *offset(lat, lon, 60, 30), 2)
    trace.denm("gt-acc-w3", 100, *offset(lat, lon, -80, 0), 2)
    trace.denm("gt-acc-w1", 130, lat, lon, 2)  # a repeat: no new reporter
    trace.denm(
        "gt-acc-op", 400, *offset(lat, lon, 20, 20), 2, station_type=15, termination="negation"
    )
    trace.expect("accident", "cleared", ["gt-acc-w1", "gt-acc-w2", "gt-acc-w3"])
    # A lone reporter 2 km away, and two reporters 250 m apart: no accident.
    far_lat, far_lon = offset(lat, lon, 2000, 0)
    trace.denm("gt-acc-lone", 50, far_lat, far_lon, 2)
    trace.denm("gt-acc-d1", 60, *offset(lat, lon, 0, 3000), 2)
    trace.denm("gt-acc-d2", 70, *offset(lat, lon, 250, 3000), 2)
    # CAMs keep the detection clock moving, as real traffic would.
    for second in range(0, 420, 5):
        trace.cam("gt-acc-traffic", second, *offset(lat, lon, 500, second * 2), 40.0, 90.0)
    return trace


def traffic_jam() -> Trace:
    """Five cars crawl east for 90 s, then drive off; the other carriageway flows freely."""
    trace = Trace("traffic_jam")
    lat, lon = 49.2300, 4.0900  # the eastern ring road, away from every zone
    cars = [f"gt-jam-c{n}" for n in range(5)]
    for second in range(0, 300):
        for index, car in enumerate(cars):
            gap_m = index * 12.0
            if second < 90:
                east = second * 10 / 3.6 - gap_m  # 10 km/h
                speed = 10.0
            else:
                east = 90 * 10 / 3.6 + (second - 90) * 70 / 3.6 - gap_m  # 70 km/h
                speed = 70.0
            trace.cam(car, second + index * 0.1, *offset(lat, lon, 0, east), speed, 90.0)
        # Opposite carriageway, free flow at 60 km/h: never a jam.
        for index in range(3):
            trace.cam(
                f"gt-jam-o{index}",
                second + 0.5,
                *offset(lat, lon, 8, 4000 - second * 60 / 3.6 - index * 30),
                60.0,
                270.0,
            )
    trace.expect("traffic_jam", "cleared", cars, exact=False)
    return trace


def hazard() -> Trace:
    """Roadworks reported then withdrawn by the road operator."""
    trace = Trace("hazard")
    lat, lon = 49.2700, 4.0500
    trace.denm("gt-haz-op", 5, lat, lon, 3, station_type=15)
    trace.denm("gt-haz-op", 200, lat, lon, 3, station_type=15, termination="cancellation")
    for second in range(0, 230, 5):
        trace.cam("gt-haz-traffic", second, *offset(lat, lon, 300, second), 30.0, 90.0)
    trace.expect("hazard", "cleared", ["gt-haz-op"])
    return trace


def zones() -> Trace:
    """Crossings of deploy/zones/reims.geojson: a drive through, two silences, a direct hop.

    The expected crossings were read off the zones' map: along latitude 49.2536 the A344
    corridor spans longitudes ~4.0194-4.0211 and the centre ~4.0271-4.0440; at latitude 49.259
    the centre and the station district meet near longitude 4.0274.
    """
    trace = Trace("zones")
    # gt-zone-a drives east at 50 km/h from the western suburbs through the centre.
    lat = 49.2536
    for second in range(0, 215):
        east_lon = 4.0120 + second * (50 / 3.6) / (M_PER_DEG_LAT * math.cos(math.radians(lat)))
        trace.cam("gt-zone-a", second, lat, east_lon, 50.0, 90.0)
    trace.expect("zone_enter", "instant", ["gt-zone-a"], "a4-reims")
    trace.expect("zone_exit", "instant", ["gt-zone-a"], "a4-reims")
    trace.expect("zone_enter", "instant", ["gt-zone-a"], "reims-centre")
    trace.expect("zone_exit", "instant", ["gt-zone-a"], "reims-centre")
    # gt-zone-b parks by the cathedral, then falls silent: a timeout exit 10 min later.
    for second in range(0, 61, 5):
        trace.cam("gt-zone-b", second, 49.2536, 4.0340, 0.0, 0.0)
    trace.expect("zone_enter", "instant", ["gt-zone-b"], "reims-centre")
    trace.expect("zone_exit", "instant", ["gt-zone-b"], "reims-centre")
    # gt-zone-c hops from the centre into the station district (exit, then enter), then
    # falls silent there.
    trace.cam("gt-zone-c", 100, 49.2590, 4.0295, 20.0, 270.0)
    for second in range(101, 131, 3):
        trace.cam("gt-zone-c", second, 49.2590, 4.0250, 5.0, 270.0)
    trace.expect("zone_enter", "instant", ["gt-zone-c"], "reims-centre")
    trace.expect("zone_exit", "instant", ["gt-zone-c"], "reims-centre")
    trace.expect("zone_enter", "instant", ["gt-zone-c"], "reims-gare")
    trace.expect("zone_exit", "instant", ["gt-zone-c"], "reims-gare")
    # Traffic outside every zone keeps the detection clock moving past both timeouts.
    for second in range(0, 800, 5):
        trace.cam("gt-zone-traffic", second, 49.2500, 4.0500 + second * 1e-5, 40.0, 90.0)
    return trace


SCENARIOS: dict[str, Callable[[], Trace]] = {
    "zones": zones,
    "accident": accident,
    "traffic_jam": traffic_jam,
    "hazard": hazard,
}


def main() -> None:
    for build in SCENARIOS.values():
        build().write()


def lines(name: str) -> Iterator[dict[str, Any]]:
    """Yield the publications of one scenario's trace."""
    with (HERE / f"{name}.jsonl").open("rb") as trace:
        for line in trace:
            yield orjson.loads(line)


if __name__ == "__main__":
    main()
