# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checks of healer_diagnose.

A check is a function ``check(ctx) -> dict`` returning ``state``, ``summary``, ``measured``,
``perfdata`` (a list of items) and optionally ``metrics`` (``(name, value, labels)`` tuples).
It reads the host only through ``ctx.system``. It raises :class:`Skip` when it cannot run
here; any other exception is turned into ``unknown`` by the runner.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import socket
import threading
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_procfs import (
    certificate_not_after,
    cpu_ratios,
    filesystem_usage,
    memory_usage,
    parse_cgroup_v2_path,
    parse_file_nr,
    parse_key_values,
    parse_listening_ports,
    parse_loadavg,
    parse_mountinfo,
    parse_pid_stat,
    parse_stat,
    parse_uptime,
    percent,
    real_filesystems,
)
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_system import Skip, System
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_thresholds import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    Threshold,
    evaluate,
    perfdata,
    worst,
)

# A boot time that moves by more than this is a reboot, not clock jitter (btime shifts by a
# second when the kernel recomputes it after a clock step).
BOOT_TIME_TOLERANCE = 2.0


class Context:
    """What one check run gets: the host, its validated options and parsed thresholds."""

    def __init__(
        self,
        system: System,
        options: Dict[str, Any],
        thresholds: Dict[str, Optional[Threshold]],
        timeout: float,
        previous: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.system = system
        self.options = options
        self.thresholds = thresholds
        self.timeout = timeout
        self.previous = previous or {}

    @property
    def net_timeout(self) -> float:
        """Deadline for one network call or command: a bit under the check's own timeout, so a
        slow endpoint is reported by the check (critical) before the runner gives up (unknown)."""
        return max(0.05, self.timeout * 0.8)

    def judge(self, value: Optional[float], key: str = "") -> str:
        """State of ``value`` against the ``<key>_warning``/``<key>_critical`` (or bare) thresholds."""
        prefix = key + "_" if key else ""
        return evaluate(value, self.thresholds.get(prefix + "warning"), self.thresholds.get(prefix + "critical"))

    def perf(self, label: str, value: Optional[float], uom: str = "", key: Optional[str] = "", **limits: Any) -> str:
        """Perfdata item carrying the thresholds of ``key`` (``None`` for none)."""
        if key is None:
            return perfdata(label, value, uom, None, None, limits.get("minimum"), limits.get("maximum"))
        prefix = key + "_" if key else ""
        return perfdata(
            label,
            value,
            uom,
            self.thresholds.get(prefix + "warning"),
            self.thresholds.get(prefix + "critical"),
            limits.get("minimum"),
            limits.get("maximum"),
        )


# A metric a check adds: (name, value, labels).
MetricItem = Tuple[str, float, Dict[str, str]]


def _result(
    state: str,
    summary: str,
    values: Dict[str, Any],
    perf: Optional[List[str]] = None,
    metrics: Optional[List[MetricItem]] = None,
) -> Dict[str, Any]:
    return {"state": state, "summary": summary, "measured": values, "perfdata": perf or [], "metrics": metrics or []}


def human_bytes(count: float) -> str:
    """Binary units for summaries (``3.2 GiB``)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover - loop always returns


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "n/a" if value is None else "{:.{}f}".format(value, digits)


def read_boot_time(system: System) -> Optional[int]:
    try:
        return parse_stat(system.read_text("proc/stat")).get("btime")
    except OSError:
        return None


# -- filesystem --------------------------------------------------------------------------------
def check_filesystem(ctx: Context) -> Dict[str, Any]:
    """Space and inodes of every data filesystem (or the listed mount points), as ``df`` counts."""
    opts = ctx.options
    mounts = parse_mountinfo(ctx.system.read_text("proc/self/mountinfo"))
    wanted = opts.get("mountpoints") or []
    missing: List[str] = []
    if wanted:
        visible = {m["mountpoint"]: m for m in mounts}
        selected = [visible[p] for p in wanted if p in visible]
        missing = [p for p in wanted if p not in visible]
    else:
        selected = real_filesystems(mounts, opts.get("exclude_fstypes") or (), opts.get("exclude_mountpoints") or ())
    entries: List[Dict[str, Any]] = []
    perf = []
    problems = []
    for point in missing:
        entries.append({"mountpoint": point, "state": CRITICAL, "error": "not mounted"})
        problems.append(f"{point} not mounted (critical)")
    for mount in selected:
        point = mount["mountpoint"]
        entry: Dict[str, Any] = {
            "mountpoint": point,
            "fstype": mount["fstype"],
            "device": mount["device"],
            "readonly": mount["readonly"],
        }
        try:
            usage = filesystem_usage(ctx.system.statvfs(point))
        except OSError as error:
            entry.update(state=UNKNOWN, error=f"statvfs failed: {error.strerror or error}")
            entries.append(entry)
            problems.append(f"{point} statvfs failed (unknown)")
            continue
        entry.update(usage)
        if not usage["size_bytes"]:
            continue  # a filesystem without blocks (autofs trigger, empty bind) holds nothing
        if mount["readonly"]:
            # A read-only filesystem is full by design (ISO, snap): report it, never alert
            # (node-mixin's NodeFilesystemAlmostOutOfSpace also requires readonly == 0).
            entry["state"] = OK
        else:
            space_state = ctx.judge(usage["used_percent"])
            inode_state = (
                OK if usage["inodes_used_percent"] is None else ctx.judge(usage["inodes_used_percent"], "inodes")
            )
            entry["state"] = worst([space_state, inode_state])
            if space_state != OK:
                problems.append("{} {}% used ({})".format(point, _fmt(usage["used_percent"]), space_state))
            if inode_state != OK:
                problems.append(
                    "{} inodes {}% used ({})".format(point, _fmt(usage["inodes_used_percent"]), inode_state)
                )
            perf.append(ctx.perf(point, usage["used_percent"], "%", "", minimum=0, maximum=100))
            if usage["inodes_used_percent"] is not None:
                perf.append(
                    ctx.perf(point + " inodes", usage["inodes_used_percent"], "%", "inodes", minimum=0, maximum=100)
                )
        entries.append(entry)
    if not entries:
        raise Skip("no data filesystem found in /proc/self/mountinfo")
    state = worst(e["state"] for e in entries)
    if problems:
        summary = "; ".join(problems)
    else:
        writable = [e for e in entries if not e.get("readonly") and e.get("used_percent") is not None]
        if writable:
            fullest = max(writable, key=lambda e: e["used_percent"])
            summary = "{} filesystems ok, fullest {} {}% used".format(
                len(entries), fullest["mountpoint"], _fmt(fullest["used_percent"])
            )
        else:
            summary = f"{len(entries)} filesystems ok (all read-only)"
    return _result(state, summary, {"filesystems": entries}, perf)


# -- memory ------------------------------------------------------------------------------------
def _cgroup_memory(system: System) -> Optional[Dict[str, Any]]:
    """The cgroup v2 memory limit and working set of this process's cgroup, when it is limited.

    Working set = memory.current - inactive_file (what the kubelet and docker stats report):
    page cache that can be dropped does not count toward an OOM kill.
    """
    candidates = []
    try:
        path = parse_cgroup_v2_path(system.read_text("proc/self/cgroup"))
    except OSError:
        path = None
    if path and path != "/":
        candidates.append("sys/fs/cgroup" + path)
    candidates.append("sys/fs/cgroup")
    for directory in candidates:
        try:
            limit_text = system.read_text(directory + "/memory.max").strip()
        except OSError:
            continue
        if limit_text == "max":
            return None
        current = int(system.read_text(directory + "/memory.current").split()[0])
        try:
            inactive = parse_key_values(system.read_text(directory + "/memory.stat")).get("inactive_file", 0)
        except OSError:
            inactive = 0
        return {
            "limit_bytes": int(limit_text),
            "current_bytes": current,
            "working_set_bytes": max(0, current - inactive),
        }
    return None


def check_memory(ctx: Context) -> Dict[str, Any]:
    """RAM used (MemAvailable-based, or the cgroup's limit when limited) and swap used; no swap is ok."""
    usage = memory_usage(parse_key_values(ctx.system.read_text("proc/meminfo")))
    if not usage["total_bytes"]:
        raise ValueError("/proc/meminfo has no MemTotal")
    values: Dict[str, Any] = dict(usage, scope="host")
    used_percent = usage["used_percent"]
    described = "memory {}% used ({} of {}, {} available)".format(
        _fmt(used_percent),
        human_bytes(usage["used_bytes"]),
        human_bytes(usage["total_bytes"]),
        human_bytes(usage["available_bytes"]),
    )
    cgroup = _cgroup_memory(ctx.system)
    if cgroup is not None:
        limit = min(cgroup["limit_bytes"], usage["total_bytes"])
        used_percent = percent(min(cgroup["working_set_bytes"], limit), limit)
        values.update(scope="cgroup", cgroup=cgroup, used_percent=used_percent, host_used_percent=usage["used_percent"])
        described = "memory {}% of the cgroup limit used ({} of {})".format(
            _fmt(used_percent), human_bytes(cgroup["working_set_bytes"]), human_bytes(limit)
        )
    mem_state = ctx.judge(used_percent)
    perf = [ctx.perf("memory", used_percent, "%", "", minimum=0, maximum=100)]
    if usage["swap_total_bytes"]:
        swap_state = ctx.judge(usage["swap_used_percent"], "swap")
        swap_text = "swap {}% used".format(_fmt(usage["swap_used_percent"]))
        perf.append(ctx.perf("swap", usage["swap_used_percent"], "%", "swap", minimum=0, maximum=100))
    else:
        swap_state = OK
        swap_text = "no swap"
    state = worst([mem_state, swap_state])
    return _result(state, f"{described}; {swap_text}", values, perf)


# -- oom_kills ---------------------------------------------------------------------------------
def check_oom_kills(ctx: Context) -> Dict[str, Any]:
    """New OOM kills since the previous run (``previous.oom_kill``), resetting on reboot."""
    vmstat = parse_key_values(ctx.system.read_text("proc/vmstat"))
    if "oom_kill" not in vmstat:
        raise Skip("the kernel does not count OOM kills (no oom_kill in /proc/vmstat, Linux < 4.13)")
    total = vmstat["oom_kill"]
    boot_time = read_boot_time(ctx.system)
    values: Dict[str, Any] = {"oom_kill_total": total, "boot_time": boot_time, "new": None, "reset": False}
    prev_total = ctx.previous.get("oom_kill")
    prev_boot = ctx.previous.get("boot_time")
    if prev_total is None:
        summary = f"{total} OOM kills since boot; no previous run to compare"
        return _result(OK, summary, values, [ctx.perf("oom_kills_total", total, "c", None, minimum=0)])
    rebooted = prev_boot is not None and boot_time is not None and abs(boot_time - prev_boot) > BOOT_TIME_TOLERANCE
    if rebooted or total < prev_total:
        new = total  # the counter restarted from 0: everything it holds is new
        values["reset"] = True
        why = "rebooted" if rebooted else "counter went backwards"
        summary = f"{new} OOM kills since the counter reset ({why})"
    else:
        new = total - prev_total
        summary = f"{new} new OOM kills since the previous run ({total} since boot)"
    values["new"] = new
    state = ctx.judge(new)
    return _result(state, summary, values, [ctx.perf("oom_kills", new, "", "", minimum=0)])


# -- cpu ---------------------------------------------------------------------------------------
def check_cpu(ctx: Context) -> Dict[str, Any]:
    """Busy, iowait and steal share of CPU time between two /proc/stat samples."""
    interval = ctx.options.get("interval", 0.5)
    system = ctx.system
    first = parse_stat(system.read_text("proc/stat"))["cpus"]["cpu"]
    started = system.monotonic()
    system.sleep(interval)
    second = parse_stat(system.read_text("proc/stat"))["cpus"]["cpu"]
    elapsed = system.monotonic() - started
    ratios = cpu_ratios(first, second)
    busy, iowait, steal = (round(ratios[k] * 100, 2) for k in ("busy", "iowait", "steal"))
    state = worst([ctx.judge(busy), ctx.judge(iowait, "iowait"), ctx.judge(steal, "steal")])
    values = {
        "busy_percent": busy,
        "iowait_percent": iowait,
        "steal_percent": steal,
        "interval_seconds": round(elapsed, 3),
    }
    perf = [
        ctx.perf("busy", busy, "%", "", minimum=0, maximum=100),
        ctx.perf("iowait", iowait, "%", "iowait", minimum=0, maximum=100),
        ctx.perf("steal", steal, "%", "steal", minimum=0, maximum=100),
    ]
    metrics: List[MetricItem] = [
        ("cpu_busy_ratio", ratios["busy"], {}),
        ("cpu_iowait_ratio", ratios["iowait"], {}),
        ("cpu_steal_ratio", ratios["steal"], {}),
    ]
    summary = f"cpu {_fmt(busy)}% busy, iowait {_fmt(iowait)}%, steal {_fmt(steal)}% over {_fmt(elapsed, 2)} s"
    return _result(state, summary, values, perf, metrics)


# -- load --------------------------------------------------------------------------------------
def check_load(ctx: Context) -> Dict[str, Any]:
    """5-minute load average per usable CPU (``check_load -r`` style)."""
    load1, load5, load15 = parse_loadavg(ctx.system.read_text("proc/loadavg"))
    cpus = ctx.system.cpu_count()
    per_cpu = round(load5 / cpus, 3)
    values = {
        "load1": load1,
        "load5": load5,
        "load15": load15,
        "cpus": cpus,
        "load1_per_cpu": round(load1 / cpus, 3),
        "load5_per_cpu": per_cpu,
        "load15_per_cpu": round(load15 / cpus, 3),
    }
    perf = [
        ctx.perf("load1", load1, "", None, minimum=0),
        ctx.perf("load5", load5, "", None, minimum=0),
        ctx.perf("load15", load15, "", None, minimum=0),
        ctx.perf("load5_per_cpu", per_cpu, "", "", minimum=0),
    ]
    summary = f"load {load1:.2f} {load5:.2f} {load15:.2f} on {cpus} CPUs, load5 per CPU {per_cpu:.2f}"
    return _result(ctx.judge(per_cpu), summary, values, perf)


# -- processes ---------------------------------------------------------------------------------
def _matches(name: str, comm: str, argv0: str) -> bool:
    """``name`` is the process name (comm, cut at 15 characters by the kernel) or argv[0]'s basename."""
    return name in (comm, argv0) or (len(name) > 15 and comm == name[:15])


def scan_processes(system: System, names: List[str]) -> Dict[str, Any]:
    """Count processes by state and threads, and processes matching each of ``names``."""
    states: Dict[str, int] = {}
    counts = {name: 0 for name in names}
    processes = threads = 0
    for entry in system.listdir("proc"):
        if not entry.isdigit():
            continue
        try:
            comm, state, nthreads = parse_pid_stat(system.read_text(f"proc/{entry}/stat"))
        except (OSError, ValueError, IndexError):
            continue  # the process exited while we looked, or hidepid hides it
        processes += 1
        threads += nthreads
        states[state] = states.get(state, 0) + 1
        if names:
            argv0 = ""
            with contextlib.suppress(OSError):
                argv0 = system.read_text(f"proc/{entry}/cmdline").split("\0", 1)[0].rsplit("/", 1)[-1]
            for name in names:
                if _matches(name, comm, argv0):
                    counts[name] += 1
    return {"processes": processes, "threads": threads, "states": states, "named": counts}


def check_processes(ctx: Context) -> Dict[str, Any]:
    """Zombies and pid usage (host scope) and whether the named processes run."""
    names = ctx.options.get("names") or []
    host = ctx.options.get("scope", "host") == "host"
    scan = scan_processes(ctx.system, names)
    values: Dict[str, Any] = {"named": scan["named"]}
    parts = []
    perf = []
    states = []
    if host:
        pid_max = int(ctx.system.read_text("proc/sys/kernel/pid_max").split()[0])
        zombies = scan["states"].get("Z", 0)
        pids_percent = percent(scan["threads"], pid_max)
        values.update(
            processes=scan["processes"],
            threads=scan["threads"],
            states=scan["states"],
            zombies=zombies,
            pid_max=pid_max,
            pids_percent=pids_percent,
        )
        zombie_state = ctx.judge(zombies)
        pids_state = ctx.judge(pids_percent, "pids")
        states += [zombie_state, pids_state]
        parts.append(
            "{} processes, {} threads ({}% of pid_max), {} zombies".format(
                scan["processes"], scan["threads"], _fmt(pids_percent, 2), zombies
            )
        )
        perf += [
            ctx.perf("zombies", zombies, "", "", minimum=0),
            ctx.perf("pids", pids_percent, "%", "pids", minimum=0, maximum=100),
        ]
    missing = [name for name, count in scan["named"].items() if count == 0]
    if names:
        states.append(CRITICAL if missing else OK)
        parts.append(", ".join("{} {}".format(n, c if c else "missing") for n, c in scan["named"].items()))
        perf += [ctx.perf("procs " + n, c, "", None, minimum=0) for n, c in scan["named"].items()]
    values["missing"] = missing
    return _result(worst(states), "; ".join(parts), values, perf)


# -- file_descriptors --------------------------------------------------------------------------
def check_file_descriptors(ctx: Context) -> Dict[str, Any]:
    """System-wide open file handles against fs.file-max."""
    allocated, unused, maximum = parse_file_nr(ctx.system.read_text("proc/sys/fs/file-nr"))
    used = allocated - unused
    used_percent = percent(used, maximum)
    values = {"allocated": allocated, "unused": unused, "maximum": maximum, "used_percent": used_percent}
    summary = f"{used} of {maximum} file handles in use ({_fmt(used_percent, 2)}%)"
    return _result(
        ctx.judge(used_percent),
        summary,
        values,
        [ctx.perf("file_handles", used_percent, "%", "", minimum=0, maximum=100)],
    )


# -- services ----------------------------------------------------------------------------------
_ACTIVE_STATES_WARN = ("activating", "reloading", "refreshing", "deactivating")


def _systemctl(ctx: Context) -> str:
    if not ctx.system.has_systemd():
        raise Skip("no systemd: /run/systemd/system is absent (container or another init system)")
    systemctl = ctx.system.which("systemctl")
    if not systemctl:
        raise Skip("systemctl is not installed")
    return systemctl


def parse_failed_units(text: str) -> List[str]:
    """Unit names from ``systemctl list-units --state=failed --no-legend --plain``."""
    units = []
    for line in text.splitlines():
        parts = line.replace("\u25cf", " ").split()
        if parts:
            units.append(parts[0])
    return units


def check_services(ctx: Context) -> Dict[str, Any]:
    """Failed systemd units (host scope) and whether each named unit is active."""
    systemctl = _systemctl(ctx)
    units = ctx.options.get("units") or []
    host = ctx.options.get("scope", "host") == "host"
    values: Dict[str, Any] = {}
    states = []
    parts = []
    perf = []
    if host:
        listed = ctx.system.run(
            [systemctl, "list-units", "--state=failed", "--no-legend", "--plain", "--no-pager"], ctx.net_timeout
        )
        if listed.rc != 0:
            raise RuntimeError("systemctl list-units failed: " + (listed.stderr.strip() or f"rc {listed.rc}"))
        failed = parse_failed_units(listed.stdout)
        values.update(failed_units=failed, failed=len(failed))
        states.append(ctx.judge(len(failed)))
        parts.append("{} failed units{}".format(len(failed), (": " + ", ".join(failed[:5])) if failed else ""))
        perf.append(ctx.perf("failed_units", len(failed), "", "", minimum=0))
    if units:
        answer = ctx.system.run([systemctl, "is-active", "--", *units], ctx.net_timeout)
        lines = answer.stdout.split()
        if len(lines) != len(units):
            raise RuntimeError(f"systemctl is-active returned {answer.stdout.strip() or answer.stderr.strip()!r}")
        active = dict(zip(units, lines))
        values["units"] = active
        for _unit, unit_state in active.items():
            if unit_state == "active":
                states.append(OK)
            elif unit_state in _ACTIVE_STATES_WARN:
                states.append(WARNING)
            else:
                states.append(CRITICAL)
        parts.append(", ".join(f"{u} {s}" for u, s in active.items()))
    return _result(worst(states), "; ".join(parts), values, perf)


# -- ports -------------------------------------------------------------------------------------
def listening_ports(system: System) -> Optional[Set[int]]:
    """TCP ports in LISTEN state in this network namespace (IPv4 and IPv6)."""
    ports: Set[int] = set()
    found = False
    for name in ("proc/net/tcp", "proc/net/tcp6"):
        try:
            text = system.read_text(name)
        except OSError:
            continue
        found = True
        ports.update(port for _address, port in parse_listening_ports(text))
    return ports if found else None


def check_ports(ctx: Context) -> Dict[str, Any]:
    """Ports listening locally (``{port}``) or accepting connections (``{host, port}``)."""
    targets = ctx.options["ports"]
    listening: Optional[Set[int]] = None
    results = []
    states = []
    perf = []
    metrics: List[MetricItem] = []
    for target in targets:
        port = target["port"]
        host = target.get("host")
        if host is None:
            if listening is None:
                listening = listening_ports(ctx.system)
                if listening is None:
                    raise Skip("cannot list listening sockets: /proc/net/tcp is unreadable")
            ok = port in listening
            state = OK if ok else CRITICAL
            results.append({"port": port, "listening": ok, "state": state})
            text = "{} {}".format(port, "listening" if ok else "not listening")
        else:
            label = f"{host}:{port}"
            try:
                seconds = ctx.system.connect(host, port, ctx.net_timeout)
            except (OSError, socket.timeout) as error:
                state = CRITICAL
                reason = (
                    "refused" if isinstance(error, ConnectionRefusedError) else (str(error) or type(error).__name__)
                )
                results.append({"host": host, "port": port, "connected": False, "error": reason, "state": state})
                text = f"{label} {reason}"
                metrics.append(("probe_success", 0, {"target": label}))
            else:
                state = ctx.judge(seconds)
                results.append(
                    {"host": host, "port": port, "connected": True, "seconds": round(seconds, 6), "state": state}
                )
                text = f"{label} connected in {seconds:.3f} s"
                perf.append(ctx.perf(label, seconds, "s", "", minimum=0))
                metrics.append(("probe_success", 1, {"target": label}))
                metrics.append(("probe_duration_seconds", seconds, {"target": label}))
        states.append(state)
        if state != OK:
            text += f" ({state})"
        results[-1]["summary"] = text
    state = worst(states)
    summary = ", ".join(r["summary"] for r in results)
    return _result(state, summary, {"ports": results}, perf, metrics)


# -- http --------------------------------------------------------------------------------------
def _reason(error: BaseException) -> str:
    import ssl  # here, not at the top: only the http check pays for ssl, urllib and http.client
    import urllib.error

    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        inner = error.reason
        if isinstance(inner, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {inner.verify_message or inner}"
        if isinstance(inner, BaseException):
            return _reason(inner)
        return str(inner)
    if isinstance(error, socket.timeout):
        return "timed out"
    return str(error) or type(error).__name__


def check_http(ctx: Context) -> Dict[str, Any]:
    """One HTTP(S) request: status, latency, body match and days left on the TLS certificate."""
    import http.client
    import urllib.error
    import urllib.parse

    opts = ctx.options
    url = opts["url"]
    labels = {"url": url}
    values: Dict[str, Any] = {"url": url}
    metrics: List[MetricItem] = []
    try:
        status, body, seconds = ctx.system.http_get(
            url,
            opts.get("method", "GET"),
            opts.get("headers") or {},
            ctx.net_timeout,
            opts.get("validate_certs", True),
            opts.get("max_body_bytes", 1048576),
        )
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as error:
        reason = _reason(error)
        values["error"] = reason
        metrics.append(("probe_success", 0, labels))
        return _result(CRITICAL, f"{url}: {reason}", values, [], metrics)
    values.update(status=status, seconds=round(seconds, 6))
    metrics += [("probe_http_status_code", status, labels), ("probe_duration_seconds", seconds, labels)]
    parts = [f"{url} {status} in {seconds:.3f} s"]
    expected = opts.get("expect_status")
    if expected:
        status_state = OK if status in expected else CRITICAL
        if status_state != OK:
            parts.append("expected status {}".format(", ".join(str(s) for s in expected)))
    else:
        status_state = CRITICAL if status >= 500 else WARNING if status >= 400 else OK
    states = [status_state, ctx.judge(seconds)]
    perf = [ctx.perf("time", seconds, "s", "", minimum=0)]
    pattern = opts.get("body_match")
    if pattern:
        found = re.search(pattern, body.decode("utf-8", errors="replace")) is not None
        values["body_matched"] = found
        if not found:
            states.append(CRITICAL)
            parts.append(f"body does not match {pattern!r}")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https":
        try:
            der = ctx.system.peer_certificate(parsed.hostname or "", parsed.port or 443, ctx.net_timeout)
            not_after = certificate_not_after(der)
        except (OSError, ValueError, IndexError, socket.timeout) as error:
            states.append(UNKNOWN)
            values["cert_error"] = _reason(error)
            parts.append("certificate unreadable: {}".format(values["cert_error"]))
        else:
            now = datetime.datetime.fromtimestamp(ctx.system.time(), datetime.timezone.utc)
            days = round((not_after - now).total_seconds() / 86400.0, 2)
            cert_state = ctx.judge(days, "cert")
            states.append(cert_state)
            values.update(cert_not_after=not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), cert_days_left=days)
            parts.append(f"certificate expires in {days:.1f} days")
            perf.append(ctx.perf("cert_days", days, "", "cert"))
            metrics.append(("probe_ssl_earliest_cert_expiry", not_after.timestamp(), labels))
    state = worst(states)
    metrics.append(("probe_success", 1 if state == OK else 0, labels))
    return _result(state, ", ".join(parts), values, perf, metrics)


# -- dns ---------------------------------------------------------------------------------------
def _resolve_with_timeout(system: System, name: str, timeout: float) -> Tuple[List[str], float]:
    """getaddrinfo has no timeout: resolve in a daemon thread and stop waiting at the deadline."""
    box: Dict[str, Any] = {}

    def work() -> None:
        try:
            box["addresses"] = system.resolve(name)
        except Exception as error:  # handed back to the caller below
            box["error"] = error

    started = system.monotonic()
    worker = threading.Thread(target=work, name="healer-dns-" + name, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise socket.timeout(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["addresses"], system.monotonic() - started


def check_dns(ctx: Context) -> Dict[str, Any]:
    """Each name resolves (through the host's resolver, as applications see it) and quickly."""
    results = []
    states = []
    perf = []
    for name in ctx.options["names"]:
        try:
            addresses, seconds = _resolve_with_timeout(ctx.system, name, ctx.net_timeout)
        except (OSError, socket.timeout, UnicodeError) as error:
            results.append({"name": name, "state": CRITICAL, "error": str(error) or type(error).__name__})
            states.append(CRITICAL)
            continue
        state = OK if addresses else CRITICAL
        state = worst([state, ctx.judge(seconds)])
        results.append({"name": name, "addresses": addresses, "seconds": round(seconds, 6), "state": state})
        states.append(state)
        perf.append(ctx.perf(name, seconds, "s", "", minimum=0))
    summary = ", ".join(
        "{} {}".format(r["name"], "failed: " + r["error"] if "error" in r else "in {:.3f} s".format(r["seconds"]))
        for r in results
    )
    return _result(worst(states), summary, {"names": results}, perf)


# -- time_sync ---------------------------------------------------------------------------------
def check_time_sync(ctx: Context) -> Dict[str, Any]:
    """Kernel clock synchronised (adjtimex, as node_exporter's timex) and its offset small."""
    grace = ctx.options.get("grace_seconds", 1020)
    uptime = parse_uptime(ctx.system.read_text("proc/uptime"))
    timex = ctx.system.adjtimex()
    values: Dict[str, Any] = {"uptime_seconds": uptime}
    if timex is not None:
        synced = bool(timex["synced"])
        offset: Optional[float] = timex["offset_seconds"]
        values.update(source="adjtimex", synced=synced, offset_seconds=offset, status=timex["status"])
    else:
        timedatectl = ctx.system.which("timedatectl") if ctx.system.has_systemd() else None
        if not timedatectl:
            raise Skip("cannot read the clock state: adjtimex unavailable and no timedatectl")
        answer = ctx.system.run([timedatectl, "show", "-p", "NTPSynchronized", "--value"], ctx.net_timeout)
        if answer.rc != 0:
            raise RuntimeError("timedatectl failed: " + answer.stderr.strip())
        synced = answer.stdout.strip() == "yes"
        offset = None
        values.update(source="timedatectl", synced=synced, offset_seconds=None)
    perf: List[str] = []
    if not synced:
        if uptime < grace:
            return _result(OK, f"clock not synchronised yet (uptime {uptime:.0f} s < {grace} s)", values, perf)
        return _result(WARNING, f"clock not synchronised (uptime {uptime:.0f} s)", values, perf)
    if offset is None:
        return _result(OK, "clock synchronised", values, perf)
    state = ctx.judge(abs(offset))
    perf.append(ctx.perf("offset", abs(offset), "s", "", minimum=0))
    return _result(state, f"clock synchronised, offset {offset:.6f} s", values, perf)


# -- uptime ------------------------------------------------------------------------------------
REBOOT_REQUIRED = ("run/reboot-required", "var/run/reboot-required")


def check_uptime(ctx: Context) -> Dict[str, Any]:
    """A recent reboot (flapping host) or a pending reboot (Debian's reboot-required flag)."""
    uptime = parse_uptime(ctx.system.read_text("proc/uptime"))
    values: Dict[str, Any] = {
        "uptime_seconds": uptime,
        "boot_time": read_boot_time(ctx.system),
        "reboot_required": False,
        "reboot_required_packages": [],
    }
    states = [ctx.judge(uptime)]
    parts = [f"up {_duration(uptime)}"]
    for flag in REBOOT_REQUIRED:
        if ctx.system.exists(flag):
            values["reboot_required"] = True
            with contextlib.suppress(OSError):
                values["reboot_required_packages"] = sorted(set(ctx.system.read_text(flag + ".pkgs").split()))
            states.append(WARNING)
            parts.append("reboot required")
            break
    if states[0] != OK:
        parts[0] += f" ({states[0]})"
    return _result(worst(states), ", ".join(parts), values, [ctx.perf("uptime", uptime, "s", "", minimum=0)])


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


# -- log_errors --------------------------------------------------------------------------------
def _journal_message(line: str) -> str:
    try:
        message = json.loads(line).get("MESSAGE", "")
    except ValueError:
        return line
    if isinstance(message, list):  # binary-safe form: a list of byte values
        message = bytes(message).decode("utf-8", errors="replace")
    return str(message)


def check_log_errors(ctx: Context) -> Dict[str, Any]:
    """Error lines in the journal since a time (``journalctl -p err``), or in a log file's tail."""
    opts = ctx.options
    values: Dict[str, Any] = {}
    if opts.get("path"):
        path = opts["path"]
        if not ctx.system.exists(path):
            raise Skip(f"log file {path} is absent")
        regex = re.compile(opts.get("pattern") or DEFAULT_LOG_PATTERN)
        max_bytes = opts.get("max_bytes", 1048576)
        lines = [line for line in ctx.system.read_tail(path, max_bytes).splitlines() if regex.search(line)]
        where = f"in the last {human_bytes(max_bytes)} of {path}"
        values.update(source="file", path=path)
    else:
        journalctl = ctx.system.which("journalctl")
        has_journal = ctx.system.exists("run/log/journal") or ctx.system.exists("var/log/journal")
        if not journalctl or not (ctx.system.has_systemd() or has_journal):
            raise Skip("no systemd journal here (set path: to count errors in a log file)")
        since = opts.get("since", "1 hour ago")
        priority = opts.get("priority", "err")
        argv = [journalctl, "--no-pager", "--quiet", "--output=json", "--priority=" + priority, "--since=" + since]
        if opts.get("unit"):
            argv.append("--unit=" + opts["unit"])
        answer = ctx.system.run(argv, ctx.net_timeout)
        if answer.rc != 0:
            raise RuntimeError("journalctl failed: " + (answer.stderr.strip() or f"rc {answer.rc}"))
        lines = [_journal_message(line) for line in answer.stdout.splitlines() if line.strip()]
        where = "since {}{}".format(since, " in " + opts["unit"] if opts.get("unit") else "")
        values.update(source="journal", since=since, priority=priority, unit=opts.get("unit"))
    count = len(lines)
    values.update(count=count, last=[line[:200] for line in lines[-3:]])
    summary = f"{count} error lines {where}"
    return _result(ctx.judge(count), summary, values, [ctx.perf("errors", count, "", "", minimum=0)])


DEFAULT_LOG_PATTERN = r"(?i)\b(error|critical|fatal|panic|emerg|alert)\b"

CheckFunc = Callable[[Context], Dict[str, Any]]

CHECK_FUNCTIONS: Dict[str, CheckFunc] = {
    "filesystem": check_filesystem,
    "memory": check_memory,
    "oom_kills": check_oom_kills,
    "cpu": check_cpu,
    "load": check_load,
    "processes": check_processes,
    "file_descriptors": check_file_descriptors,
    "services": check_services,
    "ports": check_ports,
    "http": check_http,
    "dns": check_dns,
    "time_sync": check_time_sync,
    "uptime": check_uptime,
    "log_errors": check_log_errors,
}
