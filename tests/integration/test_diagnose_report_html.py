"""report.html of the diagnose role, rendered by a real headless browser (Debian's chromium).

Five real sshd hosts, three runs of the role, host3 made critical by its own filesystem
threshold (the other checks have no thresholds, so this machine's state cannot make another
host critical). Chromium loads the page from disk with every network request sent to a local
listener standing in for a proxy: the page must make none.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from test_diagnose_role import HOSTS, PLAY

CHECKS = ["filesystem", "memory", "load", "uptime", "oom_kills"]
#: Charts of a gauge get a point per run; rates need a previous run, so one point fewer.
GAUGES = ["load1", "memory_available_bytes", "filesystem_used_ratio"]
RATES = ["cpu_busy_ratio", "network_receive_bytes_per_second", "network_transmit_bytes_per_second"]
RUNS = 3

NO_THRESHOLDS = {
    "filesystem": {"warning": None, "critical": None, "inodes_warning": None, "inodes_critical": None},
    "memory": {"warning": None, "critical": None, "swap_warning": None, "swap_critical": None},
    "load": {"warning": None, "critical": None},
    "uptime": {"warning": None},
    "oom_kills": {"warning": None},
}


def chromium() -> str:
    path = shutil.which("chromium")
    if not path:
        pytest.fail("chromium is not installed (./run setup installs it as root)")
    return path


class Page(HTMLParser):
    """What the test reads back from the DOM chromium dumped."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: List[Tuple[str, str]] = []  # (host, health), in page order
        self.cells: Dict[str, Dict[str, str]] = {}  # host -> check -> state
        self.charts: Dict[str, Dict[str, Tuple[int, int]]] = {}  # host -> metric -> (data-points, circles)
        self.pool: Dict[str, str] = {}
        self.references: List[str] = []  # every src/href/xlink:href/action that is not an anchor
        self._row: Optional[str] = None
        self._section: Optional[str] = None
        self._chart: Optional[str] = None
        self._figure: Optional[str] = None

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("src", "href", "xlink:href", "action", "data", "poster", "srcset"):
            if key in a and not a[key].startswith("#"):
                self.references.append(f"{tag} {key}={a[key]}")
        if tag == "tr" and "data-host" in a:
            self._row = a["data-host"]
            self.rows.append((a["data-host"], a["data-health"]))
            self.cells[self._row] = {}
        elif tag == "td" and self._row and "data-check" in a:
            self.cells[self._row][a["data-check"]] = a["data-state"]
        elif tag == "section" and "data-host" in a:
            self._section = a["data-host"]
            self.charts[self._section] = {}
        elif tag == "svg" and self._section and "data-metric" in a:
            self._chart = a["data-metric"]
            self.charts[self._section][self._chart] = (int(a["data-points"]), 0)
        elif tag == "circle" and self._section and self._chart:
            points, circles = self.charts[self._section][self._chart]
            self.charts[self._section][self._chart] = (points, circles + 1)
        elif tag == "dd" and "data-figure" in a:
            self._figure = a["data-figure"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        elif tag == "svg":
            self._chart = None
        elif tag == "section":
            self._section = None
        elif tag == "dd":
            self._figure = None

    def handle_data(self, data: str) -> None:
        if self._figure:
            self.pool[self._figure] = self.pool.get(self._figure, "") + data.strip()


#: Chromium's own service requests (network time, component updates, account checks), made
#: whatever the page holds: exact host names, so that a CDN (fonts.googleapis.com...) still counts.
BROWSER_SERVICES = {
    "clients2.google.com",
    "update.googleapis.com",
    "accounts.google.com",
    "optimizationguide-pa.googleapis.com",
    "safebrowsingohttpgateway.googleapis.com",
}


def request_host(line: str) -> str:
    """The host of a proxy request line (``GET http://h/...`` or ``CONNECT h:443``)."""
    parts = line.split()
    target = parts[1] if len(parts) > 1 else ""
    if "://" in target:
        target = target.split("://", 1)[1].split("/", 1)[0]
    return target.rsplit(":", 1)[0] if target.count(":") == 1 else target


class RequestTrap:
    """A TCP listener standing in for chromium's proxy: records the request line of every connection
    made to it.

    A connection that closes without sending a byte asked for nothing: chromium opens such
    speculative connections to its proxy and drops them at exit. They are counted apart
    (``empty``), never as requests; any byte sent makes the connection a request.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: List[str] = []
        self.empty = 0
        self._lock = threading.Lock()
        self._conns: List[socket.socket] = []
        self._readers: List[threading.Thread] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            reader = threading.Thread(target=self._read, args=(conn,), daemon=True)
            with self._lock:
                self._conns.append(conn)
                self._readers.append(reader)
            reader.start()

    def _read(self, conn: socket.socket) -> None:
        """The connection's first line, however long it waits for it (until :meth:`close`)."""
        with conn:
            try:
                data = conn.recv(1024)
            except OSError:
                data = b""
        with self._lock:
            if data:
                self.requests.append(data.decode("latin-1").split("\r\n", 1)[0])
            else:
                self.empty += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=10)
        with self._lock:
            conns, readers = list(self._conns), list(self._readers)
        for conn in conns:  # an idle one still open: it ends now, having asked for nothing
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for reader in readers:
            reader.join(timeout=10)


