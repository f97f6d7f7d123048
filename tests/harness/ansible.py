"""Running the real ``ansible-playbook`` / ``ansible`` against the checkout as the collection.

Integration tests must exercise what users run: the real executor forking a worker per task,
loading ``healer.pooled_ssh`` from ``ANSIBLE_COLLECTIONS_PATH``. Each test gets its own pool
directory (hence its own pool daemon) and its own known_hosts, so tests never share state.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from .pool import PID_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTION_NAMESPACE = "healer"
COLLECTION_NAME = "pooled_ssh"
JSON_CALLBACK = "harness_json"
_JSON_BEGIN = "=== HARNESS JSON BEGIN ==="
_JSON_END = "=== HARNESS JSON END ==="
_RECAP_KEYS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")


def collections_root(base: Any) -> Path:
    """Make ``<base>/ansible_collections/healer/pooled_ssh`` a symlink to this checkout.

    ``base`` is a directory or a pytest ``TempPathFactory``. Returns the directory to put on
    ``ANSIBLE_COLLECTIONS_PATH`` (and on ``sys.path`` for unit tests).
    """
    root = Path(base.mktemp("collections")) if hasattr(base, "mktemp") else Path(base)
    ns_dir = root / "ansible_collections" / COLLECTION_NAMESPACE
    ns_dir.mkdir(parents=True, exist_ok=True)
    link = ns_dir / COLLECTION_NAME
    if link.is_symlink() and Path(os.readlink(link)) != REPO_ROOT:
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    return root


# --------------------------------------------------------------------------- results


#: ``auto`` (default, as the option's own default) or ``off``: the ``remote_executor`` every run of the suite uses.
REMOTE_EXECUTOR_ENV = "HEALER_TEST_REMOTE_EXECUTOR"


@dataclass
class Result:
    """Outcome of one ansible(-playbook) run; stdout/stderr are complete once it exited."""

    args: List[str]
    rc: int
    stdout: str
    stderr: str
    duration: float
    env: Dict[str, str] = field(repr=False, default_factory=dict)

    def recap(self) -> Dict[str, Dict[str, int]]:
        """PLAY RECAP as {host: {ok, changed, unreachable, failed, skipped, rescued, ignored}}."""
        out: Dict[str, Dict[str, int]] = {}
        in_recap = False
        for line in self.stdout.splitlines():
            if line.startswith("PLAY RECAP"):
                in_recap = True
                continue
            if not in_recap:
                continue
            m = re.match(r"^(\S+)\s+:\s+(.*\S)\s*$", line)
            if not m:
                if line.strip():
                    in_recap = False
                continue
            counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
            out[m.group(1)] = {k: counts.get(k, 0) for k in _RECAP_KEYS}
        return out

    def json(self) -> Dict[str, Any]:
        """The document printed by the harness JSON callback (see ``run_json``), or stdout
        parsed as JSON (e.g. a json stdout callback from a collection)."""
        text = self.stdout
        if _JSON_BEGIN in text:
            text = text.split(_JSON_BEGIN, 1)[1].split(_JSON_END, 1)[0]
        try:
            return json.loads(text)
        except ValueError as exc:
            raise AssertionError(f"no JSON in ansible output ({exc}):\n{self.output_tail()}") from None

    def output_tail(self, lines: int = 60) -> str:
        """Last lines of stdout and stderr, for assertion messages."""
        out = "\n".join(self.stdout.splitlines()[-lines:])
        err = "\n".join(self.stderr.splitlines()[-lines:])
        return f"$ {' '.join(self.args)}\nrc={self.rc}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"

    def assert_ok(self) -> Result:
        """Fail with the output when the run failed; returns self for chaining."""
        if self.rc != 0:
            raise AssertionError(f"ansible failed:\n{self.output_tail()}")
        return self


@dataclass
class JsonRun:
    """A run with the harness JSON callback: per-host task results in play order."""

    result: Result
    data: Dict[str, Any]
    hosts: Dict[str, List[Dict[str, Any]]]
    stats: Dict[str, Dict[str, int]]

    @property
    def rc(self) -> int:
        return self.result.rc

    def task(self, host: str, name: str) -> Dict[str, Any]:
        """The result of the (last) task called ``name`` on ``host``."""
        for res in reversed(self.hosts.get(host, [])):
            if res.get("_task") == name:
                return res
        raise KeyError(
            f"no result for task {name!r} on {host!r}; have {[r.get('_task') for r in self.hosts.get(host, [])]}"
        )


def _per_host(data: Mapping[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    hosts: Dict[str, List[Dict[str, Any]]] = {}
    for play in data.get("plays", []):
        for task in play.get("tasks", []):
            for host, res in task.get("hosts", {}).items():
                entry = dict(res)
                entry["_task"] = task["task"]["name"]
                entry["_play"] = play["play"]["name"]
                hosts.setdefault(host, []).append(entry)
    return hosts


class AnsibleTimeout(AssertionError):
    """ansible-playbook ran past the test's bound; its process group was killed."""


