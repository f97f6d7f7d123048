# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Replies whose size grows with the pool (a host each, a transport each), sent in parts.

A frame's JSON is bounded (:data:`.frames.MAX_JSON`); the ``stats`` of a thousand hosts is
not. Such a reply goes as one frame when it fits, else as a first frame carrying everything
but the growing collections' overflow, then frames that carry only more items::

    {"t": "stats", "re": 7, "total": {...}, "hosts": {<first hosts>}, "more": true}
    {"t": "stats", "re": 7, "add": {"hosts": {<more hosts>}}, "more": true}
    {"t": "stats", "re": 7, "add": {"hosts": {<last hosts>}}}

The parts are cut from one reading, so the whole is as consistent as a single frame. The
reader (:func:`merge`) puts them back together; callers see one reply. An item that alone
is larger than a frame cannot be sent: :class:`TooLarge` says which. Does not import Ansible.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Dict, Iterator, List, Sequence, Tuple, Union

from .frames import MAX_JSON

#: A growing collection inside a reply, by its keys from the top (``("stats", "hosts")``).
Path = Tuple[str, ...]
Items = Union[Dict[str, Any], List[Any]]
#: Room kept in every frame for the envelope and the part keys ("more", "add", the path).
ENVELOPE = 512


class TooLarge(ValueError):
    """One item of a growing collection is larger than a frame may carry."""


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _at(message: Dict[str, Any], path: Path) -> Items:
    node: Any = message
    for key in path:
        node = node[key]
    return node  # type: ignore[no-any-return]


def _put(message: Dict[str, Any], path: Path, value: Items) -> None:
    node = message
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _items(collection: Items) -> Iterator[Tuple[Any, int]]:
    """Each item of a collection and what it adds to a frame (a key and its value, or a list item)."""
    if isinstance(collection, dict):
        for key, value in collection.items():
            yield (key, value), _size({key: value}) - 1
    else:
        for value in collection:
            yield value, _size([value]) - 1


def _empty_like(collection: Items) -> Items:
    return {} if isinstance(collection, dict) else []


def _add(collection: Items, item: Any) -> None:
    if isinstance(collection, dict):
        key, value = item
        collection[key] = value
    else:
        collection.append(item)


def _continuation(message: Dict[str, Any]) -> Dict[str, Any]:
    return {"t": message.get("t"), "re": message.get("re"), "add": {}}


def split(message: Dict[str, Any], paths: Sequence[Path], limit: int = MAX_JSON) -> List[Dict[str, Any]]:
    """``message`` as frames of at most ``limit`` bytes of JSON each (one frame when it fits)."""
    if _size(message) <= limit:
        return [message]
    budget = limit - ENVELOPE
    first = copy.copy(message)
    # Shallow copies down each path, so emptying a collection leaves the caller's message alone.
    for path in paths:
        node = first
        for key in path[:-1]:
            node[key] = copy.copy(node[key])
            node = node[key]
        _put(first, path, _empty_like(_at(message, path)))
    out: List[Dict[str, Any]] = [first]
    used = _size(first)
    if used > budget:
        raise TooLarge(
            f"the reply is {used} bytes without its {', '.join('.'.join(p) for p in paths)}; a frame carries {limit}"
        )
    current: Dict[str, Any] = first
    for path in paths:
        label = ".".join(path)
        header = len(label) + 6  # "label":{} and a comma, in a later part's "add"
        for item, size in _items(_at(message, path)):
            if size + header + _size(_continuation(message)) > budget:
                name = item[0] if isinstance(item, tuple) else str(item)[:80]
                raise TooLarge(f"one item of {label} ({name!r}) is {size} bytes; a frame carries {limit}")
            cost = size + 1 + (header if current is not first and label not in current["add"] else 0)
            if used + cost > budget:
                current = _continuation(message)
                out.append(current)
                used = _size(current)
                cost = size + 1 + header
            if current is first:
                target = _at(first, path)
            else:
                target = current["add"].setdefault(label, _empty_like(_at(message, path)))
            _add(target, item)
            used += cost
    for part in out[:-1]:
        part["more"] = True
    return out


def more(reply: Dict[str, Any]) -> bool:
    """Whether another part of this reply follows."""
    return reply.get("more") is True


def merge(first: Dict[str, Any], part: Dict[str, Any]) -> None:
    """Add a later part's items to the first part (in place); ``more`` follows the latest part."""
    for label, items in (part.get("add") or {}).items():
        path = tuple(str(label).split("."))
        try:
            target = _at(first, path)
        except (KeyError, TypeError):
            raise ValueError(f"a part of the reply adds to {label!r}, which the reply does not have") from None
        if isinstance(target, dict) and isinstance(items, dict):
            target.update(items)
        elif isinstance(target, list) and isinstance(items, list):
            target.extend(items)
        else:
            raise ValueError(f"a part of the reply adds a {type(items).__name__} to {label!r}")
    if more(part):
        first["more"] = True
    else:
        first.pop("more", None)
