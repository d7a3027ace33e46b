"""The protobuf reader, the datagram header, the schemas and event decoding, without runsc.

Golden datagrams were captured from runsc 0.0~20240729 (see docs/observer.md).
"""

from __future__ import annotations

import json

import pytest

from farm.observe import points
from farm.observe.events import to_event
from farm.observe.points import MessageType, PointSpec, SockAddr, parse_sockaddr
from farm.observe.sink import pod_init_config
from farm.observe.wire import (
    DecodeError,
    Field,
    Header,
    decode,
    encode_field,
    encode_header,
    encode_varint,
    iter_fields,
    read_varint,
    split_datagram,
)

# python3 in `runsc do` connecting to [::1]:9 (ECONNREFUSED).
CONNECT6 = bytes.fromhex(
    "08000a00000000000a390886f29cec81a89df618100118da82ac8d81a89df618200128da82ac8d81"
    "a89df618320c72756e73632d3535393532354a07707974686f6e331202106f182a20032a0a736f63"
    "6b65743a5b315d321c0a000009000000000000000000000000000000000000000100000000"
)
# openat(AT_FDCWD, "/nonexistent/x", O_RDONLY|O_CLOEXEC) -> ENOENT.
OPEN_ENOENT = bytes.fromhex(
    "08000700000000000a3908b0b5d8ec81a89df618100118da82ac8d81a89df618200128da82ac8d81"
    "a89df618320c72756e73632d3535393532354a07707974686f6e3312021002188102209cffffffff"
    "ffffffff01320e2f6e6f6e6578697374656e742f7838808020"
)
# Raw sendto exit (sysno/44) without its enter point: gVisor sends no context.
RAW_SENDTO = bytes.fromhex(
    "080006000000000012020801202c280430f0bed4f7eadb1f38014880ff9699a8dd1f5010"
)
# The container's init process exiting with status 3 (a wait status: 3 << 8).
TASK_EXIT = bytes.fromhex(
    "08000500000000000a3908f9b4f9f081a89df618100118da82ac8d81a89df618200128da82ac8d81"
    "a89df618320c72756e73632d3535393532354a07707974686f6e33108006"
)