# The stdout callback used by run_json(): ansible-core ships no JSON callback (ansible.posix
# does), and the tests must not depend on another collection. Same shape as ansible.posix.json.
_CALLBACK_SOURCE = f'''
from __future__ import annotations

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: {JSON_CALLBACK}
    type: stdout
    short_description: test harness JSON output
    description: Prints every task result of the run as one JSON document (plays/tasks/hosts/stats).
"""


def _attr(result, name):
    value = getattr(result, name, None)  # ansible-core >= 2.19
    return value if value is not None else getattr(result, "_" + name)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "{JSON_CALLBACK}"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plays = []
        self.tasks = {{}}

    def v2_playbook_on_play_start(self, play):
        self.plays.append({{"play": {{"name": play.get_name(), "id": str(play._uuid)}}, "tasks": []}})

    def _task_start(self, task):
        entry = {{"task": {{"name": task.get_name(), "id": str(task._uuid)}}, "hosts": {{}}}}
        if not self.plays:
            self.plays.append({{"play": {{"name": "", "id": ""}}, "tasks": []}})
        self.plays[-1]["tasks"].append(entry)
        self.tasks[str(task._uuid)] = entry

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_start(task)

    def _record(self, result, **flags):
        task = _attr(result, "task")
        host = _attr(result, "host")
        entry = self.tasks.get(str(task._uuid))
        if entry is None:
            self._task_start(task)
            entry = self.tasks[str(task._uuid)]
        data = json.loads(self._dump_results(_attr(result, "result"), keep_invocation=True))
        data.update(flags)
        data["action"] = task.action
        entry["hosts"][host.get_name()] = data

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._record(result, failed=True, ignore_errors=bool(ignore_errors))

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._record(result, unreachable=True)

    def v2_runner_on_skipped(self, result, **kwargs):
        self._record(result, skipped=True)

    def v2_playbook_on_stats(self, stats):
        summary = {{h: stats.summarize(h) for h in sorted(stats.processed.keys())}}
        doc = {{"plays": self.plays, "stats": summary}}
        self._display.display("{_JSON_BEGIN}")
        self._display.display(json.dumps(doc, indent=2, sort_keys=True, default=str))
        self._display.display("{_JSON_END}")
'''


# --------------------------------------------------------------------------- runner


