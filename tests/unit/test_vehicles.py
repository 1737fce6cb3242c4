"""Simulated vehicles drive plausibly: limits, braking, gaps, no teleporting, reproducible."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import pytest

from roadwatch.domain.geo import destination, haversine_m
from roadwatch.simulation.vehicles import (
    MAX_BRAKING_MPS2,
    SPEED_MARGIN,
    EdgeLike,
    Traffic,
    Vehicle,
    VehicleKind,
)

LAT, LON = 49.2536, 4.0340
KINDS = list(VehicleKind)


@dataclass(frozen=True, slots=True)
class StraightEdge:
    """A straight road from a start point along a bearing, as a network edge."""

    id: str
    from_node: str
    to_node: str
    length_m: float
    speed_limit_kmh: float
    road_class: str
    lat: float
    lon: float
    bearing_deg: float

    def position_at(self, s_m: float) -> tuple[float, float, float]:
        lat, lon = destination(self.lat, self.lon, self.bearing_deg, s_m)
        return lat, lon, self.bearing_deg


def chain(
    spec: Sequence[tuple[float, float]], prefix: str = "e", first_node: int = 0
) -> list[StraightEdge]:
    """Return edges end to end heading east, from (length, limit) pairs."""
    edges = []
    lat, lon = LAT, LON
    for i, (length, limit) in enumerate(spec, start=first_node):
        edges.append(
            StraightEdge(
                f"{prefix}{i}", f"n{i}", f"n{i + 1}", length, limit, "primary", lat, lon, 90.0
            )
        )
        lat, lon = destination(lat, lon, 90.0, length)
    return edges


@dataclass(frozen=True, slots=True)
class ArcEdge:
    """An arc of a circle round (LAT, LON), driven clockwise, as a network edge."""

    id: str
    from_node: str
    to_node: str
    length_m: float
    speed_limit_kmh: float
    road_class: str
    start_m: float
    radius_m: float

    def position_at(self, s_m: float) -> tuple[float, float, float]:
        bearing = math.degrees((self.start_m + s_m) / self.radius_m)
        lat, lon = destination(LAT, LON, bearing, self.radius_m)
        return lat, lon, (bearing + 90.0) % 360.0


# A single-lane ring: the last edge ends where the first starts; limits from 30 to 130 km/h.
RING_SPEC = [(400, 50), (150, 30), (900, 90), (2000, 130), (60, 50), (700, 70), (300, 30)]
RING = [
    ArcEdge(
        f"r{i}",
        f"n{i}",
        f"n{(i + 1) % len(RING_SPEC)}",
        length,
        limit,
        "primary",
        sum(spec[0] for spec in RING_SPEC[:i]),
        sum(spec[0] for spec in RING_SPEC) / (2 * math.pi),
    )
    for i, (length, limit) in enumerate(RING_SPEC)
]
RING_LENGTH = sum(length for length, _ in RING_SPEC)
RING_START: dict[Hashable, float] = {
    e.id: sum(length for length, _ in RING_SPEC[:i]) for i, e in enumerate(RING)
}


def around_the_ring(vehicle: Vehicle) -> list[EdgeLike]:
    """Send a vehicle round the ring again from wherever its route ends."""
    end = vehicle.route_end_node
    first = next(i for i, e in enumerate(RING) if e.from_node == end)
    return [*RING[first:], *RING[:first]]


def ring_traffic(seed: int, count: int) -> Traffic:
    traffic = Traffic(seed, reroute=around_the_ring)
    spacing = RING_LENGTH / count
    for i in range(count):
        at = i * spacing
        index = max(j for j, e in enumerate(RING) if RING_START[e.id] <= at)
        traffic.add(
            KINDS[i % len(KINDS)],
            [*RING[index:], *RING[:index]],
            offset_m=at - RING_START[RING[index].id],
            speed_mps=5.0,
        )
    return traffic


def ring_position(vehicle: Vehicle) -> float:
    return RING_START[vehicle.edge.id] + vehicle.offset_m


@pytest.mark.parametrize(
    ("seed", "count", "dt", "steps"),
    [(11, 60, 1.0, 3600), (12, 150, 0.5, 3600), (13, 20, 0.1, 6000)],
)
def test_a_long_run_on_a_ring_respects_physics(
    seed: int, count: int, dt: float, steps: int
) -> None:
    traffic = ring_traffic(seed, count)
    vehicles = traffic.vehicles
    crashed = vehicles[count // 2].id
    order = [v.id for v in sorted(vehicles, key=ring_position)]
    previous = {v.id: (ring_position(v), v.speed_mps, v.position()) for v in vehicles}
    top_speed = 0.0
    for step in range(steps):
        # A breakdown a quarter of the way in, cleared at half way: the queue behind must hold.
        if step == steps // 4:
            traffic.stop(crashed)
        elif step == steps // 2:
            traffic.release(crashed)
        assert traffic.step(dt) == []
        for v in vehicles:
            old_at, old_speed, (old_lat, old_lon, _) = previous[v.id]
            at = ring_position(v)
            moved = (at - old_at) % RING_LENGTH
            limit = v.edge.speed_limit_kmh / 3.6
            profile = v.kind.profile
            assert 0.0 <= v.speed_mps <= limit * SPEED_MARGIN, (v.id, v.speed_mps, limit)
            accel = (v.speed_mps - old_speed) / dt
            assert -MAX_BRAKING_MPS2 - 1e-9 <= accel <= profile.max_accel_mps2 + 1e-9
            # Never teleports: along the road and on the map, within what its speed allows.
            assert moved <= max(old_speed, v.speed_mps) * dt + 1e-6
            lat, lon, _ = v.position()
            assert haversine_m(old_lat, old_lon, lat, lon) <= moved + 0.01
            previous[v.id] = (at, v.speed_mps, (lat, lon, 0.0))
            top_speed = max(top_speed, v.speed_mps)
        # Single lane: the cyclic order never changes and nobody runs into the one ahead.
        ranked = sorted(vehicles, key=ring_position)
        start = next(i for i, v in enumerate(ranked) if v.id == order[0])
        assert [v.id for v in ranked[start:] + ranked[:start]] == order
        for follower, leader in zip(ranked, ranked[1:] + ranked[:1], strict=True):
            gap = (ring_position(leader) - ring_position(follower)) % RING_LENGTH
            assert gap - leader.length_m >= -1e-6
    # The traffic actually moved at motorway speed somewhere, not just crawled.
    assert top_speed > 90 / 3.6


def test_a_vehicle_stops_behind_a_stopped_one() -> None:
    road = chain([(500, 50), (500, 50)])
    traffic = Traffic(1)
    ahead = traffic.add(VehicleKind.TRUCK, road, offset_m=400.0, speed_mps=10.0)
    behind = traffic.add(VehicleKind.CAR, road, offset_m=0.0, speed_mps=14.0)
    traffic.stop(ahead.id)
    for _ in range(120):
        traffic.step(0.5)
        assert ahead.accel_mps2 >= -MAX_BRAKING_MPS2 - 1e-9
    assert ahead.speed_mps == 0.0
    # The IDM creeps up to its jam distance, so the follower's speed only tends to zero.
    assert behind.speed_mps < 0.05
    gap = ahead.offset_m - ahead.length_m - behind.offset_m
    assert 0.0 <= gap <= 6.0
    traffic.release(ahead.id)
    for _ in range(60):
        traffic.step(1.0)
    assert ahead.speed_mps > 5.0 and behind.speed_mps > 5.0


def test_a_vehicle_sees_a_stopped_one_on_the_next_edge_of_its_route() -> None:
    road = chain([(300, 50), (30, 50), (40, 50), (500, 50)])
    traffic = Traffic(2)
    ahead = traffic.add(VehicleKind.CAR, road[2:], offset_m=20.0)
    traffic.stop(ahead.id)
    behind = traffic.add(VehicleKind.CAR, road, offset_m=0.0, speed_mps=14.0)
    for _ in range(120):
        traffic.step(1.0)
    assert behind.edge.id == "e2"
    assert behind.speed_mps < 0.05
    assert 0.0 <= ahead.offset_m - ahead.length_m - behind.offset_m <= 6.0


def max_speed_on(edge_id: str, slowed_kmh: float | None) -> float:
    road = chain([(2000, 130), (600, 130), (2000, 130)])
    traffic = Traffic(5)
    traffic.set_speed_limit("e1", slowed_kmh)
    for i in range(10):
        traffic.add(VehicleKind.CAR, road, offset_m=1500.0 - 120.0 * i, speed_mps=30.0)
    fastest = 0.0
    for _ in range(300):
        traffic.step(1.0)
        for v in traffic.vehicles:
            if v.edge.id == edge_id:
                fastest = max(fastest, v.speed_mps)
    assert len(traffic) == 0
    return fastest


def test_a_slowed_section_slows_the_traffic_through_it() -> None:
    assert max_speed_on("e1", None) > 100 / 3.6
    assert max_speed_on("e1", 30.0) <= 30 / 3.6 * 1.05 + 1e-9
    # Lifting the limit restores the posted one.
    traffic = Traffic(0)
    traffic.set_speed_limit("e1", 30.0)
    traffic.set_speed_limit("e1", None)
    assert traffic.speed_limit_kmh(chain([(1, 50), (1, 130)])[1]) == 130


def test_a_vehicle_brakes_for_a_lower_limit_ahead_before_reaching_it() -> None:
    road = chain([(1500, 130), (500, 30)])
    traffic = Traffic(3)
    car = traffic.add(VehicleKind.CAR, road, offset_m=0.0, speed_mps=30.0)
    while car.edge_index == 0:
        traffic.step(1.0)
    assert car.speed_mps <= 30 / 3.6 * 1.05 + 1e-9


def trajectories(seed: int) -> list[tuple[str, int, float, float]]:
    traffic = ring_traffic(seed, count=30)
    out = []
    for _ in range(200):
        traffic.step(1.0)
        out += [(v.id, v.edge_index, v.offset_m, v.speed_mps) for v in traffic.vehicles]
    return out


def test_the_same_seed_gives_the_same_trajectories() -> None:
    assert trajectories(4) == trajectories(4)
    assert trajectories(4) != trajectories(5)


def test_moving_to_the_next_edge_keeps_the_leftover_distance() -> None:
    road = chain([(100, 50), (100, 50)])
    traffic = Traffic(0)
    car = traffic.add(VehicleKind.CAR, road, offset_m=95.0, speed_mps=10.0)
    before = car.position()
    traffic.step(1.0)
    assert car.edge_index == 1
    moved = 10.0 + 0.5 * car.accel_mps2
    assert car.offset_m == pytest.approx(95.0 + moved - 100.0)
    lat, lon, _ = car.position()
    assert haversine_m(before[0], before[1], lat, lon) == pytest.approx(moved, abs=0.01)


def test_a_vehicle_without_a_new_route_leaves_at_the_end_of_its_route() -> None:
    traffic = Traffic(0)
    car = traffic.add(VehicleKind.CAR, chain([(100, 50)]), offset_m=90.0, speed_mps=12.0)
    assert traffic.step(1.0) == [car]
    assert len(traffic) == 0
    assert car.offset_m == 100.0


def test_a_rerouted_vehicle_carries_on_from_its_route_end_node() -> None:
    first = chain([(100, 50)])
    second = chain([(100, 50)], prefix="f", first_node=1)
    traffic = Traffic(0, reroute=lambda v: second if v.route_end_node == "n1" else None)
    car = traffic.add(VehicleKind.CAR, first, offset_m=90.0, speed_mps=12.0)
    assert traffic.step(1.0) == []
    assert car.edge.id == "f1"
    assert car.route[car.edge_index :] == second


def test_a_new_route_must_start_where_the_old_one_ends() -> None:
    elsewhere = chain([(100, 50)], prefix="f")[0]
    detached = StraightEdge("x", "n7", "n8", 100, 50, "primary", LAT, LON, 0.0)
    traffic = Traffic(0, reroute=lambda v: [detached])
    traffic.add(VehicleKind.CAR, [elsewhere], offset_m=90.0, speed_mps=12.0)
    with pytest.raises(ValueError, match="new route starts"):
        traffic.step(1.0)


def test_kinds_carry_their_etsi_station_type() -> None:
    assert [kind.station_type for kind in VehicleKind] == [5, 6, 8, 10, 15]


def test_drivers_are_seeded_and_stay_near_the_limit() -> None:
    edge = chain([(100, 100)])[0]
    speeds = [
        Traffic(seed).add(VehicleKind.CAR, [edge]).desired_speed_mps(100) * 3.6
        for seed in range(50)
    ]
    assert all(90.0 - 1e-9 <= s <= 105.0 + 1e-9 for s in speeds)
    assert len(set(speeds)) == 50
    truck = Traffic(0).add(VehicleKind.TRUCK, [edge])
    assert truck.desired_speed_mps(130) * 3.6 == pytest.approx(90.0)
    assert math.isclose(Traffic(9).add(VehicleKind.BUS, [edge]).length_m, 12.0)
