"""MQTT: the wire format (codec.py), RoadWatch's one client on the event loop (client.py), and
its publisher for synchronous code (blocking.py)."""

from roadwatch.adapters.mqtt.blocking import BlockingPublisher, Delivery, EventLoopThread
from roadwatch.adapters.mqtt.client import (
    ClientStats,
    MessageHandler,
    MqttAuthError,
    MqttClient,
    MqttEndpoint,
    MqttError,
    MqttPublishRefused,
)

__all__ = [
    "BlockingPublisher",
    "ClientStats",
    "Delivery",
    "EventLoopThread",
    "MessageHandler",
    "MqttAuthError",
    "MqttClient",
    "MqttEndpoint",
    "MqttError",
    "MqttPublishRefused",
]
