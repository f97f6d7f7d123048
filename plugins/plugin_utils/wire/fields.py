# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Declared wire fields: one description per field, from which parsing, checking and identity follow.

A message is a dataclass whose fields carry a :class:`Rule` in their metadata. :func:`parse`
checks a decoded JSON object against the rules (type, item types of lists, nested objects,
range, NUL bytes in paths) before anything uses it; :func:`to_wire` turns an instance back
into plain JSON data; :func:`fingerprint` hashes the fields marked as identity. Nothing about
a field is written down twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, TypeVar

T = TypeVar("T")
_NONE = type(None)


class Malformed(ValueError):
    """A message whose shape is wrong; the text names the field (``conn.port must be a port number``)."""


@dataclass(frozen=True)
class Rule:
    """How one field looks on the wire."""

    types: Tuple[type, ...]
    required: bool = False
    #: For lists: the type of every item (checked one by one), or a nested message class.
    items: Optional[Tuple[type, ...]] = None
    nested: Optional[type] = None
    low: Optional[float] = None
    high: Optional[float] = None
    #: Part of the identity fingerprint: decides who we authenticate as or whom we trust.
    identity: bool = False
    #: A file system path: a NUL byte is refused (it would cut the path short).
    path: bool = False
    #: What to say when the value is wrong (default: "has the wrong type" / "is out of range").
    problem: Optional[str] = None


def wire(types: Tuple[type, ...], default: Any = None, **rule: Any) -> Any:
    """A dataclass field described by a :class:`Rule` (lists default to empty lists)."""
    # A field factory: the field() it returns is assigned in the message dataclasses' bodies.
    # pylint: disable=invalid-field-call
    meta = {"wire": Rule(types=types, **rule)}
    if rule.get("required"):
        return dataclasses.field(metadata=meta)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def rules(cls: type) -> Dict[str, Rule]:
    return {f.name: f.metadata["wire"] for f in dataclasses.fields(cls) if "wire" in f.metadata}


def _is(value: Any, types: Tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _check_scalar(name: str, value: Any, rule: Rule, types: Tuple[type, ...]) -> Any:
    if not _is(value, types):
        raise Malformed(f"{name} {rule.problem or 'has the wrong type'}")
    if isinstance(value, str) and rule.path and "\0" in value:
        raise Malformed(f"{name} contains a NUL byte")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (
            math.isnan(value)
            or (rule.low is not None and value < rule.low)
            or (rule.high is not None and value > rule.high)
        ):
            raise Malformed(f"{name} {rule.problem or 'is out of range'}")
        if float in types and int not in types:
            return float(value)
    return value


def _check(name: str, value: Any, rule: Rule) -> Any:
    if rule.nested is not None or rule.items is not None:
        if not isinstance(value, list):
            raise Malformed(f"{name} {rule.problem or 'has the wrong type'}")
        out: List[Any] = []
        for index, item in enumerate(value):
            where = f"{name}[{index}]"
            if rule.nested is not None:
                out.append(parse(rule.nested, item, f"{where}."))
            else:
                out.append(_check_scalar(where, item, rule, rule.items or ()))
        return out
    return _check_scalar(name, value, rule, rule.types)


def parse(cls: Type[T], data: Any, prefix: str = "") -> T:
    """An instance of ``cls`` from decoded JSON, or :class:`Malformed` naming the first bad field.

    Unknown fields are ignored (a newer worker may send more); missing optional ones take
    their defaults.
    """
    if not isinstance(data, Mapping):
        raise Malformed(f"{prefix.rstrip('.') or 'message'} must be an object")
    values: Dict[str, Any] = {}
    for name, rule in rules(cls).items():
        value = data.get(name)
        if value is None:
            if rule.required:
                raise Malformed(f"{prefix}{name} is missing")
            continue
        values[name] = _check(f"{prefix}{name}", value, rule)
    return cls(**values)


def to_wire(message: Any) -> Dict[str, Any]:
    """Plain JSON data of a message (nested messages included)."""
    out: Dict[str, Any] = {}
    for name in rules(type(message)):
        value = getattr(message, name)
        if isinstance(value, list):
            value = [to_wire(v) if dataclasses.is_dataclass(v) else v for v in value]
        out[name] = value
    return out


def fingerprint(message: Any, salt: bytes) -> str:
    """A salted HMAC of the identity fields: equal only for requests that may share a login."""
    data = to_wire(message)
    identity = [[name, data[name]] for name, rule in rules(type(message)).items() if rule.identity]
    text = json.dumps(identity, sort_keys=True, default=str)
    return hmac.new(salt, text.encode("utf-8"), hashlib.sha256).hexdigest()[:16]
