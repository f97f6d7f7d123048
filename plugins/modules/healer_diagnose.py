#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: healer_diagnose
short_description: Diagnose a server's health and collect its metrics
version_added: 0.1.0
description:
  - Runs host checks (filesystems, memory, OOM kills, CPU, load, processes, file descriptors,
    systemd units, clock synchronisation, uptime) and per-application checks (named processes,
    systemd units, listening or connectable ports, an HTTP endpoint, log errors) on the managed
    host, and collects metrics with Prometheus node_exporter names and base units.
  - Each check returns a C(state) (V(ok), V(warning), V(critical), V(unknown) or V(skipped)),
    a one-line C(summary), what it C(measured), its C(thresholds) and Nagios C(perfdata).
    The host's C(health) is the worst state, in the order ok < unknown < warning < critical;
    skipped checks do not count.
  - A check that cannot run on this host (no systemd, no permission, a file absent) is
    V(skipped) with the reason in its summary. An unexpected error or a check that exceeds
    its timeout is V(unknown) for that check only; the other checks still run.
  - Thresholds follow the Nagios plugins' range syntax. A range V(10) alerts outside 0..10
    (above 10), V(10:) below 10, V(~:10) above 10, V(10:20) outside 10..20 and V(@10:20)
    inside 10..20 (inclusive). Critical is tested before warning. V(null) disables a threshold.
    For the thresholds whose problem is a low value (C(uptime), C(http) C(cert_warning) and
    C(cert_critical)) a bare number N means V(N:), as C(check_http -C 14) reads it.
  - Reads C(/proc), C(/sys) and runs C(systemctl), C(journalctl) and C(timedatectl) read-only;
    it never changes the host and so never reports C(changed). Python 3.8+ standard library only.
author:
  - healer.pooled_ssh maintainers (@healer)
