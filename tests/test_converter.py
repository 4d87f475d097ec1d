"""Tests of errands.converter: payloads, framing, codecs and failures."""

from __future__ import annotations

import enum
import subprocess
import sys
import textwrap
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal, NamedTuple, Optional, Union

import pytest

from errands import exceptions
from errands.common import RawValue
from errands.converter import (
    DataConverter,
    EncodedFailure,
    Payload,
    PayloadCodec,
    PayloadConverter,
    deserialize_payloads,
    serialize_payloads,
)


class Status(enum.Enum):
    OPEN = "open"
    SHIPPED = "shipped"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass
class Line:
    sku: str
    qty: int


@dataclass
class Order:
    id: uuid.UUID
    status: Status
    created: datetime
    lines: list[Line]
    blob: bytes
    note: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Node:
    name: str
    children: list[Node] = field(default_factory=list)


class Point(NamedTuple):
    x: int
    y: int = 0


class ZlibCodec(PayloadCodec):
    """Compresses each payload into one ``binary/zlib`` payload."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [
            Payload(
                {"encoding": b"binary/zlib"},
                zlib.compress(serialize_payloads([p])),
            )
            for p in payloads
        ]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out: list[Payload] = []
        for p in payloads:
            assert p.metadata["encoding"] == b"binary/zlib"
            out.extend(deserialize_payloads(zlib.decompress(p.data)))
        return out


def an_order() -> Order:
    return Order(
        id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        status=Status.SHIPPED,
        created=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc),
        lines=[Line("apple", 3), Line("pear", 1)],
        blob=b"\x00\x01\xff",
        note=None,
        tags=["a", "b"],
    )


async def round_trip(value: Any, hint: Any = None) -> Any:
    converter = DataConverter()
    data = await converter.encode([value])
    assert isinstance(data, bytes)
    [result] = await converter.decode(data, [hint])
    return result


# ----------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("hello", str),
        ("héllo ✓ 日本", str),
        ("", str),
        (42, int),
        (-(2**70), int),
        (1.5, float),
        (True, bool),
        (False, bool),
        (None, type(None)),
        (None, None),
        ([1, 2, 3], list[int]),
        ({"a": 1, "b": 2}, dict[str, int]),
        (Status.SHIPPED, Status),
        (Level.HIGH, Level),
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc), datetime),
        (datetime(2024, 1, 2, 3, 4, 5), datetime),
        (date(2024, 2, 29), date),
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.UUID),
        (b"\x00binary\xff", bytes),
        (timedelta(seconds=90, microseconds=500), timedelta),
        ((1, "a"), tuple[int, str]),
        ((1, 2, 3), tuple[int, ...]),
        ({1, 2}, set[int]),
        (frozenset({"x"}), frozenset[str]),
        ([1, 2], Sequence[int]),
        ({"k": 1.5}, Mapping[str, float]),
        ({1: "one", 2: "two"}, dict[int, str]),
        ({Status.OPEN: 1}, dict[Status, int]),
        ({Level.LOW: "low"}, dict[Level, str]),
        ("b", Literal["a", "b"]),
        (None, Optional[int]),  # noqa: UP045 - the typing form is under test
        (5, Optional[int]),  # noqa: UP045
        (5, int | None),
        ("x", Union[int, str]),  # noqa: UP007 - the typing form is under test
        (Point(1, 2), Point),
        ([b"a", b"b"], list[bytes]),
        (an_order(), Order),
        (Node("root", [Node("a", [Node("a1")]), Node("b")]), Node),
    ],
)
async def test_values_round_trip_to_their_type_hint(value: Any, hint: Any) -> None:
    result = await round_trip(value, hint)
    assert type(result) is type(value)
    assert result == value


async def test_an_int_decodes_as_a_float_when_the_hint_is_float() -> None:
    result = await round_trip(3, float)
    assert type(result) is float
    assert result == 3.0


async def test_values_without_hints_decode_as_plain_json() -> None:
    converter = DataConverter()
    data = await converter.encode([an_order(), (1, 2), None, b"raw", Status.OPEN])
    order, pair, none, raw, status = await converter.decode(data)
    assert order == {
        "id": "12345678-1234-5678-1234-567812345678",
        "status": "shipped",
        "created": "2024-05-06T07:08:09.123456+00:00",
        "lines": [{"sku": "apple", "qty": 3}, {"sku": "pear", "qty": 1}],
        "blob": "AAH/",
        "note": None,
        "tags": ["a", "b"],
    }
    assert pair == [1, 2]
    assert none is None
    assert raw == b"raw"
    assert status == "open"


async def test_a_nested_dataclass_keeps_every_field_type() -> None:
    result = await round_trip(an_order(), Order)
    assert isinstance(result.id, uuid.UUID)
    assert result.status is Status.SHIPPED
    assert result.created.tzinfo is not None
    assert all(type(line) is Line for line in result.lines)
    assert type(result.blob) is bytes
    assert result.note is None


async def test_an_optional_dataclass_field_keeps_its_value() -> None:
    order = an_order()
    order.note = "fragile"
    assert (await round_trip(order, Order)).note == "fragile"


def test_payload_encodings_follow_the_value() -> None:
    converter = PayloadConverter()
    assert converter.to_payload(None) == Payload({"encoding": b"binary/null"}, b"")
    assert converter.to_payload(b"ab") == Payload({"encoding": b"binary/plain"}, b"ab")
    assert converter.to_payload({"a": [1, "é"]}) == Payload(
        {"encoding": b"json/plain"}, '{"a":[1,"é"]}'.encode()
    )


def test_json_is_compact_and_utf8() -> None:
    payload = PayloadConverter().to_payload(["ü", {"k": 1}])
    assert payload.data == '["ü",{"k":1}]'.encode()


def test_a_string_with_a_lone_surrogate_still_round_trips() -> None:
    converter = PayloadConverter()
    value = "bad \ud800 surrogate"
    assert converter.from_payload(converter.to_payload(value), str) == value


def test_a_z_suffixed_datetime_is_read_as_utc() -> None:
    payload = Payload({"encoding": b"json/plain"}, b'"2024-01-02T03:04:05Z"')
    result = PayloadConverter().from_payload(payload, datetime)
    assert result == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_bytes_nested_in_json_are_base64() -> None:
    converter = PayloadConverter()
    payload = converter.to_payload({"b": b"\xff"})
    assert payload.data == b'{"b":"/w=="}'
    assert converter.from_payload(payload, dict[str, bytes]) == {"b": b"\xff"}


def test_a_pydantic_model_round_trips() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Item(pydantic.BaseModel):  # type: ignore[name-defined, misc]
        name: str
        price: float
        when: datetime

    converter = PayloadConverter()
    item = Item(name="pen", price=1.25, when=datetime(2024, 1, 1, tzinfo=timezone.utc))
    result = converter.from_payload(converter.to_payload(item), Item)
    assert type(result) is Item
    assert result == item


def test_a_pydantic_validation_error_is_a_value_error() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Item(pydantic.BaseModel):  # type: ignore[name-defined, misc]
        price: float

    converter = PayloadConverter()
    with pytest.raises(ValueError, match=r"expected .*Item"):
        converter.from_payload(converter.to_payload({"price": "cheap"}), Item)


async def test_a_raw_value_passes_its_payload_through() -> None:
    converter = DataConverter()
    inner = converter.payload_converter.to_payload(an_order())
    data = await converter.encode([RawValue(inner)])
    [raw] = await converter.decode(data, [RawValue])
    assert type(raw) is RawValue
    assert raw.payload == inner
    assert converter.payload_converter.from_payload(raw.payload, Order) == an_order()


async def test_payloads_beyond_the_hints_decode_without_a_hint() -> None:
    converter = DataConverter()
    data = await converter.encode([1, "2", 3.5])
    assert await converter.decode(data, [float]) == [1.0, "2", 3.5]


async def test_an_empty_argument_list_round_trips() -> None:
    converter = DataConverter()
    assert await converter.decode(await converter.encode([])) == []


# ----------------------------------------------------------------------------------
# Mismatches and errors
# ----------------------------------------------------------------------------------


def decode_as(value: Any, hint: Any) -> Any:
    converter = PayloadConverter()
    return converter.from_payload(converter.to_payload(value), hint)


def test_an_int_hint_rejects_a_string_with_a_clear_message() -> None:
    with pytest.raises(TypeError, match=r"^expected int, got str 'abc'$"):
        decode_as("abc", int)


async def test_an_int_hint_rejects_a_string_through_the_data_converter() -> None:
    converter = DataConverter()
    with pytest.raises(TypeError, match="expected int, got str 'abc'"):
        await converter.decode(await converter.encode(["abc"]), [int])


@pytest.mark.parametrize(
    ("value", "hint", "error", "message"),
    [
        (True, int, TypeError, "expected int, got bool True"),
        (1.5, int, TypeError, "expected int, got float 1.5"),
        ("1", float, TypeError, "expected float, got str '1'"),
        (1, bool, TypeError, "expected bool, got int 1"),
        (1, str, TypeError, "expected str, got int 1"),
        (1, type(None), TypeError, "expected None, got int 1"),
        ([1, "x"], list[int], TypeError, r"expected int at \[1\], got str 'x'"),
        ({"a": "x"}, dict[str, int], TypeError, r"expected int at \['a'\], got str 'x'"),
        ({"x": 1}, dict[int, int], ValueError, r"expected int at \['x'\], got str 'x'"),
        ("purple", Status, ValueError, "expected Status, got str 'purple'"),
        (True, Level, TypeError, "expected Level, got bool True"),
        ("c", Literal["a", "b"], ValueError, "expected Literal\\['a', 'b'\\], got str 'c'"),
        ("x", Optional[int], TypeError, r"expected int \| None, got str 'x'"),  # noqa: UP045
        ([], Union[int, str], TypeError, r"expected int \| str, got list \[\]"),  # noqa: UP007
        ([], int | str, TypeError, r"expected int \| str, got list \[\]"),
        ("soon", datetime, ValueError, "expected datetime, got str 'soon'"),
        ("nope", uuid.UUID, ValueError, "expected UUID, got str 'nope'"),
        ("!!", bytes, ValueError, "expected bytes, got str '!!'"),
        ([1, 2, 3], tuple[int, int], TypeError, "3 items instead of 2"),
        ("1", timedelta, TypeError, "expected timedelta, got str '1'"),
        ({"sku": "a"}, Line, TypeError, "expected Line, got dict .*missing required field 'qty'"),
        ({"sku": "a", "qty": 1, "x": 0}, Line, TypeError, "unknown field 'x'"),
        ([1], Line, TypeError, r"expected Line, got list \[1\]"),
    ],
)
def test_mismatches_say_what_was_expected_and_what_came(
    value: Any, hint: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        decode_as(value, hint)


def test_a_mismatch_deep_in_a_dataclass_names_its_path() -> None:
    data = {
        "id": "12345678-1234-5678-1234-567812345678",
        "status": "open",
        "created": "2024-01-01T00:00:00",
        "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "many"}],
        "blob": "",
    }
    with pytest.raises(TypeError, match=r"expected int at lines\[1\]\.qty, got str 'many'"):
        decode_as(data, Order)


def test_a_binary_payload_does_not_pass_for_a_str() -> None:
    with pytest.raises(TypeError, match="expected str, got bytes"):
        decode_as(b"abc", str)


def test_an_unsupported_value_raises_a_type_error_naming_its_type() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match="Opaque"):
        PayloadConverter().to_payload({"x": [Opaque()]})


def test_an_unsupported_type_hint_raises_a_type_error() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match="unsupported type hint"):
        decode_as({}, Opaque)


@pytest.mark.parametrize(
    "payload",
    [
        Payload({"encoding": b"json/plain"}, b"{not json"),
        Payload({"encoding": b"json/plain"}, b'"\xff\xfe"'),
        Payload({"encoding": b"json/plain"}, b""),
        Payload({"encoding": b"text/mystery"}, b"1"),
        Payload({}, b"1"),
    ],
)
def test_an_undecodable_payload_raises_value_error(payload: Payload) -> None:
    with pytest.raises(ValueError, match="undecodable payload: "):
        PayloadConverter().from_payload(payload)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage bytes", b"\x01", b"\x01\xff\xff\xff\xff", b"\x02\x00\x00\x00\x00"],
)
def test_garbage_bytes_do_not_deserialize(data: bytes) -> None:
    with pytest.raises(ValueError, match="undecodable payloads: "):
        deserialize_payloads(data)


def test_truncated_or_padded_bytes_do_not_deserialize() -> None:
    converter = PayloadConverter()
    data = serialize_payloads([converter.to_payload("hello"), converter.to_payload(None)])
    for cut in range(len(data)):
        with pytest.raises(ValueError, match="undecodable payloads: "):
            deserialize_payloads(data[:cut])
    with pytest.raises(ValueError, match="trailing bytes"):
        deserialize_payloads(data + b"\x00")


async def test_garbage_bytes_do_not_decode() -> None:
    with pytest.raises(ValueError, match="undecodable payloads"):
        await DataConverter().decode(b"\x00garbage")


def test_payloads_with_any_metadata_survive_framing() -> None:
    payloads = [
        Payload({"encoding": b"json/plain"}, b"1"),
        Payload({}, b""),
        Payload({"encoding": b"binary/plain", "ключ": b"\x00" * 3, "x": b""}, b"\xff" * 1000),
        Payload({"encoding": b"binary/null"}, b""),
    ]
    assert deserialize_payloads(serialize_payloads(payloads)) == payloads


# ----------------------------------------------------------------------------------
# Codec
# ----------------------------------------------------------------------------------


async def test_a_codec_is_applied_to_stored_values() -> None:
    plain = DataConverter()
    zipped = DataConverter(payload_codec=ZlibCodec())
    values = ["x" * 1000, an_order(), None, b"bytes"]
    data = await zipped.encode(values)
    assert len(data) < len(await plain.encode(values))
    assert all(p.metadata["encoding"] == b"binary/zlib" for p in deserialize_payloads(data))
    assert await zipped.decode(data, [str, Order, None, bytes]) == values


async def test_encode_payloads_and_decode_to_payloads_apply_the_codec() -> None:
    converter = DataConverter(payload_codec=ZlibCodec())
    payloads = converter.payload_converter.to_payloads([1, "two"])
    data = await converter.encode_payloads(payloads)
    assert await converter.decode_to_payloads(data) == payloads


# ----------------------------------------------------------------------------------
# Failures
# ----------------------------------------------------------------------------------


async def failure_round_trip(
    error: BaseException, converter: DataConverter | None = None
) -> tuple[EncodedFailure, exceptions.FailureError]:
    converter = converter or DataConverter()
    encoded = await converter.encode_failure(error)
    return encoded, await converter.decode_failure(encoded.data)


async def test_an_application_error_round_trips_with_its_fields() -> None:
    try:
        raise exceptions.ApplicationError(
            "card declined",
            {"code": 51},
            "retry later",
            type="CardDeclined",
            non_retryable=True,
            next_retry_delay=timedelta(seconds=2.5),
        )
    except exceptions.ApplicationError as e:
        encoded, decoded = await failure_round_trip(e)
    assert encoded.kind == "application"
    assert encoded.error_type == "CardDeclined"
    assert encoded.non_retryable is True
    assert encoded.next_retry_delay_s == 2.5
    assert type(decoded) is exceptions.ApplicationError
    assert decoded.message == "card declined"
    assert decoded.type == "CardDeclined"
    assert decoded.non_retryable is True
    assert decoded.next_retry_delay == timedelta(seconds=2.5)
    assert list(decoded.details) == [{"code": 51}, "retry later"]
    assert "test_an_application_error_round_trips_with_its_fields" in decoded.stack_trace
    assert decoded.__cause__ is None


async def test_a_plain_exception_becomes_an_application_error_of_its_class_name() -> None:
    try:
        raise ValueError("bad input")
    except ValueError as e:
        encoded, decoded = await failure_round_trip(e)
    assert encoded.kind == "application"
    assert encoded.error_type == "ValueError"
    assert encoded.non_retryable is False
    assert encoded.next_retry_delay_s is None
    assert type(decoded) is exceptions.ApplicationError
    assert isinstance(decoded, exceptions.ApplicationError)
    assert decoded.message == "bad input"
    assert decoded.type == "ValueError"
    assert 'raise ValueError("bad input")' in decoded.stack_trace


def test_failure_from_exception_keeps_failures_and_converts_the_rest() -> None:
    converter = DataConverter()
    cancelled = exceptions.CancelledError()
    assert converter.failure_from_exception(cancelled) is cancelled
    converted = converter.failure_from_exception(KeyError("k"))
    assert isinstance(converted, exceptions.ApplicationError)
    assert converted.type == "KeyError"


async def test_a_cancelled_error_round_trips() -> None:
    encoded, decoded = await failure_round_trip(exceptions.CancelledError("stop", "why"))
    assert encoded.kind == "cancelled"
    assert encoded.error_type is None
    assert type(decoded) is exceptions.CancelledError
    assert decoded.message == "stop"
    assert list(decoded.details) == ["why"]


async def test_a_terminated_error_round_trips() -> None:
    encoded, decoded = await failure_round_trip(exceptions.TerminatedError("by operator"))
    assert encoded.kind == "terminated"
    assert type(decoded) is exceptions.TerminatedError
    assert decoded.message == "by operator"


async def test_a_timeout_error_round_trips_with_type_and_heartbeat_details() -> None:
    error = exceptions.TimeoutError(
        "heartbeat timeout",
        type=exceptions.TimeoutType.HEARTBEAT,
        last_heartbeat_details=[{"page": 7}, "cursor"],
    )
    error.stack_trace = "remote frames"
    encoded, decoded = await failure_round_trip(error)
    assert encoded.kind == "timeout"
    assert type(decoded) is exceptions.TimeoutError
    assert decoded.type is exceptions.TimeoutType.HEARTBEAT
    assert list(decoded.last_heartbeat_details) == [{"page": 7}, "cursor"]
    assert decoded.stack_trace == "remote frames"


async def test_a_cause_chain_round_trips() -> None:
    def fail() -> None:
        try:
            try:
                raise KeyError("missing")
            except KeyError as e:
                raise exceptions.TimeoutError(
                    "slow", type=exceptions.TimeoutType.START_TO_CLOSE
                ) from e
        except exceptions.TimeoutError as e:
            raise exceptions.ApplicationError("outer", type="Outer") from e

    try:
        fail()
    except exceptions.ApplicationError as e:
        _, decoded = await failure_round_trip(e)
    assert isinstance(decoded, exceptions.ApplicationError)
    assert decoded.type == "Outer"
    middle = decoded.__cause__
    assert type(middle) is exceptions.TimeoutError
    assert middle.type is exceptions.TimeoutType.START_TO_CLOSE
    assert "fail" in middle.stack_trace
    inner = middle.__cause__
    assert type(inner) is exceptions.ApplicationError
    assert inner.type == "KeyError"
    assert inner.message == "'missing'"
    assert inner.__cause__ is None


async def test_a_plain_exception_keeps_its_cause() -> None:
    try:
        raise RuntimeError("outer") from OSError("disk")
    except RuntimeError as e:
        _, decoded = await failure_round_trip(e)
    assert isinstance(decoded, exceptions.ApplicationError)
    assert decoded.type == "RuntimeError"
    cause = decoded.__cause__
    assert isinstance(cause, exceptions.ApplicationError)
    assert cause.type == "OSError"


async def test_a_long_cause_chain_is_cut_at_eight_causes() -> None:
    error: BaseException = exceptions.ApplicationError("0")
    for i in range(1, 20):
        outer = exceptions.ApplicationError(str(i))
        outer.__cause__ = error
        error = outer
    _, decoded = await failure_round_trip(error)
    depth = 0
    cause = decoded.__cause__
    while cause is not None:
        depth += 1
        cause = cause.__cause__
    assert depth == 8


async def test_unconvertible_details_are_kept_as_their_repr() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    _, decoded = await failure_round_trip(exceptions.ApplicationError("x", Opaque()))
    assert list(decoded.details) == ["<opaque>"]


async def test_failure_details_go_through_the_codec() -> None:
    converter = DataConverter(payload_codec=ZlibCodec())
    error = exceptions.ApplicationError("boom", "secret detail")
    encoded, decoded = await failure_round_trip(error, converter)
    assert b"secret detail" not in encoded.data
    assert list(decoded.details) == ["secret detail"]


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1, 2]",
        b'{"message": "m", "kind": "exploded"}',
        b'{"message": 5, "kind": "application"}',
        b'{"message": "m", "kind": "timeout", "timeout_type": 99}',
        b'{"message": "m", "kind": "application", "details": "%%%"}',
        b"\xff\xfe",
    ],
)
async def test_undecodable_failure_bytes_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="undecodable"):
        await DataConverter().decode_failure(data)


# ----------------------------------------------------------------------------------
# Without pydantic
# ----------------------------------------------------------------------------------


def test_the_converter_works_without_pydantic() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pydantic"] = None  # any import of pydantic now fails
        import asyncio
        from dataclasses import dataclass
        from errands.converter import DataConverter

        @dataclass
        class Item:
            name: str

        async def main():
            converter = DataConverter()
            data = await converter.encode([Item("x")])
            assert await converter.decode(data, [Item]) == [Item("x")]

        asyncio.run(main())
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
