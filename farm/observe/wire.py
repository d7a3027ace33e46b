"""Decode the bytes gVisor's ``remote`` trace sink sends: its datagram header and protobuf.

Callers: ``farm.observe.sink`` (one call to :func:`split_datagram` and :func:`decode`
per received datagram) and the unit tests. The project may not depend on the
``protobuf`` package, so this is a minimal proto3 wire-format reader (plus the few
encoders the handshake and the tests need), driven by the schema tables in
``farm.observe.points``. It never raises anything but :class:`DecodeError` on bad
input, so the sink can count an unparseable datagram instead of dying on it.

Wire facts (gVisor ``pkg/sentry/seccheck/sinks/remote/wire``): every datagram starts
with a little-endian header ``u16 header_size, u16 message_type, u32 dropped_count``;
the protobuf payload starts at ``header_size`` (8 today; a larger size means a newer
header whose extra bytes we skip).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

HEADER = struct.Struct("<HHI")
HEADER_SIZE = HEADER.size  # 8

Kind = Literal["int32", "int64", "uint32", "uint64", "bool", "string", "bytes", "message"]


class DecodeError(ValueError):
    """The bytes are not a valid datagram or protobuf message. Internal: the sink
    catches it and counts the datagram as unparseable."""


@dataclass(frozen=True, slots=True)
class Field:
    """One protobuf field of a schema: its name, scalar kind, and nested schema.

    ``repeated`` is for strings, bytes and messages only: proto3 packs repeated
    scalars into one LEN field, and no gVisor message farm reads has one.
    """

    name: str
    kind: Kind
    repeated: bool = False
    message: Mapping[int, Field] | None = None
    #: The wire type this kind must arrive as; derived, so the hot loop need not.
    wire_type: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        wire_type = LEN if self.kind in ("string", "bytes", "message") else VARINT
        object.__setattr__(self, "wire_type", wire_type)


#: A message schema: field number -> Field. Numbers absent from it are skipped.
Schema = Mapping[int, Field]


@dataclass(frozen=True, slots=True)
class Header:
    """The remote sink's per-datagram header."""

    size: int
    message_type: int
    dropped: int


def split_datagram(datagram: bytes) -> tuple[Header, bytes]:
    """Split a datagram into its header and protobuf payload.

    Raises DecodeError if the datagram is shorter than its header claims.
    """
    if len(datagram) < HEADER_SIZE:
        raise DecodeError(f"datagram of {len(datagram)} bytes is shorter than the header")
    size, message_type, dropped = HEADER.unpack_from(datagram)
    # A smaller size is impossible (our three fields are required); a larger one is a
    # newer header whose extra fields we do not know yet, so skip them.
    if size < HEADER_SIZE or size > len(datagram):
        raise DecodeError(f"header size {size} is invalid for a {len(datagram)}-byte datagram")
    return Header(size, message_type, dropped), datagram[size:]


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """Read a base-128 varint at ``pos``; return (value, next position).

    Raises DecodeError on truncation or on more than 10 bytes (64 bits).
    """
    try:
        byte = buf[pos]
        if byte < 0x80:
            return byte, pos + 1  # keys and small ints: the hot path
        value, shift = byte & 0x7F, 7
        while True:
            pos += 1
            byte = buf[pos]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value & 0xFFFF_FFFF_FFFF_FFFF, pos + 1
            shift += 7
            if shift >= 70:
                raise DecodeError(f"varint longer than 10 bytes at offset {pos}")
    except IndexError:
        raise DecodeError(f"truncated varint at offset {pos}") from None


