"""The /proc and /sys parsers against the captured fixture files."""

from __future__ import annotations

import datetime
import types

import pytest
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
    parse_net_dev,
    parse_pid_stat,
    parse_psi,
    parse_stat,
    parse_uptime,
    real_filesystems,
)
from ansible_collections.healer.pooled_ssh.tests.unit.plugins.module_utils.diagnose_fakes import FIXTURES


def text(tree, relative):
    return (FIXTURES / tree / relative).read_text()


def test_meminfo_in_bytes_and_used_percent():
    meminfo = parse_key_values(text("host", "proc/meminfo"))
    assert meminfo["MemTotal"] == 16384000 * 1024
    assert meminfo["HugePages_Total"] == 0  # no unit: not scaled
    usage = memory_usage(meminfo)
    assert usage["used_percent"] == 50.0
    assert usage["available_estimated"] is False
    assert usage["swap_used_percent"] == 25.0
    assert usage["swap_used_bytes"] == 1048576 * 1024


def test_meminfo_without_memavailable_is_estimated():
    usage = memory_usage(parse_key_values(text("nopsi", "proc/meminfo")))
    # MemFree + Active(file) + Inactive(file) + SReclaimable = 8900000 kB of 16384000 kB
    assert usage["available_estimated"] is True
    assert usage["available_bytes"] == 8900000 * 1024
    assert usage["used_percent"] == 45.68


def test_available_is_clamped_to_total():
    usage = memory_usage({"MemTotal": 1000, "MemAvailable": 5000, "SwapTotal": 0, "SwapFree": 10})
    assert usage["available_bytes"] == 1000
    assert usage["used_percent"] == 0.0
    assert usage["swap_used_percent"] is None
    assert usage["swap_free_bytes"] == 0


def test_no_swap():
    usage = memory_usage(parse_key_values(text("noswap", "proc/meminfo")))
    assert usage["swap_total_bytes"] == 0
    assert usage["swap_used_percent"] is None


def test_stat_samples_and_ratios():
    first = parse_stat(text("host", "proc/stat"))
    second = parse_stat(text("host", "proc/stat.next"))
    assert first["btime"] == 1700000000
    assert first["procs_running"] == 2 and first["procs_blocked"] == 1
    assert set(first["cpus"]) == {"cpu", "cpu0", "cpu1"}
    assert first["cpus"]["cpu"]["guest"] == 300
    ratios = cpu_ratios(first["cpus"]["cpu"], second["cpus"]["cpu"])
    # deltas: user 600 system 200 idle 1000 iowait 100 softirq 50 steal 50 (guest 300 excluded)
    assert ratios == {"busy": 0.45, "iowait": 0.05, "steal": 0.025}


def test_counters_that_go_backwards_are_clamped():
    first = parse_stat(text("backwards", "proc/stat"))["cpus"]["cpu"]
    second = parse_stat(text("backwards", "proc/stat.next"))["cpus"]["cpu"]
    assert second["iowait"] < first["iowait"] and second["steal"] < first["steal"]
    ratios = cpu_ratios(first, second)
    # user +400, idle +1000, iowait and steal count 0, not negative
    assert ratios["busy"] == pytest.approx(400 / 1400)
    assert ratios["iowait"] == 0.0 and ratios["steal"] == 0.0


def test_no_elapsed_time_is_an_error():
    sample = parse_stat(text("host", "proc/stat"))["cpus"]["cpu"]
    with pytest.raises(ValueError, match="no CPU time elapsed"):
        cpu_ratios(sample, sample)


def test_short_cpu_lines_of_old_kernels():
    stat = parse_stat("cpu  1 2 3 4\nbtime 5\n")
    assert stat["cpus"]["cpu"]["steal"] == 0 and stat["cpus"]["cpu"]["idle"] == 4


def test_small_files():
    assert parse_loadavg(text("host", "proc/loadavg")) == (3.2, 6.0, 5.0)
    assert parse_uptime(text("host", "proc/uptime")) == 86400.5
    assert parse_file_nr(text("host", "proc/sys/fs/file-nr")) == (10000, 0, 100000)
    assert parse_cgroup_v2_path(text("host", "proc/self/cgroup")) == "/system.slice/ssh.service"
    assert parse_cgroup_v2_path(text("container", "proc/self/cgroup")) == "/"
    assert parse_cgroup_v2_path("12:memory:/docker/x\n") is None  # cgroup v1 only


