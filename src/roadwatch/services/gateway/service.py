"""The gateway process: its stages wired to their adapters, started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from roadwatch.adapters.metrics import MetricsServer
from roadwatch.adapters.state import StateStore
from roadwatch.adapters.xmpp import EventSender
from roadwatch.services.gateway.intake import Intake
from roadwatch.services.gateway.journal import JOURNAL_FLUSH_S, ForkedSnapshot
from roadwatch.services.gateway.metrics import GatewayMetrics, health
from roadwatch.services.gateway.partitioning import check_margin
from roadwatch.services.gateway.pipeline import Gateway
from roadwatch.services.gateway.sender import SenderSink
from roadwatch.services.status import STATUS_INTERVAL_S, StatusFile
from roadwatch.services.zone_sync import ZoneSync
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

# How long a start waits for the zones before detecting without them.
ZONES_WAIT_S = 30.0
# Time allowed to hand the outbox to the sender at shutdown, before closing it.
DRAIN_TIMEOUT_S = 5.0
# Snapshots are at least this many times their capture time apart (at most 2 % of the time
# with the event loop held by a capture).
CAPTURE_SPACING = 50
# ZoneSync figures that only grow (the others are levels: zones held, revision).
_ZONE_SYNC_COUNTERS = frozenset(
    {"zone_loads", "zone_polls", "zone_db_failures", "zone_callback_errors"}
)


class GatewayService:
    """The gateway process: its adapters, background tasks, start and orderly stop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        name = settings.gateway_name
        self.metrics = GatewayMetrics()
        self.gateway = Gateway(
            settings,
            StateStore(settings.run_dir / name, keep_journal=settings.gateway_keep_journal),
            observe=self.metrics.observe,
        )
        self.gateway.outbox.on_acknowledged = lambda seconds: self.metrics.observe("sent", seconds)
        self.status = StatusFile(settings.run_dir, name)
        self.sender = EventSender(settings)
        self.sink = SenderSink(self.sender, self.gateway.outbox)
        self.zone_sync = ZoneSync(settings, self.gateway.apply_zones)
        if self.gateway.partitioned:
            check_margin(settings)
        self.intake = Intake(settings, self.gateway)
        self.metrics.watch(self.gateway, self.intake, self._extra_figures)
        self.server = MetricsServer(
            "127.0.0.1",
            settings.gateway_metrics_port,
            self.metrics.registry,
            lambda: health(
                self.gateway,
                self.intake.is_connected(),
                self.sender.online,
                self.intake.canary,
            ),
        )
        self._snapshotter: asyncio.Task[None] | None = None
        # The child writing a snapshot, while it runs.
        self._snapshot_child: ForkedSnapshot | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Recover the state, connect, detect until `stop` is set, then stop in order."""
        gateway = self.gateway
        self.status.write("starting")
        gateway.recover()
        async with asyncio.TaskGroup() as tasks:
            background = [
                tasks.create_task(self.sender.run()),
                tasks.create_task(self.zone_sync.run()),
                tasks.create_task(self._flush_journal()),
            ]
            if self.settings.gateway_metrics_port:
                background.append(tasks.create_task(self.server.run()))
            intake: asyncio.Task[None] | None = None
            try:
                if not await _unless_stopped(stop, self._connect()):
                    return
                background.append(tasks.create_task(gateway.outbox.forward(self.sink)))
                self._snapshotter = tasks.create_task(self._snapshots())
                # Subscribe only once events can leave: QoS 1 DENMs wait in the broker meanwhile.
                intake = tasks.create_task(self.intake.run())
                await _unless_stopped(stop, self.intake.wait_connected())
                log.info(
                    "%s ready: %s → %s%s",
                    self.settings.gateway_name,
                    self.settings.mqtt_host,
                    self.settings.collector_jid,
                    f" (instance {self.settings.gateway_instance} of"
                    f" {self.settings.gateway_partitions})"
                    if gateway.partitioned
                    else "",
                )
                while not stop.is_set():
                    # `make status` shows a stalled DENM path as a failing gateway.
                    state = "degraded" if self.intake.canary.stalled else "ready"
                    self.status.write(state, self._status_figures())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), STATUS_INTERVAL_S)
            finally:
                await self._stop(intake)
                for task in background:
                    task.cancel()
        self.status.remove()
        log.info("gateway stopped: %s", gateway.counters())

    async def _connect(self) -> None:
        """Wait for the zones (bounded) and for the XMPP session."""
        try:
            await asyncio.wait_for(self.zone_sync.wait_loaded(), ZONES_WAIT_S)
        except TimeoutError:
            log.warning("no zones after %.0f s; detecting with the saved ones", ZONES_WAIT_S)
        await self.sender.wait_connected()

    async def _stop(self, intake: asyncio.Task[None] | None) -> None:
        """Stop taking messages, hand over what is pending, save the state."""
        gateway = self.gateway
        self.status.write("stopping", gateway.counters())
        if self._snapshotter is not None:
            self._snapshotter.cancel()  # the last snapshot is taken below
        if self._snapshot_child is not None:
            # Its snapshot must not replace the last one, written below.
            await asyncio.to_thread(self._snapshot_child.wait)
        await self.intake.close()
        if intake is not None:
            intake.cancel()
        gateway.flush_journal()
        if not await gateway.outbox.drain(DRAIN_TIMEOUT_S):
            log.warning(
                "%d events not handed to XMPP; kept for the next start", gateway.outbox.unsent
            )
        await self.sender.close()
        capture = gateway.capture(self.sink.acknowledged(), force=True)
        await asyncio.to_thread(gateway.write_snapshot, capture)
        gateway.close_journal()

    async def _flush_journal(self) -> None:
        while True:
            await asyncio.sleep(JOURNAL_FLUSH_S)
            self.gateway.flush_journal()

    async def _snapshots(self) -> None:
        stats = self.gateway.state.stats
        while True:
            # A big state takes long to copy: space the copies so that the loop is held for
            # a small share of the time only.
            await asyncio.sleep(
                max(
                    self.settings.state_snapshot_interval_s,
                    stats.last_capture_s * CAPTURE_SPACING,
                )
            )
            forked = self.gateway.fork_snapshot(self.sink.acknowledged())
            if forked is None:
                continue
            self._snapshot_child = forked
            exit_code = await asyncio.to_thread(forked.wait)
            self._snapshot_child = None
            self.gateway.state.forked_done(forked, exit_code)

    def _status_figures(self) -> dict[str, Any]:
        figures: dict[str, Any] = {**self.gateway.counters(), **self.sender.counters()}
        figures.update(self.intake.counters())
        figures["denm_path"] = "stalled" if self.intake.canary.stalled else "flowing"
        return figures

    def _extra_figures(self) -> dict[str, int | float]:
        """Return the XMPP sender's and the zone sync's figures; counters end in `_total`."""
        figures: dict[str, int | float] = {}
        for key, count in self.sender.counters().items():
            figures[key if key == "xmpp_pending" else f"{key}_total"] = count
        for key, value in self.zone_sync.counters().items():
            if isinstance(value, int):
                name = key if key.startswith("zone") else f"zone_{key}"
                figures[f"{name}_total" if key in _ZONE_SYNC_COUNTERS else name] = value
        gateway = self.gateway
        if gateway.partitioned:
            figures["partition_instance"] = gateway.ownership.instance
            figures["partitions"] = gateway.ownership.partitioning.partitions
            figures["partition_received_total"] = gateway.ownership.passed_on_received
            figures["partition_events_elsewhere_total"] = gateway.ownership.events_elsewhere
        return figures


async def _unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> bool:
    """Run `work` unless `stop` is set first; tell whether it completed."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task not in done:
        return False
    task.result()  # raises what the work raised
    return True


async def run(settings: Settings) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await GatewayService(settings).run(stop)


def main(settings: Settings) -> None:
    """Entry point of `roadwatch gateway`."""
    asyncio.run(run(settings))
