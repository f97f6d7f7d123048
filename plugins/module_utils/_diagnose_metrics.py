# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host metrics with node_exporter's names and base units (bytes, seconds, ratios 0..1).

The result maps a metric name to a list of samples ``{"labels": {...}, "value": number}`` —
one line each of a Prometheus textfile. Counters are returned raw (as node_exporter does) so
that the caller computes rates between runs and resets them when ``node_boot_time_seconds``
changes; the spot ratios that need two samples come from the ``cpu`` check.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_checks import scan_processes
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_procfs import (
    CPU_TOTAL_MODES,
    filesystem_usage,
    parse_file_nr,
    parse_key_values,
    parse_loadavg,
    parse_mountinfo,
    parse_net_dev,
    parse_psi,
    parse_stat,
    real_filesystems,
)
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_system import Skip, System


class Metrics:
    """Samples by metric name; thread-safe so a timed-out collection can still be read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: Dict[str, List[Dict[str, Any]]] = {}

    def add(self, name: str, value: float, labels: Optional[Dict[str, str]] = None) -> None:
        sample = {"labels": {k: str(v) for k, v in (labels or {}).items()}, "value": value}
        with self._lock:
            self._samples.setdefault(name, []).append(sample)

    def as_dict(self) -> Dict[str, List[Dict[str, Any]]]:
        with self._lock:
            return {
                name: [dict(s, labels=dict(s["labels"])) for s in samples] for name, samples in self._samples.items()
            }


def collect_cpu(system: System, metrics: Metrics) -> None:
    stat = parse_stat(system.read_text("proc/stat"))
    ticks = float(system.clock_ticks())
    for name, modes in sorted(stat["cpus"].items()):
        if name == "cpu":
            continue
        cpu = name[3:]
        for mode in CPU_TOTAL_MODES:
            metrics.add("node_cpu_seconds_total", modes[mode] / ticks, {"cpu": cpu, "mode": mode})
    if "btime" in stat:
        metrics.add("node_boot_time_seconds", stat["btime"])
    for key, metric in (("procs_running", "node_procs_running"), ("procs_blocked", "node_procs_blocked")):
        if key in stat:
            metrics.add(metric, stat[key])


def collect_load(system: System, metrics: Metrics) -> None:
    for name, value in zip(
        ("node_load1", "node_load5", "node_load15"), parse_loadavg(system.read_text("proc/loadavg"))
    ):
        metrics.add(name, value)


MEMINFO_KEYS = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapTotal", "SwapFree")


def collect_memory(system: System, metrics: Metrics) -> None:
    meminfo = parse_key_values(system.read_text("proc/meminfo"))
    for key in MEMINFO_KEYS:
        if key in meminfo:
            metrics.add(f"node_memory_{key}_bytes", meminfo[key])


def collect_vmstat(system: System, metrics: Metrics) -> None:
    vmstat = parse_key_values(system.read_text("proc/vmstat"))
    if "oom_kill" not in vmstat:
        raise Skip("no oom_kill in /proc/vmstat (Linux < 4.13)")
    metrics.add("node_vmstat_oom_kill", vmstat["oom_kill"])


def collect_filesystem(system: System, metrics: Metrics) -> None:
    for mount in real_filesystems(parse_mountinfo(system.read_text("proc/self/mountinfo"))):
        labels = {"device": mount["device"], "fstype": mount["fstype"], "mountpoint": mount["mountpoint"]}
        try:
            usage = filesystem_usage(system.statvfs(mount["mountpoint"]))
        except OSError:
            metrics.add("node_filesystem_device_error", 1, labels)
            continue
        metrics.add("node_filesystem_device_error", 0, labels)
        metrics.add("node_filesystem_size_bytes", usage["size_bytes"], labels)
        metrics.add("node_filesystem_free_bytes", usage["free_bytes"], labels)
        metrics.add("node_filesystem_avail_bytes", usage["avail_bytes"], labels)
        metrics.add("node_filesystem_files", usage["files"], labels)
        metrics.add("node_filesystem_files_free", usage["files_free"], labels)
        metrics.add("node_filesystem_readonly", 1 if mount["readonly"] else 0, labels)


def collect_network(system: System, metrics: Metrics) -> None:
    for device, stats in sorted(parse_net_dev(system.read_text("proc/net/dev")).items()):
        for direction in ("receive", "transmit"):
            for field in ("bytes", "packets", "errs", "drop"):
                key = f"{direction}_{field}"
                metrics.add(f"node_network_{key}_total", stats[key], {"device": device})


# (resource, line) -> node_exporter name; cpu "full" is reported by recent kernels only.
PSI_METRICS = {
    ("cpu", "some"): "node_pressure_cpu_waiting_seconds_total",
    ("cpu", "full"): "node_pressure_cpu_stalled_seconds_total",
    ("io", "some"): "node_pressure_io_waiting_seconds_total",
    ("io", "full"): "node_pressure_io_stalled_seconds_total",
    ("memory", "some"): "node_pressure_memory_waiting_seconds_total",
    ("memory", "full"): "node_pressure_memory_stalled_seconds_total",
}


def collect_pressure(system: System, metrics: Metrics) -> None:
    if not system.exists("proc/pressure"):
        raise Skip("no PSI: /proc/pressure is absent (kernel < 4.20 or built without CONFIG_PSI)")
    found = False
    for resource in ("cpu", "io", "memory"):
        try:
            psi = parse_psi(system.read_text("proc/pressure/" + resource))
        except OSError as error:
            # psi=0 on the kernel command line: the files exist but reading them fails (EOPNOTSUPP)
            raise Skip(f"no PSI: reading /proc/pressure/{resource} failed: {error.strerror or error}") from None
        for line, fields in psi.items():
            name = PSI_METRICS.get((resource, line))
            if name and "total" in fields:
                metrics.add(name, fields["total"])
                found = True
    if not found:
        raise Skip("no PSI totals in /proc/pressure")


def collect_filefd(system: System, metrics: Metrics) -> None:
    allocated, _unused, maximum = parse_file_nr(system.read_text("proc/sys/fs/file-nr"))
    metrics.add("node_filefd_allocated", allocated)
    metrics.add("node_filefd_maximum", maximum)


def collect_processes(system: System, metrics: Metrics) -> None:
    scan = scan_processes(system, [])
    metrics.add("node_processes_pids", scan["processes"])
    metrics.add("node_processes_threads", scan["threads"])
    metrics.add("node_processes_max_processes", int(system.read_text("proc/sys/kernel/pid_max").split()[0]))
    for state, count in sorted(scan["states"].items()):
        metrics.add("node_processes_state", count, {"state": state})


def collect_timex(system: System, metrics: Metrics) -> None:
    timex = system.adjtimex()
    if timex is None:
        raise Skip("adjtimex is unavailable")
    metrics.add("node_timex_sync_status", 1 if timex["synced"] else 0)
    metrics.add("node_timex_offset_seconds", timex["offset_seconds"])
    metrics.add("node_timex_maxerror_seconds", timex["maxerror_seconds"])


COLLECTORS: Tuple[Tuple[str, Callable[[System, Metrics], None]], ...] = (
    ("cpu", collect_cpu),
    ("load", collect_load),
    ("memory", collect_memory),
    ("vmstat", collect_vmstat),
    ("filesystem", collect_filesystem),
    ("network", collect_network),
    ("pressure", collect_pressure),
    ("filefd", collect_filefd),
    ("processes", collect_processes),
    ("timex", collect_timex),
)


def collect(system: System, metrics: Metrics, skipped: Dict[str, str]) -> None:
    """Run every collector; one that cannot run here is recorded in ``skipped`` with its reason."""
    for name, collector in COLLECTORS:
        try:
            collector(system, metrics)
        except Skip as reason:
            skipped[name] = str(reason)
        except PermissionError as error:
            skipped[name] = f"permission denied: {error.filename or error}"
        except FileNotFoundError as error:
            skipped[name] = f"{system.display(error.filename)} is absent"
        except Exception as error:
            skipped[name] = f"error: {type(error).__name__}: {error}"
