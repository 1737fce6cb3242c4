"""A small seeded demo: vehicles circling Reims, and an accident every few minutes."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from roadwatch.simulation.cam import Publication, denm_publication

# Reims cathedral; the demo's loops are centred on it.
CENTRE_LAT = 49.2536
CENTRE_LON = 4.0340
METRES_PER_DEG_LAT = 111_320.0
ACCIDENT_EVERY_MS = 180_000
# A road operator withdraws each accident this long after it happened
# (docs/contract/detection.md §3).
ACCIDENT_CLEARED_AFTER_MS = 120_000
STATION_TYPES = (5, 5, 5, 5, 6, 8)  # mostly cars, some buses and trucks


@dataclass
class DemoVehicle:
    """A vehicle driving round a circle at a steady speed."""

    station_id: str
    station_type: int
    radius_m: float
    speed_kmh: float
    angle_rad: float
    clockwise: bool

    def advance(self, seconds: float) -> None:
        step = (self.speed_kmh / 3.6) * seconds / self.radius_m
        self.angle_rad += -step if self.clockwise else step

    def position(self) -> tuple[float, float]:
        north = self.radius_m * math.cos(self.angle_rad)
        east = self.radius_m * math.sin(self.angle_rad)
        lat = CENTRE_LAT + north / METRES_PER_DEG_LAT
        lon = CENTRE_LON + east / (METRES_PER_DEG_LAT * math.cos(math.radians(CENTRE_LAT)))
        return lat, lon

    def heading(self) -> float:
        bearing = math.degrees(self.angle_rad) + (-90.0 if self.clockwise else 90.0)
        return bearing % 360.0


class DemoTraffic:
    """Produces the demo's MQTT publications second by second of simulated time."""

    def __init__(self, vehicles: int, seed: int, start_ms: int) -> None:
        self.rng = random.Random(seed)
        self.now_ms = start_ms
        self.next_accident_ms = start_ms + ACCIDENT_EVERY_MS // 6
        self.pending_clear: list[tuple[int, float, float]] = []
        self.accidents = 0
        self.vehicles = [
            DemoVehicle(
                station_id=f"demo-{i:04d}",
                station_type=self.rng.choice(STATION_TYPES),
                radius_m=self.rng.uniform(300.0, 2500.0),
                speed_kmh=self.rng.uniform(20.0, 60.0),
                angle_rad=self.rng.uniform(0.0, 2 * math.pi),
                clockwise=self.rng.random() < 0.5,
            )
            for i in range(vehicles)
        ]

    def tick(self, seconds: float = 1.0) -> list[Publication]:
        """Advance the simulated clock and return what the vehicles publish meanwhile."""
        self.now_ms += round(seconds * 1000)
        out: list[Publication] = []
        for vehicle in self.vehicles:
            vehicle.advance(seconds)
            lat, lon = vehicle.position()
            out.append(
                (
                    f"vehicles/{vehicle.station_id}/cam",
                    {
                        "stationId": vehicle.station_id,
                        "stationType": vehicle.station_type,
                        "timestamp": self.now_ms,
                        "lat": round(lat, 7),
                        "lon": round(lon, 7),
                        "speed": round(vehicle.speed_kmh, 1),
                        "heading": round(vehicle.heading(), 1),
                    },
                    0,
                )
            )
        if self.vehicles and self.now_ms >= self.next_accident_ms:
            out += self._accident()
            self.next_accident_ms += ACCIDENT_EVERY_MS
        out += self._clearances()
        return out

    def _accident(self) -> list[Publication]:
        """Two vehicles report an accident a few metres apart (docs/contract/detection.md §4: two
        reporters)."""
        self.accidents += 1
        first, second = (
            self.rng.sample(self.vehicles, 2)
            if len(self.vehicles) > 1
            else (
                self.vehicles[0],
                self.vehicles[0],
            )
        )
        lat, lon = first.position()
        self.pending_clear.append((self.now_ms + ACCIDENT_CLEARED_AFTER_MS, lat, lon))
        return [
            self._denm(first.station_id, first.station_type, lat, lon, cause=2),
            self._denm(second.station_id, second.station_type, lat + 0.0002, lon + 0.0001, cause=2),
        ]

    def _clearances(self) -> list[Publication]:
        due = [item for item in self.pending_clear if item[0] <= self.now_ms]
        self.pending_clear = [item for item in self.pending_clear if item[0] > self.now_ms]
        return [
            self._denm("demo-operator", 15, lat, lon, cause=2, termination="negation")
            for _, lat, lon in due
        ]

    def _denm(
        self,
        station_id: str,
        station_type: int,
        lat: float,
        lon: float,
        *,
        cause: int,
        termination: str | None = None,
    ) -> Publication:
        return denm_publication(
            station_id, station_type, self.now_ms, lat, lon, cause=cause, termination=termination
        )
