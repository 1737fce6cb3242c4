"""The partition function of several gateway instances: one owner per place, halos at borders."""

from __future__ import annotations

import asyncio
import random
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roadwatch.domain.detector import Detector
from roadwatch.domain.events import Event, EventType
from roadwatch.domain.geo import destination, haversine_m
from roadwatch.domain.messages import Cam
from roadwatch.domain.partition import Partitioning
from roadwatch.domain.zones import Zone
from roadwatch.runner.templates import deploy_dir
from roadwatch.services.gateway import Gateway
from roadwatch.services.zone_sync import read_zones_file
from roadwatch.settings import Settings
from tests.scenarios.truth import NAMES, trace_lines

latitudes = st.floats(min_value=-90.0, max_value=90.0, allow_nan=False)
longitudes = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)
station_ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=64)
partitionings = st.builds(
    Partitioning,
    partitions=st.integers(min_value=1, max_value=8),
    cell_m=st.sampled_from([500.0, 2000.0, 5000.0, 50_000.0]),
    margin_m=st.sampled_from([0.0, 200.0, 400.0]),
)


@given(partitionings, latitudes, longitudes)
def test_every_position_has_exactly_one_owner_among_its_halo_owners(
    partitioning: Partitioning, lat: float, lon: float
) -> None:
    owner = partitioning.area_owner(lat, lon)
    assert 0 <= owner < partitioning.partitions
    assert owner == partitioning.area_owner(lat, lon)
    assert owner in partitioning.area_owners(lat, lon)
    assert partitioning.cell(lat, lon) in partitioning.halo_cells(lat, lon)


@settings(max_examples=400)
@given(
    partitionings,
    latitudes,
    longitudes,
    st.floats(min_value=0.0, max_value=360.0),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_every_point_within_the_margin_lies_in_the_halo(
    partitioning: Partitioning, lat: float, lon: float, bearing: float, share: float
) -> None:
    # So a report near a border reaches the owner of every place it can contribute to.
    other = destination(lat, lon, bearing, partitioning.margin_m * share)
    assert haversine_m(lat, lon, *other) <= partitioning.margin_m + 1e-6
    assert partitioning.cell(*other) in partitioning.halo_cells(lat, lon)
    assert partitioning.area_owner(*other) in partitioning.area_owners(lat, lon)


@given(partitionings, station_ids, latitudes, longitudes, st.booleans())
def test_routes_give_zones_to_one_station_owner_and_traffic_to_every_area_owner(
    partitioning: Partitioning, station: str, lat: float, lon: float, cam: bool
) -> None:
    routes = partitioning.routes(station, lat, lon, cam=cam)
    traffic = {owner for owner, route in routes.items() if route.traffic}
    zones = {owner for owner, route in routes.items() if route.zones}
    assert traffic == partitioning.area_owners(lat, lon)
    assert zones == ({partitioning.station_owner(station)} if cam else set())
    assert all(route.zones or route.traffic for route in routes.values())


def test_a_single_partition_owns_everything_without_halo() -> None:
    single = Partitioning()
    assert single.area_owners(49.25, 4.03) == {0}
    assert single.routes("car-1", 49.25, 4.03, cam=True) == {
        0: single.routes("car-1", 49.25, 4.03, cam=True)[0]
    }
    route = single.routes("car-1", 49.25, 4.03, cam=True)[0]
    assert route.zones and route.traffic


def test_stations_spread_evenly_and_stably_over_the_instances() -> None:
    partitioning = Partitioning(partitions=2)
    owners = [partitioning.station_owner(f"car-{i}") for i in range(2000)]
    assert 900 < owners.count(0) < 1100
    # A stable hash, not Python's salted one: every process agrees.
    assert Partitioning(partitions=2).station_owner("car-7") == owners[7]


def test_most_positions_are_far_enough_from_a_border_to_have_one_owner() -> None:
    # 5 km cells with a 200 m halo: about (4.6 / 5)^2 of the places have no neighbour in reach.
    partitioning = Partitioning(partitions=4, cell_m=5000.0, margin_m=200.0)
    positions = [(49.2 + i * 0.0021, 3.95 + j * 0.0033) for i in range(50) for j in range(50)]
    alone = sum(len(partitioning.halo_cells(lat, lon)) == 1 for lat, lon in positions)
    assert 0.75 < alone / len(positions) < 0.95


def test_the_halo_crosses_the_antimeridian() -> None:
    partitioning = Partitioning(partitions=8, cell_m=2000.0, margin_m=400.0)
    east = partitioning.cell(10.0, 179.999)
    assert east in partitioning.halo_cells(10.0, -179.999)


@pytest.mark.parametrize(
    ("partitions", "cell_m", "margin_m"), [(0, 5000.0, 100.0), (2, 0.0, 0.0), (2, 500.0, 500.0)]
)
def test_nonsensical_partitionings_are_refused(
    partitions: int, cell_m: float, margin_m: float
) -> None:
    with pytest.raises(ValueError, match=r"partition|cell|margin"):
        Partitioning(partitions, cell_m, margin_m)


# -- instances sharing the load, without servers ------------------------------------------------

# 1.5 km cells: the accident's first two reports, 70 m apart, fall on either side of a border.
SCALING_CELL_M = 1500.0
SCALING_MARGIN_M = 600.0


def merged_scenarios(end_ms: int) -> list[tuple[str, bytes]]:
    """Every ground-truth scenario at once, in time order, ending at `end_ms`."""
    lines = [line for name in NAMES for line in trace_lines(name)]
    offset = end_ms - max(line["payload"]["timestamp"] for line in lines)
    lines.sort(key=lambda line: int(line["payload"]["timestamp"]))
    return [
        (
            line["topic"],
            orjson.dumps({**line["payload"], "timestamp": line["payload"]["timestamp"] + offset}),
        )
        for line in lines
    ]


def gateway_settings(partitions: int, instance: int) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment="development",
        gateway_partitions=partitions,
        gateway_instance=instance,
        gateway_partition_cell_m=SCALING_CELL_M,
        gateway_partition_margin_m=SCALING_MARGIN_M,
    )


