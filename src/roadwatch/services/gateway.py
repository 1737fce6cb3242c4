"""The gateway: MQTT in, validation and detection, events out over XMPP (SPEC §2, §3, §5)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections import Counter

from roadwatch.adapters.mqtt import MqttEndpoint, MqttSubscriber
from roadwatch.adapters.xmpp import EventSender
from roadwatch.domain.detector import DetectionRules, Detector
from roadwatch.domain.messages import Rejected, RejectReason, parse_message
from roadwatch.services.status import STATUS_INTERVAL_S, StatusFile
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

# One log line per rejection reason at most this often; the counters keep the full story.
REJECTION_LOG_INTERVAL_S = 60.0


class RejectionLog:
    """Counts rejected messages per reason and logs each reason at a limited rate."""

    def __init__(self, interval_s: float = REJECTION_LOG_INTERVAL_S) -> None:
        self.counts: Counter[str] = Counter()
        self._interval_s = interval_s
        self._last_logged: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def record(self, rejected: Rejected, topic: str, now: float) -> None:
        reason = rejected.reason.value
        self.counts[reason] += 1
        last = self._last_logged.get(reason)
        if last is not None and now - last < self._interval_s:
            self._unlogged[reason] += 1
            return
        suppressed = self._unlogged.pop(reason, 0)
        self._last_logged[reason] = now
        log.warning(
            "rejected message on %.80s: %s (%s)%s",
            topic,
            reason,
            rejected.detail[:120],
            f"; {suppressed} more since the last report" if suppressed else "",
        )


class Gateway:
    """Wires the MQTT subscriber, the detector and the XMPP sender together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.detector = Detector(DetectionRules(accident=settings.accident_rules))
        self.rejections = RejectionLog()
        self.received = 0
        self.events = 0
        self.ignored = 0
        self._future_tolerance_ms = round(settings.future_tolerance_s * 1000)
        # The detector is driven from paho's network thread only; the lock guards the rare
        # calls from elsewhere (status snapshots).
        self._lock = threading.Lock()

    def handle(self, topic: str, payload: bytes, sender: EventSender) -> None:
        """Validate and detect one MQTT message (runs on the MQTT network thread)."""
        now = time.time()
        self.received += 1
        try:
            message = parse_message(topic, payload, round(now * 1000), self._future_tolerance_ms)
        except Rejected as rejected:
            if rejected.reason is RejectReason.IGNORED_TYPE:
                self.ignored += 1
            else:
                self.rejections.record(rejected, topic, now)
            return
        with self._lock:
            events = self.detector.process(message)
        for event in events:
            self.events += 1
            sender.submit(event)

    def counters(self) -> dict[str, object]:
        with self._lock:
            stale = self.detector.stale
        return {
            "received": self.received,
            "events": self.events,
            "ignored": self.ignored,
            "stale": stale,
            "rejected": dict(self.rejections.counts),
        }


async def run(settings: Settings) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    gateway = Gateway(settings)
    status = StatusFile(settings.run_dir, "gateway")
    status.write("starting")
    sender = EventSender(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    subscriber = MqttSubscriber(
        MqttEndpoint(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            username=settings.mqtt_gateway_user,
            password=settings.mqtt_gateway_password.get_secret_value(),
            client_id=settings.mqtt_gateway_client_id,
        ),
        handler=lambda topic, payload: gateway.handle(topic, payload, sender),
    )
    async with asyncio.TaskGroup() as tasks:
        sender_task = tasks.create_task(sender.run())
        await sender.wait_connected()
        # Subscribe only once events can leave: QoS 1 DENMs wait in the broker meanwhile.
        await asyncio.to_thread(subscriber.start)
        log.info("gateway ready: %s → %s", settings.mqtt_host, settings.collector_jid)
        try:
            while not stop.is_set():
                status.write("ready", {**gateway.counters(), **sender.counters()})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), STATUS_INTERVAL_S)
        finally:
            status.write("stopping", gateway.counters())
            await asyncio.to_thread(subscriber.stop)
            await sender.close()
            sender_task.cancel()
    status.remove()
    log.info("gateway stopped: %s", gateway.counters())


def main(settings: Settings) -> None:
    """Entry point of `roadwatch gateway`."""
    asyncio.run(run(settings))