def test_mountinfo_unescapes_and_flags_readonly():
    mounts = parse_mountinfo(text("host", "proc/self/mountinfo"))
    by_point = {m["mountpoint"]: m for m in mounts}
    assert by_point["/srv/my data"]["fstype"] == "btrfs"
    assert by_point["/media/archive"]["readonly"] is True
    assert by_point["/"] == {"mountpoint": "/", "fstype": "ext4", "device": "/dev/sda1", "readonly": False}


def test_real_filesystems_drop_pseudo_ones():
    host = real_filesystems(parse_mountinfo(text("host", "proc/self/mountinfo")))
    assert [m["mountpoint"] for m in host] == ["/run", "/", "/boot", "/srv/my data", "/media/archive"]
    container = real_filesystems(parse_mountinfo(text("container", "proc/self/mountinfo")))
    # the overlay root of a container is kept, /dev tmpfs and /sys are not
    assert [m["mountpoint"] for m in container] == ["/", "/etc/resolv.conf", "/etc/hosts", "/data"]
    assert container[0]["fstype"] == "overlay"
    excluded = real_filesystems(
        parse_mountinfo(text("host", "proc/self/mountinfo")), exclude_fstypes=["tmpfs"], exclude_mountpoints=["/boot"]
    )
    assert [m["mountpoint"] for m in excluded] == ["/", "/srv/my data", "/media/archive"]


def test_overmounted_mountpoint_keeps_the_visible_entry():
    mounts = parse_mountinfo(
        "1 0 8:1 / /data rw - ext4 /dev/sda1 rw\n2 1 8:2 / /data rw - xfs /dev/sdb1 rw\nbroken line\n"
    )
    assert [(m["mountpoint"], m["fstype"]) for m in real_filesystems(mounts)] == [("/data", "xfs")]


def test_filesystem_usage_like_df():
    stat = types.SimpleNamespace(
        f_bsize=4096, f_frsize=4096, f_blocks=1000000, f_bfree=200000, f_bavail=150000, f_files=65536, f_ffree=32768
    )
    usage = filesystem_usage(stat)
    assert usage["size_bytes"] == 4096000000
    assert usage["used_bytes"] == 800000 * 4096
    assert usage["used_percent"] == 84.21  # 800000 / (800000 + 150000): root's reserve excluded
    assert usage["inodes_used_percent"] == 50.0
    no_inodes = filesystem_usage(types.SimpleNamespace(**dict(vars(stat), f_files=0, f_ffree=0)))
    assert no_inodes["inodes_used_percent"] is None


def test_pid_stat_with_parentheses_in_comm():
    assert parse_pid_stat(text("host", "proc/101/stat")) == ("my (odd) proc", "R", 1)
    assert parse_pid_stat(text("host", "proc/100/stat")) == ("nginx", "S", 4)
    assert parse_pid_stat(text("host", "proc/200/stat"))[1] == "Z"


def test_net_dev():
    devices = parse_net_dev(text("host", "proc/net/dev"))
    assert set(devices) == {"lo", "eth0"}
    eth0 = devices["eth0"]
    assert (eth0["receive_bytes"], eth0["receive_packets"], eth0["receive_errs"], eth0["receive_drop"]) == (
        987654321,
        654321,
        3,
        7,
    )
    assert (eth0["transmit_bytes"], eth0["transmit_packets"], eth0["transmit_errs"], eth0["transmit_drop"]) == (
        123456789,
        234567,
        1,
        2,
    )


def test_listening_ports_ignore_other_states():
    assert sorted(p for _address, p in parse_listening_ports(text("host", "proc/net/tcp"))) == [22, 5432]
    assert [p for _address, p in parse_listening_ports(text("host", "proc/net/tcp6"))] == [80]


def test_psi_totals_in_seconds():
    psi = parse_psi(text("host", "proc/pressure/io"))
    assert psi["some"]["total"] == 3.0 and psi["full"]["total"] == 1.5
    assert psi["some"]["avg10"] == 0.1


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("utctime.der", datetime.datetime(2026, 12, 23, 18, 10, 13, tzinfo=datetime.timezone.utc)),
        ("generalizedtime.der", datetime.datetime(2059, 10, 1, 18, 10, 13, tzinfo=datetime.timezone.utc)),
    ],
)
def test_certificate_not_after(name, expected):
    assert certificate_not_after((FIXTURES / "certs" / name).read_bytes()) == expected


def test_certificate_garbage_raises():
    with pytest.raises((ValueError, IndexError)):
        certificate_not_after(b"\x30\x03\x02\x01\x01")
