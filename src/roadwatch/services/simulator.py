"""The simulator service: publishes the demo traffic over MQTT with the fleet account."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import orjson

from roadwatch.adapters.mqtt import MqttEndpoint, MqttPublisher
from roadwatch.services.status import StatusFile
from roadwatch.settings import Settings
from roadwatch.simulation.demo import DemoTraffic

log = logging.getLogger(__name__)

TICK_S = 1.0  # CAMs at 1 Hz per vehicle


def main(
    settings: Settings,
    vehicles: int = 40,
    seed: int = 1,
    duration_s: float | None = None,
    speedup: float = 1.0,
) -> None:
    """Entry point of `roadwatch simulate`: run until stopped or for `duration_s`."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    publisher = MqttPublisher(
        MqttEndpoint(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            username=settings.mqtt_fleet_user,
            password=settings.mqtt_fleet_password.get_secret_value(),
        )
    )
    publisher.start()
    # Start in the past when running faster than real time, so that the simulated clock
    # never runs ahead of the gateway's (SPEC §2 refuses timestamps from the future).
    lead_ms = round((duration_s or 0) * (speedup - 1) * 1000) if speedup > 1 else 0
    traffic = DemoTraffic(vehicles, seed, round(time.time() * 1000) - lead_ms)
    status = StatusFile(settings.run_dir, "simulator")
    published = 0
    started = time.monotonic()
    log.info("simulating %d vehicles (seed %d, speed-up %.1f)", vehicles, seed, speedup)
    try:
        while not stop.is_set():
            for topic, payload, qos in traffic.tick(TICK_S):
                publisher.publish(topic, orjson.dumps(payload), qos)
                published += 1
            status.write(
                "ready",
                {"vehicles": vehicles, "published": published, "accidents": traffic.accidents},
            )
            elapsed = time.monotonic() - started
            if duration_s is not None and elapsed * speedup >= duration_s:
                break
            stop.wait(TICK_S / speedup)
    finally:
        publisher.stop()
        status.remove()
    log.info("simulator stopped: %d messages, %d accidents", published, traffic.accidents)