async def sent_by_instances(
    partitions: int, messages: list[tuple[str, bytes]], seed: int
) -> list[list[Event]]:
    """Run `partitions` gateways; a broker hands each message to one at random (shared
    subscription) and delivers what it passes on. Return what each would send."""
    zones = read_zones_file(deploy_dir() / "zones" / "reims.geojson")
    gateways = [Gateway(gateway_settings(partitions, k), None) for k in range(partitions)]
    for gateway in gateways:
        gateway.apply_zones(zones)
    pick = random.Random(seed)
    for topic, payload in messages:
        gateway = gateways[pick.randrange(partitions)]
        if partitions == 1:
            gateway.handle(topic, payload)
            continue
        for owner in gateway.handle_partitioned(topic, payload, False):
            assert not gateways[owner].handle_partitioned(topic, payload, True)
    return [gateway.outbox.pending() for gateway in gateways]


@pytest.mark.parametrize(("partitions", "seed"), [(2, 1), (2, 2), (3, 3)])
def test_instances_sharing_the_load_send_every_version_a_single_gateway_sends_once(
    partitions: int, seed: int
) -> None:
    partitioning = Partitioning(partitions, SCALING_CELL_M, SCALING_MARGIN_M)
    founders = [
        partitioning.area_owner(49.2415, 4.062),
        partitioning.area_owner(49.242039, 4.0624128),
    ]
    assert partitions != 2 or founders[0] != founders[1]
    messages = merged_scenarios(round(time.time() * 1000))

    async def both() -> tuple[list[Event], list[list[Event]]]:
        [single] = await sent_by_instances(1, messages, seed)
        return single, await sent_by_instances(partitions, messages, seed)

    single, shared = asyncio.run(both())
    expected = {(event.id, event.version): event.to_dict() for event in single}
    sent = [(event.id, event.version) for events in shared for event in events]
    assert len(expected) == len(single) == 22
    assert sorted(sent) == sorted(expected), "a version lost or sent twice"
    for events in shared:
        for event in events:
            assert event.to_dict() == expected[(event.id, event.version)]
    if partitions == 2:
        assert all(shared), "an instance sent nothing"


# -- the detector's hooks for instances -------------------------------------------------------

SQUARE = ((4.00, 49.00), (4.01, 49.00), (4.01, 49.01), (4.00, 49.01), (4.00, 49.00))
T0 = 1_780_000_000_000


def test_a_detector_not_tracking_zones_raises_no_crossing_and_keeps_no_occupant() -> None:
    detector = Detector(zones=[Zone("square", "Square", ((SQUARE,),))])
    inside = Cam("car-1", 5, T0, 49.005, 4.005, 50.0, 90.0)
    assert detector.process(inside, track_zones=False) == []
    assert detector.occupancy() == {"square": []}
    [enter] = detector.process(
        Cam("car-1", 5, T0 + 1000, 49.005, 4.005, 50.0, 90.0), track_zones=True
    )
    assert enter.type is EventType.ZONE_ENTER


def test_ticks_from_messages_owned_elsewhere_fire_a_timeout_on_time() -> None:
    detector = Detector(zones=[Zone("square", "Square", ((SQUARE,),))])
    [enter] = detector.process(Cam("car-1", 5, T0, 49.005, 4.005, 50.0, 90.0))
    assert enter.type is EventType.ZONE_ENTER
    events: list[Event] = []
    # Other stations' messages, handled by another instance, still tell the time.
    for second in range(1, 11 * 60, 5):
        events += detector.tick("car-2", T0 + second * 1000)
    [timeout] = events
    assert timeout.type is EventType.ZONE_EXIT
    assert timeout.details["reason"] == "timeout"
    assert detector.tick("car-2", T0) == []  # behind the clock: nothing moves
