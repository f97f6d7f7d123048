# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs healer_diagnose's checks, each in its own thread with its own deadline.

A check that hangs (statvfs on a dead NFS server, a stuck systemctl) is abandoned at its
deadline and reported ``unknown``; an exception in one check is ``unknown`` for that check
only. Nothing here changes the host.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_checks import (
    CHECK_FUNCTIONS,
    Context,
    read_boot_time,
)
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_config import Job, Plan, build_plan
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_metrics import Metrics, collect
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_procfs import parse_key_values
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_system import Skip, System
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_thresholds import (
    CRITICAL,
    NAGIOS_CODE,
    OK,
    SKIPPED,
    STATES,
    UNKNOWN,
    WARNING,
    rank,
    worst,
)


def _outcome(state: str, summary: str) -> Dict[str, Any]:
    return {"state": state, "summary": summary, "measured": {}, "perfdata": [], "metrics": []}


def execute(job: Job, system: System, previous: Dict[str, Any]) -> Dict[str, Any]:
    """Run one check and turn whatever happens into a state: it never raises."""
    ctx = Context(system, job.options, job.thresholds, job.timeout, previous)
    try:
        outcome = CHECK_FUNCTIONS[job.check](ctx)
    except Skip as reason:
        return _outcome(SKIPPED, f"skipped: {reason}")
    except PermissionError as error:
        return _outcome(SKIPPED, f"skipped: permission denied: {system.display(error.filename or error)}")
    except FileNotFoundError as error:
        return _outcome(SKIPPED, f"skipped: {system.display(error.filename or error)} is absent")
    except subprocess.TimeoutExpired as error:
        command = error.cmd[0] if isinstance(error.cmd, (list, tuple)) else error.cmd
        return _outcome(UNKNOWN, f"{command} timed out after {error.timeout:g} s")
    except Exception as error:
        return _outcome(UNKNOWN, f"internal error: {type(error).__name__}: {error}")
    if outcome.get("state") not in STATES:
        return _outcome(UNKNOWN, "internal error: check returned state {!r}".format(outcome.get("state")))
    return outcome


def run_jobs(jobs: List[Job], system: System, previous: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Run all jobs concurrently; each gets ``job.timeout`` seconds from the common start."""
    outcomes: Dict[str, Dict[str, Any]] = {}
    durations: Dict[str, float] = {}
    threads: List[Tuple[Job, threading.Thread]] = []

    def work(job: Job) -> None:
        started = time.monotonic()
        result = execute(job, system, previous)
        durations[job.name] = time.monotonic() - started
        outcomes[job.name] = result

    start = time.monotonic()
    for job in jobs:
        thread = threading.Thread(target=work, args=(job,), name="healer-check-" + job.name, daemon=True)
        thread.start()
        threads.append((job, thread))
    results: Dict[str, Dict[str, Any]] = {}
    for job, thread in threads:
        thread.join(max(0.0, start + job.timeout - time.monotonic()))
        outcome = outcomes.get(job.name)
        if thread.is_alive() or outcome is None:
            outcome = _outcome(UNKNOWN, f"timed out after {job.timeout:g} s")
            duration = job.timeout
        else:
            duration = durations.get(job.name, 0.0)
        results[job.name] = _finish(job, outcome, duration)
    return results


def _finish(job: Job, outcome: Dict[str, Any], duration: float) -> Dict[str, Any]:
    return {
        "check": job.check,
        "application": job.application,
        "state": outcome["state"],
        "summary": outcome["summary"],
        "measured": outcome.get("measured", {}),
        "thresholds": {key: (t.text if t is not None else None) for key, t in sorted(job.thresholds.items())},
        "perfdata": " ".join(outcome.get("perfdata") or []),
        "duration_seconds": round(duration, 4),
        "_metrics": outcome.get("metrics") or [],
    }


def collect_metrics(system: System, timeout: float) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Host metrics under a deadline; what was gathered before it is kept."""
    metrics = Metrics()
    skipped: Dict[str, str] = {}
    thread = threading.Thread(target=collect, args=(system, metrics, skipped), name="healer-metrics", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        skipped["timeout"] = f"metrics collection timed out after {timeout:g} s; partial"
    return metrics.as_dict(), dict(skipped)


def _counters(system: System) -> Dict[str, Any]:
    """Raw counters to hand back as ``previous`` on the next run."""
    counters: Dict[str, Any] = {"boot_time": read_boot_time(system), "collected_at": round(system.time(), 3)}
    try:
        counters["oom_kill"] = parse_key_values(system.read_text("proc/vmstat")).get("oom_kill")
    except OSError:
        counters["oom_kill"] = None
    return counters


def should_fail(health: str, fail_on: str) -> bool:
    """``fail_on: critical`` fails on critical; ``warning`` on warning or critical; ``never`` never."""
    if fail_on == "never":
        return False
    return rank(health) >= rank(CRITICAL if fail_on == "critical" else WARNING)


def diagnose(params: Dict[str, Any], system: Optional[System] = None, plan: Optional[Plan] = None) -> Dict[str, Any]:
    """Everything the module returns (``failed`` included); raises ``ParamError`` for bad parameters."""
    system = system or System("/")
    plan = plan or build_plan(params)
    checks = run_jobs(plan.jobs, system, plan.previous)
    health = worst(c["state"] for c in checks.values())
    metrics: Dict[str, Any] = {}
    metrics_skipped: Dict[str, str] = {}
    if plan.metrics:
        metrics, metrics_skipped = collect_metrics(system, plan.timeout)
    for name, result in checks.items():
        extra = {"application": result["application"]} if result["application"] else {}
        for metric, value, labels in result.pop("_metrics"):
            if plan.metrics:
                metrics.setdefault(metric, []).append({"labels": dict(labels, **extra), "value": value})
        if plan.metrics and result["state"] != SKIPPED:
            metrics.setdefault("healer_check_state", []).append(
                {"labels": dict(extra, name=name, check=result["check"]), "value": NAGIOS_CODE[result["state"]]}
            )
    counts = {state: 0 for state in STATES}
    for result in checks.values():
        counts[result["state"]] += 1
    failed = should_fail(health, plan.fail_on)
    return {
        "changed": False,
        "failed": failed,
        "health": health,
        "summary": _summary(health, counts),
        "msg": _message(health, checks, counts, failed),
        "counts": counts,
        "checks": checks,
        "metrics": metrics,
        "metrics_skipped": metrics_skipped,
        "counters": _counters(system),
    }


def _summary(health: str, counts: Dict[str, int]) -> str:
    parts = [f"{counts[s]} {s}" for s in (CRITICAL, WARNING, UNKNOWN, OK, SKIPPED) if counts[s]]
    return "{}: {}".format(health, ", ".join(parts) if parts else "no checks")


def _message(health: str, checks: Dict[str, Dict[str, Any]], counts: Dict[str, int], failed: bool) -> str:
    """One line for the task output: the summary, then the checks that are not ok, worst first."""
    bad = sorted(
        ((name, c) for name, c in checks.items() if c["state"] not in (OK, SKIPPED)),
        key=lambda item: -rank(item[1]["state"]),
    )
    text = f"health {_summary(health, counts)}"
    if bad:
        text += " - " + "; ".join("{} {}: {}".format(name, c["state"], c["summary"]) for name, c in bad)
    if failed:
        text = "Diagnosis failed: " + text
    return text