options:
  checks:
    description:
      - The host checks to run, in addition to the application checks of O(applications).
      - The default is the host checks V(filesystem), V(memory), V(oom_kills), V(cpu), V(load),
        V(processes), V(file_descriptors), V(services), V(time_sync) and V(uptime).
      - V(ports), V(http) and V(dns) need targets in O(options); V(log_errors) is opt-in.
      - An empty list runs only the application checks.
    type: list
    elements: str
    choices: [filesystem, memory, oom_kills, cpu, load, processes, file_descriptors, services,
              ports, http, dns, time_sync, uptime, log_errors]
    default: [filesystem, memory, oom_kills, cpu, load, processes, file_descriptors, services,
              time_sync, uptime]
  thresholds:
    description:
      - Thresholds by check name, each a number or a Nagios range string; keys not given keep
        their defaults. C(warning) and C(critical) apply to the check's main measurement.
      - "C(filesystem): space used % V(90)/V(95); C(inodes_warning)/C(inodes_critical) inodes
        used % V(90)/V(95). Read-only filesystems are reported, never alerted on."
      - "C(memory): used % V(90)/V(95) (of the cgroup v2 limit when one is set);
        C(swap_warning)/C(swap_critical) swap used % V(80)/V(90). A host without swap is ok."
      - "C(oom_kills): new OOM kills since O(previous) V(0)/none (any new kill warns)."
      - "C(cpu): busy % V(90)/V(95); C(iowait_warning)/C(iowait_critical) V(20)/none;
        C(steal_warning)/C(steal_critical) V(10)/none."
      - "C(load): 5-minute load average per usable CPU V(2)/V(4)."
      - "C(processes): zombie processes V(5)/V(10); C(pids_warning)/C(pids_critical) threads
        as % of C(kernel.pid_max) V(90)/V(95)."
      - "C(file_descriptors): open file handles as % of C(fs.file-max) V(70)/V(90)."
      - "C(services): failed systemd units V(0)/none (any failed unit warns)."
      - "C(ports): connect time in seconds V(1)/V(5)."
      - "C(http): response time in seconds V(2)/V(5); C(cert_warning)/C(cert_critical) days
        left on the certificate V(14)/V(7) (alert below)."
      - "C(dns): resolution time in seconds V(1)/V(5)."
      - "C(time_sync): absolute clock offset in seconds V(0.05)/none."
      - "C(uptime): seconds since boot V(600)/none (alert below)."
      - "C(log_errors): error lines V(10)/V(100)."
    type: dict
    default: {}
  options:
    description:
      - Options by check name. Every check accepts C(timeout) (seconds, overrides
        O(check_timeout)).
      - "C(filesystem): C(mountpoints) (list; only these, a missing one is critical),
        C(exclude_mountpoints), C(exclude_fstypes) (lists). By default every data filesystem
        (pseudo filesystems such as proc, sysfs, tmpfs under /dev, overlay and squashfs are
        left out, but an overlay on / is kept)."
      - "C(cpu): C(interval) between the two C(/proc/stat) samples, seconds, default V(0.5),
        at least V(0.1)."
      - "C(processes): C(names) (list) that must be running, matched against the process name or
        the basename of argv[0]; a missing one is critical."
      - "C(services): C(units) (list) that must be active; a unit not active is critical,
        one activating or reloading warns."
      - "C(ports): C(ports), a list of V(80) (a TCP socket listens on that port here) or
        C({host: db.example.com, port: 5432}) (a TCP connection succeeds)."
      - "C(http): C(url) (required), C(method) (V(GET)), C(headers) (dict), C(expect_status)
        (list of codes; by default 4xx warns and 5xx is critical), C(body_match) (regular
        expression searched in the body), C(validate_certs) (V(true)), C(max_body_bytes)
        (V(1048576))."
      - "C(dns): C(names) (list, required) resolved with the host's resolver."
      - "C(time_sync): C(grace_seconds) (V(1020)): an unsynchronised clock only warns once the
        host has been up this long."
      - "C(log_errors): journal mode C(since) (V(1 hour ago)), C(unit), C(priority) (V(err));
        or file mode C(path) with C(pattern) (default matches error, critical, fatal, panic,
        emerg and alert) and C(max_bytes) (V(1048576)) read from the end of the file."
      - "A list may be given instead of the dictionary for C(processes), C(services), C(ports)
        and C(dns), for example C(processes: [sshd])."
    type: dict
    default: {}
  applications:
    description:
      - Applications to check in the same task. Each key present runs that check for the
        application; the check is named C(<name>/<check>) in RV(checks), for example
        C(web/http). Host thresholds in O(thresholds) apply, overridden by the application's
        own C(thresholds).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Name of the application (letters, digits, V(_), V(.), V(-)); unique.
        type: str
        required: true
      processes:
        description: Process names that must be running (as O(options) C(processes.names)).
        type: list
        elements: str
      services:
        description: systemd units that must be active (as O(options) C(services.units)).
        type: list
        elements: str
      ports:
        description:
          - "Ports that must listen here (V(80)) or accept connections
            (C({host: 127.0.0.1, port: 8080}))."
        type: list
        elements: raw
      http:
        description: An HTTP endpoint, with the keys of O(options) C(http).
        type: dict
      log_errors:
        description: Log error counting, with the keys of O(options) C(log_errors).
        type: dict
      thresholds:
        description: Thresholds for this application's checks, by check name, as O(thresholds).
        type: dict
      timeout:
        description: Timeout in seconds of each of this application's checks.
        type: float
  check_timeout:
    description:
      - Seconds each check may take before it is abandoned and reported V(unknown). Network
        calls and commands inside a check get 80% of it, so a slow endpoint is reported by the
        check itself. Also bounds the metrics collection.
    type: float
    default: 10
  previous:
    description:
      - Raw counters returned as RV(counters) by the previous run on this host, to count new
        OOM kills. A change of C(boot_time) or a counter that went backwards is a reset.
    type: dict
    default: {}
  metrics:
    description: Collect host metrics into RV(metrics).
    type: bool
    default: true
  fail_on:
    description:
      - The health from which the task fails. The result still carries every check and metric.
      - V(never) only reports.
    type: str
    choices: [critical, warning, never]
    default: critical
