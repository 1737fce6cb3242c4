"""Vehicles driving routes with the Intelligent Driver Model, advanced by a simulated clock."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

# Treiber, Hennecke & Helbing (2000): the IDM's acceleration exponent and jam distance.
IDM_DELTA = 4
MIN_GAP_M = 2.0
# About 1 g: the hardest braking of tyres on a dry road, never exceeded even in an emergency.
MAX_BRAKING_MPS2 = 9.0
# Drivers differ: each one's desired speed is this share of the limit (seeded per vehicle).
DRIVER_FACTOR_RANGE = (0.9, 1.05)
# No vehicle drives faster than the posted limit plus this margin.
SPEED_MARGIN = 1.10
# Gaps are never taken below this, so the IDM's interaction term stays finite.
_TINY_GAP_M = 0.1


class EdgeLike(Protocol):
    """The part of a road-network edge that vehicles need."""

    @property
    def id(self) -> Hashable: ...
    @property
    def from_node(self) -> Hashable: ...
    @property
    def to_node(self) -> Hashable: ...
    @property
    def length_m(self) -> float: ...
    @property
    def speed_limit_kmh(self) -> float: ...
    @property
    def road_class(self) -> str: ...

    def position_at(self, s_m: float) -> tuple[float, float, float]: ...


@dataclass(frozen=True, slots=True)
class KindProfile:
    """How one kind of vehicle is built and driven."""

    station_type: int
    length_m: float
    max_accel_mps2: float
    comfortable_decel_mps2: float
    speed_factor: float
    max_speed_kmh: float
    time_headway_s: float


class VehicleKind(Enum):
    """The kinds of vehicle simulated, each with its ETSI station type
    (docs/contract/mqtt.md §3)."""

    # Trucks and buses: EU speed limiters at 90 and 100 km/h (Directive 92/6/EEC).
    # The kind's speed factor times the driver's stays within 1.05, inside the limit + 10 % margin.
    CAR = KindProfile(5, 4.5, 2.5, 3.0, 1.0, 160.0, 1.4)
    BUS = KindProfile(6, 12.0, 1.2, 2.0, 0.92, 100.0, 1.8)
    TRUCK = KindProfile(8, 16.5, 1.0, 2.0, 0.95, 90.0, 2.0)
    EMERGENCY = KindProfile(10, 6.0, 3.0, 3.5, 1.0, 160.0, 1.2)
    ROAD_OPERATOR = KindProfile(15, 5.5, 1.8, 2.5, 0.9, 110.0, 1.6)

    @property
    def profile(self) -> KindProfile:
        """Return the kind's physical and driving profile."""
        value: KindProfile = self.value
        return value

    @property
    def station_type(self) -> int:
        """Return the ETSI station type."""
        return self.profile.station_type


class Vehicle:
    """One vehicle: its route, where its front bumper is along it, and its speed."""

    __slots__ = (
        "_accel",
        "_b",
        "_braking",
        "_factor",
        "_headway",
        "_max_speed",
        "_sqrt_ab",
        "accel_mps2",
        "edge_index",
        "finishing",
        "id",
        "kind",
        "length_m",
        "offset_m",
        "route",
        "speed_mps",
        "stopped",
    )

    def __init__(
        self,
        vehicle_id: str,
        kind: VehicleKind,
        route: Sequence[EdgeLike],
        *,
        offset_m: float,
        speed_mps: float,
        driver_factor: float,
    ) -> None:
        if not route:
            raise ValueError("a route needs at least one edge")
        if not 0.0 <= offset_m <= route[0].length_m:
            raise ValueError("offset must lie on the first edge")
        if speed_mps < 0.0:
            raise ValueError("speed cannot be negative")
        profile = kind.profile
        self.id = vehicle_id
        self.kind = kind
        self.route: list[EdgeLike] = list(route)
        self.edge_index = 0
        self.offset_m = offset_m
        self.speed_mps = speed_mps
        self.accel_mps2 = 0.0
        self.length_m = profile.length_m
        self.stopped = False
        # True once the route can no longer be extended: the vehicle leaves at its end.
        self.finishing = False
        self._factor = driver_factor * profile.speed_factor
        self._max_speed = profile.max_speed_kmh / 3.6
        self._accel = profile.max_accel_mps2
        self._b = profile.comfortable_decel_mps2
        self._sqrt_ab = 2.0 * math.sqrt(profile.max_accel_mps2 * profile.comfortable_decel_mps2)
        self._headway = profile.time_headway_s
        self._braking = False

    @property
    def edge(self) -> EdgeLike:
        """Return the edge the front bumper is on."""
        return self.route[self.edge_index]

    @property
    def route_end_node(self) -> Hashable:
        """Return the node where the current route ends."""
        return self.route[-1].to_node

    def position(self) -> tuple[float, float, float]:
        """Return (lat, lon, heading in degrees) of the front bumper."""
        return self.route[self.edge_index].position_at(self.offset_m)

    def desired_speed_mps(self, limit_kmh: float) -> float:
        """Return the speed this driver aims for under a limit."""
        return min(limit_kmh / 3.6 * self._factor, self._max_speed)


