"""The MQTT 5 packet codec, and how the MQTT client survives a broker sending bad packets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadwatch.adapters.mqtt import MqttClient, MqttEndpoint, codec
from roadwatch.adapters.mqtt.codec import MalformedPacketError, PacketStream

LIMIT = 256 * 1024
topics = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00+#"),
    min_size=1,
    max_size=80,
)
payloads = st.binary(max_size=5000)
qos_and_id = st.one_of(
    st.tuples(st.just(0), st.just(0)), st.tuples(st.just(1), st.integers(1, 0xFFFF))
)


def feed(data: bytes) -> list[tuple[int, bytes]]:
    return list(PacketStream(LIMIT).feed(data))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted({cut % (len(data) + 1) for cut in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(st.integers(0, 268_435_455))
def test_variable_byte_integer_round_trip(value: int) -> None:
    encoded = codec.encode_varint(value)
    assert 1 <= len(encoded) <= 4
    assert codec.decode_varint(b"x" + encoded + b"rest", 1) == (value, 1 + len(encoded))
    # Cut short anywhere inside: not an error, just incomplete.
    assert codec.decode_varint(encoded[:-1], 0) == (-1, -1)


def test_variable_byte_integer_of_five_bytes_is_malformed() -> None:
    with pytest.raises(MalformedPacketError):
        codec.decode_varint(b"\xff\xff\xff\xff\x01", 0)
    with pytest.raises(ValueError, match="does not fit"):
        codec.encode_varint(268_435_456)


@given(topics, payloads, qos_and_id)
def test_publish_round_trip(topic: str, payload: bytes, qos_id: tuple[int, int]) -> None:
    qos, packet_id = qos_id
    packet = codec.encode_publish(topic, payload, qos, packet_id)
    [(first_byte, body)] = feed(packet)
    assert first_byte >> 4 == codec.PUBLISH
    assert codec.decode_publish(first_byte, body) == (topic, packet_id, payload)


def test_publish_properties_are_skipped() -> None:
    # Message expiry, content type and a user property: none of them changes the message.
    properties = (
        b"\x02\x00\x00\x00\x3c"
        + b"\x03"
        + codec.encode_string("application/json")
        + b"\x26"
        + codec.encode_string("k")
        + codec.encode_string("v")
    )
    packet = codec.encode_publish("vehicles/a/cam", b"{}", 1, 7, properties)
    [(first_byte, body)] = feed(packet)
    assert codec.decode_publish(first_byte, body) == ("vehicles/a/cam", 7, b"{}")


def test_topic_alias_is_refused() -> None:
    packet = codec.encode_publish("vehicles/a/cam", b"{}", 0, 0, b"\x23\x00\x01")
    [(first_byte, body)] = feed(packet)
    with pytest.raises(MalformedPacketError) as refused:
        codec.decode_publish(first_byte, body)
    assert refused.value.reason_code == codec.TOPIC_ALIAS_INVALID


@given(
    st.lists(st.tuples(topics, payloads, qos_and_id), min_size=1, max_size=8),
    st.lists(st.integers(0, 100_000), max_size=12),
)
def test_packets_split_anywhere_or_sharing_a_chunk_decode_the_same(
    messages: list[tuple[str, bytes, tuple[int, int]]], cuts: list[int]
) -> None:
    stream = b"".join(codec.encode_publish(t, p, q, i) for t, p, (q, i) in messages)
    decoder = PacketStream(LIMIT)
    decoded = [
        codec.decode_publish(first_byte, body)
        for chunk in split(stream, cuts)
        for first_byte, body in decoder.feed(chunk)
    ]
    assert decoded == [(t, i, p) for t, p, (_q, i) in messages]


def test_every_byte_boundary_of_a_packet() -> None:
    packet = codec.encode_publish("vehicles/é/denm", b"x" * 200, 1, 513)  # two-byte length
    for cut in range(1, len(packet)):
        decoder = PacketStream(LIMIT)
        assert list(decoder.feed(packet[:cut])) == []
        [(first_byte, body)] = decoder.feed(packet[cut:])
        assert codec.decode_publish(first_byte, body) == ("vehicles/é/denm", 513, b"x" * 200)


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"\x30\x01\x00", "too short"),  # no room for a topic length
        (b"\x30\x04\x00\x09ab", "topic longer"),
        (b"\x30\x05\x00\x02\xff\xfe\x00", "not UTF-8"),
        (b"\x36\x06\x00\x01a\x00\x01\x00", "QoS 3"),
        (b"\x32\x06\x00\x01a\x00\x00\x00", "identifier 0"),
        (b"\x30\x04\x00\x01a\x05", "longer than the packet"),
        (b"\x30\x06\x00\x01a\x02\x7f\x00", "unknown property"),
        (b"\x30\x03\x00\x00\x00", "without a topic"),
    ],
)
def test_malformed_publish_is_a_clear_error(packet: bytes, reason: str) -> None:
    [(first_byte, body)] = feed(packet)
    with pytest.raises(MalformedPacketError, match=reason):
        codec.decode_publish(first_byte, body)


def test_oversized_packet_is_refused_before_it_is_buffered() -> None:
    header = b"\x30" + codec.encode_varint(LIMIT + 1)
    with pytest.raises(MalformedPacketError, match="over our maximum"):
        feed(header)


def test_connect_carries_our_session_and_flow_control() -> None:
    packet = codec.encode_connect(
        "roadwatch-gateway",
        username="gateway",
        password="s3cret",
        keepalive_s=30,
        clean_start=False,
        session_expiry_s=3600,
        receive_maximum=4096,
        maximum_packet_size=LIMIT,
    )
    [(first_byte, body)] = feed(packet)
    assert first_byte == 0x10
    assert body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0xC0  # user name and password, no clean start, no will
    assert int.from_bytes(body[8:10], "big") == 30
    properties, end = codec._property_block(body, 10)
    assert properties == {
        codec.SESSION_EXPIRY_INTERVAL: 3600,
        codec.RECEIVE_MAXIMUM: 4096,
        codec.MAXIMUM_PACKET_SIZE: LIMIT,
    }
    assert body[end:] == (
        codec.encode_string("roadwatch-gateway")
        + codec.encode_string("gateway")
        + codec.encode_binary(b"s3cret")
    )
    clean = codec.encode_connect(
        "",
        username="",
        password="",
        keepalive_s=30,
        clean_start=True,
        session_expiry_s=0,
        receive_maximum=10,
        maximum_packet_size=LIMIT,
    )
    [(_first, clean_body)] = feed(clean)
    assert clean_body[7] == 0x02
    assert codec.SESSION_EXPIRY_INTERVAL not in codec._property_block(clean_body, 10)[0]


def test_subscribe_puback_and_broker_replies() -> None:
    [(first_byte, body)] = feed(
        codec.encode_subscribe(9, [("vehicles/+/cam", 0), ("vehicles/+/denm", 1)])
    )
    assert first_byte == 0x82
    assert body == (
        b"\x00\x09\x00"
        + codec.encode_string("vehicles/+/cam")
        + b"\x00"
        + codec.encode_string("vehicles/+/denm")
        + b"\x01"
    )
    assert codec.encode_puback(0x1234) == b"\x40\x02\x12\x34"
    assert codec.decode_suback(b"\x00\x09\x00\x00\x87") == (9, [0, 0x87])
    assert codec.decode_connack(b"\x01\x00\x03\x13\x00\x3c") == (True, 0, {0x13: 60})
    assert codec.decode_connack(b"\x00\x86\x00")[1] == 0x86
    reason = b"\x1f" + codec.encode_string("session taken over")
    assert codec.decode_disconnect(b"\x8e" + bytes((len(reason),)) + reason) == (
        0x8E,
        "session taken over",
    )
    assert codec.decode_disconnect(b"") == (0, "")


# -- the client facing a broker that sends garbage ------------------------------------------


class GarbageBroker:
    """A listener speaking just enough MQTT to accept a subscriber, then sending `garbage`.

    It counts the connections it accepted: the client must come back after each bad packet.
    """

    def __init__(self, garbage: bytes) -> None:
        self.garbage = garbage
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.received_after_garbage: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _address = self.server.accept()
            except OSError:
                return
            self.connections += 1
            # The client may go at any point (the test ends): a reset is no failure here.
            with contextlib.suppress(OSError), conn:
                conn.recv(65536)  # CONNECT
                conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK: accepted
                subscribe = conn.recv(65536)
                packet_id = subscribe[2:4]
                conn.sendall(b"\x90\x04" + packet_id + b"\x00\x00")  # SUBACK: QoS 0 granted
                conn.sendall(codec.encode_publish("vehicles/ok/cam", b"fine"))
                conn.sendall(self.garbage)
                conn.settimeout(2)
                try:
                    self.received_after_garbage.append(conn.recv(65536))
                except OSError:
                    self.received_after_garbage.append(b"")

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize(
    ("garbage", "reason_code"),
    [
        (b"\x30\x04\x00\x09ab", codec.MALFORMED_PACKET),
        (b"\x30\x07\x00\x01a\x03\x23\x00\x01", codec.TOPIC_ALIAS_INVALID),
        (b"\x30\xff\xff\xff\xff\x01", codec.MALFORMED_PACKET),
        (b"\x50\x02\x00\x01", codec.PROTOCOL_ERROR),  # PUBREC: we never publish at QoS 2
    ],
)
def test_malformed_packet_drops_the_connection_and_reconnects(
    garbage: bytes, reason_code: int
) -> None:
    broker = GarbageBroker(garbage)
    received: list[tuple[str, bytes]] = []
    client = MqttClient(
        MqttEndpoint("127.0.0.1", broker.port, "gateway", "pw"),
        subscriptions=(("vehicles/+/cam", 0),),
        on_message=lambda topic, payload, qos: received.append((topic, payload)),
    )

    async def scenario() -> None:
        task = asyncio.ensure_future(client.run())
        try:
            for _tick in range(200):  # 10 s
                if client.stats.connects >= 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            await client.close()
            await asyncio.wait_for(task, 5)

    try:
        asyncio.run(scenario())
    finally:
        broker.close()
    assert broker.connections >= 2  # back after RECONNECT_MIN_DELAY_S
    assert client.stats.malformed >= 1
    assert client.stats.connects >= 2
    assert received[0] == ("vehicles/ok/cam", b"fine")
    # The broker was told why (DISCONNECT with the reason code) before the line dropped.
    assert broker.received_after_garbage[0] == codec.encode_disconnect(reason_code)
