# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The diagnose role's report logic: merging module runs, rates, counter resets, damping.

Plain data in, plain data out, so that it is unit-tested without Ansible; the role reaches it
through the ``diagnose_report`` filter plugin and its templates only format the result. Runs on
the controller only (never sent to a host) and imports neither Ansible nor Paramiko.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

#: Identifies health.json files written by the role; another format is not read back.
REPORT_FORMAT = "healer.pooled_ssh.diagnose/1"

#: Severity of a check state; skipped never counts in a host's health.
RANK = {"skipped": -1, "ok": 0, "unknown": 1, "warning": 2, "critical": 3}
NAMES_BY_RANK = ("ok", "unknown", "warning", "critical")
#: States that extend a damping streak.
BAD_STATES = ("unknown", "warning", "critical")
#: Worst first, the order of the summary's parts and of the problems.
SEVERITY_ORDER = ("critical", "warning", "unknown", "ok", "skipped")
#: CPU modes already counted in ``user`` (the kernel adds guest time to it).
_GUEST_MODES = ("guest", "guest_nice")

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
STALE_REASON = "no diagnosis in this run: the host was unreachable or failed before it"

Json = Dict[str, Any]


def iso(seconds: float) -> str:
    """UTC ISO 8601 of an epoch time, as health.json writes every timestamp."""
    return time.strftime(ISO_FORMAT, time.gmtime(float(seconds)))


# --------------------------------------------------------------------------- 1. merging


def _unit_name(run: Mapping[str, Any]) -> str:
    """What a failed or skipped module run was for, in the words of its error line."""
    unit = run.get("__diagnose_unit")
    if isinstance(unit, str):
        return "check " + unit
    if isinstance(unit, Mapping):
        return "application " + str(unit.get("name"))
    return "diagnosis"


def merge_runs(runs: Sequence[Mapping[str, Any]]) -> Json:
    """One host's module runs (one combined, or one per check/application) as one result.

    Checks and skipped metrics are combined; the counters are the last run's. With several
    runs every run collected the host metrics: one sample per series, the latest run's value.
    A run without checks (it failed, or was skipped) becomes an error line.
    """
    checks: Json = {}
    skipped: Json = {}
    metrics: Dict[str, List[Json]] = {}
    counters: Json = {}
    errors: List[str] = []
    for run in runs:
        if "checks" not in run:
            why = run["msg"] if "msg" in run else "skipped" if run.get("skipped") else "no result"
            errors.append(f"{_unit_name(run)} did not run: {why}")
            continue
        checks.update(run["checks"])
        skipped.update(run.get("metrics_skipped") or {})
        if "counters" in run:
            counters = run["counters"]
        if len(runs) == 1:
            metrics = dict(run.get("metrics") or {})
            continue
        for name, samples in (run.get("metrics") or {}).items():
            labels = [s.get("labels") for s in samples]
            kept = [s for s in metrics.get(name, []) if s.get("labels") not in labels]
            metrics[name] = kept + list(samples)
    return {"checks": checks, "metrics": metrics, "metrics_skipped": skipped, "counters": counters, "errors": errors}


# --------------------------------------------------------------------------- 2. totals


