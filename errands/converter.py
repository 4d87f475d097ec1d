"""Values to payloads and back, payloads to bytes and back, failures to bytes and back.

A value crosses the store as a :class:`Payload`: metadata (its ``encoding``) and
data. The :class:`PayloadConverter` writes JSON (``json/plain``) for most
values, ``binary/null`` for None and ``binary/plain`` for bytes, and reads them
back guided by a type hint, checking what it reads. A :class:`PayloadCodec`
(compression, encryption) may then transform the payload list, and
:func:`serialize_payloads` frames it as one compact ``bytes`` for the store.
:class:`DataConverter` bundles the three steps, and also encodes failures
(:mod:`errands.exceptions`) as JSON the store keeps.

Pydantic is optional: models are recognised only once ``pydantic`` has been
imported by someone else; this module never imports it.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import collections.abc
import dataclasses
import enum
import inspect
import json
import math
import struct
import sys
import threading
import traceback
import types
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from errands import exceptions
from errands.common import RawValue

__all__ = [
    "DataConverter",
    "EncodedFailure",
    "Payload",
    "PayloadCodec",
    "PayloadConverter",
    "deserialize_payloads",
    "serialize_payloads",
]

_ENCODING = "encoding"
_JSON_PLAIN = b"json/plain"
_BINARY_NULL = b"binary/null"
_BINARY_PLAIN = b"binary/plain"

_Conv = Callable[[Any], Any]


@dataclass(frozen=True)
class Payload:
    """One encoded value: ``metadata["encoding"]`` says how ``data`` is written.

    Compares by value; not hashable (``metadata`` is a dict).
    """

    metadata: dict[str, bytes]
    data: bytes


# --------------------------------------------------------------------------------------
# Values to JSON
# --------------------------------------------------------------------------------------

_DATACLASS_FIELDS: dict[type, tuple[str, ...]] = {}


def _json_default(o: Any) -> Any:
    """Turn one value the json module does not know into one it does (shallowly)."""
    t = type(o)
    names = _DATACLASS_FIELDS.get(t)
    if names is not None:
        return {n: getattr(o, n) for n in names}
    if isinstance(o, enum.Enum):
        return o.value
    if hasattr(t, "__dataclass_fields__"):
        names = tuple(f.name for f in dataclasses.fields(o))
        _DATACLASS_FIELDS[t] = names
        return {n: getattr(o, n) for n in names}
    if isinstance(o, (datetime, date, time)):
        return o.isoformat()
    if isinstance(o, uuid.UUID):
        return str(o)
    if isinstance(o, (bytes, bytearray, memoryview)):
        return base64.b64encode(o).decode("ascii")
    if isinstance(o, collections.abc.Set):
        return list(o)
    if isinstance(o, timedelta):
        return o.total_seconds()
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(o, pydantic.BaseModel):
        return o.model_dump(mode="json")
    if isinstance(o, collections.abc.Mapping):
        return dict(o)
    raise TypeError(f"cannot convert a value of type {_qualname(t)} to a payload")


def _plain(o: Any) -> Any:
    """``o`` as plain JSON values all the way down, object keys included.

    The slow path, taken only when the json module refuses a value (a dict key
    that is an enum, a UUID, a date).
    """
    if o is None or type(o) in (str, int, float, bool):
        return o
    if isinstance(o, dict):
        return {_plain_key(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(x) for x in o]
    if isinstance(o, (str, int, float)) and not isinstance(o, enum.Enum):
        return o
    return _plain(_json_default(o))


def _plain_key(k: Any) -> Any:
    """A dict key as one the json module accepts."""
    if isinstance(k, enum.Enum):
        return _plain_key(k.value)
    if k is None or isinstance(k, (str, int, float)):
        return k
    if isinstance(k, uuid.UUID):
        return str(k)
    if isinstance(k, (datetime, date, time)):
        return k.isoformat()
    raise TypeError(f"cannot use a value of type {_qualname(type(k))} as a JSON object key")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default)
_ASCII_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=_json_default)


def _json_text(encoder: json.JSONEncoder, value: Any) -> str:
    try:
        return encoder.encode(value)
    except TypeError:
        return encoder.encode(_plain(value))


def _json_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON; raises TypeError for an unsupported value."""
    t = type(value)
    if t is int:
        return int.__repr__(value).encode()
    if t is bool:
        return b"true" if value else b"false"
    if t is float and math.isfinite(value):
        return float.__repr__(value).encode()
    text = _json_text(_ENCODER, value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: escape them as \\uXXXX, which decodes back to the same str.
        return _json_text(_ASCII_ENCODER, value).encode("ascii")


def _make_payload(value: Any) -> Payload:
    if value is None:
        return Payload({_ENCODING: _BINARY_NULL}, b"")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Payload({_ENCODING: _BINARY_PLAIN}, bytes(value))
    if isinstance(value, RawValue):
        return value.payload
    return Payload({_ENCODING: _JSON_PLAIN}, _json_bytes(value))


# --------------------------------------------------------------------------------------
# JSON to typed values
# --------------------------------------------------------------------------------------


def _qualname(t: Any) -> str:
    return str(getattr(t, "__qualname__", t))


def _hint_name(hint: Any) -> str:
    if hint is None or hint is type(None):
        return "None"
    if isinstance(hint, type) and get_origin(hint) is None:
        return hint.__qualname__
    if get_origin(hint) in (Union, types.UnionType):  # Optional[X], Union[X, Y], X | Y alike
        return " | ".join(_hint_name(a) for a in get_args(hint))
    return repr(hint).replace("typing.", "").replace("collections.abc.", "")


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


class _Mismatch(Exception):
    """A value does not fit its hint. Internal: turned into TypeError or ValueError."""

    def __init__(
        self, expected: str, value: Any, *, bad_value: bool = False, detail: str = ""
    ) -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value
        self.bad_value = bad_value
        self.detail = detail
        #: Where, innermost first: ".field", "[3]", "['key']".
        self.path: list[str] = []

    def to_error(self) -> Exception:
        where = "".join(reversed(self.path)).lstrip(".")
        message = f"expected {self.expected}"
        if where:
            message += f" at {where}"
        message += f", got {_describe(self.value)}"
        if self.detail:
            message += f": {self.detail}"
        return ValueError(message) if self.bad_value else TypeError(message)


def _identity(v: Any) -> Any:
    return v


def _conv_str(v: Any) -> Any:
    if type(v) is str:
        return v
    raise _Mismatch("str", v)


def _conv_int(v: Any) -> Any:
    t = type(v)
    if t is int:
        return v
    if t is float and v.is_integer():
        return int(v)
    raise _Mismatch("int", v)


def _conv_float(v: Any) -> Any:
    t = type(v)
    if t is float:
        return v
    if t is int:
        return float(v)
    raise _Mismatch("float", v)


def _conv_bool(v: Any) -> Any:
    if type(v) is bool:
        return v
    raise _Mismatch("bool", v)


def _conv_none(v: Any) -> Any:
    if v is None:
        return None
    raise _Mismatch("None", v)


def _conv_bytes(v: Any) -> Any:
    if type(v) is bytes:
        return v
    if type(v) is str:
        try:
            return base64.b64decode(v, validate=True)
        except ValueError:
            raise _Mismatch("bytes", v, bad_value=True, detail="not base64") from None
    raise _Mismatch("bytes", v)


def _parse_iso(kind: type[Any], v: Any) -> Any:
    if type(v) is not str:
        raise _Mismatch(kind.__name__, v)
    text = v
    if kind is not date and text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        return kind.fromisoformat(text)
    except ValueError:
        raise _Mismatch(kind.__name__, v, bad_value=True) from None


def _conv_datetime(v: Any) -> Any:
    return _parse_iso(datetime, v)


def _conv_date(v: Any) -> Any:
    return _parse_iso(date, v)


def _conv_time(v: Any) -> Any:
    return _parse_iso(time, v)


def _conv_timedelta(v: Any) -> Any:
    if type(v) not in (int, float):
        raise _Mismatch("timedelta", v)
    try:
        return timedelta(seconds=v)
    except (OverflowError, ValueError):
        raise _Mismatch("timedelta", v, bad_value=True) from None


def _conv_uuid(v: Any) -> Any:
    if type(v) is not str:
        raise _Mismatch("UUID", v)
    try:
        return uuid.UUID(v)
    except ValueError:
        raise _Mismatch("UUID", v, bad_value=True) from None


def _conv_raw(v: Any) -> Any:
    return RawValue(_make_payload(v))


_CACHE: dict[Any, _Conv] = {
    str: _conv_str,
    int: _conv_int,
    float: _conv_float,
    bool: _conv_bool,
    None: _conv_none,
    type(None): _conv_none,
    Any: _identity,
    object: _identity,
    bytes: _conv_bytes,
    datetime: _conv_datetime,
    date: _conv_date,
    time: _conv_time,
    timedelta: _conv_timedelta,
    uuid.UUID: _conv_uuid,
    RawValue: _conv_raw,
}
_LOCK = threading.RLock()

_LIST_ORIGINS = frozenset(
    {
        list,
        collections.abc.Sequence,
        collections.abc.MutableSequence,
        collections.abc.Collection,
        collections.abc.Iterable,
    }
)
_SET_ORIGINS = frozenset({set, frozenset, collections.abc.Set, collections.abc.MutableSet})
_DICT_ORIGINS = frozenset({dict, collections.abc.Mapping, collections.abc.MutableMapping})
_WRAPPER_ORIGINS = frozenset(
    getattr(typing, name)
    for name in ("Annotated", "Final", "Required", "NotRequired", "ReadOnly")
    if hasattr(typing, name)
)


def _get_converter(hint: Any) -> _Conv:
    """The (cached) function that converts a JSON value to ``hint``; raises TypeError
    for a hint it cannot handle."""
    try:
        conv = _CACHE.get(hint)
    except TypeError:  # an unhashable hint: compile it every time
        with _LOCK:
            return _compile(hint)
    if conv is not None:
        return conv
    with _LOCK:
        conv = _CACHE.get(hint)
        if conv is None:
            conv = _compile(hint)
            _CACHE[hint] = conv
    return conv


def _compile(hint: Any) -> _Conv:
    if hint is inspect.Parameter.empty:
        return _identity
    origin = get_origin(hint)
    if origin is not None:
        return _compile_generic(hint, origin, get_args(hint))
    if isinstance(hint, typing.TypeVar):
        bound = hint.__bound__
        return _identity if bound is None else _get_converter(bound)
    supertype = getattr(hint, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return _get_converter(supertype)
    if isinstance(hint, (str, typing.ForwardRef)):
        raise TypeError(f"unresolved forward reference {hint!r} as a type hint")
    if isinstance(hint, type):
        return _compile_class(hint)
    raise TypeError(f"unsupported type hint {hint!r}")


def _compile_generic(hint: Any, origin: Any, args: tuple[Any, ...]) -> _Conv:
    if origin is Union or origin is types.UnionType:
        return _compile_union(hint, args)
    if origin is Literal:
        return _compile_literal(hint, args)
    if origin in _WRAPPER_ORIGINS:
        return _get_converter(args[0])
    name = _hint_name(hint)
    if origin in _LIST_ORIGINS:
        return _compile_sequence(name, args[0] if args else Any, list)
    if origin in _SET_ORIGINS:
        return _compile_sequence(
            name, args[0] if args else Any, frozenset if origin is frozenset else set
        )
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _compile_sequence(name, args[0], tuple)
        if args == ((),):
            args = ()
        return _compile_fixed_tuple(name, args)
    if origin in _DICT_ORIGINS:
        return _compile_dict(name, args[0] if args else Any, args[1] if args else Any)
    if isinstance(origin, type) and (
        dataclasses.is_dataclass(origin) or _is_pydantic_model(origin)
    ):
        return _get_converter(origin)
    raise TypeError(f"unsupported type hint {hint!r}")


def _compile_union(hint: Any, args: tuple[Any, ...]) -> _Conv:
    name = _hint_name(hint)
    others = [a for a in args if a is not type(None)]
    nullable = len(others) != len(args)
    if nullable and len(others) == 1:
        inner = _get_converter(others[0])

        def optional(v: Any) -> Any:
            if v is None:
                return None
            try:
                return inner(v)
            except _Mismatch as e:
                if e.path:
                    raise
                raise _Mismatch(name, v, bad_value=e.bad_value, detail=e.detail) from None

        return optional

    members = [_get_converter(a) for a in others]

    def union(v: Any) -> Any:
        if v is None and nullable:
            return None
        errors: list[_Mismatch] = []
        for member in members:
            try:
                return member(v)
            except _Mismatch as e:
                errors.append(e)
        deep = [e for e in errors if e.path]
        if len(deep) == 1:
            raise deep[0]
        raise _Mismatch(name, v, bad_value=all(e.bad_value for e in errors))

    return union


def _compile_literal(hint: Any, args: tuple[Any, ...]) -> _Conv:
    name = _hint_name(hint)
    choices = [(a.value if isinstance(a, enum.Enum) else a, a) for a in args]

    def literal(v: Any) -> Any:
        t = type(v)
        for raw, result in choices:
            if type(raw) is t and raw == v:
                return result
        raise _Mismatch(name, v, bad_value=True)

    return literal


def _locate(items: Sequence[Any], convs: Callable[[int], _Conv]) -> None:
    """Find the item that failed to convert and raise its mismatch with its index."""
    for i, x in enumerate(items):
        try:
            convs(i)(x)
        except _Mismatch as e:
            e.path.append(f"[{i}]")
            raise


def _compile_sequence(name: str, item_hint: Any, make: Callable[[Any], Any]) -> _Conv:
    item = _get_converter(item_hint)

    def sequence(v: Any) -> Any:
        if not isinstance(v, (list, tuple)):
            raise _Mismatch(name, v)
        if item is _identity:
            out = v
        else:
            try:
                out = [item(x) for x in v]
            except _Mismatch:
                _locate(v, lambda _: item)
                raise
        if make is list:
            return out if type(out) is list else list(out)
        try:
            return make(out)
        except TypeError as e:  # unhashable items in a set
            raise _Mismatch(name, v, detail=str(e)) from None

    return sequence


def _compile_fixed_tuple(name: str, args: tuple[Any, ...]) -> _Conv:
    convs = [_get_converter(a) for a in args]
    size = len(convs)

    def fixed_tuple(v: Any) -> Any:
        if not isinstance(v, (list, tuple)):
            raise _Mismatch(name, v)
        if len(v) != size:
            raise _Mismatch(name, v, detail=f"{len(v)} items instead of {size}")
        try:
            return tuple([c(x) for c, x in zip(convs, v, strict=True)])
        except _Mismatch:
            _locate(v, convs.__getitem__)
            raise

    return fixed_tuple


def _key_int(k: Any) -> Any:
    if type(k) is int:
        return k
    if type(k) is str:
        try:
            return int(k)
        except ValueError:
            pass
    raise _Mismatch("int", k, bad_value=True)


def _key_float(k: Any) -> Any:
    if type(k) in (int, float):
        return float(k)
    if type(k) is str:
        try:
            return float(k)
        except ValueError:
            pass
    raise _Mismatch("float", k, bad_value=True)


def _key_bool(k: Any) -> Any:
    if k == "true" or k is True:
        return True
    if k == "false" or k is False:
        return False
    raise _Mismatch("bool", k, bad_value=True)


def _json_key_text(value: Any) -> Any:
    """How json writes ``value`` as an object key."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    return str(value)


def _compile_key(hint: Any) -> _Conv:
    """Converter for a JSON object key (always a str) to ``hint``."""
    if hint is str or hint is Any or hint is object:
        return _identity
    if hint is int:
        return _key_int
    if hint is float:
        return _key_float
    if hint is bool:
        return _key_bool
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        name = hint.__qualname__
        lookup: dict[Any, Any] = {}
        for member in hint:
            lookup.setdefault(_json_key_text(member.value), member)

        def enum_key(k: Any) -> Any:
            member = lookup.get(k)
            if member is None:
                raise _Mismatch(name, k, bad_value=True)
            return member

        return enum_key
    return _get_converter(hint)


def _compile_dict(name: str, key_hint: Any, value_hint: Any) -> _Conv:
    key = _compile_key(key_hint)
    value = _get_converter(value_hint)

    def mapping(v: Any) -> Any:
        if not isinstance(v, dict):
            raise _Mismatch(name, v)
        if key is _identity and value is _identity:
            return v
        try:
            return {key(k): value(x) for k, x in v.items()}
        except _Mismatch:
            for k, x in v.items():
                try:
                    key(k)
                    value(x)
                except _Mismatch as e:
                    e.path.append(f"[{k!r}]")
                    raise
            raise

    return mapping


def _is_pydantic_model(cls: type[Any]) -> bool:
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and issubclass(cls, pydantic.BaseModel)


def _class_hints(cls: type[Any]) -> dict[str, Any]:
    """Resolved annotations of ``cls``; raises TypeError if they cannot be resolved."""
    try:
        return get_type_hints(cls)
    except Exception as e:
        raise TypeError(f"cannot resolve the type hints of {cls.__qualname__}: {e}") from e


def _compile_class(cls: type[Any]) -> _Conv:
    if issubclass(cls, enum.Enum):
        return _compile_enum(cls)
    if dataclasses.is_dataclass(cls):
        return _compile_dataclass(cls)
    if _is_pydantic_model(cls):
        return _compile_pydantic(cls)
    if cls in _LIST_ORIGINS or cls in _SET_ORIGINS or cls in _DICT_ORIGINS or cls is tuple:
        return _compile_generic(cls, cls, ())
    if issubclass(cls, RawValue):
        return lambda v: cls(_make_payload(v))
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return _compile_namedtuple(cls)
    if typing.is_typeddict(cls):
        return _compile_typeddict(cls)
    for base, conv in (
        (datetime, _conv_datetime),
        (date, _conv_date),
        (time, _conv_time),
        (timedelta, _conv_timedelta),
        (uuid.UUID, _conv_uuid),
        (bytes, _conv_bytes),
        (bytearray, _conv_bytes),
        (int, _conv_int),
        (float, _conv_float),
        (str, _conv_str),
    ):
        if issubclass(cls, base):
            return _subclass_converter(cls, conv)
    raise TypeError(f"unsupported type hint {cls.__qualname__}: cannot build it from JSON")


def _subclass_converter(cls: type[Any], conv: _Conv) -> _Conv:
    name = cls.__qualname__

    def subclass(v: Any) -> Any:
        result = conv(v)
        if type(result) is cls:
            return result
        try:
            return cls(result)
        except (TypeError, ValueError) as e:
            raise _Mismatch(name, v, bad_value=True, detail=str(e)) from None

    return subclass


def _compile_enum(cls: type[enum.Enum]) -> _Conv:
    name = cls.__qualname__
    value_types = {type(m.value) for m in cls}
    allow_bool = bool in value_types

    def enumeration(v: Any) -> Any:
        if type(v) is bool and not allow_bool:
            raise _Mismatch(name, v)
        try:
            return cls(v)
        except (TypeError, ValueError):
            raise _Mismatch(name, v, bad_value=type(v) in value_types) from None

    return enumeration


def _compile_dataclass(cls: type[Any]) -> _Conv:
    name = cls.__qualname__
    target: list[_Conv] = []

    def forward(v: Any) -> Any:
        # Stands in for the converter while it compiles (a recursive dataclass refers
        # to itself). Another thread may reach it mid-compile: wait for the compile,
        # and if that failed, compile again to raise its error.
        if not target:
            with _LOCK:
                if not target:
                    target.append(_get_converter(cls))
        return target[0](v)

    _CACHE[cls] = forward
    try:
        hints = _class_hints(cls)
        convs: dict[str, _Conv] = {}
        required: set[str] = set()
        ignored: set[str] = set()
        for f in dataclasses.fields(cls):
            if not f.init:
                ignored.add(f.name)
                continue
            convs[f.name] = _get_converter(hints.get(f.name, Any))
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.add(f.name)
    except BaseException:
        del _CACHE[cls]
        raise

    def from_dict(v: Any) -> Any:
        if not isinstance(v, dict):
            raise _Mismatch(name, v)
        kwargs: dict[str, Any] = {}
        for key, item in v.items():
            conv = convs.get(key)
            if conv is None:
                if key in ignored:
                    continue
                raise _Mismatch(name, v, detail=f"unknown field {key!r}")
            try:
                kwargs[key] = conv(item)
            except _Mismatch as e:
                e.path.append(f".{key}")
                raise
        if not required <= kwargs.keys():
            missing = ", ".join(repr(k) for k in sorted(required - kwargs.keys()))
            raise _Mismatch(name, v, detail=f"missing required field {missing}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise _Mismatch(name, v, bad_value=True, detail=f"{type(e).__name__}: {e}") from None

    target.append(from_dict)
    _CACHE[cls] = from_dict
    return from_dict


def _compile_pydantic(cls: type[Any]) -> _Conv:
    name = cls.__qualname__

    def model(v: Any) -> Any:
        try:
            return cls.model_validate(v)
        except ValueError as e:  # pydantic.ValidationError
            raise _Mismatch(name, v, bad_value=isinstance(v, dict), detail=str(e)) from None

    return model


def _compile_namedtuple(cls: type[Any]) -> _Conv:
    name = cls.__qualname__
    hints = _class_hints(cls)
    fields: tuple[str, ...] = cls._fields
    convs = [_get_converter(hints.get(f, Any)) for f in fields]
    most = len(fields)
    least = most - len(cls._field_defaults)

    def named_tuple(v: Any) -> Any:
        if not isinstance(v, (list, tuple)):
            raise _Mismatch(name, v)
        if not least <= len(v) <= most:
            raise _Mismatch(name, v, detail=f"{len(v)} items instead of {most}")
        try:
            return cls(*[c(x) for c, x in zip(convs, v, strict=False)])
        except _Mismatch:
            _locate(v, convs.__getitem__)
            raise

    return named_tuple


def _compile_typeddict(cls: type[Any]) -> _Conv:
    name = cls.__qualname__
    convs = {k: _get_converter(h) for k, h in _class_hints(cls).items()}
    required: frozenset[str] = getattr(cls, "__required_keys__", frozenset())

    def typed_dict(v: Any) -> Any:
        if not isinstance(v, dict):
            raise _Mismatch(name, v)
        out: dict[str, Any] = {}
        for key, item in v.items():
            conv = convs.get(key)
            if conv is None:
                out[key] = item
                continue
            try:
                out[key] = conv(item)
            except _Mismatch as e:
                e.path.append(f"[{key!r}]")
                raise
        if not required <= out.keys():
            missing = ", ".join(repr(k) for k in sorted(required - out.keys()))
            raise _Mismatch(name, v, detail=f"missing required key {missing}")
        return out

    return typed_dict


# --------------------------------------------------------------------------------------
# Public converters
# --------------------------------------------------------------------------------------


class PayloadConverter:
    """JSON by default, typed by annotations.

    ``to_payload`` writes None as ``binary/null``, bytes as ``binary/plain``, a
    :class:`~errands.common.RawValue` as its payload, and anything else as
    compact JSON (``json/plain``): dataclasses field by field, enums by value,
    datetimes/dates/times in ISO format, UUIDs as str, nested bytes as base64,
    tuples and sets as lists, timedeltas as seconds, pydantic models by
    ``model_dump(mode="json")``.

    ``from_payload`` reads a payload back, converting and checking it against a
    type hint. Conversion functions are compiled once per hint and cached.
    """

    def to_payload(self, value: Any) -> Payload:
        """``value`` as a payload; raises TypeError naming the type of an
        unsupported value (ValueError for a circular reference)."""
        return _make_payload(value)

    def to_payloads(self, values: Sequence[Any]) -> list[Payload]:
        """Each value as a payload (by :meth:`to_payload`); raises as it does."""
        to_payload = self.to_payload
        return [to_payload(v) for v in values]

    def from_payload(self, payload: Payload, type_hint: Any = None) -> Any:
        """The value of ``payload``, converted to ``type_hint``.

        With no hint (None or Any) the plain value comes back: JSON values,
        bytes for ``binary/plain``, None for ``binary/null``. A ``RawValue``
        hint returns ``RawValue(payload)`` untouched.

        Raises:
            ValueError: the payload is undecodable (not UTF-8 JSON, unknown
                encoding), or the value is of the right kind but invalid for
                the hint (a non-member of an enum, a malformed datetime).
            TypeError: the value does not fit the hint, or the hint is not
                supported; the message says what was expected and what came.
        """
        if type_hint is RawValue:
            return RawValue(payload)
        encoding = payload.metadata.get(_ENCODING)
        if encoding == _JSON_PLAIN:
            try:
                value = json.loads(payload.data.decode("utf-8"))
            except (ValueError, RecursionError) as e:
                raise ValueError(f"undecodable payload: {e}") from None
        elif encoding == _BINARY_NULL:
            value = None
        elif encoding == _BINARY_PLAIN:
            value = payload.data
        else:
            raise ValueError(f"undecodable payload: unknown encoding {encoding!r}")
        if type_hint is None or type_hint is Any:
            return value
        try:
            conv = _CACHE[type_hint]
        except (KeyError, TypeError):
            conv = _get_converter(type_hint)
        try:
            return conv(value)
        except _Mismatch as e:
            raise e.to_error() from None

    def from_payloads(
        self, payloads: Sequence[Payload], type_hints: Sequence[Any] | None = None
    ) -> list[Any]:
        """The values of ``payloads``, the i-th converted to ``type_hints[i]``.

        Payloads beyond the hints are read with no hint; hints beyond the
        payloads are ignored. Raises as :meth:`from_payload`.
        """
        if not type_hints:
            return [self.from_payload(p) for p in payloads]
        n = len(type_hints)
        return [
            self.from_payload(p, type_hints[i] if i < n else None) for i, p in enumerate(payloads)
        ]


class PayloadCodec(abc.ABC):
    """Transforms a list of payloads at rest, e.g. compression or encryption.

    ``decode`` must undo ``encode``. Either may return a different number of
    payloads than it was given, as long as ``decode`` restores the original
    list. Errors they raise propagate to the caller unchanged.
    """

    @abc.abstractmethod
    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """The payloads as they are to be stored."""

    @abc.abstractmethod
    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """The payloads ``encode`` was given."""


# Framing: version byte, payload count; per payload: metadata count, then per entry
# key length and value length, key (UTF-8), value; then data length and data.
_FORMAT_VERSION = 1
_HEADER = struct.Struct("!BI")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_ENTRY = struct.Struct("!HI")
_MIN_PAYLOAD_SIZE = _U16.size + _U32.size


def _standard_frame(encoding: bytes) -> bytes:
    key = _ENCODING.encode()
    return _U16.pack(1) + _ENTRY.pack(len(key), len(encoding)) + key + encoding


# The framed metadata of the three standard encodings, written and read without parsing.
_STANDARD_FRAMES: dict[bytes, bytes] = {
    e: _standard_frame(e) for e in (_JSON_PLAIN, _BINARY_NULL, _BINARY_PLAIN)
}
_STANDARD_FRAME_LIST = [(frame, e) for e, frame in _STANDARD_FRAMES.items()]


def serialize_payloads(payloads: Sequence[Payload]) -> bytes:
    """The payloads as one compact, length-prefixed ``bytes`` (no codec applied).

    Raises ValueError if a metadata key is longer than 65535 bytes, there are
    more than 65535 metadata entries, or data exceeds 4 GiB.
    """
    try:
        parts = [_HEADER.pack(_FORMAT_VERSION, len(payloads))]
        append = parts.append
        for p in payloads:
            metadata = p.metadata
            frame = None
            if len(metadata) == 1:
                encoding = metadata.get(_ENCODING)
                if encoding is not None:
                    frame = _STANDARD_FRAMES.get(encoding)
            if frame is not None:
                append(frame)
            else:
                append(_U16.pack(len(metadata)))
                for key, value in metadata.items():
                    key_bytes = key.encode("utf-8")
                    append(_ENTRY.pack(len(key_bytes), len(value)))
                    append(key_bytes)
                    append(value)
            data = p.data
            append(_U32.pack(len(data)))
            append(data)
    except struct.error as e:
        raise ValueError(f"payloads too large to serialize: {e}") from None
    return b"".join(parts)


def deserialize_payloads(data: bytes) -> list[Payload]:
    """The payloads :func:`serialize_payloads` wrote.

    Raises ValueError("undecodable payloads: ...") on bytes it did not write:
    an unknown version, truncation, trailing bytes, a key that is not UTF-8.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    size = len(data)
    if size < _HEADER.size:
        raise ValueError("undecodable payloads: truncated header")
    version, count = _HEADER.unpack_from(data, 0)
    if version != _FORMAT_VERSION:
        raise ValueError(f"undecodable payloads: unknown format version {version}")
    offset = _HEADER.size
    if count > (size - offset) // _MIN_PAYLOAD_SIZE:
        raise ValueError(f"undecodable payloads: {count} payloads cannot fit in {size} bytes")
    payloads: list[Payload] = []
    try:
        for _ in range(count):
            metadata: dict[str, bytes]
            for frame, encoding in _STANDARD_FRAME_LIST:
                if data.startswith(frame, offset):
                    metadata = {_ENCODING: encoding}
                    offset += len(frame)
                    break
            else:
                (entries,) = _U16.unpack_from(data, offset)
                offset += _U16.size
                metadata = {}
                for _ in range(entries):
                    key_len, value_len = _ENTRY.unpack_from(data, offset)
                    offset += _ENTRY.size
                    key_end = offset + key_len
                    end = key_end + value_len
                    if end > size:
                        raise ValueError("truncated metadata")
                    metadata[data[offset:key_end].decode("utf-8")] = data[key_end:end]
                    offset = end
            (data_len,) = _U32.unpack_from(data, offset)
            offset += _U32.size
            end = offset + data_len
            if end > size:
                raise ValueError("truncated data")
            payloads.append(Payload(metadata, data[offset:end]))
            offset = end
    except (struct.error, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"undecodable payloads: {e}") from None
    if offset != size:
        raise ValueError(f"undecodable payloads: {size - offset} trailing bytes")
    return payloads


def serialize_headers(headers: Mapping[str, Payload]) -> bytes | None:
    """Headers (name -> payload, as interceptors set them) framed as one
    ``bytes`` for the store, no codec applied (as temporalio leaves headers
    alone by default); None when there are none. The names travel as a first
    JSON payload, the values after it in the same order.

    Raises TypeError for a name that is not a string or a value that is not
    a Payload; ValueError as :func:`serialize_payloads`.
    """
    if not headers:
        return None
    names = list(headers)
    values = [headers[name] for name in names]
    for name, value in zip(names, values, strict=True):
        if not isinstance(name, str) or not isinstance(value, Payload):
            raise TypeError(
                f"headers map names (str) to errands.converter.Payload values; header "
                f"{name!r} is a {type(value).__name__}"
            )
    names_payload = Payload({_ENCODING: _JSON_PLAIN}, _json_bytes(names))
    return serialize_payloads([names_payload, *values])


def deserialize_headers(data: bytes | None) -> dict[str, Payload]:
    """The headers :func:`serialize_headers` framed (empty for None).

    Raises ValueError("undecodable payloads: ...") or ValueError("undecodable
    headers: ...") on bytes it did not write.
    """
    if data is None:
        return {}
    payloads = deserialize_payloads(data)
    if not payloads:
        raise ValueError("undecodable headers: no names")
    names, values = json.loads(payloads[0].data), payloads[1:]
    if (
        not isinstance(names, list)
        or len(names) != len(values)
        or not all(isinstance(n, str) for n in names)
    ):
        raise ValueError("undecodable headers: the names do not match the values")
    return dict(zip(names, values, strict=True))


# --------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------

_MAX_CAUSE_DEPTH = 8


@dataclass(frozen=True)
class EncodedFailure:
    """What the store needs to know about a failure, plus the opaque encoding."""

    kind: str
    """One of "application", "cancelled", "timeout", "terminated"."""
    error_type: str | None
    """``ApplicationError.type`` (None for the other kinds)."""
    non_retryable: bool
    """``ApplicationError.non_retryable`` (False for the other kinds)."""
    next_retry_delay_s: float | None
    """``ApplicationError.next_retry_delay`` in seconds, if set."""
    data: bytes
    """JSON that :meth:`DataConverter.decode_failure` turns back into the exception."""


def _kind(failure: exceptions.FailureError) -> str:
    if isinstance(failure, exceptions.ApplicationError):
        return "application"
    if isinstance(failure, exceptions.CancelledError):
        return "cancelled"
    if isinstance(failure, exceptions.TimeoutError):
        return "timeout"
    return "terminated"


def _stack_trace(error: BaseException) -> str:
    tb = error.__traceback__
    if tb is not None:
        return "".join(traceback.format_tb(tb))
    trace = getattr(error, "stack_trace", "")
    return trace if isinstance(trace, str) else ""


def _bad_failure(reason: str) -> ValueError:
    return ValueError(f"undecodable failure: {reason}")


def _field(node: dict[str, Any], key: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    value = node.get(key, default)
    if value is not None and (type(value) not in kinds):
        raise _bad_failure(f"{key} is {_describe(value)}")
    return value


@dataclass(frozen=True)
class DataConverter:
    """Values to stored bytes and back: payload converter, then codec, then framing.

    Also encodes failures (:mod:`errands.exceptions`) for the store, their
    details and heartbeat details through the same converter and codec.
    """

    payload_converter: PayloadConverter = field(default_factory=PayloadConverter)
    payload_codec: PayloadCodec | None = None

    async def encode(self, values: Sequence[Any]) -> bytes:
        """``values`` as stored bytes; raises TypeError for an unsupported value,
        and whatever the codec raises."""
        return await self.encode_payloads(self.payload_converter.to_payloads(values))

    async def decode(self, data: bytes, type_hints: Sequence[Any] | None = None) -> list[Any]:
        """The values :meth:`encode` wrote, converted to ``type_hints`` (see
        :meth:`PayloadConverter.from_payloads`); raises ValueError for
        undecodable bytes, TypeError/ValueError for a value that does not fit
        its hint, and whatever the codec raises."""
        payloads = await self.decode_to_payloads(data)
        return self.payload_converter.from_payloads(payloads, type_hints)

    async def encode_payloads(self, payloads: Sequence[Payload]) -> bytes:
        """The payloads through the codec (if any), then framed as bytes."""
        if self.payload_codec is not None:
            payloads = await self.payload_codec.encode(payloads)
        return serialize_payloads(payloads)

    async def decode_to_payloads(self, data: bytes) -> list[Payload]:
        """The payloads :meth:`encode_payloads` was given; raises ValueError for
        undecodable bytes and whatever the codec raises."""
        payloads = deserialize_payloads(data)
        if self.payload_codec is not None:
            payloads = await self.payload_codec.decode(payloads)
        return payloads

    def failure_from_exception(self, error: BaseException) -> exceptions.FailureError:
        """``error`` as the failure it stands for.

        An ApplicationError, CancelledError, TimeoutError or TerminatedError is
        returned as is. ``asyncio.CancelledError`` becomes a CancelledError.
        Anything else becomes ``ApplicationError(str(error), type=<class name>)``
        carrying the original's ``__cause__`` and formatted traceback (as
        ``stack_trace``). Raises nothing.
        """
        if isinstance(
            error,
            (
                exceptions.ApplicationError,
                exceptions.CancelledError,
                exceptions.TimeoutError,
                exceptions.TerminatedError,
            ),
        ):
            return error
        converted: exceptions.FailureError
        if isinstance(error, asyncio.CancelledError):
            message = str(error)
            converted = (
                exceptions.CancelledError(message) if message else exceptions.CancelledError()
            )
        elif isinstance(error, exceptions.FailureError):
            converted = exceptions.ApplicationError(
                error.message, *error.details, type=type(error).__name__
            )
        else:
            converted = exceptions.ApplicationError(str(error), type=type(error).__name__)
        converted.__cause__ = error.__cause__
        converted.stack_trace = _stack_trace(error)
        return converted

    def _details_payloads(self, values: Sequence[Any]) -> list[Payload]:
        if not values:
            return []
        try:
            return self.payload_converter.to_payloads(values)
        except (TypeError, ValueError, RecursionError):
            # A failure must always be storable: keep unconvertible details as their repr.
            return self.payload_converter.to_payloads([repr(v) for v in values])

    async def encode_failure(self, error: BaseException) -> EncodedFailure:
        """``error`` (converted by :meth:`failure_from_exception`) as stored JSON.

        The ``__cause__`` chain is kept, up to 8 causes deep. Details that the
        payload converter cannot convert are stored as their ``repr``. Raises
        only what the codec raises.
        """
        chain: list[exceptions.FailureError] = []
        seen: set[int] = set()
        current: BaseException | None = error
        while current is not None and len(chain) <= _MAX_CAUSE_DEPTH and id(current) not in seen:
            seen.add(id(current))
            failure = self.failure_from_exception(current)
            chain.append(failure)
            current = failure.__cause__
        blobs: list[list[Payload]] = []
        for failure in chain:
            blobs.append(self._details_payloads(failure.details))
            heartbeat = (
                failure.last_heartbeat_details
                if isinstance(failure, exceptions.TimeoutError)
                else ()
            )
            blobs.append(self._details_payloads(heartbeat))
        codec = self.payload_codec
        if codec is not None:
            blobs = [await codec.encode(b) if b else b for b in blobs]
        node: dict[str, Any] | None = None
        for i in reversed(range(len(chain))):
            node = self._failure_node(chain[i], blobs[2 * i], blobs[2 * i + 1], node)
        assert node is not None
        data = _json_bytes(node)
        return EncodedFailure(
            kind=node["kind"],
            error_type=node["error_type"],
            non_retryable=node["non_retryable"],
            next_retry_delay_s=node["next_retry_delay"],
            data=data,
        )

    @staticmethod
    def _failure_node(
        failure: exceptions.FailureError,
        details: list[Payload],
        heartbeat: list[Payload],
        cause: dict[str, Any] | None,
    ) -> dict[str, Any]:
        kind = _kind(failure)
        error_type: str | None = None
        non_retryable = False
        delay: float | None = None
        timeout_type: int | None = None
        if isinstance(failure, exceptions.ApplicationError):
            error_type = failure.type
            non_retryable = bool(failure.non_retryable)
            next_delay: Any = failure.next_retry_delay
            if isinstance(next_delay, timedelta):
                delay = next_delay.total_seconds()
            elif isinstance(next_delay, (int, float)) and not isinstance(next_delay, bool):
                delay = float(next_delay)
        elif isinstance(failure, exceptions.TimeoutError) and failure.type is not None:
            timeout_type = int(failure.type)
        return {
            "message": failure.message,
            "kind": kind,
            "error_type": error_type,
            "non_retryable": non_retryable,
            "next_retry_delay": delay,
            "stack_trace": _stack_trace(failure),
            "details": _b64_payloads(details),
            "timeout_type": timeout_type,
            "last_heartbeat_details": _b64_payloads(heartbeat),
            "cause": cause,
        }

    async def decode_failure(self, data: bytes) -> exceptions.FailureError:
        """The failure :meth:`encode_failure` stored: the same class and fields,
        ``stack_trace`` set, and ``__cause__`` set to the decoded cause.

        Raises ValueError for undecodable bytes, and whatever the codec raises.
        """
        try:
            node: Any = json.loads(bytes(data).decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise _bad_failure(str(e)) from None
        nodes: list[dict[str, Any]] = []
        while node is not None:
            if not isinstance(node, dict):
                raise _bad_failure(f"expected an object, got {_describe(node)}")
            nodes.append(node)
            node = node.get("cause")
        blobs: list[list[Payload]] = []
        for n in nodes:
            blobs.append(_payloads_from_b64(_field(n, "details", (str,))))
            blobs.append(_payloads_from_b64(_field(n, "last_heartbeat_details", (str,))))
        codec = self.payload_codec
        if codec is not None:
            blobs = [await codec.decode(b) if b else b for b in blobs]
        cause: exceptions.FailureError | None = None
        for i in reversed(range(len(nodes))):
            failure = self._failure_from_node(nodes[i], blobs[2 * i], blobs[2 * i + 1])
            if cause is not None:
                failure.__cause__ = cause
            cause = failure
        if cause is None:
            raise _bad_failure("empty")
        return cause

    def _failure_from_node(
        self, node: dict[str, Any], details: list[Payload], heartbeat: list[Payload]
    ) -> exceptions.FailureError:
        message = _field(node, "message", (str,), "")
        kind = node.get("kind")
        values = self.payload_converter.from_payloads(details)
        failure: exceptions.FailureError
        if kind == "application":
            delay = _field(node, "next_retry_delay", (int, float))
            failure = exceptions.ApplicationError(
                message,
                *values,
                type=_field(node, "error_type", (str,)),
                non_retryable=bool(_field(node, "non_retryable", (bool,), False)),
                next_retry_delay=None if delay is None else timedelta(seconds=delay),
            )
        elif kind == "cancelled":
            failure = exceptions.CancelledError(message, *values)
        elif kind == "timeout":
            timeout_type = _field(node, "timeout_type", (int,))
            try:
                which = None if timeout_type is None else exceptions.TimeoutType(timeout_type)
            except ValueError:
                raise _bad_failure(f"unknown timeout type {timeout_type}") from None
            failure = exceptions.TimeoutError(
                message,
                type=which,
                last_heartbeat_details=self.payload_converter.from_payloads(heartbeat),
            )
            failure.details = values
        elif kind == "terminated":
            failure = exceptions.TerminatedError(message, *values)
        else:
            raise _bad_failure(f"unknown kind {kind!r}")
        failure.stack_trace = _field(node, "stack_trace", (str,), "") or ""
        return failure


def _b64_payloads(payloads: list[Payload]) -> str | None:
    if not payloads:
        return None
    return base64.b64encode(serialize_payloads(payloads)).decode("ascii")


def _payloads_from_b64(text: str | None) -> list[Payload]:
    if not text:
        return []
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as e:
        raise _bad_failure(f"details are not base64: {e}") from None
    return deserialize_payloads(raw)
