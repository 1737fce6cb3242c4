"""MQTT 5.0 control packets, as far as RoadWatch's clients need them (OASIS MQTT 5.0).

The client side: it encodes CONNECT, SUBSCRIBE, PUBLISH, PUBACK, PINGREQ and DISCONNECT,
and decodes what a broker sends a client. Decoding works on whole chunks received from
the socket: `PacketStream` cuts them into packets, and PUBLISH bodies are decoded without
building property objects (a property block is only walked when it is not empty).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

# Control packet types (§2.1.2), as the high nibble of the first byte.
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

PINGREQ_PACKET = b"\xc0\x00"
# A DISCONNECT with remaining length 0 means reason code 0, normal disconnection (§3.14.2.1).
DISCONNECT_PACKET = b"\xe0\x00"

# Reason codes this client sends or acts on (§2.4).
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
TOPIC_ALIAS_INVALID = 0x94

# Property identifiers (§2.2.2.2) used here.
MESSAGE_EXPIRY_INTERVAL = 0x02
SESSION_EXPIRY_INTERVAL = 0x11
SERVER_KEEP_ALIVE = 0x13
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS = 0x23
MAXIMUM_PACKET_SIZE = 0x27

# How each property's value is encoded: its size in bytes, or one of the kinds below.
_VARINT, _STRING, _BINARY, _STRING_PAIR = -1, -2, -3, -4
_PROPERTY_SIZES: dict[int, int] = {
    0x01: 1,  # payload format indicator
    0x02: 4,  # message expiry interval
    0x03: _STRING,  # content type
    0x08: _STRING,  # response topic
    0x09: _BINARY,  # correlation data
    0x0B: _VARINT,  # subscription identifier
    0x11: 4,  # session expiry interval
    0x12: _STRING,  # assigned client identifier
    0x13: 2,  # server keep alive
    0x15: _STRING,  # authentication method
    0x16: _BINARY,  # authentication data
    0x17: 1,  # request problem information
    0x18: 4,  # will delay interval
    0x19: 1,  # request response information
    0x1A: _STRING,  # response information
    0x1C: _STRING,  # server reference
    0x1F: _STRING,  # reason string
    0x21: 2,  # receive maximum
    0x22: 2,  # topic alias maximum
    0x23: 2,  # topic alias
    0x24: 1,  # maximum QoS
    0x25: 1,  # retain available
    0x26: _STRING_PAIR,  # user property
    0x27: 4,  # maximum packet size
    0x28: 1,  # wildcard subscription available
    0x29: 1,  # subscription identifier available
    0x2A: 1,  # shared subscription available
}
_MAX_VARINT = 268_435_455  # four bytes of seven bits (§1.5.5)

PropertyValue = int | str | bytes


class MalformedPacketError(ValueError):
    """The broker sent bytes that are not a valid MQTT 5 packet for this client."""

    def __init__(self, message: str, reason_code: int = MALFORMED_PACKET) -> None:
        super().__init__(message)
        self.reason_code = reason_code


# -- primitives -----------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Encode a Variable Byte Integer (§1.5.5)."""
    if not 0 <= value <= _MAX_VARINT:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        digit = value & 0x7F
        value >>= 7
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def decode_varint(buffer: bytes, pos: int) -> tuple[int, int]:
    """Decode a Variable Byte Integer at `pos`: (value, position after it).

    Returns (-1, -1) when the buffer ends inside it; raises when it is longer than 4 bytes.
    """
    value = 0
    shift = 0
    end = len(buffer)
    for index in range(pos, pos + 4):
        if index >= end:
            return -1, -1
        digit = buffer[index]
        value |= (digit & 0x7F) << shift
        if digit < 0x80:
            return value, index + 1
        shift += 7
    raise MalformedPacketError("variable byte integer longer than 4 bytes")


def encode_string(text: str) -> bytes:
    """Encode a UTF-8 Encoded String (§1.5.4)."""
    return encode_binary(text.encode())


