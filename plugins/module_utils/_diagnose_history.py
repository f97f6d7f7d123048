# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The diagnose role's run history (``history.jsonl``) and the charts drawn from it.

One JSON line per run, holding per host the few figures a person charts (CPU busy, load,
memory available, filesystem use, network rates) and the pool's figures for the run; the
file is bounded to the newest runs. Charts are computed here as SVG coordinates so that the
HTML template only formats. Plain data, no Ansible, no Paramiko; controller only.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

Json = Dict[str, Any]

#: (key, title, unit) of every charted metric, in the order the report shows them.
CHARTS: Sequence[Tuple[str, str, str]] = (
    ("cpu_busy_ratio", "CPU busy", "ratio"),
    ("load1", "Load (1 min)", "number"),
    ("memory_available_bytes", "Memory available", "bytes"),
    ("filesystem_used_ratio", "Fullest filesystem", "ratio"),
    ("network_receive_bytes_per_second", "Network receive", "bytes/s"),
    ("network_transmit_bytes_per_second", "Network transmit", "bytes/s"),
)

#: The pool's counters shown for a run: (key, label, the daemon's counter).
POOL_FIGURES: Sequence[Tuple[str, str, str]] = (
    ("logins", "logins (misses)", "poolMisses"),
    ("reuses", "reuses (hits)", "poolHits"),
    ("waits", "waits", "waits"),
    ("wait_seconds", "time waited (s)", "waitSeconds"),
)

#: Chart geometry (SVG user units; the SVG scales to its box): the top padding keeps the
#: points below the scale's label.
WIDTH, HEIGHT, PAD_X, PAD_Y, PAD_TOP = 240, 80, 6, 8, 15


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _first_value(samples: Any) -> Optional[float]:
    for s in samples or []:
        return _number(s.get("value"))
    return None


def _fullest_filesystem(metrics: Mapping[str, Any]) -> Optional[float]:
    """Used ratio of the fullest filesystem, as ``df`` counts it (avail is what users may use)."""
    sizes = {
        json.dumps(s.get("labels"), sort_keys=True): _number(s.get("value"))
        for s in metrics.get("node_filesystem_size_bytes") or []
    }
    ratios = []
    for s in metrics.get("node_filesystem_avail_bytes") or []:
        size, avail = sizes.get(json.dumps(s.get("labels"), sort_keys=True)), _number(s.get("value"))
        if size and avail is not None:
            ratios.append(round(1 - avail / size, 4))
    return max(ratios) if ratios else None


def _sum(values: Any) -> Optional[float]:
    numbers = [n for n in (_number(v) for v in (values or {}).values()) if n is not None]
    return round(sum(numbers), 3) if numbers else None


def key_figures(entry: Mapping[str, Any]) -> Json:
    """The charted figures of one host's entry (None where the run did not measure them)."""
    metrics = entry.get("metrics") or {}
    rates = entry.get("rates") or {}
    return {
        "cpu_busy_ratio": _number(rates.get("cpu_busy_ratio")),
        "load1": _first_value(metrics.get("node_load1")),
        "memory_available_bytes": _first_value(metrics.get("node_memory_MemAvailable_bytes")),
        "filesystem_used_ratio": _fullest_filesystem(metrics),
        "network_receive_bytes_per_second": _sum(rates.get("network_receive_bytes_per_second")),
        "network_transmit_bytes_per_second": _sum(rates.get("network_transmit_bytes_per_second")),
    }


