# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shaping the daemon's statistics for people and for scrapers.

Shared by the CLI, the ``pool_stats`` callback and ``pool_info``; plain data in, text out,
so it is unit-tested without a daemon. Does not import Ansible.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

#: Counters that only grow; a playbook's share is the difference between two readings.
CUMULATIVE = (
    "poolHits",
    "poolMisses",
    "healthCheckFailures",
    "healthChecksPassed",
    "connectFailures",
    "exhausted",
    "closedIdle",
    "closedDead",
    "evicted",
    "channelsRefused",
    "waits",
    "waitSeconds",
    "directConnections",
)
#: Gauges: a reading is the current value.
GAUGES = (
    "activeConnections",
    "idleConnections",
    "totalConnections",
    "waiting",
    "connecting",
    "channelsInUse",
    "peakConnections",
)

#: (heading, counter) of the end-of-play table; "saved" are the handshakes a hit did not pay.
TABLE_COLUMNS: Sequence[Tuple[str, str]] = (
    ("hits", "poolHits"),
    ("misses", "poolMisses"),
    ("saved", "poolHits"),
    ("transports", "totalConnections"),
    ("hc_ok", "healthChecksPassed"),
    ("hc_failed", "healthCheckFailures"),
    ("wait_s", "waitSeconds"),
)
CLI_COLUMNS: Sequence[Tuple[str, str]] = tuple(
    (c, c)
    for c in (
        "poolHits",
        "poolMisses",
        "totalConnections",
        "activeConnections",
        "idleConnections",
        "healthChecksPassed",
        "healthCheckFailures",
    )
)


def _diff(before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for name, value in after.items():
        if name in CUMULATIVE:
            value = value - before.get(name, 0)
            out[name] = round(value, 6) if isinstance(value, float) else value
        else:
            out[name] = value
    return out


def delta(before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Any]:
    """What happened between two ``stats`` readings (gauges are taken from ``after``)."""
    hosts = {}
    for host, values in (after.get("hosts") or {}).items():
        d = _diff((before.get("hosts") or {}).get(host, {}), values)
        if any(d.get(name) for name in CUMULATIVE) or d.get("totalConnections"):
            hosts[host] = d
    return {"total": _diff(before.get("total") or {}, after.get("total") or {}), "hosts": hosts}


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render_table(data: Dict[str, Any], columns: Sequence[Tuple[str, str]] = CLI_COLUMNS) -> str:
    rows: List[Tuple[str, Dict[str, Any]]] = sorted((data.get("hosts") or {}).items())
    rows.append(("TOTAL", data.get("total") or {}))
    width = max([len(name) for name, _values in rows] + [4])
    lines = [f"{'host':<{width}}  " + "  ".join(heading for heading, _key in columns)]
    for name, values in rows:
        lines.append(
            f"{name:<{width}}  "
            + "  ".join(f"{_cell(values.get(counter, 0)):>{len(heading)}}" for heading, counter in columns)
        )
    return "\n".join(lines)


_HELP = {
    "poolHits": "Requests served by an existing transport.",
    "poolMisses": "Requests that opened a new transport (one SSH handshake each).",
    "activeConnections": "Transports with at least one channel in use.",
    "idleConnections": "Transports with no channel in use.",
    "totalConnections": "Transports held.",
    "healthCheckFailures": "Health checks that found a transport dead.",
    "healthChecksPassed": "Health checks that found a transport alive.",
    "directConnections": "One-off transports opened past max_connections (on_exhausted: direct).",
}


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus(data: Dict[str, Any]) -> str:
    """Prometheus text exposition format, one metric family per counter, labelled by host."""
    lines: List[str] = []
    for name in CUMULATIVE + GAUGES:
        metric = "pooled_ssh_" + _snake(name) + ("_total" if name in CUMULATIVE and name != "waitSeconds" else "")
        if name == "waitSeconds":
            metric = "pooled_ssh_wait_seconds_total"
        kind = "counter" if name in CUMULATIVE else "gauge"
        lines.append(f"# HELP {metric} {_HELP.get(name, name + ' (pooled_ssh pool statistic).')}")
        lines.append(f"# TYPE {metric} {kind}")
        for host, values in sorted((data.get("hosts") or {}).items()):
            lines.append(f'{metric}{{host="{_escape(host)}"}} {float(values.get(name, 0)):g}')
    return "\n".join(lines) + "\n"