def encode_binary(data: bytes) -> bytes:
    """Encode Binary Data: a two-byte length, then the bytes (§1.5.6)."""
    if len(data) > 0xFFFF:
        raise ValueError("string or binary data longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def _properties(properties: Sequence[tuple[int, int]]) -> bytes:
    """Encode a property block of integer properties (all this client sends)."""
    encoded = b"".join(
        bytes((identifier,)) + value.to_bytes(_PROPERTY_SIZES[identifier], "big")
        for identifier, value in properties
    )
    return encode_varint(len(encoded)) + encoded


def decode_properties(buffer: bytes, pos: int, end: int) -> dict[int, PropertyValue]:
    """Decode the properties in buffer[pos:end] (the last one wins when one repeats)."""
    found: dict[int, PropertyValue] = {}
    while pos < end:
        identifier = buffer[pos]
        size = _PROPERTY_SIZES.get(identifier)
        if size is None:
            raise MalformedPacketError(f"unknown property 0x{identifier:02x}")
        pos += 1
        value: PropertyValue
        if size > 0:
            if pos + size > end:
                raise MalformedPacketError(f"property 0x{identifier:02x} cut short")
            value = int.from_bytes(buffer[pos : pos + size], "big")
            pos += size
        elif size == _VARINT:
            value, pos = decode_varint(buffer[:end], pos)
            if pos < 0:
                raise MalformedPacketError("subscription identifier cut short")
        else:
            value, pos = _decode_string_property(buffer, pos, end, size)
        found[identifier] = value
    if pos != end:
        raise MalformedPacketError("property block overruns its length")
    return found


def _decode_string_property(
    buffer: bytes, pos: int, end: int, kind: int
) -> tuple[PropertyValue, int]:
    for_pair = 2 if kind == _STRING_PAIR else 1
    values: list[bytes] = []
    for _ in range(for_pair):
        if pos + 2 > end:
            raise MalformedPacketError("string property cut short")
        stop = pos + 2 + int.from_bytes(buffer[pos : pos + 2], "big")
        if stop > end:
            raise MalformedPacketError("string property cut short")
        values.append(bytes(buffer[pos + 2 : stop]))
        pos = stop
    if kind == _BINARY:
        return values[0], pos
    try:
        text = [value.decode() for value in values]
    except UnicodeDecodeError as exc:
        raise MalformedPacketError("string property is not UTF-8") from exc
    return "=".join(text), pos


def _property_block(body: bytes, pos: int) -> tuple[dict[int, PropertyValue], int]:
    """Decode the property block starting at `pos` of a packet body: (properties, its end)."""
    length, start = decode_varint(body, pos)
    if start < 0 or start + length > len(body):
        raise MalformedPacketError("property block longer than the packet")
    return decode_properties(body, start, start + length), start + length


# -- packets this client sends ----------------------------------------------------------------


def encode_connect(
    client_id: str,
    *,
    username: str,
    password: str,
    keepalive_s: int,
    clean_start: bool,
    session_expiry_s: int,
    receive_maximum: int,
    maximum_packet_size: int,
) -> bytes:
    """Encode CONNECT (§3.1) without a will; the session outlives us for `session_expiry_s`."""
    flags = 0x02 if clean_start else 0
    if username:
        flags |= 0x80
    if password:
        flags |= 0x40
    properties: list[tuple[int, int]] = []
    if session_expiry_s:
        properties.append((SESSION_EXPIRY_INTERVAL, session_expiry_s))
    properties.append((RECEIVE_MAXIMUM, receive_maximum))
    properties.append((MAXIMUM_PACKET_SIZE, maximum_packet_size))
    body = (
        encode_string("MQTT")
        + bytes((5, flags))
        + keepalive_s.to_bytes(2, "big")
        + _properties(properties)
        + encode_string(client_id)
    )
    if username:
        body += encode_string(username)
    if password:
        body += encode_binary(password.encode())
    return _packet(CONNECT << 4, body)


def encode_subscribe(packet_id: int, subscriptions: Sequence[tuple[str, int]]) -> bytes:
    """Encode SUBSCRIBE (§3.8) of (topic filter, maximum QoS) pairs."""
    body = packet_id.to_bytes(2, "big") + b"\x00"
    for topic_filter, qos in subscriptions:
        body += encode_string(topic_filter) + bytes((qos,))
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def encode_puback(packet_id: int) -> bytes:
    """Encode PUBACK, success (§3.4: reason code and properties may be left out)."""
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def encode_disconnect(reason_code: int) -> bytes:
    """Encode DISCONNECT with a reason code (§3.14)."""
    return bytes((DISCONNECT << 4, 2, reason_code, 0))


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int = 0,
    packet_id: int = 0,
    properties: bytes = b"",
    *,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    """Encode PUBLISH (§3.3); `properties` is an encoded property list without its length."""
    body = encode_string(topic)
    if qos:
        body += packet_id.to_bytes(2, "big")
    body += encode_varint(len(properties)) + properties + payload
    return _packet((PUBLISH << 4) | (dup << 3) | (qos << 1) | retain, body)


def mark_duplicate(packet: bytes) -> bytes:
    """Return a QoS 1 PUBLISH packet with its DUP flag set, for sending it again (§3.3.1.1)."""
    return bytes((packet[0] | 0x08,)) + packet[1:]


def message_expiry(seconds: int) -> bytes:
    """Encode a Message Expiry Interval property (§3.3.2.3.3) for `encode_publish`."""
    return bytes((MESSAGE_EXPIRY_INTERVAL,)) + seconds.to_bytes(4, "big")


# -- packets this client receives -------------------------------------------------------------


class PacketStream:
    """Cuts the bytes received from a broker into packets, across any chunk boundaries."""

    def __init__(self, maximum_packet_size: int) -> None:
        self.maximum_packet_size = maximum_packet_size
        self._rest = b""

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes]]:
        """Yield every packet completed by `chunk` as (first byte, body), in order.

        A malformed packet raises where it starts: the packets before it are still taken.
        """
        buffer = self._rest + chunk if self._rest else chunk
        self._rest = b""
        end = len(buffer)
        pos = 0
        while end - pos >= 2:  # the shortest packet: type and length
            length = buffer[pos + 1]
            start = pos + 2
            if length >= 0x80:
                length, start = decode_varint(buffer, pos + 1)
                if start < 0:
                    break
            if length > self.maximum_packet_size:
                raise MalformedPacketError(f"packet of {length} bytes is over our maximum")
            stop = start + length
            if stop > end:
                break
            yield buffer[pos], buffer[start:stop]
            pos = stop
        self._rest = buffer[pos:]


