# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsers for /proc and /sys text, and the arithmetic on what they return.

Every function takes the text of a file (or parsed values) and returns plain data, so each one
is tested against captured fixture files. Readers that need several files take a
:class:`System`, whose root can be a fixture tree.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Dict, List, Optional, Tuple

# /proc/stat "cpu" columns, in order; guest and guest_nice are already counted in user and nice.
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
CPU_TOTAL_MODES = CPU_MODES[:8]

# Filesystems that hold no user data (node_exporter's default fs-types-exclude).
PSEUDO_FSTYPES = frozenset(
    [
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "iso9660",
        "mqueue",
        "nsfs",
        "overlay",
        "proc",
        "procfs",
        "pstore",
        "ramfs",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "erofs",
        "sysfs",
        "tracefs",
        "fuse.lxcfs",
        "fuse.gvfsd-fuse",
        "nfsd",
    ]
)
# Mount points under which nothing is user data (node_exporter's mount-points-exclude).
_PSEUDO_MOUNT_RE = re.compile(
    r"^/(dev|proc|sys|run/credentials/.+|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
)

_TCP_LISTEN = "0A"


def parse_key_values(text: str) -> Dict[str, int]:
    """``Key: 123 kB`` (meminfo) or ``key 123`` (vmstat) lines; kB values are turned into bytes."""
    values: Dict[str, int] = {}
    for line in text.splitlines():
        parts = line.replace(":", " ", 1).split()
        if len(parts) < 2:
            continue
        try:
            number = int(parts[1])
        except ValueError:
            continue
        if len(parts) > 2 and parts[2] == "kB":
            number *= 1024
        values[parts[0]] = number
    return values


def memory_usage(meminfo: Dict[str, int]) -> Dict[str, Any]:
    """Used and available memory from parsed meminfo (bytes).

    MemAvailable is the kernel's own estimate (Linux 3.14+). Without it we estimate
    free + file pages + reclaimable slab. Available is clamped to 0..total: some kernels and
    containers (lxcfs) report more available than total.
    """
    total = meminfo.get("MemTotal", 0)
    if "MemAvailable" in meminfo:
        available = meminfo["MemAvailable"]
        estimated = False
    else:
        available = (
            meminfo.get("MemFree", 0)
            + meminfo.get("Active(file)", 0)
            + meminfo.get("Inactive(file)", 0)
            + meminfo.get("SReclaimable", 0)
        )
        estimated = True
    available = max(0, min(available, total))
    swap_total = meminfo.get("SwapTotal", 0)
    swap_free = max(0, min(meminfo.get("SwapFree", 0), swap_total))
    return {
        "total_bytes": total,
        "available_bytes": available,
        "available_estimated": estimated,
        "used_bytes": total - available,
        "used_percent": percent(total - available, total),
        "swap_total_bytes": swap_total,
        "swap_free_bytes": swap_free,
        "swap_used_bytes": swap_total - swap_free,
        "swap_used_percent": percent(swap_total - swap_free, swap_total),
    }


def percent(part: float, whole: float) -> Optional[float]:
    """``part`` as a percentage of ``whole``, rounded to 2 places; ``None`` when whole is 0."""
    if not whole:
        return None
    return round(100.0 * part / whole, 2)


def parse_cgroup_v2_path(text: str) -> Optional[str]:
    """The unified-hierarchy path from /proc/self/cgroup (the ``0::`` line)."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def parse_stat(text: str) -> Dict[str, Any]:
    """/proc/stat: per-CPU jiffies by mode (``cpu`` is the total), boot time, process counts."""
    cpus: Dict[str, Dict[str, int]] = {}
    result: Dict[str, Any] = {"cpus": cpus}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        key = parts[0]
        if key.startswith("cpu"):
            numbers = [int(x) for x in parts[1:]]
            numbers += [0] * (len(CPU_MODES) - len(numbers))
            cpus[key] = dict(zip(CPU_MODES, numbers))
        elif key in ("btime", "processes", "procs_running", "procs_blocked", "ctxt") and len(parts) > 1:
            result[key] = int(parts[1])
    return result


def cpu_ratios(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, float]:
    """Busy, iowait and steal ratios between two samples of one ``cpu`` line.

    Counters that go backwards (iowait does on some kernels, or after a CPU hot-unplug) give a
    delta of 0, not a negative time. Raises ``ValueError`` when no time elapsed.
    """
    delta = {mode: max(0, after.get(mode, 0) - before.get(mode, 0)) for mode in CPU_TOTAL_MODES}
    total = sum(delta.values())
    if total <= 0:
        raise ValueError("no CPU time elapsed between the two /proc/stat samples")
    busy = total - delta["idle"] - delta["iowait"]
    return {
        "busy": busy / total,
        "iowait": delta["iowait"] / total,
        "steal": delta["steal"] / total,
    }


def parse_loadavg(text: str) -> Tuple[float, float, float]:
    parts = text.split()
    return float(parts[0]), float(parts[1]), float(parts[2])


def parse_uptime(text: str) -> float:
    return float(text.split()[0])


def parse_file_nr(text: str) -> Tuple[int, int, int]:
    """/proc/sys/fs/file-nr: allocated, allocated-but-unused (0 since 2.6), maximum."""
    allocated, unused, maximum = (int(x) for x in text.split()[:3])
    return allocated, unused, maximum


def _unescape_mount(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> List[Dict[str, Any]]:
    """/proc/self/mountinfo lines as dicts (mountpoint, fstype, device, options, readonly)."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        if sep < 6 or len(parts) < sep + 3:
            continue
        options = parts[5].split(",")
        mounts.append(
            {
                "mountpoint": _unescape_mount(parts[4]),
                "fstype": parts[sep + 1],
                "device": _unescape_mount(parts[sep + 2]),
                "readonly": "ro" in options,
            }
        )
    return mounts


