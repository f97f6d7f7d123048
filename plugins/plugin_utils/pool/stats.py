# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool's counters, per inventory host, and the ``stats`` and ``status`` views of them."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List

from .settings import PoolKey

#: The healer service's statistic names, kept verbatim so its dashboards keep working.
SERVICE_COUNTERS = (
    "poolHits",
    "poolMisses",
    "activeConnections",
    "idleConnections",
    "totalConnections",
    "healthCheckFailures",
    "healthChecksPassed",
)
_GAUGES = ("activeConnections", "idleConnections", "totalConnections", "waiting", "connecting", "channelsInUse")


def new_counters() -> Dict[str, float]:
    return {
        "poolHits": 0,
        "poolMisses": 0,
        "healthCheckFailures": 0,
        "healthChecksPassed": 0,
        "connectFailures": 0,
        "exhausted": 0,
        "closedIdle": 0,
        "closedDead": 0,
        "evicted": 0,
        "channelsRefused": 0,
        "waits": 0,
        "waitSeconds": 0.0,
        "peakConnections": 0,
    }


class Counters:
    """Cumulative counters per inventory host (not per key: a host's dashboard is one row)."""

    def __init__(self) -> None:
        self.hosts: Dict[str, Dict[str, float]] = {}

    def of(self, key: PoolKey) -> Dict[str, float]:
        counters = self.hosts.get(key.host)
        if counters is None:
            counters = self.hosts[key.host] = new_counters()
        return counters


def _with_gauges(counters: Dict[str, float]) -> Dict[str, Any]:
    return dict(counters, **dict.fromkeys(_GAUGES, 0))


def summarize(counters: Counters, key_pools: Iterable[Any]) -> Dict[str, Any]:
    """The service's counters, overall and per inventory host, plus our own (call under the pool's lock)."""
    hosts: Dict[str, Dict[str, Any]] = {host: _with_gauges(c) for host, c in counters.hosts.items()}
    for kp in key_pools:
        h = hosts.setdefault(kp.key.host, _with_gauges(new_counters()))
        h["waiting"] += len(kp.waiters)
        h["connecting"] += kp.connecting
        for entry in kp.entries:
            h["totalConnections"] += 1
            h["channelsInUse"] += entry.in_use
            h["activeConnections" if entry.in_use else "idleConnections"] += 1
    total: Dict[str, Any] = {}
    for h in hosts.values():
        for name, value in h.items():
            total[name] = total.get(name, 0) + value
    for name in SERVICE_COUNTERS:
        total.setdefault(name, 0)
    for h in hosts.values():
        h["waitSeconds"] = round(h["waitSeconds"], 6)
    if "waitSeconds" in total:
        total["waitSeconds"] = round(total["waitSeconds"], 6)
    return {"total": total, "hosts": hosts}


def snapshot(key_pools: Iterable[Any], now: float) -> List[Dict[str, Any]]:
    """The live transports, for ``status`` (call under the pool's lock)."""
    return [
        {
            "id": e.id,
            "key": e.key.label,
            "host": e.key.host,
            "port": e.key.port,
            "user": e.key.user,
            "age": round(now - e.created, 3),
            "idle": round(now - e.last_used, 3) if not e.in_use else 0.0,
            "channels_in_use": e.in_use,
            "max_channels": e.max_channels,
            "channels_opened": e.opened,
            "state": "dead" if e.dead else "retiring" if e.retire else "active" if e.in_use else "idle",
        }
        for kp in key_pools
        for e in kp.entries
    ]
