"""A subscriber for synchronous tests: an MqttClient on a loop thread, collecting messages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from roadwatch.adapters.mqtt import EventLoopThread, MqttClient, MqttEndpoint, MqttError
from roadwatch.settings import Settings

VEHICLE_TOPICS = (("vehicles/+/cam", 0), ("vehicles/+/denm", 1))


def gateway_endpoint(settings: Settings, client_id: str = "") -> MqttEndpoint:
    """The gateway's account, which may read every vehicle topic."""
    return MqttEndpoint.gateway(settings, client_id)


def fleet_endpoint(settings: Settings) -> MqttEndpoint:
    """The simulator's fleet account, which may publish for any vehicle."""
    return MqttEndpoint.fleet(settings)


class Inbox:
    """Messages received by one subscriber, in arrival order: (topic, payload, qos)."""

    def __init__(
        self,
        endpoint: MqttEndpoint,
        subscriptions: Sequence[tuple[str, int]] = VEHICLE_TOPICS,
        *,
        persistent: bool = False,
    ) -> None:
        self.received: list[tuple[str, bytes, int]] = []
        self._thread = EventLoopThread("test-inbox")
        self.client = MqttClient(
            endpoint,
            name="test-inbox",
            subscriptions=subscriptions,
            on_message=self._handle,
            persistent=persistent,
        )
        self._task: asyncio.Future[None] | None = None

    def _handle(self, topic: str, payload: bytes, qos: int) -> None:
        self.received.append((topic, payload, qos))

    def __enter__(self) -> Inbox:
        self._thread.start()
        try:
            self._thread.call(self._open(), 15)
        except BaseException:
            self._thread.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._thread.call(self._close(), 15)
        finally:
            self._thread.stop()

    async def _open(self) -> None:
        self._task = asyncio.ensure_future(self.client.run())
        connected = asyncio.ensure_future(self.client.connected.wait())
        await asyncio.wait({connected, self._task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            self._task.result()  # the broker refused us: say why
        if not connected.done():
            connected.cancel()
            raise MqttError("the test subscriber did not connect in 10 s")

    async def _close(self) -> None:
        await self.client.close()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=5)

    def is_connected(self) -> bool:
        return self.client.is_connected()

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[tuple[str, bytes, int]]:
        """Return what arrived once `count` messages did, or once the time is up."""
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.received)

    def quiet(self, wait_s: float = 1.0) -> list[tuple[str, bytes, int]]:
        """Return what arrived after waiting `wait_s` (for what must not arrive)."""
        time.sleep(wait_s)
        return list(self.received)
