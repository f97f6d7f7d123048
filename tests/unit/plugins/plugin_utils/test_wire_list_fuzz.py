"""Every list field of every request, fuzzed item by item: the daemon refuses what is wrong, stays
up, and closes nothing of its own.

The fields are found from the messages' declared rules (``wire/messages.py``: ``REQUESTS``, the
parts of a ``bind``, nested messages), so a list field added later is fuzzed without touching
this file. Items: integers (small ones are descriptor numbers: an integer opened as a file would
close the daemon's listener), nested lists, objects, strings with NUL bytes, huge values. First
against the request checks in-process (many examples), then against a real daemon whose open
descriptors are compared before and after.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames as proto
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import messages as msgs
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire.fields import Rule, rules
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_daemon_hostile_clients import RealDaemon
from test_daemon_hostile_clients import daemon as real_daemon  # noqa: F401 - a module fixture  # pylint: disable=unused-import

Path = Tuple[str, ...]
VALID: Dict[str, Any] = {"conn": {"host": "h", "addr": "127.0.0.1", "port": 1, "user": "u", "timeout": 1.0}, "pool": {}}
HOP = {"host": "b", "addr": "127.0.0.1", "port": 1, "user": "u"}


def _walk(cls: type, prefix: Path) -> Iterator[Tuple[Path, Rule]]:
    for name, rule in rules(cls).items():
        if rule.items is not None or rule.nested is not None:
            yield (*prefix, name), rule
        if rule.nested is not None:
            yield from _walk(rule.nested, (*prefix, name, "0"))


def list_fields() -> List[Tuple[msgs.Op, Path, Rule]]:
    """(op, path, rule) of every list field of every request, nested ones included."""
    out = []
    for op, cls in msgs.REQUESTS.items():
        parts: Dict[str, type] = getattr(cls, "PARTS", {})
        for part, part_cls in parts.items():
            if dataclasses.is_dataclass(part_cls):
                out += [(op, (part, *path), rule) for path, rule in _walk(part_cls, ())]
        out += [(op, path, rule) for path, rule in _walk(cls, ())]
    return out


LIST_FIELDS = list_fields()
BAD_ITEM = st.one_of(
    st.integers(min_value=-2, max_value=1024),  # descriptor numbers
    st.integers(min_value=2**31, max_value=2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
    st.lists(st.lists(st.integers(0, 8), max_size=2), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(0, 8), max_size=2),
    st.text(max_size=6).map(lambda s: s + "\0" + s),
)


def test_the_walk_finds_the_list_fields_we_know_of() -> None:
    paths = {path for _message, path, _rule in LIST_FIELDS}
    assert {("conn", "known_hosts_files"), ("conn", "default_key_files"), ("conn", "proxy_jump")} <= paths


def _message(op: msgs.Op, path: Path, value: Any) -> Dict[str, Any]:
    """A valid request of ``op`` whose list at ``path`` is ``value`` (through a valid hop for nested paths)."""
    msg: Dict[str, Any] = {"op": op.value, "id": 7, "conn": dict(VALID["conn"]), "pool": {}}
    node: Any = msg
    for i, key in enumerate(path[:-1]):
        if key == "0":
            continue
        if path[i + 1] == "0":
            node[key] = [dict(HOP)]
            node = node[key][0]
        else:
            node = node.setdefault(key, {})
    node[path[-1]] = value
    return msg


@st.composite
def bad_list(draw: Any) -> Tuple[msgs.Op, Path, Dict[str, Any]]:
    op, path, rule = draw(st.sampled_from(LIST_FIELDS))
    good = draw(st.lists(st.just(dict(HOP)) if rule.nested else st.text(alphabet="abc/", max_size=5), max_size=2))
    items = [*good, draw(BAD_ITEM)]
    items = draw(st.permutations(items))
    if rule.nested is not None and draw(st.booleans()):
        # A bad field inside a nested item instead of a bad item.
        name = draw(st.sampled_from(sorted(rules(rule.nested))))
        items = [dict(HOP, **{name: draw(BAD_ITEM.filter(lambda v: not isinstance(v, str) and v is not None))})]
        message = _message(op, path, items)
        assume(msgs.check_request(op, message) is not None)  # a port number is a valid integer
        return op, path, message
    return op, path, _message(op, path, items)


FAST = settings(max_examples=500, deadline=None, derandomize=True)
REAL = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FAST
@given(case=bad_list())
def test_every_bad_list_item_is_refused_naming_its_field(case: Tuple[msgs.Op, Path, Dict[str, Any]]) -> None:
    op, path, message = case
    problem = msgs.check_request(op, message)
    assert problem is not None, message
    assert problem.startswith(path[0] + "." + path[1]), (problem, path)


def _own_descriptors(pid: int) -> Dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    return out


@pytest.mark.parametrize("count, size", [(200, 1000), (5, 50_000)])
def test_huge_lists_of_valid_items_are_taken_whole(count: int, size: int) -> None:
    """Large but well-formed (the frame bounds the whole): taken, for every list of strings."""
    for op, path, rule in LIST_FIELDS:
        if rule.items == (str,):
            assert msgs.check_request(op, _message(op, path, ["x" * size] * count)) is None, path


@REAL
@given(case=bad_list())
def test_a_real_daemon_refuses_bad_lists_stays_up_and_closes_nothing_of_its_own(
    real_daemon: RealDaemon,  # noqa: F811 - the fixture imported above
    case: Tuple[msgs.Op, Path, Dict[str, Any]],
) -> None:
    daemon = real_daemon
    _op, path, message = case
    before = _own_descriptors(daemon.pid)
    sock = daemon.hello()
    try:
        proto.send_frame(sock, {**message, "op": "bind", "id": 1})
        reply, _payload = proto.recv_frame(sock)
        assert reply["t"] == "error" and reply["kind"] == "protocol" and reply["re"] == 1, (path, reply)
        proto.send_frame(sock, {"op": "ping", "id": 2})
        assert proto.recv_frame(sock)[0] == {"t": "pong", "re": 2}
    finally:
        sock.close()
    after = _own_descriptors(daemon.pid)
    # Every descriptor the daemon had before (listener, log, lock...) is still open, on the same file.
    lost = {fd: target for fd, target in before.items() if after.get(fd) != target and "socket:" not in target}
    assert not lost, lost
    listener = [fd for fd, t in before.items() if t.startswith("socket:")]
    assert all(after.get(fd) == before[fd] for fd in listener[:1]), (before, after)
    daemon.assert_serves()