# -- varints and fields ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (150, "9601"),  # the protobuf documentation's example
        (300, "ac02"),
        (2**64 - 1, "ffffffffffffffffff01"),
        (-1, "ffffffffffffffffff01"),  # negative ints are 64-bit two's complement
        (-100, "9cffffffffffffffff01"),
    ],
)
def test_varint_round_trip(value: int, encoded: str) -> None:
    assert encode_varint(value).hex() == encoded
    assert read_varint(bytes.fromhex(encoded), 0) == (value % 2**64, len(encoded) // 2)


@pytest.mark.parametrize("data", ["", "80", "ffff", "ff" * 10 + "01"])
def test_varint_truncated_or_overlong(data: str) -> None:
    with pytest.raises(DecodeError):
        read_varint(bytes.fromhex(data), 0)


def test_iter_fields_all_wire_types() -> None:
    data = bytes.fromhex(
        " ".join(
            [
                "08 9601",  # 1: varint 150
                "11 0102030405060708",  # 2: fixed64
                "1d 01000080",  # 3: fixed32
                "22 03616263",  # 4: LEN "abc"
            ]
        )
    )
    fields = [(n, t, v if isinstance(v, int) else bytes(v)) for n, t, v in iter_fields(data)]
    assert fields == [
        (1, 0, 150),
        (2, 1, 0x0807060504030201),
        (3, 5, 0x80000001),
        (4, 2, b"abc"),
    ]


@pytest.mark.parametrize(
    "data",
    [
        "0a05616263",  # LEN runs past the end
        "11010203",  # truncated fixed64
        "1d01",  # truncated fixed32
        "0b",  # start group: proto3 never sends groups
        "0701",  # wire type 7 does not exist
        "0001",  # field number 0
        "08",  # key without value
    ],
)
def test_iter_fields_rejects_malformed(data: str) -> None:
    with pytest.raises(DecodeError):
        list(iter_fields(bytes.fromhex(data)))


# -- schema-driven decoding -----------------------------------------------------------

INNER = {1: Field("n", "int32")}
SCHEMA = {
    1: Field("i32", "int32"),
    2: Field("i64", "int64"),
    3: Field("u32", "uint32"),
    4: Field("u64", "uint64"),
    5: Field("flag", "bool"),
    6: Field("name", "string"),
    7: Field("blob", "bytes"),
    8: Field("inner", "message", message=INNER),
    9: Field("names", "string", repeated=True),
}


def test_decode_every_kind() -> None:
    data = b"".join(
        [
            encode_field(1, -100),
            encode_field(2, -(2**40)),
            encode_field(3, 2**32 - 1),
            encode_field(4, 2**64 - 1),
            encode_field(5, True),
            encode_field(6, "héllo"),
            encode_field(7, b"\x00\xff"),
            encode_field(8, encode_field(1, -7)),
            encode_field(9, "a"),
            encode_field(9, "b"),
        ]
    )
    assert decode(data, SCHEMA) == {
        "i32": -100,
        "i64": -(2**40),
        "u32": 2**32 - 1,
        "u64": 2**64 - 1,
        "flag": True,
        "name": "héllo",
        "blob": b"\x00\xff",
        "inner": {"n": -7},
        "names": ["a", "b"],
    }


def test_decode_skips_unknown_fields_of_every_wire_type() -> None:
    unknown = [
        "f801 05",  # 31: varint
        "f901 0000000000000000",  # 31: fixed64
        "fd01 00000000",  # 31: fixed32
        "fa01 0178",  # 31: LEN
    ]
    data = bytes.fromhex(" ".join(unknown)) + encode_field(6, "kept")
    assert decode(data, SCHEMA) == {"name": "kept"}


def test_decode_absent_fields_are_absent_and_last_wins() -> None:
    assert decode(b"", SCHEMA) == {}
    assert decode(encode_field(6, "a") + encode_field(6, "b"), SCHEMA) == {"name": "b"}


def test_decode_keeps_invalid_utf8_visible() -> None:
    assert decode(encode_field(6, b"/etc/\xff"), SCHEMA) == {"name": "/etc/\\xff"}


def test_decode_rejects_wire_type_that_contradicts_schema() -> None:
    with pytest.raises(DecodeError, match="name"):
        decode(encode_field(6, 5), SCHEMA)
    with pytest.raises(DecodeError, match="i32"):
        decode(encode_field(1, "x"), SCHEMA)


def test_decode_rejects_malformed_nested_message() -> None:
    with pytest.raises(DecodeError):
        decode(encode_field(8, b"\x08"), SCHEMA)


# -- the datagram header ---------------------------------------------------------------


def test_split_datagram() -> None:
    header, payload = split_datagram(encode_header(7, dropped=3) + b"\x08\x01")
    assert header == Header(size=8, message_type=7, dropped=3)
    assert bytes(payload) == b"\x08\x01"


def test_split_datagram_skips_a_longer_future_header() -> None:
    header, payload = split_datagram(encode_header(10, size=12) + b"\x08\x01")
    assert header.size == 12
    assert bytes(payload) == b"\x08\x01"


@pytest.mark.parametrize(
    "datagram",
    [b"", b"\x08\x00\x07", bytes.fromhex("0400070000000000"), bytes.fromhex("1000070000000000")],
)
def test_split_datagram_rejects_bad_headers(datagram: bytes) -> None:
    with pytest.raises(DecodeError):
        split_datagram(datagram)


# -- golden datagrams from runsc -------------------------------------------------------


def test_golden_connect_ipv6() -> None:
    event = to_event(*split_datagram(CONNECT6), connection=1)
    assert event.kind == "connect"
    assert event.message_type == MessageType.SYSCALL_CONNECT
    assert event.container_id == "runsc-559525"
    assert event.context.process_name == "python3"
    assert event.context.thread_group_id == 1
    assert event.errno == 111  # ECONNREFUSED
    assert event.sysno == 42
    assert event.fields["fd_path"] == "socket:[1]"
    assert event.sockaddr() == SockAddr("inet6", "::1", 9)


def test_golden_open() -> None:
    event = to_event(*split_datagram(OPEN_ENOENT), connection=1)
    assert event.kind == "open"
    assert event.fields["pathname"] == "/nonexistent/x"
    assert event.fields["fd"] == -100  # AT_FDCWD: a negative int64 must decode as such
    assert event.fields["flags"] == 0o2000000  # O_CLOEXEC
    assert event.errno == 2
    assert event.sysno == 257
    assert event.sockaddr() is None


def test_golden_raw_syscall_without_context_uses_connection_container() -> None:
    event = to_event(*split_datagram(RAW_SENDTO), connection=4, container_id="c1")
    assert event.kind == "syscall"
    assert event.syscall_name == "sendto"
    assert event.container_id == "c1"
    assert event.context.thread_group_id == 0
    assert event.fields["arg1"] == 4  # the socket fd
    assert event.fields["exit"] == {"result": 1}


def test_golden_task_exit() -> None:
    event = to_event(*split_datagram(TASK_EXIT), connection=1)
    assert event.kind == "task_exit"
    assert event.fields["exit_status"] == 3 << 8


def test_unknown_message_type_is_kept_without_fields() -> None:
    event = to_event(Header(8, 99, 0), encode_field(1, 5), connection=1, container_id="c")
    assert (event.kind, event.fields, event.container_id) == ("message_99", {}, "c")


def test_events_are_frozen() -> None:
    event = to_event(*split_datagram(TASK_EXIT), connection=1)
    with pytest.raises(ValueError):
        event.kind = "x"  # type: ignore[misc]


def test_every_schema_decodes_an_empty_message() -> None:
    for number, (kind, schema) in points.MESSAGES.items():
        assert to_event(Header(8, number, 0), b"", connection=1).kind == kind
        assert all(isinstance(f, Field) for f in schema.values())


# -- sockaddr -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (bytes.fromhex("020000357f000035") + bytes(8), SockAddr("inet", "127.0.0.53", 53)),
        (b"\x01\x00/var/run/docker.sock\x00junk", SockAddr("unix", path="/var/run/docker.sock")),
        (b"\x01\x00\x00hidden\x00\x00", SockAddr("unix", path="@hidden")),
        (b"\x10\x00" + bytes(10), SockAddr("af16")),  # AF_NETLINK
        (b"\x02\x00\x00", SockAddr("af2")),  # too short for an IPv4 address
        (b"\x02", None),
    ],
)
def test_parse_sockaddr(raw: bytes, expected: SockAddr | None) -> None:
    assert parse_sockaddr(raw) == expected


