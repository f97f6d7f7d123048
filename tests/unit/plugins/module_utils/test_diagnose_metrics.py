"""Every metric collector against the fixture trees: names, labels, base units, raw counters."""

from __future__ import annotations

from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_metrics import Metrics, collect
from ansible_collections.healer.pooled_ssh.tests.unit.plugins.module_utils.diagnose_fakes import SYNCED, FixtureSystem


def gather(system):
    metrics = Metrics()
    skipped = {}
    collect(system, metrics, skipped)
    return metrics.as_dict(), skipped


def value(metrics, name, **labels):
    matches = [s["value"] for s in metrics[name] if all(s["labels"].get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, metrics.get(name))
    return matches[0]


def test_host_metrics():
    metrics, skipped = gather(FixtureSystem("host", adjtimex=SYNCED))
    assert skipped == {}
    # cpu: jiffies / USER_HZ, per cpu and mode, without guest (counted in user)
    assert value(metrics, "node_cpu_seconds_total", cpu="0", mode="user") == 50.0
    assert value(metrics, "node_cpu_seconds_total", cpu="1", mode="steal") == 0.5
    assert len(metrics["node_cpu_seconds_total"]) == 2 * 8
    assert value(metrics, "node_boot_time_seconds") == 1700000000
    assert value(metrics, "node_procs_running") == 2 and value(metrics, "node_procs_blocked") == 1
    assert (value(metrics, "node_load1"), value(metrics, "node_load5"), value(metrics, "node_load15")) == (
        3.2,
        6.0,
        5.0,
    )
    assert value(metrics, "node_memory_MemTotal_bytes") == 16777216000
    assert value(metrics, "node_memory_MemAvailable_bytes") == 8388608000
    assert value(metrics, "node_memory_SwapTotal_bytes") == 4294967296
    assert value(metrics, "node_memory_SwapFree_bytes") == 3221225472
    assert value(metrics, "node_vmstat_oom_kill") == 3
    root = {"mountpoint": "/", "fstype": "ext4", "device": "/dev/sda1"}
    assert value(metrics, "node_filesystem_size_bytes", **root) == 4096000000
    assert value(metrics, "node_filesystem_free_bytes", **root) == 819200000
    assert value(metrics, "node_filesystem_avail_bytes", **root) == 614400000
    assert value(metrics, "node_filesystem_files", **root) == 65536
    assert value(metrics, "node_filesystem_files_free", **root) == 32768
    assert value(metrics, "node_filesystem_readonly", **root) == 0
    assert value(metrics, "node_filesystem_readonly", mountpoint="/media/archive") == 1
    assert {s["labels"]["mountpoint"] for s in metrics["node_filesystem_size_bytes"]} == {
        "/run",
        "/",
        "/boot",
        "/srv/my data",
        "/media/archive",
    }
    assert value(metrics, "node_network_receive_bytes_total", device="eth0") == 987654321
    assert value(metrics, "node_network_receive_packets_total", device="eth0") == 654321
    assert value(metrics, "node_network_receive_errs_total", device="eth0") == 3
    assert value(metrics, "node_network_receive_drop_total", device="eth0") == 7
    assert value(metrics, "node_network_transmit_bytes_total", device="eth0") == 123456789
    assert value(metrics, "node_network_transmit_packets_total", device="eth0") == 234567
    assert value(metrics, "node_network_transmit_errs_total", device="eth0") == 1
    assert value(metrics, "node_network_transmit_drop_total", device="lo") == 0
    # PSI totals are microseconds in /proc/pressure, seconds here
    assert value(metrics, "node_pressure_cpu_waiting_seconds_total") == 12.5
    assert value(metrics, "node_pressure_cpu_stalled_seconds_total") == 0.0
    assert value(metrics, "node_pressure_io_waiting_seconds_total") == 3.0
    assert value(metrics, "node_pressure_io_stalled_seconds_total") == 1.5
    assert value(metrics, "node_pressure_memory_waiting_seconds_total") == 0.25
    assert value(metrics, "node_pressure_memory_stalled_seconds_total") == 0.125
    assert value(metrics, "node_filefd_allocated") == 10000 and value(metrics, "node_filefd_maximum") == 100000
    assert value(metrics, "node_processes_pids") == 7 and value(metrics, "node_processes_threads") == 10
    assert value(metrics, "node_processes_max_processes") == 1000
    assert value(metrics, "node_processes_state", state="Z") == 1
    assert value(metrics, "node_processes_state", state="S") == 5
    assert value(metrics, "node_timex_sync_status") == 1
    assert value(metrics, "node_timex_offset_seconds") == 0.0125
    assert value(metrics, "node_timex_maxerror_seconds") == 0.2


def test_every_sample_is_a_label_dict_and_a_number():
    metrics, _skipped = gather(FixtureSystem("host", adjtimex=SYNCED))
    for name, samples in metrics.items():
        assert name.replace("_", "").isalnum()
        for sample in samples:
            assert set(sample) == {"labels", "value"}
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in sample["labels"].items())
            assert isinstance(sample["value"], (int, float)) and not isinstance(sample["value"], bool)