def totals(metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> Json:
    """The raw counters the rates need: CPU seconds by mode (summed over CPUs), bytes by device."""
    cpu: Dict[str, float] = {}
    for s in metrics.get("node_cpu_seconds_total") or []:
        mode = s["labels"]["mode"]
        cpu[mode] = round(cpu.get(mode, 0) + s["value"], 3)
    rx = {s["labels"]["device"]: s["value"] for s in metrics.get("node_network_receive_bytes_total") or []}
    tx = {s["labels"]["device"]: s["value"] for s in metrics.get("node_network_transmit_bytes_total") or []}
    return {"cpu_seconds_total": cpu, "network_receive_bytes_total": rx, "network_transmit_bytes_total": tx}


# --------------------------------------------------------------------------- 3. rates


def _cpu_rates(now: Mapping[str, float], before: Mapping[str, float]) -> Tuple[Json, List[str]]:
    """Busy = delta(total - idle - iowait) / delta(total); guest time is already in user."""
    total = idle = iowait = 0.0
    backwards = False
    for mode, value in now.items():
        if mode not in before or mode in _GUEST_MODES:
            continue
        delta = value - before[mode]
        backwards = backwards or delta < 0
        total += delta
        if mode == "idle":
            idle = delta
        elif mode == "iowait":
            iowait = delta
    if backwards:
        return {}, ["cpu counters went backwards"]
    if total > 0:
        return {
            "cpu_busy_ratio": round((total - idle - iowait) / total, 4),
            "cpu_iowait_ratio": round(iowait / total, 4),
        }, []
    return {}, []


def rates(
    previous: Mapping[str, Any], counters: Mapping[str, Any], now_totals: Mapping[str, Any]
) -> Tuple[Json, List[str]]:
    """(rates, resets) since the previous entry of the host.

    No rates on the first run, when the boot time changed (the host rebooted: every counter
    restarted) or when the collection time did not advance; a counter that went backwards
    drops only its own rates. ``resets`` says why a rate is missing.
    """
    pc = previous.get("counters") or {}
    pt = previous.get("totals") or {}
    if "collected_at" not in pc or "collected_at" not in counters:
        return {}, ["no previous run"]
    if pc.get("boot_time") != counters.get("boot_time"):
        return {}, ["the host rebooted (boot time changed)"]
    if counters["collected_at"] <= pc["collected_at"]:
        return {}, ["the collection time did not advance"]
    interval = counters["collected_at"] - pc["collected_at"]
    out: Json = {"interval_seconds": round(interval, 3)}
    resets: List[str] = []
    now_cpu, before_cpu = now_totals.get("cpu_seconds_total") or {}, pt.get("cpu_seconds_total") or {}
    if now_cpu and before_cpu:
        cpu, why = _cpu_rates(now_cpu, before_cpu)
        out.update(cpu)
        resets += why
    for direction in ("receive", "transmit"):
        before = pt.get(f"network_{direction}_bytes_total") or {}
        per_device = {}
        for device, value in (now_totals.get(f"network_{direction}_bytes_total") or {}).items():
            if device not in before:
                continue
            if value < before[device]:
                resets.append(f"network {direction} counter of {device} went backwards")
            else:
                per_device[device] = round((value - before[device]) / interval, 3)
        if per_device:
            out[f"network_{direction}_bytes_per_second"] = per_device
    oom_now, oom_before = counters.get("oom_kill"), pc.get("oom_kill")
    if isinstance(oom_now, (int, float)) and isinstance(oom_before, (int, float)):
        if oom_now < oom_before:
            resets.append("oom_kill counter went backwards")
        else:
            out["oom_kills"] = oom_now - oom_before
    return out, resets


# --------------------------------------------------------------------------- 4. damping


def _streak(previous_check: Any) -> int:
    try:
        return int((previous_check or {}).get("streak", 0))
    except (TypeError, ValueError, AttributeError):
        return 0


def damp(checks: Mapping[str, Mapping[str, Any]], previous_checks: Mapping[str, Any], alert_after: int) -> Json:
    """Per check, the streak of consecutive bad runs; a check alerts once it reaches ``alert_after``.

    Returns the checks with ``streak``, ``pending`` and ``alert_state`` added, the counts of
    alerting states, the number pending and the worst alerting and measured ranks.
    """
    out: Json = {}
    counts = {"ok": 0, "warning": 0, "critical": 0, "unknown": 0, "skipped": 0}
    health = measured = pending_count = 0
    for name, check in checks.items():
        state = check["state"]
        bad = state in BAD_STATES
        streak = _streak(previous_checks.get(name)) + 1 if bad else 0
        pending = bad and streak < alert_after
        alert_state = "ok" if pending else state
        out[name] = {**check, "streak": streak, "alert_state": alert_state, "pending": pending}
        counts[alert_state] += 1
        health = max(health, RANK[alert_state])
        measured = max(measured, RANK[state])
        pending_count += int(pending)
    return {"checks": out, "counts": counts, "pending": pending_count, "health": health, "measured": measured}


# --------------------------------------------------------------------------- 5. the entry


def problems(checks: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """``name state: summary`` of every alerting check, worst first."""
    return [
        f"{name} {state}: {check['summary']}"
        for state in ("critical", "warning", "unknown")
        for name, check in checks.items()
        if check["alert_state"] == state
    ]


def summary_line(health: str, counts: Mapping[str, int], pending: int) -> str:
    parts = [f"{counts[state]} {state}" for state in SEVERITY_ORDER if counts.get(state)]
    if pending:
        parts.append(f"{pending} pending")
    return f"{health}: {', '.join(parts) if parts else 'no checks'}"


def host_entry(
    runs: Sequence[Mapping[str, Any]],
    previous: Optional[Mapping[str, Any]],
    *,
    mode: str,
    alert_after: Any,
    fail_on: str,
    reported_at: str,
) -> Json:
    """One host's entry of health.json from its module runs and its previous entry."""
    after = max(int(alert_after), 1)
    previous = previous or {}
    merged = merge_runs(runs)
    counters = merged["counters"]
    now_totals = totals(merged["metrics"])
    host_rates, resets = rates(previous, counters, now_totals)
    d = damp(merged["checks"], previous.get("checks") or {}, after)
    errors = merged["errors"]
    health_rank, measured_rank = d["health"], d["measured"]
    if errors:
        health_rank, measured_rank = max(health_rank, RANK["unknown"]), max(measured_rank, RANK["unknown"])
    health = NAMES_BY_RANK[health_rank]
    summary = summary_line(health, d["counts"], d["pending"])
    failed = bool(errors) or (fail_on != "never" and health_rank >= RANK[fail_on])
    details = errors + problems(d["checks"])
    msg = ("Diagnosis failed: " if failed else "") + "health " + summary
    if details:
        msg += " - " + "; ".join(details)
    collected_at = counters.get("collected_at")
    return {
        "health": health,
        "measured_health": NAMES_BY_RANK[measured_rank],
        "summary": summary,
        "msg": msg,
        "failed": failed,
        "stale": False,
        "errors": errors,
        "mode": mode,
        "alert_after": after,
        "counts": d["counts"],
        "checks": d["checks"],
        "metrics": merged["metrics"],
        "metrics_skipped": merged["metrics_skipped"],
        "counters": counters,
        "totals": now_totals,
        "rates": host_rates,
        "rate_resets": resets,
        "collected_at": collected_at,
        "collected_at_iso": iso(collected_at) if "collected_at" in counters else None,
        "reported_at": reported_at,
    }


def stale_entry(previous: Optional[Mapping[str, Any]], reported_at: str) -> Json:
    """A host of this run without a diagnosis: unknown, with its previous checks (streaks) and
    counters kept, so that damping and rates resume when it comes back."""
    entry: Json = {
        "checks": {},
        "counts": {},
        "metrics": {},
        "metrics_skipped": {},
        "counters": {},
        "totals": {},
        "collected_at": None,
        "collected_at_iso": None,
    }
    entry.update(previous or {})
    entry.update(
        {
            "health": "unknown",
            "measured_health": "unknown",
            "summary": "unknown: " + STALE_REASON,
            "msg": "health unknown: " + STALE_REASON,
            "failed": True,
            "stale": True,
            "errors": [STALE_REASON],
            "rates": {},
            "rate_resets": [STALE_REASON],
            "reported_at": reported_at,
        }
    )
    return entry


def fleet(
    hosts: Iterable[str], entries: Iterable[Any], previous_report: Optional[Mapping[str, Any]], reported_at: str
) -> Json:
    """Every host of the run (sorted) with its entry; a falsy entry means no diagnosis."""
    before = (previous_report or {}).get("hosts") or {}
    by_host = dict(zip(hosts, entries))
    return {host: (by_host[host] or stale_entry(before.get(host), reported_at)) for host in sorted(by_host)}


def previous_report(document: Any, report_format: str = REPORT_FORMAT) -> Json:
    """The previous health.json if the role wrote it (this format), else {} (first run)."""
    if isinstance(document, Mapping) and document.get("format", "") == report_format:
        return dict(document)
    return {}


# --------------------------------------------------------------------------- presentation order


def worst_first(fleet_hosts: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """Hosts by alerting health, critical first; the fleet's (sorted) order within a health."""
    return [
        host
        for state in ("critical", "warning", "unknown", "ok")
        for host, entry in fleet_hosts.items()
        if entry.get("health") == state
    ]


def columns(fleet_hosts: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """The checks of every diagnosed host, in the order they first appear, worst host first."""
    out: List[str] = []
    for host in worst_first(fleet_hosts):
        entry = fleet_hosts[host]
        if entry.get("stale"):
            continue
        out += [name for name in entry.get("checks") or {} if name not in out]
    return out


def layout(fleet_hosts: Mapping[str, Mapping[str, Any]]) -> Json:
    """What a hosts x checks table shows: ``hosts`` worst first and the check ``columns``."""
    return {"hosts": worst_first(fleet_hosts), "columns": columns(fleet_hosts)}