# -- the runsc configuration ----------------------------------------------------------


def test_pod_init_config_shape() -> None:
    spec = PointSpec("syscall/connect/exit", optional_fields=("fd_path",))
    config = pod_init_config("/run/farm/t.sock", [spec], retries=50)
    assert config == {
        "trace_session": {
            "name": "Default",
            "points": [
                {
                    "name": "syscall/connect/exit",
                    "context_fields": list(points.ACTION_CONTEXT),
                    "optional_fields": ["fd_path"],
                }
            ],
            "sinks": [
                {"name": "remote", "config": {"endpoint": "/run/farm/t.sock", "retries": 50}}
            ],
        }
    }
    json.dumps(config)  # serialisable as is


def test_pod_init_config_never_ignores_sink_errors() -> None:
    # Fail-closed: runsc must refuse to start a sandbox whose events nobody receives.
    sink = pod_init_config("/s")["trace_session"]["sinks"][0]
    assert "ignore_setup_error" not in sink
    assert sink["config"] == {"endpoint": "/s", "retries": 100}
    assert pod_init_config("/s", retries=None)["trace_session"]["sinks"][0]["config"] == {
        "endpoint": "/s"
    }


def test_default_points_are_unique_and_well_formed() -> None:
    names = [p.name for p in points.DEFAULT_POINTS]
    assert len(names) == len(set(names))
    for name in names:
        assert name.split("/")[0] in ("container", "sentry", "syscall")
    # Raw exits carry context only when their enter point is on (see points._raw).
    raw = {n for n in names if "/sysno/" in n}
    sysnos = {**points.RAW_SYSCALLS, **points.RAW_FS_SYSCALLS}
    assert {n.rsplit("/", 1)[0] for n in raw} == {f"syscall/sysno/{n}" for n in sysnos}
    assert len(raw) == 2 * len(sysnos)
    # Every point that can become an action reports the process's cwd.
    for point in points.DEFAULT_POINTS:
        assert ("cwd" in point.context_fields) == (point not in points.LIFECYCLE_POINTS)
