# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compare pooled_ssh with the other ways Ansible reaches hosts, on real sshd daemons.

Starts N real sshd hosts on loopback (the test harness's Fleet), puts a latency proxy in front
of each (FaultProxy.set_latency), and runs the same playbooks through every connection:

* ``local``: the floor (no SSH at all);
* ``ssh`` with ``ControlMaster=no``: one OpenSSH handshake per task;
* ``ssh`` with its default ControlPersist (``-C -o ControlMaster=auto -o ControlPersist=60s``),
  cold (masters stopped before the run) and warm (the masters of the previous run kept);
* ``paramiko_ssh`` from the older ansible-core line (2.19 still has it): one handshake per task;
* Mitogen's ``mitogen_linear`` strategy over ssh, when ``mitogen`` is installed in the venv;
* ``pooled_ssh``, cold (pool daemon stopped before the run) and warm (its transports kept).

Runs alternate round by round (every variant once per round, in a fixed order, a warm run
right after its cold partner so that ControlPersist's 60 s and the pool's idle timeout keep
both warm the same way). Prints medians, ratios against ssh+ControlPersist and the logins
each made, counted in the sshd logs (``Accepted <method> for``) between runs.

    .venv/bin/python benchmarks/bench.py                 # the full default run (~20 min on 2 cores)
    .venv/bin/python benchmarks/bench.py --rtt 0 20 50 100 --scenario diag7
    .venv/bin/python benchmarks/bench.py --quick         # smoke run: 2 hosts, 1 run, 0 ms

Every process it starts (sshd, proxies, pool daemons, ssh masters, ansible-playbook) is stopped
at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import micro  # noqa: E402
from cpuacct import CpuGroups  # noqa: E402
from harness.ansible import AnsibleRunner, collections_root, stop_pool  # noqa: E402
from harness.proxy import FaultProxy  # noqa: E402
from harness.sshd import Fleet, short_tempdir  # noqa: E402

MAIN_BIN = REPO / ".venv" / "bin"
COMPAT_BIN = REPO / ".venv-compat" / "bin"
DOC = REPO / "docs" / "benchmarks.md"
#: docs/benchmarks.md holds one block per --doc-block name between these markers.
DOC_MARKERS = "<!-- bench:{}:begin -->", "<!-- bench:{}:end -->"
SCENARIOS = ("diag7", "role20", "copy1m", "copy100m", "micro")
DIAG_CHECKS = ("filesystem", "memory", "oom_kills", "cpu", "load", "processes", "uptime")
RUN_TIMEOUT = 900.0


# --------------------------------------------------------------------------- variants


@dataclass
class Variant:
    name: str  # key used on the command line
    label: str  # shown in the table
    family: str  # runs of one family share state (ControlPath dir, pool dir)
    connection: str
    bin_dir: Path
    cold: Optional[bool] = None  # None: not applicable (no state kept between runs)
    env: Dict[str, Optional[str]] = field(default_factory=dict)
    available: bool = True
    why_not: str = ""
    #: Run in the diag7 scenario only, unless named with --connections (keeps a full run near 20 min).
    diag7_only: bool = False


def mitogen_strategy_dir() -> Tuple[Optional[str], str]:
    """Mitogen's strategy plugins in the main venv, or why it cannot run."""
    probe = (
        "import ansible_mitogen, os, mitogen; "
        "print(os.path.dirname(ansible_mitogen.__file__)); print('.'.join(map(str, mitogen.__version__)))"
    )
    proc = subprocess.run([str(MAIN_BIN / "python"), "-c", probe], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None, "n/a (mitogen is not installed in .venv: pip install mitogen)"
    path, version = proc.stdout.split()[:2]
    return os.path.join(path, "plugins", "strategy"), version


def make_variants(selected: Optional[Sequence[str]]) -> List[Variant]:
    strategy, mitogen_version = mitogen_strategy_dir()
    variants = [
        Variant("local", "local (floor)", "local", "local", MAIN_BIN),
        Variant(
            "ssh-nocm",
            "ssh, ControlMaster=no",
            "ssh-nocm",
            "ssh",
            MAIN_BIN,
            env={"ANSIBLE_SSH_ARGS": "-C -o ControlMaster=no"},
        ),
        Variant("ssh-cp-cold", "ssh+ControlPersist cold", "ssh-cp", "ssh", MAIN_BIN, cold=True),
        Variant("ssh-cp-warm", "ssh+ControlPersist warm", "ssh-cp", "ssh", MAIN_BIN, cold=False),
        Variant("paramiko", "paramiko_ssh (2.19)", "paramiko", "paramiko", COMPAT_BIN),
        Variant(
            "mitogen",
            f"mitogen {mitogen_version if strategy else ''}".strip(),
            "mitogen",
            "ssh",
            MAIN_BIN,
            env={"ANSIBLE_STRATEGY": "mitogen_linear", "ANSIBLE_STRATEGY_PLUGINS": strategy or ""},
        ),
        Variant("pooled-cold", "pooled_ssh cold", "pooled", "healer.pooled_ssh.pooled_ssh", MAIN_BIN, cold=True),
        Variant("pooled-warm", "pooled_ssh warm", "pooled", "healer.pooled_ssh.pooled_ssh", MAIN_BIN, cold=False),
        # The same connection without its remote executor: what the executor itself changes.
        Variant(
            "pooled-off-cold",
            "pooled_ssh cold, executor off",
            "pooled-off",
            "healer.pooled_ssh.pooled_ssh",
            MAIN_BIN,
            cold=True,
            env={"ANSIBLE_POOLED_SSH_REMOTE_EXECUTOR": "off"},
        ),
        Variant(
            "pooled-off-warm",
            "pooled_ssh warm, executor off",
            "pooled-off",
            "healer.pooled_ssh.pooled_ssh",
            MAIN_BIN,
            cold=False,
            env={"ANSIBLE_POOLED_SSH_REMOTE_EXECUTOR": "off"},
        ),
        # The same ansible-core as paramiko_ssh's row: the like-for-like comparison with it.
        Variant("local-2.19", "local (floor, 2.19)", "local-2.19", "local", COMPAT_BIN, diag7_only=True),
        Variant(
            "pooled-2.19-cold",
            "pooled_ssh cold (2.19)",
            "pooled-2.19",
            "healer.pooled_ssh.pooled_ssh",
            COMPAT_BIN,
            cold=True,
            diag7_only=True,
        ),
        Variant(
            "pooled-2.19-warm",
            "pooled_ssh warm (2.19)",
            "pooled-2.19",
            "healer.pooled_ssh.pooled_ssh",
            COMPAT_BIN,
            cold=False,
            diag7_only=True,
        ),
    ]
    if strategy is None:
        variants[5].available, variants[5].why_not = False, mitogen_version
    if not (COMPAT_BIN / "ansible-playbook").exists():
        for v in variants:
            if v.bin_dir == COMPAT_BIN:
                v.available, v.why_not = False, "n/a (no .venv-compat with ansible-core 2.19: ./run setup)"
    if selected:
        aliases = {
            "pooled": ["pooled-cold", "pooled-warm"],
            "pooled_ssh": ["pooled-cold", "pooled-warm"],
            "pooled-2.19": ["pooled-2.19-cold", "pooled-2.19-warm"],
            "pooled-off": ["pooled-off-cold", "pooled-off-warm"],
            "2.19": ["local-2.19", "paramiko", "pooled-2.19-cold", "pooled-2.19-warm"],
            "ssh-cp": ["ssh-cp-cold", "ssh-cp-warm"],
            "ssh": ["ssh-cp-cold", "ssh-cp-warm"],
            "paramiko_ssh": ["paramiko"],
        }
        wanted = [n for s in selected for n in aliases.get(s, [s])]
        unknown = set(wanted) - {v.name for v in variants}
        if unknown:
            raise SystemExit(f"unknown connection(s): {sorted(unknown)}; choose from {[v.name for v in variants]}")
        variants = [v for v in variants if v.name in wanted]
        for v in variants:
            v.diag7_only = False
    return variants


# --------------------------------------------------------------------------- the lab


class Lab:
    """The fleet, its proxies, one AnsibleRunner per family, and everything to stop at the end."""

    def __init__(self, hosts: int, rtt: float, forks: int) -> None:
        self.base = short_tempdir("hb-")
        self.forks = forks
        self.fleet: Optional[Fleet] = None
        self.proxies: List[FaultProxy] = []
        self.runners: Dict[str, AnsibleRunner] = {}
        self.collections = collections_root(self.base / "collections")
        self.hosts = hosts
        self.rtt = rtt
        #: CPU by side: "hosts" (every sshd and what it starts), "ctl-<family>" (ansible-playbook and
        #: what it starts, the pool daemon and ssh masters included: they live on across warm runs).
        self.cpu = CpuGroups("healer-bench-")

    def start(self) -> None:
        self.fleet = Fleet(count=self.hosts)
        self.fleet.start()
        if self.cpu.root is None:
            print(f"CPU by side: n/a ({self.cpu.why_not})", file=sys.stderr, flush=True)
        for host in self.fleet:
            assert host.pid is not None
            self.cpu.move("hosts", host.pid)
            proxy = FaultProxy((host.address, host.port))
            proxy.start()
            self.proxies.append(proxy)
        self.set_rtt(self.rtt)
        # Clients reach the proxies, so known_hosts names the hosts' keys under the proxies' addresses.
        self.known_hosts = self.base / "known_hosts"
        lines = []
        for host, proxy in zip(self.fleet, self.proxies, strict=True):
            for line in host.host_key_line().splitlines():
                keytype, blob = line.split()[1:3]
                lines.append(f"[{proxy.address}]:{proxy.port} {keytype} {blob}\n")
        self.known_hosts.write_text("".join(lines), encoding="utf-8")
        # paramiko_ssh reads ~/.ssh/known_hosts only: give it a HOME of its own.
        self.home = self.base / "home"
        (self.home / ".ssh").mkdir(parents=True, mode=0o700)
        shutil.copyfile(self.known_hosts, self.home / ".ssh" / "known_hosts")
        self.payloads = self.base / "payloads"
        self.payloads.mkdir()
        for name, size in (("1m.bin", 1 << 20), ("100m.bin", 100 << 20)):
            with open(self.payloads / name, "wb") as f:
                for _mib in range(size // (1 << 20)):
                    f.write(os.urandom(1 << 20))

    def set_rtt(self, rtt: float) -> None:
        self.rtt = rtt
        for proxy in self.proxies:
            proxy.set_latency(rtt)

    def runner(self, variant: Variant) -> AnsibleRunner:
        runner = self.runners.get(variant.family)
        if runner is None:
            workdir = self.base / variant.family
            runner = AnsibleRunner(
                workdir=workdir,
                collections_root=self.collections,
                pool_dir=self.pool_dir(variant.family),
                known_hosts=self.known_hosts,
                python_bin_dir=variant.bin_dir,
                pipelining=True,
            )
            self.runners[variant.family] = runner
        return runner

    def pool_dir(self, family: str) -> Path:
        path = self.base / f"p-{family}"
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def control_dir(self, family: str) -> Path:
        path = self.base / f"cp-{family}"
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def inventory(self, variant: Variant) -> Path:
        assert self.fleet is not None
        path = self.base / variant.family / f"inventory-{variant.name}.yml"
        if path.exists():
            return path
        ssh_args = f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes"
        lines = [
            "all:",
            "  vars:",
            f"    ansible_connection: {variant.connection}",
            f"    ansible_ssh_common_args: '{ssh_args}'",
            "  children:",
        ]
        groups = {"one": 1, "five": 5, "twenty": 20, "fleet": self.hosts}
        for group, count in groups.items():
            lines += [f"    {group}:", "      hosts:"]
            for host, proxy in list(zip(self.fleet, self.proxies, strict=True))[:count]:
                lines += [
                    f"        {host.name}:",
                    f"          ansible_host: {proxy.address}",
                    f"          ansible_port: {proxy.port}",
                    f"          ansible_user: {host.user}",
                    f"          ansible_ssh_private_key_file: {self.fleet.client_key}",
                    f"          ansible_python_interpreter: {self.fleet.python}",
                ]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def accepted(self) -> Dict[str, int]:
        assert self.fleet is not None
        return {host.name: host.accepted_count() for host in self.fleet}

    # -- state between runs ------------------------------------------------------

    def make_cold(self, variant: Variant) -> None:
        """Forget what the previous run left: pool daemon, ssh masters."""
        if variant.family.startswith("pooled"):
            stop_pool(self.pool_dir(variant.family))
        elif variant.family == "ssh-cp":
            self.stop_masters(variant.family)

    def stop_masters(self, family: str) -> None:
        cp = self.control_dir(family)
        for sock in cp.iterdir():
            subprocess.run(
                ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench"],
                capture_output=True,
                timeout=30,
                check=False,
            )
            with contextlib.suppress(OSError):
                sock.unlink()

    def stop(self) -> None:
        errors = []
        families = ("pooled", "pooled-off", "pooled-2.19", "ssh-cp", "ssh-nocm")
        families += ("local", "local-2.19", "paramiko", "mitogen")
        for family in families:
            with contextlib.suppress(Exception):
                stop_pool(self.base / f"p-{family}")
            if (self.base / f"cp-{family}").exists():
                with contextlib.suppress(Exception):
                    self.stop_masters(family)
        for pooled in self.base.glob("micro-pool*"):
            with contextlib.suppress(Exception):
                stop_pool(pooled)
        for proxy in self.proxies:
            try:
                proxy.stop()
            except Exception as e:
                errors.append(repr(e))
        if self.fleet is not None:
            try:
                self.fleet.cleanup()
            except Exception as e:
                errors.append(repr(e))
        self.cpu.close()
        shutil.rmtree(self.base, ignore_errors=True)
        if errors:
            print("cleanup errors: " + "; ".join(errors), file=sys.stderr)

    # -- one run -------------------------------------------------------------------

    def run(self, variant: Variant, playbook: Path) -> Tuple[float, int, int, Cpu, str]:
        """(seconds, rc, logins made, CPU seconds used, output tail) of one run."""
        runner = self.runner(variant)
        env: Dict[str, Optional[str]] = {
            "ANSIBLE_FORKS": str(self.forks),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir(variant.family)),
            "ANSIBLE_DEPRECATION_WARNINGS": "0",
            "ANSIBLE_GATHERING": "explicit",
            # As on a user's machine, Python keeps bytecode caches (this sandbox's environment turns
            # them off, which would make every worker recompile the collection's plugins)...
            "PYTHONDONTWRITEBYTECODE": None,
            # ...and buffers standard input: with PYTHONUNBUFFERED set, a pipelined module read from
            # stdin costs one read(2) per byte, ~80 ms of CPU for diag7's 200 KB module. Only the
            # local connection's modules would pay it (sshd gives its sessions a fresh environment),
            # which made the local floor cost more CPU than the SSH connections.
            "PYTHONUNBUFFERED": None,
        }
        if variant.connection == "paramiko":
            env["HOME"] = str(self.home)
        env.update(variant.env)
        if variant.cold:
            self.make_cold(variant)
        before = self.accepted()
        ctl = f"ctl-{variant.family}"
        argv = self.cpu.wrap(
            ctl, [runner.executable("ansible-playbook"), "-i", str(self.inventory(variant)), str(playbook)]
        )
        out_path = runner.workdir / "last.out"
        cpu_before = Cpu(busy_cpu_seconds(), self.cpu.seconds(ctl), self.cpu.seconds("hosts"))
        start = time.monotonic()
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=runner.workdir,
                env=runner.env(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc = proc.wait(RUN_TIMEOUT)
            except BaseException:
                _kill_group(proc)
                raise
        elapsed = time.monotonic() - start
        cpu = Cpu(busy_cpu_seconds(), self.cpu.seconds(ctl), self.cpu.seconds("hosts")) - cpu_before
        logins = sum(self.accepted().values()) - sum(before.values())
        tail = "\n".join(out_path.read_text(errors="replace").splitlines()[-25:])
        return elapsed, rc, logins, cpu, tail


@dataclass
class Cpu:
    """CPU seconds: the whole machine, the controller side and the hosts' side (None: no cgroups)."""

    machine: float
    controller: Optional[float]
    hosts: Optional[float]

    def __sub__(self, other: Cpu) -> Cpu:
        def minus(a: Optional[float], b: Optional[float]) -> Optional[float]:
            return a - b if a is not None and b is not None else None

        return Cpu(
            self.machine - other.machine, minus(self.controller, other.controller), minus(self.hosts, other.hosts)
        )


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (all CPUs, /proc/stat's first line minus idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user and nice
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------- scenarios


def diag7_playbook(group: str, report_dir: Path) -> str:
    tasks = "".join(
        f"    - name: Check {check}\n"
        f"      healer.pooled_ssh.healer_diagnose:\n"
        f"        checks: [{check}]\n"
        f"        metrics: false\n"
        f"        fail_on: never\n"
        for check in DIAG_CHECKS
    )
    return f"- name: Seven checks, one task each\n  hosts: {group}\n  gather_facts: false\n  tasks:\n{tasks}"


def role_playbook(group: str, report_dir: Path) -> str:
    return (
        f"- name: The diagnose role\n  hosts: {group}\n  gather_facts: false\n  roles:\n"
        f"    - role: healer.pooled_ssh.diagnose\n      diagnose_fail_on: never\n"
        f"      diagnose_report_dir: {report_dir}\n"
    )


def copy_playbook(payload: str) -> Callable[[str, Path], str]:
    def make(group: str, report_dir: Path) -> str:
        return (
            f"- name: Copy {payload}\n  hosts: {group}\n  gather_facts: false\n  tasks:\n"
            f"    - name: Copy the file\n      ansible.builtin.copy:\n        src: '{{{{ payloads }}}}/{payload}'\n"
            f"        dest: '~/bench-{payload}'\n        mode: '0644'\n"
            f"    - name: Remove it\n      ansible.builtin.file:\n        path: '~/bench-{payload}'\n"
            f"        state: absent\n"
        )

    return make


@dataclass
class Scenario:
    name: str
    title: str
    group: str
    hosts: int
    playbook: Callable[[str, Path], str]


def scenarios(quick_hosts: Optional[int]) -> Dict[str, Scenario]:
    five = quick_hosts or 5
    group5 = "fleet" if quick_hosts else "five"
    return {
        "diag7": Scenario(
            "diag7", f"7-check diagnosis: {five} hosts x 7 healer_diagnose tasks", group5, five, diag7_playbook
        ),
        "role20": Scenario("role20", "diagnose role (combined mode) on 20 hosts", "twenty", 20, role_playbook),
        "copy1m": Scenario("copy1m", "copy a 1 MiB file to 1 host (then remove it)", "one", 1, copy_playbook("1m.bin")),
        "copy100m": Scenario(
            "copy100m", "copy a 100 MiB file to 1 host (then remove it)", "one", 1, copy_playbook("100m.bin")
        ),
    }


@dataclass
class Row:
    variant: Variant
    times: List[float] = field(default_factory=list)
    logins: List[int] = field(default_factory=list)
    cpu: List[Cpu] = field(default_factory=list)  # CPU seconds used during each run
    by_round: Dict[int, float] = field(default_factory=dict)  # seconds by round number, for paired ratios
    failures: int = 0

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.times) if self.times else None


def run_scenario(lab: Lab, scenario: Scenario, variants: List[Variant], runs: int) -> List[Row]:
    rows = [Row(v) for v in variants if scenario.name == "diag7" or not v.diag7_only]
    playbooks: Dict[str, Path] = {}
    for row in rows:
        if not row.variant.available:
            continue
        workdir = lab.runner(row.variant).workdir
        path = workdir / f"{scenario.name}.yml"
        text = scenario.playbook(scenario.group, workdir / "report")
        path.write_text(text.replace("{{ payloads }}", str(lab.payloads)), encoding="utf-8")
        playbooks[row.variant.name] = path
    for round_no in range(1, runs + 1):
        for row in rows:
            if not row.variant.available:
                continue
            elapsed, rc, logins, cpu, tail = lab.run(row.variant, playbooks[row.variant.name])
            if rc != 0:
                row.failures += 1
                print(f"  ! {row.variant.label}: ansible-playbook exited {rc}\n{tail}", file=sys.stderr)
                continue
            row.times.append(elapsed)
            row.logins.append(logins)
            row.cpu.append(cpu)
            row.by_round[round_no] = elapsed
            print(
                f"  [{scenario.name} rtt={lab.rtt:g}ms round {round_no}/{runs}] {row.variant.label:26s} "
                f"{elapsed:7.2f}s  cpu={cpu.machine:5.1f}s (controller {_fmt(cpu.controller, '.1f')}s, "
                f"hosts {_fmt(cpu.hosts, '.1f')}s)  logins={logins}",
                file=sys.stderr,
                flush=True,
            )
    return rows


# --------------------------------------------------------------------------- output


HEADER = (
    "connection",
    "median s",
    "min s",
    "max s",
    "vs ssh+CP",
    "paired vs CP",
    "vs paramiko",
    "paired vs paramiko",
    "above local s",
    "CPU s",
    "ctl CPU s",
    "hosts CPU s",
    "logins/run",
)


def _fmt(value: Optional[float], spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: List[Row]) -> List[List[str]]:
    by_name = {r.variant.name: r for r in rows}
    paramiko = by_name.get("paramiko")
    out = []
    for row in rows:
        v = row.variant
        if not v.available:
            out.append([v.label, v.why_not] + [""] * (len(HEADER) - 2))
            continue
        ref = _cp_reference(by_name, v)
        # Each row against the floor of its own ansible-core.
        local = by_name.get("local-2.19") if v.bin_dir == COMPAT_BIN else None
        local = local if local is not None and local.median else by_name.get("local")
        floor = local.median if local is not None else None
        above = row.median - floor if row.median is not None and floor is not None else None
        logins = sorted(set(row.logins))
        login_text = (
            "-"
            if v.connection == "local"
            else (str(logins[0]) if len(logins) == 1 else f"{logins[0]}-{logins[-1]}" if logins else "-")
        )
        fail = f" ({row.failures} failed)" if row.failures else ""
        out.append(
            [
                v.label + fail,
                _fmt(row.median),
                _fmt(min(row.times) if row.times else None),
                _fmt(max(row.times) if row.times else None),
                _fmt(_ratio(row, ref)),
                _paired(row, ref),
                _fmt(_ratio(row, paramiko)),
                _paired(row, paramiko),
                _fmt(above),
                *(_cpu_median(row, side) for side in ("machine", "controller", "hosts")),
                login_text,
            ]
        )
    return out


def _cpu_median(row: Row, side: str) -> str:
    values = [getattr(c, side) for c in row.cpu]
    return _fmt(statistics.median(values) if values and None not in values else None, ".1f")


def _cp_reference(by_name: Dict[str, Row], variant: Variant) -> Optional[Row]:
    """Like with like: a warm row against warm ControlPersist, everything else against a cold one."""
    return by_name.get("ssh-cp-warm" if variant.cold is False else "ssh-cp-cold")


def _paired(row: Row, ref: Optional[Row]) -> str:
    """Median of the round-by-round ratios, and their range: runs of one round are minutes apart at
    most, so a slow spell of the machine hits both sides of each ratio."""
    if ref is None or ref is row:
        return "-"
    ratios = sorted(t / ref.by_round[n] for n, t in row.by_round.items() if ref.by_round.get(n))
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def _ratio(row: Row, ref: Optional[Row]) -> Optional[float]:
    return row.median / ref.median if row.median and ref is not None and ref.median else None


def render(rows: List[List[str]], header: Sequence[str] = HEADER) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    lines = [
        "| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(header)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |" for r in rows]
    return "\n".join(lines)


def _version(argv: Sequence[str], pattern: str) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return "n/a"
    match = re.search(pattern, proc.stdout + proc.stderr)
    return match.group(1) if match else "n/a"


def machine(forks: int) -> List[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    main_ansible = _version([str(MAIN_BIN / "ansible"), "--version"], r"core ([\d.]+)")
    compat_ansible = _version([str(COMPAT_BIN / "ansible"), "--version"], r"core ([\d.]+)")
    main_py = _version([str(MAIN_BIN / "python"), "--version"], r"Python ([\d.]+)")
    compat_py = _version([str(COMPAT_BIN / "python"), "--version"], r"Python ([\d.]+)")
    paramiko = _version([str(MAIN_BIN / "python"), "-c", "import paramiko; print(paramiko.__version__)"], r"([\d.]+)")
    openssh = _version(["ssh", "-V"], r"(OpenSSH_[\w.]+)")
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores (nproc); memory {mem}; Linux {platform.release()}",
        f"- Python {main_py} with ansible-core {main_ansible} (local, ssh, mitogen, pooled_ssh); "
        f"Python {compat_py} with ansible-core {compat_ansible} (paramiko_ssh and the rows marked 2.19)",
        f"- paramiko {paramiko}; {openssh} (client and sshd); forks {forks}; pipelining on",
    ]


def write_doc(block: str, sections: List[str], header: List[str], seconds: float, argv: Sequence[str]) -> None:
    begin, end = (m.format(block) for m in DOC_MARKERS)
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    when = datetime.date.today().isoformat()
    command = " ".join(["benchmarks/bench.py", *argv]) + ("" if argv else " (defaults)")
    body = [f"Measured {when} with `{command}`, which took {seconds / 60:.1f} minutes.", "", *header, "", *sections]
    before, rest = text.split(begin, 1)
    after = rest.split(end, 1)[1]
    DOC.write_text(before + begin + "\n" + "\n".join(body).rstrip() + "\n" + end + after, encoding="utf-8")


def by_rtt(results: Dict[float, List[Row]]) -> str:
    """One line per connection: its diag7 median at each round trip, and its ratios to ssh+CP and paramiko_ssh."""
    rtts = sorted(results)
    labels: List[str] = []
    medians: Dict[Tuple[str, float], Optional[float]] = {}
    ratios: Dict[Tuple[str, float], str] = {}
    for rtt in rtts:
        rows = {r.variant.name: r for r in results[rtt]}
        for row in results[rtt]:
            if not row.variant.available:
                continue
            if row.variant.label not in labels:
                labels.append(row.variant.label)
            ref = _cp_reference(rows, row.variant)
            medians[row.variant.label, rtt] = row.median
            ratios[row.variant.label, rtt] = f"{_fmt(_ratio(row, ref))} / {_fmt(_ratio(row, rows.get('paramiko')))}"
    header = ["connection"] + [f"{rtt:g} ms: s (vs CP / vs paramiko)" for rtt in rtts]
    lines = [
        [label] + [f"{_fmt(medians.get((label, rtt)))} ({ratios.get((label, rtt), '-')})" for rtt in rtts]
        for label in labels
    ]
    return render(lines, header)


# --------------------------------------------------------------------------- main


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--rtt", type=float, nargs="+", help="round-trip latencies in ms (default 50)")
    p.add_argument("--runs", type=int, help="runs of each connection per scenario (default: 5 for diag7, 2 others)")
    p.add_argument("--scenario", nargs="+", choices=SCENARIOS, help=f"default: all ({', '.join(SCENARIOS)})")
    p.add_argument(
        "--connections",
        nargs="+",
        help="variants to run (default all): local ssh-nocm ssh-cp-cold "
        "ssh-cp-warm paramiko mitogen pooled-cold pooled-warm; 'pooled' and 'ssh-cp' name both",
    )
    p.add_argument("--hosts", type=int, help="hosts of the diag7 scenario (default 5)")
    p.add_argument("--forks", type=int, default=5)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 hosts, 1 run, 0 ms, diag7 only, local and pooled_ssh cold; no doc written",
    )
    p.add_argument(
        "--doc-block",
        default="results",
        help="which block of docs/benchmarks.md to replace (default 'results'; the RTT sweep uses 'rtt')",
    )
    p.add_argument(
        "--doc",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the results into docs/benchmarks.md (default: on, off with --quick)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rtt = args.rtt or [0.0]
        args.runs = args.runs or 1
        args.scenario = args.scenario or ["diag7"]
        args.connections = args.connections or ["local", "pooled-cold"]
        args.hosts = args.hosts or 2
        args.doc = bool(args.doc)
    args.rtt = args.rtt if args.rtt is not None else [50.0]
    # diag7 is the headline: 5 runs; the longer scenarios 2 (a full run stays near 20 min), unless --runs is given.
    args.runs_other = args.runs or 2
    args.runs = args.runs or 5
    args.scenario = args.scenario or list(SCENARIOS)
    args.doc = True if args.doc is None else args.doc
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    variants = make_variants(args.connections)
    all_scenarios = scenarios(args.hosts if args.hosts and args.hosts != 5 else None)
    needed = [all_scenarios[s] for s in args.scenario if s in all_scenarios]
    fleet_size = max([s.hosts for s in needed] + [1])
    if args.hosts:
        fleet_size = max(fleet_size, args.hosts)

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    lab = Lab(fleet_size, args.rtt[0], args.forks)
    sections: List[str] = []
    diag7: Dict[float, List[Row]] = {}
    try:
        print(f"starting {fleet_size} sshd hosts behind latency proxies ...", file=sys.stderr, flush=True)
        lab.start()
        for rtt in args.rtt:
            lab.set_rtt(rtt)
            for scenario in needed:
                runs = args.runs if scenario.name == "diag7" else args.runs_other
                print(f"== {scenario.title}, RTT {rtt:g} ms, {runs} runs", file=sys.stderr, flush=True)
                rows = run_scenario(lab, scenario, variants, runs)
                if scenario.name == "diag7":
                    diag7[rtt] = rows
                title = f"### {scenario.title}, RTT {rtt:g} ms, {runs} runs each"
                text = render(table(rows))
                print(f"\n{title}\n\n{text}\n", flush=True)
                sections += [title, "", text, ""]
        if len(diag7) > 1:
            title = f"### {all_scenarios['diag7'].title}: medians by round trip"
            text = by_rtt(diag7)
            print(f"\n{title}\n\n{text}\n", flush=True)
            sections += [title, "", text, ""]
        if "micro" in args.scenario:
            assert lab.fleet is not None
            sys.path.insert(0, str(lab.collections))
            print("== micro-benchmark: one command, warm pool vs fresh connection, RTT 0 ms", file=sys.stderr)
            text = micro.run(lab.fleet.hosts[0], lab.fleet.client_key, lab.fleet.known_hosts, lab.base)
            title = "### One command (`true`) at 0 ms RTT, Python level"
            print(f"\n{title}\n\n{text}\n", flush=True)
            sections += [title, "", text, ""]
            print("== micro-benchmark: one pipelined module, remote executor vs fresh interpreter", file=sys.stderr)
            text = micro.executor_table(lab.base, lab.collections)
            title = "### One pipelined module on the host: remote executor vs fresh interpreter"
            print(f"\n{title}\n\n{text}\n", flush=True)
            sections += [title, "", text, ""]
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        lab.stop()
    seconds = time.monotonic() - started
    print(f"took {seconds / 60:.1f} minutes", flush=True)
    if args.doc:
        command = list(argv if argv is not None else sys.argv[1:])
        write_doc(args.doc_block, sections, machine(args.forks), seconds, command)
        print(f"wrote {DOC.relative_to(REPO)}", flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