def real_filesystems(
    mounts: List[Dict[str, Any]], exclude_fstypes: Any = (), exclude_mountpoints: Any = ()
) -> List[Dict[str, Any]]:
    """Mounts that hold data: pseudo filesystems dropped, except an overlay on ``/`` (containers).

    A mount point mounted over several times keeps its last (visible) entry.
    """
    chosen: Dict[str, Dict[str, Any]] = {}
    for mount in mounts:
        point, fstype = mount["mountpoint"], mount["fstype"]
        if point in exclude_mountpoints or fstype in exclude_fstypes:
            continue
        if point != "/" and (fstype in PSEUDO_FSTYPES or _PSEUDO_MOUNT_RE.match(point)):
            continue
        if point == "/" and fstype in ("rootfs",):
            continue
        chosen.pop(point, None)
        chosen[point] = mount
    return list(chosen.values())


def filesystem_usage(stat: Any) -> Dict[str, Any]:
    """Sizes and used percentages from a ``statvfs`` result, computed the way ``df`` does.

    used = (blocks - bfree) * frsize and used% = used / (used + bavail): the blocks reserved for
    root count neither as used nor as available, so 100 % means "users cannot write".
    """
    frsize = stat.f_frsize or stat.f_bsize
    size = stat.f_blocks * frsize
    free = stat.f_bfree * frsize
    avail = stat.f_bavail * frsize
    used = size - free
    files = stat.f_files
    files_free = stat.f_ffree
    return {
        "size_bytes": size,
        "free_bytes": free,
        "avail_bytes": avail,
        "used_bytes": used,
        "used_percent": percent(used, used + avail),
        "files": files,
        "files_free": files_free,
        "inodes_used_percent": percent(files - files_free, files),
    }


def parse_pid_stat(text: str) -> Tuple[str, str, int]:
    """/proc/PID/stat: (comm, state letter, thread count). comm may hold spaces and parentheses."""
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 2 :].split()
    # after comm: state(3) ppid(4) ... num_threads is field 20, i.e. rest[17]
    threads = int(rest[17]) if len(rest) > 17 else 1
    return comm, rest[0], threads


def parse_net_dev(text: str) -> Dict[str, Dict[str, int]]:
    """/proc/net/dev: per device receive/transmit bytes, packets, errs, drop."""
    names = ("bytes", "packets", "errs", "drop", "fifo", "frame", "compressed", "multicast")
    devices: Dict[str, Dict[str, int]] = {}
    for line in text.splitlines()[2:]:
        if ":" not in line:
            continue
        device, data = line.split(":", 1)
        numbers = [int(x) for x in data.split()]
        if len(numbers) < 16:
            continue
        stats = {}
        for index, name in enumerate(names):
            stats["receive_" + name] = numbers[index]
            stats["transmit_" + name] = numbers[8 + index]
        devices[device.strip()] = stats
    return devices


def parse_listening_ports(text: str) -> List[Tuple[str, int]]:
    """(hex local address, port) of sockets in LISTEN state from /proc/net/tcp or tcp6."""
    listening = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 4 or parts[3] != _TCP_LISTEN:
            continue
        address, _sep, port = parts[1].rpartition(":")
        listening.append((address, int(port, 16)))
    return listening


def parse_psi(text: str) -> Dict[str, Dict[str, float]]:
    """/proc/pressure/*: ``some``/``full`` lines; ``total`` (µs) is returned in seconds."""
    result: Dict[str, Dict[str, float]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        fields = {}
        for item in parts[1:]:
            key, _sep, value = item.partition("=")
            fields[key] = float(value)
        if "total" in fields:
            fields["total"] = fields["total"] / 1e6
        result[parts[0]] = fields
    return result


def _der_read(data: bytes, pos: int) -> Tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``pos``."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    return tag, pos, pos + length


def certificate_not_after(der: bytes) -> datetime.datetime:
    """notAfter of an X.509 certificate (DER), read with a minimal ASN.1 walk.

    The standard library only decodes certificates it has validated; this reads the expiry of
    any certificate so an expired or self-signed one is still reported with its date.
    """
    start = _der_read(der, 0)[1]  # Certificate SEQUENCE: into its content
    pos = _der_read(der, start)[1]  # tbsCertificate SEQUENCE
    tag, _content, end = _der_read(der, pos)
    if tag == 0xA0:  # [0] version
        pos = end
    for _field in range(3):  # serialNumber, signature, issuer: skip each
        pos = _der_read(der, pos)[2]
    pos = _der_read(der, pos)[1]  # validity SEQUENCE
    pos = _der_read(der, pos)[2]  # notBefore
    tag, start, end = _der_read(der, pos)  # notAfter
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
        parsed = datetime.datetime.strptime(text, "%y%m%d%H%M%SZ")
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        parsed = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError(f"unexpected ASN.1 tag {tag:#x} for notAfter")
    return parsed.replace(tzinfo=datetime.timezone.utc)