def decode_publish(first_byte: int, body: bytes) -> tuple[str, int, bytes]:
    """Decode a PUBLISH body (§3.3): (topic, packet id or 0 at QoS 0, payload).

    Topic aliases are refused: this client announces a Topic Alias Maximum of 0 (§3.3.2.3.4).
    """
    qos = (first_byte >> 1) & 3
    end = len(body)
    if end < 3:  # topic length and property length
        raise MalformedPacketError("PUBLISH too short")
    pos = 2 + ((body[0] << 8) | body[1])
    if pos > end:
        raise MalformedPacketError("PUBLISH topic longer than the packet")
    try:
        topic = body[2:pos].decode()
    except UnicodeDecodeError as exc:
        raise MalformedPacketError("PUBLISH topic is not UTF-8") from exc
    packet_id = 0
    if qos:
        if qos == 3:
            raise MalformedPacketError("PUBLISH with QoS 3")
        if pos + 2 > end:
            raise MalformedPacketError("PUBLISH without a packet identifier")
        packet_id = (body[pos] << 8) | body[pos + 1]
        if not packet_id:
            raise MalformedPacketError("PUBLISH with packet identifier 0")
        pos += 2
    if pos >= end:
        raise MalformedPacketError("PUBLISH without properties")
    if body[pos] == 0:
        pos += 1
    else:
        properties, pos = _property_block(body, pos)
        if TOPIC_ALIAS in properties:
            raise MalformedPacketError(
                "topic alias sent to a client allowing none", TOPIC_ALIAS_INVALID
            )
    if not topic:
        raise MalformedPacketError("PUBLISH without a topic", PROTOCOL_ERROR)
    return topic, packet_id, body[pos:]


def decode_connack(body: bytes) -> tuple[bool, int, dict[int, PropertyValue]]:
    """Decode CONNACK (§3.2): (session present, reason code, properties)."""
    if len(body) < 3:  # flags, reason code, property length
        raise MalformedPacketError("CONNACK too short")
    properties, end = _property_block(body, 2)
    if end != len(body):
        raise MalformedPacketError("CONNACK longer than its fields")
    return bool(body[0] & 1), body[1], properties


def decode_puback(body: bytes) -> tuple[int, int]:
    """Decode PUBACK (§3.4): (packet id, reason code; 0 when left out)."""
    if len(body) < 2:
        raise MalformedPacketError("PUBACK too short")
    return (body[0] << 8) | body[1], body[2] if len(body) > 2 else 0


def decode_suback(body: bytes) -> tuple[int, list[int]]:
    """Decode SUBACK (§3.9): (packet id, one reason code per topic filter)."""
    if len(body) < 3:  # packet id and property length
        raise MalformedPacketError("SUBACK too short")
    _properties_found, pos = _property_block(body, 2)
    return (body[0] << 8) | body[1], list(body[pos:])


def decode_disconnect(body: bytes) -> tuple[int, str]:
    """Decode DISCONNECT (§3.14): (reason code, reason string or "")."""
    if not body:
        return 0, ""
    reason_string: PropertyValue = ""
    if len(body) > 1:
        properties, _end = _property_block(body, 1)
        reason_string = properties.get(REASON_STRING, "")
    return body[0], str(reason_string)
