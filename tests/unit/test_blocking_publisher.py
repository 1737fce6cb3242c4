"""The synchronous publisher's own logic: deliveries, refusals, and a broker that never answers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from roadwatch.adapters.mqtt import (
    BlockingPublisher,
    Delivery,
    MqttEndpoint,
    MqttError,
    MqttPublishRefused,
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def answered(loop: asyncio.AbstractEventLoop, reason: int = 0) -> asyncio.Future[None]:
    """A publish's future as the client completes it on the broker's PUBACK."""
    done: asyncio.Future[None] = loop.create_future()
    if reason:
        done.set_exception(MqttPublishRefused("vehicles/x/denm", reason))
    else:
        done.set_result(None)
    return done


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def publisher(port: int = 1) -> BlockingPublisher:
    return BlockingPublisher(MqttEndpoint("127.0.0.1", port, "fleet", "pw"), name="test")


def test_a_delivery_is_done_once_it_and_every_earlier_one_are_answered(
    loop: asyncio.AbstractEventLoop,
) -> None:
    fleet = publisher()
    first, second, third = (Delivery(fleet, seq) for seq in (1, 2, 3))
    # Answers can come out of order after a reconnection resent them.
    fleet._settle(2, answered(loop))
    assert not first.done() and not second.done()
    fleet._settle(1, answered(loop))
    assert first.done() and second.done() and not third.done()
    fleet._settle(3, answered(loop))
    third.wait(0)
    assert fleet._answered_early == set()


def test_a_refused_delivery_raises_the_brokers_reason(loop: asyncio.AbstractEventLoop) -> None:
    fleet = publisher()
    fleet._settle(1, answered(loop, reason=0x87))
    fleet._settle(2, answered(loop))
    with pytest.raises(MqttPublishRefused) as refused:
        Delivery(fleet, 1).wait(0)
    assert refused.value.reason == 0x87
    Delivery(fleet, 2).wait(0)


def test_an_unanswered_delivery_times_out() -> None:
    started = time.monotonic()
    with pytest.raises(MqttError, match="no acknowledgement"):
        Delivery(publisher(), 1).wait(0.05)
    assert time.monotonic() - started < 1


def test_publishing_needs_a_started_publisher() -> None:
    with pytest.raises(MqttError, match="not running"):
        publisher().publish("vehicles/a/cam", b"{}")


def test_no_broker_fails_the_start_after_its_timeout_and_leaves_no_thread() -> None:
    threads = threading.active_count()
    fleet = publisher(unused_port())
    started = time.monotonic()
    with pytest.raises(MqttError, match="no connection to MQTT"):
        fleet.start(timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started < 3
    assert threading.active_count() == threads
    with pytest.raises(MqttError, match="not running"):
        fleet.publish("vehicles/a/cam", b"{}")