def browse(page: Path, profile: Path, proxy_port: int, *args: str) -> subprocess.CompletedProcess:
    """One headless chromium run on a file URL, with a fresh profile and every request sent to the trap."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--metrics-recording-only",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        f"--proxy-server=127.0.0.1:{proxy_port}",
        "--proxy-bypass-list=<-loopback>",
        *args,
        page.as_uri(),
    ]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["HOME"] = str(profile)
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL, check=False
    )
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-3000:]}"
    return proc


def test_report_html_in_a_headless_browser(fleet, runner, tmp_path, pool_dir):
    report = tmp_path / "report"
    host3 = {**NO_THRESHOLDS, "filesystem": {**NO_THRESHOLDS["filesystem"], "critical": "@0:100"}}
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        group_vars={
            "diagnose_report_dir": str(report),
            "diagnose_fail_on": "never",
            "diagnose_checks": CHECKS,
            "diagnose_thresholds": NO_THRESHOLDS,
            "diagnose_history_max": 10,
            # a busy machine may take minutes per run: the pool stays warm between runs
            "ansible_pooled_ssh_idle_timeout": 3600,
            "ansible_pooled_ssh_daemon_idle_timeout": 3600,
        },
        host_vars={"host3": {"diagnose_thresholds": host3}},
    )
    for number in range(RUNS):
        run = runner.run_json(PLAY, inventory)
        assert run.rc == 0, (number, run.result.output_tail())

    history = [json.loads(line) for line in (report / "history.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(history) == RUNS
    assert history[0]["pool"]["logins"] == len(HOSTS), history[0]["pool"]
    assert [run["pool"]["logins"] for run in history[1:]] == [0, 0], "the warm pool served the later runs"

    html = (report / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "url(" not in html and "<script" not in html

    trap = RequestTrap()
    try:
        profile = tmp_path / "chromium"
        dom = browse(report / "report.html", profile, trap.port, "--dump-dom").stdout
        wide, narrow = tmp_path / "report-wide.png", tmp_path / "report-narrow.png"
        browse(
            report / "report.html",
            profile,
            trap.port,
            f"--screenshot={wide}",
            "--window-size=1280,1900",
            "--hide-scrollbars",
        )
        browse(
            report / "report.html",
            profile,
            trap.port,
            f"--screenshot={narrow}",
            "--window-size=400,1400",
            "--hide-scrollbars",
        )
    finally:
        trap.close()
    page_requests = [r for r in trap.requests if request_host(r) not in BROWSER_SERVICES]
    assert page_requests == [], (
        f"the page made network requests: {page_requests} ({trap.empty} connections without a byte not counted)"
    )
    for shot in (wide, narrow):
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000, shot

    page = Page()
    page.feed(dom)
    assert page.references == [], "the page refers to nothing outside itself"
    assert sorted(host for host, _unused in page.rows) == HOSTS
    assert page.rows[0] == ("host3", "critical"), f"the critical host first: {page.rows}"
    assert all(health != "critical" for _unused, health in page.rows[1:]), page.rows
    for host in HOSTS:
        assert sorted(page.cells[host]) == sorted(CHECKS), (host, page.cells[host])
    assert page.cells["host3"]["filesystem"] == "critical"
    assert "filesystem critical:" in dom  # the problem, with the check's summary
    for host in HOSTS:
        charts = page.charts[host]
        assert set(charts) == set(GAUGES + RATES), charts
        for metric in GAUGES:
            assert charts[metric] == (RUNS, RUNS), (host, metric, charts[metric])
        for metric in RATES:
            assert charts[metric] == (RUNS - 1, RUNS - 1), (host, metric, charts[metric])
    assert page.pool == {
        "logins (misses)": "0",
        "reuses (hits)": page.pool["reuses (hits)"],
        "waits": "0",
        "time waited (s)": page.pool["time waited (s)"],
    }, page.pool
    assert int(page.pool["reuses (hits)"]) > 0


def test_report_html_says_na_without_a_pool_and_can_be_turned_off(fleet, runner, tmp_path):
    report = tmp_path / "report"
    no_daemon = tmp_path / "no-daemon"  # the figures come from a pool directory where no daemon runs
    no_daemon.mkdir(mode=0o700)
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        group_vars={
            "diagnose_report_dir": str(report),
            "diagnose_fail_on": "never",
            "diagnose_checks": ["load"],
            "diagnose_pool_dir": str(no_daemon),
        },
    )
    run = runner.run_json(PLAY, inventory)
    assert run.rc == 0, run.result.output_tail()
    html = (report / "report.html").read_text(encoding="utf-8")
    page = Page()
    page.feed(html)
    assert set(page.pool.values()) == {"n/a"}, page.pool

    off = tmp_path / "off"
    run = runner.run_json(PLAY, inventory, "-e", f"diagnose_report_dir={off}", "-e", "diagnose_html_report=false")
    assert run.rc == 0, run.result.output_tail()
    assert (off / "health.json").exists()
    assert not (off / "report.html").exists() and not (off / "history.jsonl").exists()