def iter_fields(buf: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field of one message.

    Varint and fixed values come as unsigned ints, LEN values as bytes.
    Raises DecodeError on malformed input (also for deprecated groups, which proto3
    never emits).
    """
    buf = bytes(buf)  # slices of bytes are bytes: LEN values need no conversion
    pos = 0
    while pos < len(buf):
        number, wire_type, value, pos = _next_field(buf, pos)
        yield number, wire_type, value


def _next_field(buf: bytes, pos: int) -> tuple[int, int, int | bytes, int]:
    key, pos = read_varint(buf, pos)
    number, wire_type = key >> 3, key & 7
    if number == 0:
        raise DecodeError(f"field number 0 at offset {pos}")
    if wire_type == VARINT:
        value, pos = read_varint(buf, pos)
        return number, wire_type, value, pos
    if wire_type == LEN:
        length, pos = read_varint(buf, pos)
        if pos + length > len(buf):
            raise DecodeError(f"length {length} at offset {pos} runs past the message end")
        return number, wire_type, buf[pos : pos + length], pos + length
    if wire_type in (I64, I32):
        width = 8 if wire_type == I64 else 4
        if pos + width > len(buf):
            raise DecodeError(f"truncated fixed{width * 8} at offset {pos}")
        return number, wire_type, int.from_bytes(buf[pos : pos + width], "little"), pos + width
    raise DecodeError(f"unsupported wire type {wire_type} at offset {pos}")


def first_len_field(buf: bytes, number: int) -> bytes | None:
    """The bytes of the first occurrence of LEN field ``number`` of one message, without
    decoding the rest (None if absent or not a LEN field). gVisor writes fields in
    number order, so a low number is found at once. The observer calls this twice per
    datagram, so one-byte keys and varints are skipped inline.

    Raises DecodeError on malformed input before the field.
    """
    pos, end = 0, len(buf)
    try:
        while pos < end:
            key = buf[pos]
            if key >= 0x80 or key & 7 not in (VARINT, LEN) or key < 8:
                found, wire_type, value, pos = _next_field(buf, pos)  # rare: the full path
                if found == number:
                    return value if wire_type == LEN and isinstance(value, bytes) else None
                continue
            pos += 1
            if key & 7 == VARINT:
                if key >> 3 == number:
                    return None
                start = pos
                while buf[pos] & 0x80:
                    pos += 1
                pos += 1
                if pos - start > 10:
                    raise DecodeError(f"varint longer than 10 bytes at offset {start}")
                continue
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = read_varint(buf, pos)
            if pos + length > end:
                raise DecodeError(f"length {length} at offset {pos} runs past the message end")
            if key >> 3 == number:
                return buf[pos : pos + length]
            pos += length
    except IndexError:
        raise DecodeError(f"truncated field at offset {pos}") from None
    return None


def decode(buf: bytes | bytearray | memoryview, schema: Schema) -> dict[str, Any]:
    """Decode one message into a dict keyed by field name, following ``schema``.

    Fields missing from the schema are skipped (a newer gVisor may add some). Absent
    fields are absent from the dict: proto3 omits zero values, so callers default them.
    Raises DecodeError on malformed input or on a wire type that contradicts the schema.
    """
    return _decode(bytes(buf), schema)


def _decode(buf: bytes, schema: Schema) -> dict[str, Any]:
    # The sink calls this for every event, so it loops here rather than through the
    # iter_fields generator, whose per-field overhead showed in the profile.
    out: dict[str, Any] = {}
    pos, end = 0, len(buf)
    while pos < end:
        number, wire_type, raw, pos = _next_field(buf, pos)
        field = schema.get(number)
        if field is None:
            continue
        value = _convert(field, wire_type, raw)
        if field.repeated:
            out.setdefault(field.name, []).append(value)
        else:
            out[field.name] = value  # proto3: the last occurrence wins
    return out


def _convert(field: Field, wire_type: int, raw: int | bytes) -> Any:
    if wire_type != field.wire_type:
        raise DecodeError(f"field {field.name!r} has wire type {wire_type}, want {field.wire_type}")
    if isinstance(raw, int):
        return _scalar(field.kind, raw)
    if field.kind == "string":
        # Paths and argv from the sandbox are attacker-chosen bytes; keep them visible.
        return raw.decode("utf-8", "backslashreplace")
    if field.kind == "message":
        return _decode(raw, field.message or {})
    return raw  # bytes


def _scalar(kind: Kind, value: int) -> int | bool:
    if kind == "bool":
        return value != 0
    if kind == "uint32":
        return value & 0xFFFF_FFFF
    if kind == "int32":
        # A negative int32 is sign-extended to 64 bits on the wire; keep the low 32.
        value &= 0xFFFF_FFFF
        return value - (1 << 32) if value >> 31 else value
    if kind == "int64":
        return value - (1 << 64) if value >> 63 else value
    return value  # uint64


def encode_varint(value: int) -> bytes:
    """Encode a non-negative int, or a negative one as its 64-bit two's complement."""
    value &= 0xFFFF_FFFF_FFFF_FFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_field(number: int, value: int | bool | str | bytes) -> bytes:
    """Encode one field: ints and bools as varints, str and bytes as LEN.

    Nested messages are bytes (an encoded message). Used for the handshake reply and
    by the tests to build datagrams.
    """
    if isinstance(value, int):  # bool is an int
        return encode_varint(number << 3 | VARINT) + encode_varint(int(value))
    data = value.encode() if isinstance(value, str) else value
    return encode_varint(number << 3 | LEN) + encode_varint(len(data)) + data


def encode_header(message_type: int, dropped: int = 0, size: int = HEADER_SIZE) -> bytes:
    """Encode a datagram header (``size`` > 8 pads it, as a newer gVisor might)."""
    return HEADER.pack(size, message_type, dropped) + bytes(size - HEADER_SIZE)
