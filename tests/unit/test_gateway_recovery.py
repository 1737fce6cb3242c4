"""The gateway's restart safety without servers: a kill at any point loses and invents nothing.

A killed gateway is simulated by dropping it without any shutdown: what it wrote with
os.write stays on disk, exactly as after `kill -9`. Events count as delivered only once the
fake XMPP server acknowledged them, so anything merely sent before the kill may be lost.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from roadwatch.adapters.metrics import MetricsServer
from roadwatch.adapters.state import StateStore
from roadwatch.domain.events import Event, EventType
from roadwatch.domain.geo import destination
from roadwatch.domain.zones import Zone
from roadwatch.runner.process import free_port
from roadwatch.services.gateway import Gateway
from roadwatch.services.gateway.metrics import GatewayMetrics
from roadwatch.services.gateway.metrics import health as gateway_health
from roadwatch.settings import Settings

LAT, LON = 49.25, 4.03
HALF = 0.002
RING = (
    (LON - HALF, LAT - HALF),
    (LON + HALF, LAT - HALF),
    (LON + HALF, LAT + HALF),
    (LON - HALF, LAT + HALF),
    (LON - HALF, LAT - HALF),
)
CENTRE = Zone("centre", "Centre", ((RING,),))
Publication = tuple[str, bytes]


class FakeXmpp:
    """Records what is sent; acknowledges only when told to."""

    def __init__(self) -> None:
        self.sent: list[Event] = []
        self.acked = 0

    async def send(self, event: Event) -> None:
        self.sent.append(event)

    def acknowledged(self) -> int:
        return self.acked

    def ack_all(self) -> None:
        self.acked = len(self.sent)

    def delivered(self) -> list[Event]:
        return self.sent[: self.acked]


def settings_for(run_dir: Path) -> Settings:
    return Settings(_env_file=None, environment="development", run_dir=run_dir)  # type: ignore[call-arg]


def trace(start_ms: int) -> list[Publication]:
    """Cars crossing the zone, a jam, an accident and roadworks: every kind of state."""
    out: list[Publication] = []

    def cam(station: str, t: int, lat: float, lon: float, speed: float) -> None:
        payload = {
            "stationId": station,
            "stationType": 5,
            "timestamp": t,
            "lat": lat,
            "lon": lon,
            "speed": speed,
            "heading": 90.0,
        }
        out.append((f"vehicles/{station}/cam", orjson.dumps(payload)))

    def denm(station: str, t: int, cause: int, station_type: int = 5, **extra: str) -> None:
        payload = {
            "stationId": station,
            "stationType": station_type,
            "timestamp": t,
            "lat": LAT,
            "lon": LON,
            "causeCode": cause,
            **extra,
        }
        out.append((f"vehicles/{station}/denm", orjson.dumps(payload)))

    for s in range(240):
        t = start_ms + s * 1000
        for n in range(4):
            lat, lon = destination(LAT, LON, 90, -400 + s * 4.0 + n * 15)
            cam(f"car-{n}", t + n, lat, lon, 10.0 if s < 120 else 60.0)
        if s == 30:
            denm("w1", t, 2)
        if s == 50:
            denm("w2", t, 2)
        if s == 70:
            denm("op", t, 3, 15)
        if s == 200:
            denm("op", t, 3, 15, termination="cancellation")
    out.append(("vehicles/bad/cam", b"not json"))
    return out


async def run_gateway(
    run_dir: Path,
    messages: Sequence[Publication],
    xmpp: FakeXmpp,
    *,
    snapshot_every: int = 0,
    forked: bool = False,
    ack_every: int = 0,
    clean_stop: bool = True,
) -> Gateway:
    """Start a gateway on `run_dir`, feed it `messages`, then stop it cleanly or drop it."""
    store = StateStore(run_dir / "gateway")
    gateway = Gateway(settings_for(run_dir), store)
    gateway.recover()
    gateway.apply_zones([CENTRE])
    forwarder = asyncio.create_task(gateway.outbox.forward(xmpp))
    for i, (topic, payload) in enumerate(messages, start=1):
        gateway.handle(topic, payload)
        await asyncio.sleep(0)
        if ack_every and i % ack_every == 0:
            xmpp.acked = max(xmpp.acked, len(xmpp.sent) - 3)  # the server lags a little
        if snapshot_every and i % snapshot_every == 0:
            if forked:
                snapshot_in_a_child(gateway, xmpp.acknowledged())
            else:
                gateway.write_snapshot(gateway.capture(xmpp.acknowledged()))
    await asyncio.sleep(0)
    if clean_stop:
        xmpp.ack_all()
        gateway.write_snapshot(gateway.capture(xmpp.acknowledged(), force=True))
        gateway.close_journal()
    else:
        gateway.flush_journal()  # the 5 ms timer ran before the kill came
    forwarder.cancel()
    return gateway


def snapshot_in_a_child(gateway: Gateway, acked: int) -> None:
    """Take a snapshot as the running service does: written by a forked child."""
    snapshot = gateway.fork_snapshot(acked)
    if snapshot is not None:
        gateway.state.forked_done(snapshot, snapshot.wait())


def delivered_state(events: Sequence[Event]) -> dict[tuple[str, int], Event]:
    """What the collector would hold: one row per id and version."""
    return {(event.id, event.version): event for event in events}


def reference(tmp_path: Path, messages: Sequence[Publication]) -> dict[tuple[str, int], Event]:
    xmpp = FakeXmpp()
    asyncio.run(run_gateway(tmp_path / "reference", messages, xmpp))
    return delivered_state(xmpp.delivered())


@pytest.fixture(scope="module")
def messages() -> list[Publication]:
    return trace(round(time.time() * 1000) - 3_600_000)


def test_the_trace_raises_every_kind_of_event(tmp_path: Path, messages: list[Publication]) -> None:
    kinds = {event.type for event in reference(tmp_path, messages).values()}
    assert kinds == {
        EventType.ZONE_ENTER,
        EventType.ZONE_EXIT,
        EventType.TRAFFIC_JAM,
        EventType.ACCIDENT,
        EventType.HAZARD,
    }


@pytest.mark.parametrize("cut", [1, 45, 200, 333, 500, 700, 960, 961])
@pytest.mark.parametrize("snapshots", ["none", "copied", "forked"])
def test_a_kill_at_any_point_then_a_restart_delivers_exactly_the_same_events(
    tmp_path: Path, messages: list[Publication], cut: int, snapshots: str
) -> None:
    expected = reference(tmp_path, messages)
    run_dir = tmp_path / "crashed"
    first, second = FakeXmpp(), FakeXmpp()
    asyncio.run(
        run_gateway(
            run_dir,
            messages[:cut],
            first,
            snapshot_every=0 if snapshots == "none" else 97,
            forked=snapshots == "forked",
            ack_every=10,
            clean_stop=False,
        )
    )
    asyncio.run(run_gateway(run_dir, messages[cut:], second))
    delivered = [*first.delivered(), *second.delivered()]
    assert delivered_state(delivered) == expected
    # What the collector stores: the newest version of each event, nothing more.
    zone_enters = {e.id for e in delivered if e.type is EventType.ZONE_ENTER}
    assert zone_enters == {i for (i, _), e in expected.items() if e.type is EventType.ZONE_ENTER}


def test_a_clean_restart_sends_nothing_again(tmp_path: Path, messages: list[Publication]) -> None:
    run_dir = tmp_path / "clean"
    first, second = FakeXmpp(), FakeXmpp()
    asyncio.run(run_gateway(run_dir, messages[:500], first))
    asyncio.run(run_gateway(run_dir, [], second))
    assert second.sent == []


def test_a_kill_before_the_first_ack_sends_everything_again(
    tmp_path: Path, messages: list[Publication]
) -> None:
    run_dir = tmp_path / "unacked"
    first, second = FakeXmpp(), FakeXmpp()
    asyncio.run(run_gateway(run_dir, messages[:400], first, snapshot_every=50, clean_stop=False))
    assert first.sent and first.acked == 0
    asyncio.run(run_gateway(run_dir, [], second))
    assert delivered_state(second.sent) == delivered_state(first.sent)


def test_the_metrics_endpoint_shows_every_figure(
    tmp_path: Path, messages: list[Publication]
) -> None:
    async def scenario() -> tuple[str, dict[str, object], str]:
        xmpp = FakeXmpp()
        gateway = await run_gateway(tmp_path / "metrics", messages[:300], xmpp)
        port = free_port()
        figures = GatewayMetrics()
        figures.watch(gateway, None, lambda: {"xmpp_acked_total": 7, "xmpp_pending": 2})
        server = MetricsServer(
            "127.0.0.1", port, figures.registry, lambda: gateway_health(gateway, True, True)
        )
        task = asyncio.create_task(server.run())
        await asyncio.sleep(0.1)

        def get(path: str) -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return bytes(response.read())

        try:
            metrics = (await asyncio.to_thread(get, "/metrics")).decode()
            health = orjson.loads(await asyncio.to_thread(get, "/health"))
            try:
                await asyncio.to_thread(get, "/nothing")
                missing = "200"
            except urllib.error.HTTPError as exc:
                missing = str(exc.code)
        finally:
            task.cancel()
        return metrics, health, missing

    metrics, health, missing = asyncio.run(scenario())
    samples = {
        name: float(value)
        for name, value in (
            line.rsplit(" ", 1) for line in metrics.splitlines() if not line.startswith("#")
        )
    }
    lines = set(metrics.splitlines())
    assert samples["roadwatch_gateway_messages_received_total"] == 300
    assert samples['roadwatch_gateway_messages_rejected_total{reason="not_json"}'] == 0
    assert samples['roadwatch_gateway_events_total{status="instant",type="zone_enter"}'] == 4
    assert samples['roadwatch_gateway_active_events{type="accident"}'] == 1
    assert samples['roadwatch_gateway_zone_occupancy{zone="centre"}'] == 4
    assert samples["roadwatch_gateway_xmpp_acked_total"] == 7
    assert "# TYPE roadwatch_gateway_xmpp_acked_total counter" in lines
    assert "# TYPE roadwatch_gateway_xmpp_pending gauge" in lines
    assert any(line.startswith("roadwatch_gateway_journal_records_total ") for line in lines)
    assert any(line.startswith("roadwatch_gateway_snapshots_total ") for line in lines)
    assert health["status"] == "ok"
    assert health["detection_clock"] is not None
    assert missing == "404"


@pytest.fixture
def dropped(tmp_path: Path, messages: list[Publication]) -> tuple[Gateway, StateStore, FakeXmpp]:
    """A gateway fed part of the trace and then dropped (no stop): its journal still open."""
    xmpp = FakeXmpp()
    gateway = asyncio.run(run_gateway(tmp_path, messages[:300], xmpp, clean_stop=False))
    assert gateway.state.store is not None
    return gateway, gateway.state.store, xmpp


def test_a_snapshot_written_by_a_child_replaces_the_journal_before_it(
    dropped: tuple[Gateway, StateStore, FakeXmpp],
) -> None:
    gateway, store, xmpp = dropped
    segments_before = store.segments()
    snapshot_in_a_child(gateway, xmpp.acknowledged())
    stats = gateway.state.stats
    assert (stats.saved, stats.failures) == (2, 0)  # the one at recovery, then the child's
    assert stats.last_bytes == store.snapshot_path.stat().st_size > 0
    assert store.segments() == [segments_before[-1] + 1]
    loaded = store.load(time.time())
    assert loaded is not None and loaded.detector == gateway._detector_state()


def test_a_child_that_fails_keeps_the_journal_and_counts_the_failure(
    dropped: tuple[Gateway, StateStore, FakeXmpp],
) -> None:
    gateway, store, xmpp = dropped
    segments_before = store.segments()

    def broken() -> dict[str, object]:
        raise RuntimeError("cannot copy the state")

    gateway._detector_state = broken  # type: ignore[method-assign]
    snapshot_in_a_child(gateway, xmpp.acknowledged())
    assert gateway.state.stats.failures == 1
    assert store.segments()[: len(segments_before)] == segments_before