class AnsibleRunner:
    """Runs ansible-playbook/ansible from ``python_bin_dir`` (default: this interpreter's venv)
    with a hermetic environment pointing at the test's pool dir and known_hosts."""

    def __init__(
        self,
        workdir: Union[str, Path],
        collections_root: Union[str, Path],
        pool_dir: Union[str, Path],
        known_hosts: Union[str, Path],
        python_bin_dir: Union[str, Path, None] = None,
        pipelining: bool = True,
        extra_env: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.collections_root = Path(collections_root)
        self.pool_dir = Path(pool_dir)
        self.known_hosts = Path(known_hosts)
        self.bin_dir = Path(python_bin_dir) if python_bin_dir is not None else Path(sys.executable).parent
        self.pipelining = pipelining
        self.extra_env: Dict[str, str] = dict(extra_env or {})
        self._counter = itertools.count(1)
        self.callback_dir = self.workdir / "harness_callbacks"
        self.callback_dir.mkdir(exist_ok=True)
        (self.callback_dir / f"{JSON_CALLBACK}.py").write_text(_CALLBACK_SOURCE, encoding="utf-8")
        self.config_path = self.workdir / "ansible.cfg"
        if not self.config_path.exists():
            # An explicit (empty) config keeps ~/.ansible.cfg and /etc/ansible out of the tests;
            # a test may rewrite it.
            self.config_path.write_text("[defaults]\n", encoding="utf-8")
        self.last: Optional[Result] = None

    def env(self, extra: Optional[Mapping[str, Optional[str]]] = None) -> Dict[str, str]:
        """The environment of a run. Inherited ``ANSIBLE_*``/``SSH_POOL_*`` variables are
        dropped so the developer's shell cannot change a test; ``extra`` wins (None removes)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "SSH_POOL_"))}
        env.update(
            {
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
                "LC_ALL": "C.UTF-8",
                "LANG": "C.UTF-8",
                "ANSIBLE_CONFIG": str(self.config_path),
                "ANSIBLE_COLLECTIONS_PATH": str(self.collections_root),
                "ANSIBLE_POOLED_SSH_POOL_DIR": str(self.pool_dir),
                "ANSIBLE_POOLED_SSH_KNOWN_HOSTS_FILE": str(self.known_hosts),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_RETRY_FILES_ENABLED": "0",
                "ANSIBLE_HOME": str(self.workdir / ".ansible"),
                "ANSIBLE_LOCAL_TEMP": str(self.workdir / ".ansible" / "tmp"),
                "ANSIBLE_PIPELINING": "1" if self.pipelining else "0",
                # The whole suite runs with the remote executor and without it (CI sets this).
                "ANSIBLE_POOLED_SSH_REMOTE_EXECUTOR": os.environ.get(REMOTE_EXECUTOR_ENV, "auto"),
            }
        )
        env.update(self.extra_env)
        for key, value in (extra or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        return env

    def executable(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{name} not found in {self.bin_dir}")
        return str(path)

    def _write_playbook(self, playbook: Union[str, Path], n: int) -> Path:
        if isinstance(playbook, Path):
            return playbook
        path = self.workdir / f"run{n:03d}-playbook.yml"
        path.write_text(playbook, encoding="utf-8")
        return path

    def run(
        self, argv: Sequence[str], env: Optional[Mapping[str, Optional[str]]] = None, timeout: float = 600, n: int = 0
    ) -> Result:
        """Run a command in the test's environment with output to files (a pool daemon that
        inherits our stdout must not keep us waiting for EOF); kill its process group on timeout."""
        n = n or next(self._counter)
        out_path = self.workdir / f"run{n:03d}.stdout"
        err_path = self.workdir / f"run{n:03d}.stderr"
        full_env = self.env(env)
        start = time.monotonic()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                list(argv),
                cwd=self.workdir,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                res = Result(list(argv), -9, _read(out_path), _read(err_path), time.monotonic() - start, full_env)
                raise AnsibleTimeout(f"timed out after {timeout}s:\n{res.output_tail()}") from None
        res = Result(list(argv), rc, _read(out_path), _read(err_path), time.monotonic() - start, full_env)
        self.last = res
        return res

    def playbook(
        self,
        playbook: Union[str, Path],
        inventory: Union[str, Path],
        *args: str,
        env: Optional[Mapping[str, Optional[str]]] = None,
        timeout: float = 600,
    ) -> Result:
        """Run ansible-playbook; ``playbook`` is YAML text (written to a file) or a Path."""
        n = next(self._counter)
        path = self._write_playbook(playbook, n)
        argv = [self.executable("ansible-playbook"), "-i", str(inventory), *args, str(path)]
        return self.run(argv, env=env, timeout=timeout, n=n)

    def run_json(
        self,
        playbook: Union[str, Path],
        inventory: Union[str, Path],
        *args: str,
        env: Optional[Mapping[str, Optional[str]]] = None,
        timeout: float = 600,
    ) -> JsonRun:
        """Run a playbook with the harness JSON stdout callback and return per-host results."""
        env = dict(env or {})
        paths = [str(self.callback_dir)]
        if env.get("ANSIBLE_CALLBACK_PLUGINS"):
            paths.append(str(env["ANSIBLE_CALLBACK_PLUGINS"]))
        env["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join(paths)
        env["ANSIBLE_STDOUT_CALLBACK"] = JSON_CALLBACK
        result = self.playbook(playbook, inventory, *args, env=env, timeout=timeout)
        data = result.json()
        return JsonRun(result, data, _per_host(data), data.get("stats", {}))

    def adhoc(
        self,
        pattern: str,
        module: str,
        args: Optional[str],
        inventory: Union[str, Path],
        *extra: str,
        env: Optional[Mapping[str, Optional[str]]] = None,
        timeout: float = 600,
    ) -> Result:
        """Run ``ansible <pattern> -m <module> [-a <args>]``."""
        argv = [self.executable("ansible"), pattern, "-i", str(inventory), "-m", module]
        if args is not None:
            argv += ["-a", args]
        return self.run([*argv, *extra], env=env, timeout=timeout)


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the run's process group, then SIGKILL after a bound."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------- pool daemon


def _process_start_epoch(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/stat", encoding="utf-8") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _process_state(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _process_uid(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _alive(pid: int) -> bool:
    state = _process_state(pid)
    return state is not None and state != "Z"


def stop_pool(pool_dir: Union[str, Path], timeout: float = 15.0) -> Optional[int]:
    """Stop the pool daemon of ``pool_dir`` (teardown): SIGTERM, wait, SIGKILL fallback.

    Contract: the daemon keeps ``<pool_dir>/daemon-v<protocol>.pid`` (``pool.PID_FILE``) while alive.
    A missing file means no daemon. A pid that is not ours, or a process started after the pid file was written
    (a stale file whose pid was reused), is left alone. Returns the pid signalled, if any.
    """
    pid_path = Path(pool_dir) / PID_FILE
    try:
        text = pid_path.read_text(encoding="ascii", errors="replace")
        mtime = pid_path.stat().st_mtime
    except OSError:
        return None
    try:
        pid = int(text.split()[0])
    except (IndexError, ValueError):
        return None
    if pid <= 1 or pid == os.getpid() or not _alive(pid) or _process_uid(pid) != os.getuid():
        return None
    started = _process_start_epoch(pid)
    if started is not None and started > mtime + 2.0:
        return None  # pid reused by an unrelated, newer process
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 10.0
        while _alive(pid) and time.monotonic() < kill_deadline:
            time.sleep(0.05)
    return pid
