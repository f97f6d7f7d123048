# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A remote executor run for real as a local process on pipes, and the plain runs to compare it with.

Shared by the executor's unit tests and ``benchmarks/micro.py``; ``build`` makes real AnsiballZ
payloads with ansible-core's own module_common.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.executor import manager, recognise, source

HERE = Path(__file__).resolve().parent
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
Result = Tuple[int, bytes, bytes]


def build(tmp: Path, collections_root: Path, specs: Dict[str, dict], python: str = sys.executable) -> Dict[str, bytes]:
    """Real payloads from ansible-core's module_common (of the venv ``python`` belongs to)."""
    out = tmp / "payloads"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(collections_root),
        ANSIBLE_LOCAL_TEMP=str(tmp / "local"),
        ANSIBLE_HOME=str(tmp / "home"),
    )
    subprocess.run([python, str(HERE / "build_payloads.py"), json.dumps(specs), str(out)], check=True, env=env)
    return {name: (out / name).read_bytes() for name in specs}


def base_env(home: Path) -> Dict[str, str]:
    """A small, fixed environment for both kinds of run (this sandbox's PYTHON* variables left out)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


class Pipes:
    """The executor's channel: its stdin and stdout pipes."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.stdin = proc.stdin
        self.stdout = proc.stdout

    def read(self, size: int, timeout: Optional[float]) -> bytes:
        poller = select.poll()
        poller.register(self.stdout.fileno(), select.POLLIN)
        if not poller.poll(None if timeout is None else int(timeout * 1000)):
            raise TimeoutError
        return os.read(self.stdout.fileno(), size)

    def ended(self) -> bool:
        poller = select.poll()
        poller.register(self.stdout.fileno(), select.POLLIN)
        return any(events & select.POLLHUP for _fd, events in poller.poll(0))

    def write(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def close(self) -> None:
        if not self.stdin.closed:
            self.stdin.close()


class Local:
    """An executor process on pipes, and the plain runs to compare it with (same env, same cwd)."""

    def __init__(self, tmp: Path, python: str = PYTHON, compiler: Optional[manager.Compile] = None) -> None:
        self.python = python
        self.home = tmp / "home"
        self.home.mkdir(exist_ok=True)
        self.cwd = tmp / "cwd"
        self.cwd.mkdir(exist_ok=True)
        self.remote_tmp = tmp / "remote_tmp"
        self.env = base_env(self.home)
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", source.bootstrap(python)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
        )
        self.executor = manager.Executor(Pipes(self.proc), tmp=str(self.remote_tmp), compiler=compiler)
        self.hello = self.executor.start()

    def run(self, payload: bytes, env: Optional[Dict[str, str]] = None) -> Result:
        parts = recognise.split_wrapper(payload)
        assert parts is not None
        head, zip_text, tail = parts
        out, err, rc = [], [], None
        for kind, data in self.executor.run(head, zip_text, tail, env or {}):
            if kind is manager.EventKind.OUT:
                out.append(data)
            elif kind is manager.EventKind.ERR:
                err.append(data)
            else:
                rc = data
        assert isinstance(rc, int)
        return rc, b"".join(out), b"".join(err)  # type: ignore[arg-type]

    def plain(self, payload: bytes, env: Optional[Dict[str, str]] = None, sleep0: bool = False) -> Result:
        """What Ansible's plain pipelined run gets: ``/bin/sh -c python3`` (``&& sleep 0`` before 2.21)."""
        command = self.python + (" && sleep 0" if sleep0 else "")
        done = subprocess.run(
            ["/bin/sh", "-c", command],
            input=payload,
            capture_output=True,
            env=dict(self.env, **(env or {})),
            cwd=self.cwd,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr

    def stop(self) -> int:
        self.executor.close()
        return self.proc.wait()


def module_json(out: bytes) -> dict:
    """The module's result; ``argv0`` without the payload's temporary directory (a random name in every run)."""
    result = json.loads(out.decode().strip().splitlines()[-1])
    if "argv0" in result:
        result["argv0"] = result["argv0"].split("_payload.zip/", 1)[1]
    return result