def test_host_without_psi_and_old_kernel():
    metrics, skipped = gather(FixtureSystem("nopsi"))
    assert skipped["pressure"].startswith("no PSI: /proc/pressure is absent")
    assert skipped["vmstat"].startswith("no oom_kill in /proc/vmstat")
    assert skipped["timex"] == "adjtimex is unavailable"
    assert not any(name.startswith("node_pressure_") for name in metrics)
    assert "node_memory_MemAvailable_bytes" not in metrics  # not invented when the kernel has none
    assert value(metrics, "node_memory_MemTotal_bytes") == 16777216000


def test_psi_disabled_on_the_command_line(tmp_path):
    (tmp_path / "proc" / "pressure").mkdir(parents=True)
    system = FixtureSystem("x", root=tmp_path)
    original = system.read_text

    def read_text(relative):
        if relative.startswith("proc/pressure/"):
            raise OSError(95, "Operation not supported")
        return original(relative)

    system.read_text = read_text
    _metrics, skipped = gather(system)
    assert skipped["pressure"] == "no PSI: reading /proc/pressure/cpu failed: Operation not supported"


def test_host_without_swap():
    metrics, skipped = gather(FixtureSystem("noswap"))
    assert value(metrics, "node_memory_SwapTotal_bytes") == 0 and value(metrics, "node_memory_SwapFree_bytes") == 0
    # a tree with only meminfo: every other collector says why it did not run
    assert skipped["cpu"] == "/proc/stat is absent"
    assert skipped["network"] == "/proc/net/dev is absent"


def test_container_metrics():
    metrics, skipped = gather(FixtureSystem("container"))
    assert [s["labels"]["fstype"] for s in metrics["node_filesystem_size_bytes"]] == ["overlay", "ext4", "ext4", "ext4"]
    assert "timex" in skipped


def test_counters_going_backwards_are_returned_raw():
    """The module reports counters as read; the caller detects the reset (lower value or new boot time)."""
    metrics, _skipped = gather(FixtureSystem("backwards"))
    assert value(metrics, "node_network_receive_bytes_total", device="eth0") == 1000
    assert value(metrics, "node_vmstat_oom_kill") == 1


def test_statvfs_failure_is_a_device_error():
    system = FixtureSystem("host")

    def statvfs(point):
        raise PermissionError(13, "Permission denied")

    system.statvfs = statvfs
    metrics, skipped = gather(system)
    assert "filesystem" not in skipped
    assert {s["value"] for s in metrics["node_filesystem_device_error"]} == {1}
    assert "node_filesystem_size_bytes" not in metrics


def test_unexpected_error_in_a_collector_is_reported():
    system = FixtureSystem("host")
    original = system.read_text
    system.read_text = lambda rel: "garbage\n" if rel == "proc/loadavg" else original(rel)
    metrics, skipped = gather(system)
    assert skipped["load"] == "error: ValueError: could not convert string to float: 'garbage'"
    assert "node_memory_MemTotal_bytes" in metrics