def pool_figures(before: Optional[Mapping[str, Any]], after: Optional[Mapping[str, Any]]) -> Optional[Json]:
    """The pool's figures for the run, from two ``pool_info`` results; None when no daemon ran
    at the end (then the report says n/a). A daemon that started during the run counts from 0."""

    def totals(reading: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
        if not reading or not reading.get("running"):
            return {}
        return (reading.get("stats") or {}).get("total") or {}

    if not after or not after.get("running"):
        return None
    start, end = totals(before), totals(after)
    out: Json = {}
    for key, _label, counter in POOL_FIGURES:
        value = (_number(end.get(counter)) or 0.0) - (_number(start.get(counter)) or 0.0)
        out[key] = round(value, 3) if counter == "waitSeconds" else int(value)
    return out


def record(fleet: Mapping[str, Mapping[str, Any]], generated_at: str, pool: Optional[Mapping[str, Any]]) -> Json:
    """This run's line of the history."""
    hosts = {
        host: {
            "health": entry.get("health"),
            "stale": bool(entry.get("stale")),
            "figures": {} if entry.get("stale") else key_figures(entry),
        }
        for host, entry in fleet.items()
    }
    return {"generated_at": generated_at, "hosts": hosts, "pool": pool}


def parse(text: Optional[str]) -> List[Json]:
    """The runs of a history file; lines that are not a run (a torn write, an edit) are dropped."""
    runs = []
    for line in (text or "").splitlines():
        try:
            run = json.loads(line)
        except ValueError:
            continue
        if isinstance(run, dict) and isinstance(run.get("hosts"), dict):
            runs.append(run)
    return runs


def append(runs: Iterable[Json], new: Json, keep: int) -> List[Json]:
    """The history with ``new`` added, only the newest ``keep`` runs (at least one)."""
    out = [*runs, new]
    return out[-max(int(keep), 1) :]


def dump(runs: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(run, sort_keys=True, separators=(",", ":")) + "\n" for run in runs)


def human(value: Optional[float], unit: str) -> str:
    """A figure as a person reads it: percent, binary multiples of bytes, or a short number."""
    if value is None:
        return "n/a"
    if unit == "ratio":
        return f"{value * 100:.1f}%"
    if unit.startswith("bytes"):
        suffix = unit[len("bytes") :]
        for prefix in ("", "Ki", "Mi", "Gi", "Ti"):
            if abs(value) < 1024 or prefix == "Ti":
                return f"{value:.0f} {prefix}B{suffix}" if not prefix else f"{value:.1f} {prefix}B{suffix}"
            value /= 1024
    return f"{value:.2f}"


def chart(runs: Sequence[Mapping[str, Any]], host: str, key: str, title: str, unit: str) -> Json:
    """One host's metric over the runs as SVG coordinates: a point per run that measured it."""
    values: List[Tuple[int, float, str]] = []
    for index, run in enumerate(runs):
        figure = (((run.get("hosts") or {}).get(host) or {}).get("figures") or {}).get(key)
        number = _number(figure)
        if number is not None:
            values.append((index, number, str(run.get("generated_at", ""))))
    # Every charted figure is >= 0: the axis starts at 0, so that a flat line reads as flat.
    low = min([v for _at, v, _label in values] + [0.0])
    high = max([v for _at, v, _label in values] + [1.0 if unit == "ratio" else low])
    span = (high - low) or 1.0
    slots = max(len(runs) - 1, 1)
    points = []
    for index, value, when in values:
        x = PAD_X + (WIDTH - 2 * PAD_X) * (index / slots if len(runs) > 1 else 0.5)
        y = HEIGHT - PAD_Y - (HEIGHT - PAD_Y - PAD_TOP) * (value - low) / span
        points.append({"x": round(x, 1), "y": round(y, 1), "label": f"{when}: {human(value, unit)}"})
    return {
        "key": key,
        "title": title,
        "unit": unit,
        "points": points,
        "polyline": " ".join(f"{p['x']},{p['y']}" for p in points),
        "last": human(values[-1][1], unit) if values else "n/a",
        "low": human(low, unit),
        "high": human(high, unit),
        "width": WIDTH,
        "height": HEIGHT,
        "baseline": HEIGHT - PAD_Y,
    }


def charts(runs: Sequence[Mapping[str, Any]], host: str) -> List[Json]:
    """Every charted metric of one host."""
    return [chart(runs, host, key, title, unit) for key, title, unit in CHARTS]
