"""Which MQTT client stack RoadWatch should use: the candidates side by side on one broker.

`python -m bench mqtt` starts a bare private Mosquitto (anonymous, loopback) and runs each
candidate in a process of its own, one after the other, on four workloads: receiving QoS 0
and QoS 1 CAMs flat out from a load publisher in another process (QoS 1 acknowledged after the
callback), and publishing them at QoS 0 and at QoS 1 (waiting for the acknowledgements, at
most the broker's Receive Maximum in flight). It prints messages/s, the candidate process's
CPU time per message, the messages lost and the broker's CPU time per message.

`python -m bench.mqtt_stacks --scale 0.1 paho-thread gmqtt` runs a smaller subset.
"""

from bench.mqtt_stacks.run import main

__all__ = ["main"]
