"""The checks against the real machine this runs on: its /proc, its sockets, and Python 3.8."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from ansible_collections.healer.pooled_ssh.plugins.module_utils import _diagnose_runner
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_checks import check_http, check_ports
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_config import DEFAULT_CHECKS
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_runner import diagnose
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_system import System
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_thresholds import STATES

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")

HERE = Path(__file__).resolve().parent
# <root>/ansible_collections/healer/pooled_ssh/plugins/module_utils/_diagnose_runner.py -> <root>
# (not resolved: the tests import the checkout through a symlinked collections tree)
COLLECTIONS_ROOT = Path(os.path.abspath(_diagnose_runner.__file__)).parents[5]


def assert_valid(result):
    assert result["state"] in STATES, result
    assert isinstance(result["summary"], str) and result["summary"].strip(), result
    assert "\n" not in result["summary"]


def test_default_checks_on_this_machine():
    result = diagnose({}, System("/"))
    assert list(result["checks"]) == list(DEFAULT_CHECKS)
    for name, check in result["checks"].items():
        assert_valid(check)
        assert check["duration_seconds"] < 10, name
    services = result["checks"]["services"]
    if not os.path.isdir("/run/systemd/system"):
        assert services["state"] == "skipped"
        assert services["summary"].startswith("skipped: no systemd")
    for name in ("memory", "load", "cpu", "processes", "file_descriptors", "uptime", "filesystem"):
        assert result["checks"][name]["state"] != "unknown", result["checks"][name]
    assert 0 <= result["checks"]["cpu"]["measured"]["busy_percent"] <= 100
    assert result["checks"]["processes"]["measured"]["processes"] >= 1
    assert result["counters"]["boot_time"] > 1e9
    metrics = result["metrics"]
    for name in ("node_load1", "node_memory_MemTotal_bytes", "node_cpu_seconds_total", "node_filefd_maximum"):
        assert metrics[name], name
    assert metrics["node_memory_MemTotal_bytes"][0]["value"] > 0
    assert "/" in {s["labels"]["mountpoint"] for s in metrics["node_filesystem_size_bytes"]}
    assert 0 <= metrics["cpu_busy_ratio"][0]["value"] <= 1
    json.dumps(result)  # what the module returns must serialise


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_ports_on_this_machine(listener):
    from ansible_collections.healer.pooled_ssh.tests.unit.plugins.module_utils.diagnose_fakes import context

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    free_port = closed.getsockname()[1]
    closed.close()
    ctx = context(
        System("/"),
        "ports",
        options=[listener, {"host": "127.0.0.1", "port": listener}, {"host": "127.0.0.1", "port": free_port}],
        timeout=5,
    )
    result = check_ports(ctx)
    states = [p["state"] for p in result["measured"]["ports"]]
    assert states == ["ok", "ok", "critical"]
    assert result["measured"]["ports"][2]["error"] == "refused"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = int(self.path.strip("/") or 200)
        body = b'{"status": "ok"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(("path", "state"), [("/200", "ok"), ("/404", "warning"), ("/503", "critical")])
def test_http_on_this_machine(web, path, state):
    from ansible_collections.healer.pooled_ssh.tests.unit.plugins.module_utils.diagnose_fakes import context

    url = f"http://127.0.0.1:{web.server_address[1]}{path}"
    result = check_http(context(System("/"), "http", options={"url": url, "body_match": '"ok"'}, timeout=5))
    assert result["state"] == state
    assert result["measured"]["status"] == int(path.strip("/"))
    assert result["measured"]["body_matched"] is True


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_certificate_expiry_on_this_machine(tmp_path):
    from ansible_collections.healer.pooled_ssh.tests.unit.plugins.module_utils.diagnose_fakes import context

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "10",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(cert), str(key))
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/200"
        unverified = check_http(context(System("/"), "http", options={"url": url, "validate_certs": False}, timeout=5))
        verified = check_http(context(System("/"), "http", options={"url": url}, timeout=5))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    # 10 days left: below cert_critical 7? no; below cert_warning 14: warning
    assert unverified["state"] == "warning"
    assert 9.9 < unverified["measured"]["cert_days_left"] <= 10
    assert verified["state"] == "critical"
    assert verified["summary"].endswith("certificate verify failed: self-signed certificate") or (
        "certificate verify failed" in verified["summary"]
    )


def test_resolve_and_adjtimex_on_this_machine():
    system = System("/")
    assert system.resolve("localhost")
    timex = system.adjtimex()
    if timex is not None:
        assert isinstance(timex["synced"], bool) and isinstance(timex["offset_seconds"], float)


def _python38():
    """A Python 3.8 interpreter: $HEALER_PYTHON38, else python3.8 on PATH if it runs."""
    candidates = [os.environ.get("HEALER_PYTHON38"), shutil.which("python3.8")]
    for candidate in candidates:
        if not candidate:
            continue
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == b"(3, 8)":
            return candidate
    return None


PY38 = _python38()


@pytest.mark.skipif(PY38 is None, reason="no Python 3.8 (set HEALER_PYTHON38)")
def test_module_utils_run_under_python38():
    """The target side is Python 3.8+: byte-compile everything and run the default checks under 3.8."""
    plugins = HERE.parents[3] / "plugins"
    files = [
        *sorted(str(p) for p in (plugins / "module_utils").glob("_diagnose_*.py")),
        str(plugins / "modules" / "healer_diagnose.py"),
    ]
    compiled = subprocess.run(
        [PY38, "-c", "import sys\nfor f in sys.argv[1:]: compile(open(f).read(), f, 'exec')", *files],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stderr
    script = textwrap.dedent(
        """
        import json, sys
        sys.path.insert(0, sys.argv[1])
        from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_runner import diagnose
        from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_config import ParamError, build_plan
        try:
            build_plan({"thresholds": {"memory": {"warning": "10::"}}})
        except ParamError as error:
            message = str(error)
        result = diagnose({"checks": None})
        print(json.dumps({"version": list(sys.version_info[:2]), "message": message, "result": result}))
        """
    )
    run = subprocess.run(
        [PY38, "-c", script, str(COLLECTIONS_ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["version"] == [3, 8]
    assert data["message"] == "thresholds.memory.warning: invalid range '10::'"
    checks = data["result"]["checks"]
    assert list(checks) == list(DEFAULT_CHECKS)
    for check in checks.values():
        assert_valid(check)
    assert data["result"]["metrics"]["node_load1"]