# Called when a vehicle nears the end of its route: edges starting at its route's end node,
# or an empty sequence (or None) to let it leave the network there.
Reroute = Callable[[Vehicle], Sequence[EdgeLike] | None]


class Traffic:
    """All vehicles, advanced together one simulation step at a time."""

    def __init__(self, seed: int, reroute: Reroute | None = None) -> None:
        self._rng = random.Random(seed)
        self._reroute = reroute
        self._vehicles: dict[str, Vehicle] = {}
        self._limits: dict[Hashable, float] = {}
        # Per edge: (start m, end m, limit km/h) of a stretch with a lower limit (a lane closure).
        self._sections: dict[Hashable, tuple[float, float, float]] = {}
        self._next_id = 0
        self.time_s = 0.0

    def __len__(self) -> int:
        return len(self._vehicles)

    @property
    def vehicles(self) -> list[Vehicle]:
        """Return the vehicles on the network, in the order they were added."""
        return list(self._vehicles.values())

    def get(self, vehicle_id: str) -> Vehicle | None:
        """Return the vehicle with this id, if it is still on the network."""
        return self._vehicles.get(vehicle_id)

    def add(
        self,
        kind: VehicleKind,
        route: Sequence[EdgeLike],
        *,
        offset_m: float = 0.0,
        speed_mps: float = 0.0,
        vehicle_id: str | None = None,
    ) -> Vehicle:
        """Put a vehicle on the first edge of `route` with a seeded driver."""
        if vehicle_id is None:
            vehicle_id = f"v{self._next_id:06d}"
        self._next_id += 1
        if vehicle_id in self._vehicles:
            raise ValueError(f"vehicle {vehicle_id!r} already exists")
        factor = self._rng.uniform(*DRIVER_FACTOR_RANGE)
        vehicle = Vehicle(
            vehicle_id, kind, route, offset_m=offset_m, speed_mps=speed_mps, driver_factor=factor
        )
        self._vehicles[vehicle_id] = vehicle
        return vehicle

    def remove(self, vehicle_id: str) -> None:
        """Take a vehicle off the network."""
        self._vehicles.pop(vehicle_id, None)

    def stop(self, vehicle_id: str) -> None:
        """Make a vehicle brake as hard as it can and stay put (a crash or breakdown)."""
        self._vehicles[vehicle_id].stopped = True

    def release(self, vehicle_id: str) -> None:
        """Let a stopped vehicle drive on."""
        self._vehicles[vehicle_id].stopped = False

    def set_speed_limit(self, edge_id: Hashable, limit_kmh: float | None) -> None:
        """Impose a temporary limit on an edge (a bottleneck), or lift it with None."""
        if limit_kmh is None:
            self._limits.pop(edge_id, None)
        elif limit_kmh <= 0:
            raise ValueError("a speed limit must be positive")
        else:
            self._limits[edge_id] = limit_kmh

    def speed_limit_kmh(self, edge: EdgeLike) -> float:
        """Return the limit in force on an edge, temporary or posted."""
        return self._limits.get(edge.id, edge.speed_limit_kmh)

    def set_slow_section(
        self, edge_id: Hashable, start_m: float, end_m: float, limit_kmh: float | None
    ) -> None:
        """Impose a limit on the stretch [start_m, end_m) of an edge, or lift it with None."""
        if limit_kmh is None:
            self._sections.pop(edge_id, None)
        elif limit_kmh <= 0:
            raise ValueError("a speed limit must be positive")
        elif not 0.0 <= start_m < end_m:
            raise ValueError("a slow section needs 0 <= start < end")
        else:
            self._sections[edge_id] = (start_m, end_m, limit_kmh)

    def speed_limit_at(self, edge: EdgeLike, offset_m: float) -> float:
        """Return the limit in force at `offset_m` along an edge, slow sections included."""
        limit = self.speed_limit_kmh(edge)
        section = self._sections.get(edge.id)
        if section is not None and section[0] <= offset_m < section[1]:
            limit = min(limit, section[2])
        return limit

    def step(self, dt_s: float) -> list[Vehicle]:
        """Advance every vehicle by `dt_s` seconds; return those that left the network."""
        if dt_s <= 0:
            raise ValueError("a step must move time forward")
        by_edge: dict[Hashable, list[Vehicle]] = {}
        for vehicle in self._vehicles.values():
            key = vehicle.route[vehicle.edge_index].id
            group = by_edge.get(key)
            if group is None:
                by_edge[key] = [vehicle]
            else:
                group.append(vehicle)
        # Stable sorts keep insertion order between equal offsets, so runs are reproducible.
        for group in by_edge.values():
            group.sort(key=_offset)

        # Every decision is made on the state at the start of the step, then applied at once.
        moves: list[tuple[Vehicle, float, float, float]] = []
        for group in by_edge.values():
            last = len(group) - 1
            for i, vehicle in enumerate(group):
                ahead = group[i + 1] if i < last else None
                accel, room = self._decide(vehicle, ahead, by_edge, dt_s)
                moves.append((vehicle, accel, room, vehicle.speed_mps))

        finished: list[Vehicle] = []
        for vehicle, accel, room, speed in moves:
            new_speed = speed + accel * dt_s
            if new_speed < 0.0:
                # Stops within the step, and stays stopped: no rolling backwards.
                distance = -speed * speed / (2.0 * accel) if accel < 0.0 else 0.0
                new_speed = 0.0
            else:
                distance = speed * dt_s + 0.5 * accel * dt_s * dt_s
            # A hard floor on the gap: the leader only moves forwards, so this never collides.
            distance = max(0.0, min(distance, room))
            vehicle.accel_mps2 = (new_speed - speed) / dt_s
            vehicle.speed_mps = new_speed
            if self._advance(vehicle, distance):
                finished.append(vehicle)
        for vehicle in finished:
            del self._vehicles[vehicle.id]
        self.time_s += dt_s
        return finished

    def _decide(
        self,
        vehicle: Vehicle,
        ahead: Vehicle | None,
        by_edge: dict[Hashable, list[Vehicle]],
        dt_s: float,
    ) -> tuple[float, float]:
        """Return the vehicle's acceleration for this step and how far it may move at most."""
        v = vehicle.speed_mps
        b = vehicle._b
        edge = vehicle.route[vehicle.edge_index]
        limit = self._limits.get(edge.id, edge.speed_limit_kmh)
        if self._sections:
            section = self._sections.get(edge.id)
            if section is not None and section[0] <= vehicle.offset_m < section[1]:
                limit = min(limit, section[2])
        v0 = vehicle.desired_speed_mps(limit)
        # Free-road term; above the desired speed (a limit just lowered) brake comfortably.
        accel = vehicle._accel * (1.0 - (v / v0) ** IDM_DELTA) if v0 > 0.0 else -b
        accel = max(accel, -b)
        if accel > 0.0:
            # With a coarse step the IDM would overshoot a low desired speed; land on it instead.
            accel = min(accel, (v0 - v) / dt_s)

        leader_gap = math.inf
        leader_speed = 0.0
        if ahead is not None:
            leader_gap = ahead.offset_m - ahead.length_m - vehicle.offset_m
            leader_speed = ahead.speed_mps
        need, cap, first = self._scan_ahead(vehicle, by_edge, dt_s, find_leader=ahead is None)
        if first is not None:
            leader_gap, leader_speed = first
        if need >= b * 0.9 or vehicle._braking:
            # Once braking for a limit ahead, keep the constant deceleration that lands on it.
            vehicle._braking = need > 0.0
            accel = min(accel, -need)
        accel = min(accel, cap)

        room = math.inf
        if leader_gap < math.inf:
            room = max(0.0, leader_gap)
            gap = max(leader_gap, _TINY_GAP_M)
            desired_gap = MIN_GAP_M + max(
                0.0, v * vehicle._headway + v * (v - leader_speed) / vehicle._sqrt_ab
            )
            accel -= vehicle._accel * (desired_gap / gap) ** 2
        if vehicle.stopped:
            accel = -MAX_BRAKING_MPS2
        return max(-MAX_BRAKING_MPS2, min(accel, vehicle._accel)), room

    def _scan_ahead(
        self,
        vehicle: Vehicle,
        by_edge: dict[Hashable, list[Vehicle]],
        dt_s: float,
        *,
        find_leader: bool,
    ) -> tuple[float, float, tuple[float, float] | None]:
        """Return the braking a lower limit ahead needs, an acceleration cap, and a leader.

        The leader, if asked for and within sight on the edges ahead, comes as (gap, speed).
        """
        v = vehicle.speed_mps
        # Look far enough ahead to stop comfortably, plus the ground covered in one step.
        horizon = MIN_GAP_M + v * (vehicle._headway + dt_s) + v * v / (2.0 * vehicle._b) + 10.0
        reach = v * dt_s + 0.5 * vehicle._accel * dt_s * dt_s
        limits = self._limits
        sections = self._sections
        route = vehicle.route
        need = 0.0
        cap = math.inf
        leader: tuple[float, float] | None = None
        current = route[vehicle.edge_index]
        distance = current.length_m - vehicle.offset_m
        if sections:
            section = sections.get(current.id)
            if section is not None and vehicle.offset_m < section[0]:
                ahead_m = section[0] - vehicle.offset_m
                if ahead_m < horizon:
                    need, cap = _approach(vehicle, section[2], ahead_m, reach, dt_s, need, cap)
        j = vehicle.edge_index + 1
        while distance < horizon:
            if j >= len(route):
                trimmed = vehicle.edge_index
                if vehicle.finishing or not self._extend(vehicle):
                    break
                route = vehicle.route
                j -= trimmed
            nxt = route[j]
            target = vehicle.desired_speed_mps(limits.get(nxt.id, nxt.speed_limit_kmh))
            if v > target:
                # Brake for a lower limit so as to enter it at that limit's desired speed.
                need = max(need, (v * v - target * target) / (2.0 * max(distance, _TINY_GAP_M)))
            if distance < reach:
                # It may be on that edge by the end of the step: arrive no faster than its target.
                cap = min(cap, (target - v) / dt_s)
            if sections:
                section = sections.get(nxt.id)
                if section is not None and distance + section[0] < horizon:
                    need, cap = _approach(
                        vehicle, section[2], distance + section[0], reach, dt_s, need, cap
                    )
            if find_leader and leader is None:
                group = by_edge.get(nxt.id)
                if group:
                    first = group[0]
                    leader = (distance + first.offset_m - first.length_m, first.speed_mps)
            distance += nxt.length_m
            j += 1
        return need, cap, leader

    def _extend(self, vehicle: Vehicle) -> bool:
        """Append a new route at the end of the vehicle's route; False if it will leave."""
        more = self._reroute(vehicle) if self._reroute is not None else None
        if not more:
            vehicle.finishing = True
            return False
        end = vehicle.route[-1].to_node
        if more[0].from_node != end:
            raise ValueError(f"new route starts at {more[0].from_node!r}, not at {end!r}")
        # Forget the edges already driven, so a vehicle driving for hours keeps a short route.
        vehicle.route = vehicle.route[vehicle.edge_index :] + list(more)
        vehicle.edge_index = 0
        return True

    def _advance(self, vehicle: Vehicle, distance: float) -> bool:
        """Move the vehicle along its route; True if it drove off the route's end."""
        offset = vehicle.offset_m + distance
        route = vehicle.route
        index = vehicle.edge_index
        length = route[index].length_m
        while offset > length:
            if index + 1 >= len(route):
                vehicle.edge_index = index
                if vehicle.finishing or not self._extend(vehicle):
                    vehicle.offset_m = length
                    return True
                route = vehicle.route
                index = vehicle.edge_index
            # The leftover distance carries over, so the position never jumps.
            offset -= length
            index += 1
            length = route[index].length_m
        vehicle.edge_index = index
        vehicle.offset_m = offset
        return False


def _offset(vehicle: Vehicle) -> float:
    return vehicle.offset_m


# Positional: the scan's running values, in and out.
def _approach(  # noqa: PLR0917
    vehicle: Vehicle,
    limit_kmh: float,
    distance_m: float,
    reach_m: float,
    dt_s: float,
    need: float,
    cap: float,
) -> tuple[float, float]:
    """Return (need, cap) updated for a lower limit starting `distance_m` ahead."""
    v = vehicle.speed_mps
    target = vehicle.desired_speed_mps(limit_kmh)
    if v > target:
        need = max(need, (v * v - target * target) / (2.0 * max(distance_m, _TINY_GAP_M)))
    if distance_m < reach_m:
        cap = min(cap, (target - v) / dt_s)
    return need, cap