notes:
  - Supports check mode; the module only reads, so check mode runs the checks normally.
  - Each check runs in its own thread. A check abandoned at its timeout may keep a thread
    blocked (for example in C(statvfs) on an unreachable NFS server) until the module exits.
  - "The services check, and log_errors in journal mode, need systemd as the init system
    (C(/run/systemd/system) exists); elsewhere, in most containers, they are skipped."
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
seealso:
  - name: Nagios plugins threshold and range format
    description: The range syntax used by O(thresholds).
    link: https://www.monitoring-plugins.org/doc/guidelines.html#THRESHOLDFORMAT
  - name: Prometheus node_exporter
    description: The metric names and units of RV(metrics).
    link: https://github.com/prometheus/node_exporter
"""

EXAMPLES = r"""
- name: Diagnose the host with the default checks
  healer.pooled_ssh.healer_diagnose:
  register: diagnosis

- name: Only report, never fail; tighter disk thresholds
  healer.pooled_ssh.healer_diagnose:
    fail_on: never
    thresholds:
      filesystem:
        warning: 80
        critical: 90
      load:
        warning: "1.5"
        critical: "~:3"
    options:
      filesystem:
        exclude_mountpoints: [/boot/efi]
      cpu:
        interval: 1

- name: Check a web application and its database connection in one task
  healer.pooled_ssh.healer_diagnose:
    checks: [filesystem, memory, load]
    applications:
      - name: web
        processes: [nginx]
        services: [nginx.service]
        ports: [80, 443]
        http:
          url: https://localhost/health
          expect_status: [200]
          body_match: '"status":\s*"ok"'
          validate_certs: false
        log_errors:
          unit: nginx.service
          since: 1 hour ago
        thresholds:
          http:
            warning: 0.5
            cert_warning: 30
      - name: app
        ports:
          - host: db.internal
            port: 5432
        log_errors:
          path: /var/log/app/app.log
          pattern: 'ERROR|Traceback'

- name: Count new OOM kills since the previous run
  healer.pooled_ssh.healer_diagnose:
    checks: [oom_kills]
    previous: "{{ previous_diagnosis.counters | default({}) }}"
  register: diagnosis
"""

RETURN = r"""
health:
  description: The worst state of all checks (skipped checks ignored).
  returned: always
  type: str
  sample: warning
summary:
  description: The health and how many checks are in each state.
  returned: always
  type: str
  sample: "warning: 1 warning, 9 ok, 1 skipped"
msg:
  description: The summary followed by every check that is not ok, worst first.
  returned: always
  type: str
counts:
  description: Number of checks in each state.
  returned: always
  type: dict
  sample: {ok: 9, warning: 1, critical: 0, unknown: 0, skipped: 1}
checks:
  description:
    - The checks by name; host checks are named after the check, application checks
      C(<application>/<check>).
  returned: always
  type: dict
  contains:
    check:
      description: The check type (V(memory), V(http)...).
      type: str
    application:
      description: The application name, or null for a host check.
      type: str
    state:
      description: V(ok), V(warning), V(critical), V(unknown) or V(skipped).
      type: str
    summary:
      description: One line; for skipped and unknown checks, the reason.
      type: str
    measured:
      description: What the check measured (percentages, seconds, counts, per-item details).
      type: dict
    thresholds:
      description: The thresholds applied, as Nagios range strings (null when disabled).
      type: dict
    perfdata:
      description: Nagios performance data, C('label'=value[UOM];warn;crit;min;max) items.
      type: str
    duration_seconds:
      description: How long the check ran.
      type: float
  sample:
    memory:
      check: memory
      application: null
      state: ok
      summary: "memory 41.9% used (3.2 GiB of 7.6 GiB, 4.4 GiB available); no swap"
      measured: {used_percent: 41.9, total_bytes: 8164421632, available_bytes: 4743229440}
      thresholds: {warning: "90", critical: "95", swap_warning: "80", swap_critical: "90"}
      perfdata: "'memory'=41.9%;90;95;0;100"
      duration_seconds: 0.0004
metrics:
  description:
    - Metric name to a list of samples, each C({labels, value}), one line each of a Prometheus
      textfile (C(name{labels} value)). node_exporter names and base units (bytes, seconds,
      ratios 0..1); counters are raw, so rates are computed between runs.
    - "Host: C(node_cpu_seconds_total{cpu,mode}), C(node_boot_time_seconds),
      C(node_procs_running), C(node_procs_blocked), C(node_load1), C(node_load5), C(node_load15),
      C(node_memory_{MemTotal,MemFree,MemAvailable,Buffers,Cached,SwapTotal,SwapFree}_bytes),
      C(node_vmstat_oom_kill),
      C(node_filesystem_{size_bytes,free_bytes,avail_bytes,files,files_free,readonly,device_error}{device,fstype,mountpoint}),
      C(node_network_{receive,transmit}_{bytes,packets,errs,drop}_total{device}),
      C(node_pressure_{cpu,io,memory}_{waiting,stalled}_seconds_total) (with PSI),
      C(node_filefd_allocated), C(node_filefd_maximum), C(node_processes_pids),
      C(node_processes_threads), C(node_processes_max_processes), C(node_processes_state{state}),
      C(node_timex_sync_status), C(node_timex_offset_seconds), C(node_timex_maxerror_seconds)."
    - "From the checks: C(cpu_busy_ratio), C(cpu_iowait_ratio), C(cpu_steal_ratio) (cpu);
      C(probe_http_status_code), C(probe_duration_seconds), C(probe_ssl_earliest_cert_expiry),
      C(probe_success) (http, ports); C(healer_check_state{name,check,application}) with the
      Nagios code of each check that ran (0 ok, 1 warning, 2 critical, 3 unknown)."
    - Empty when O(metrics=false).
  returned: always
  type: dict
  sample:
    node_load1: [{labels: {}, value: 0.31}]
    node_filesystem_avail_bytes:
      - {labels: {device: /dev/vda1, fstype: ext4, mountpoint: /}, value: 20956749824}
    cpu_busy_ratio: [{labels: {}, value: 0.042}]
metrics_skipped:
  description: Metric collectors that could not run here, with the reason.
  returned: always
  type: dict
  sample: {pressure: "no PSI: /proc/pressure is absent (kernel < 4.20 or built without CONFIG_PSI)"}
counters:
  description: Raw counters to pass as O(previous) to the next run.
  returned: always
  type: dict
  sample: {boot_time: 1700000000, oom_kill: 0, collected_at: 1700003600.5}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_config import (
    ALL_CHECKS,
    DEFAULT_CHECKS,
    FAIL_ON,
    ParamError,
    build_plan,
)
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_runner import diagnose

ARGUMENT_SPEC = {
    "checks": {"type": "list", "elements": "str", "choices": list(ALL_CHECKS), "default": list(DEFAULT_CHECKS)},
    "thresholds": {"type": "dict", "default": {}},
    "options": {"type": "dict", "default": {}},
    "applications": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {
            "name": {"type": "str", "required": True},
            "processes": {"type": "list", "elements": "str"},
            "services": {"type": "list", "elements": "str"},
            "ports": {"type": "list", "elements": "raw"},
            "http": {"type": "dict"},
            "log_errors": {"type": "dict"},
            "thresholds": {"type": "dict"},
            "timeout": {"type": "float"},
        },
    },
    "check_timeout": {"type": "float", "default": 10},
    "previous": {"type": "dict", "default": {}},
    "metrics": {"type": "bool", "default": True},
    "fail_on": {"type": "str", "choices": list(FAIL_ON), "default": "critical"},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        plan = build_plan(module.params)
    except ParamError as error:
        module.fail_json(msg=str(error))
    result = diagnose(module.params, plan=plan)
    if result.pop("failed"):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
