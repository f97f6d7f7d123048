"""Real OpenSSH sshd daemons on loopback, one per simulated host.

The pool's behaviour depends on what a real sshd does (MaxStartups drops, MaxSessions refusals,
restarts that leave sessions alive), so tests never fake the server: every host is a real
``sshd -D`` listening on its own 127.0.0.N address and high port, with its own host key and log.

As root (CI), sshd runs as root with privilege separation and logins go to a dedicated
unprivileged user (``healer-test``). As any other user, sshd runs as that user and only that
user can log in (no password authentication): features that need root skip with
``needs root: ...``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import yaml

TEST_USER = "healer-test"
DEFAULT_PASSWORD = "healer-Test-pw-1"
ENCRYPTED_KEY_PASSPHRASE = "healer-key-passphrase"
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/usr/bin/sshd")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class HarnessError(RuntimeError):
    """The test environment cannot provide what a test needs (not a product failure)."""


# --------------------------------------------------------------------------- environment


def is_root() -> bool:
    """Whether we can create users, set passwords and run sshd with privilege separation."""
    return os.geteuid() == 0


def needs_root(reason: str) -> None:
    """Skip the current test (never in CI, where we are root) when not root."""
    if is_root():
        return
    import pytest

    pytest.skip(f"needs root: {reason}")


def _apt_install(*packages: str) -> None:
    """Install Debian packages non-interactively (root only, bounded)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], env=env, check=True, timeout=600, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
        env=env,
        check=True,
        timeout=900,
        stdout=subprocess.DEVNULL,
    )


def sshd_binary() -> Optional[str]:
    """Absolute path of sshd (sshd refuses to re-exec from a relative path)."""
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("sshd")
    return os.path.abspath(found) if found else None


def ensure_openssh_server() -> str:
    """Return the sshd path, installing openssh-server when root; create the privsep dir."""
    binary = sshd_binary()
    if binary is None:
        if not is_root():
            raise HarnessError(
                "sshd (openssh-server) is not installed and we are not root: install openssh-server "
                "(it provides /usr/sbin/sshd) to run the integration tests"
            )
        _apt_install("openssh-server")
        binary = sshd_binary()
        if binary is None:
            raise HarnessError("openssh-server was installed but no sshd binary was found")
    if is_root():
        # sshd (as root) chroots its pre-auth child into this directory and refuses to start without it.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    if shutil.which("ssh-keygen") is None:
        raise HarnessError("ssh-keygen (openssh-client) is required to generate host and client keys")
    return binary


_VERSION_CACHE: Dict[str, Tuple[int, int]] = {}


def sshd_version(binary: Optional[str] = None) -> Tuple[int, int]:
    """(major, minor) of OpenSSH: decides which config keywords exist (PerSourcePenalties: 9.8+)."""
    binary = binary or ensure_openssh_server()
    if binary not in _VERSION_CACHE:
        # "sshd -V" prints the version (older releases print it with a usage message): both to stderr.
        proc = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=30, check=False)
        match = re.search(r"OpenSSH_(\d+)\.(\d+)", proc.stderr + proc.stdout)
        if not match:
            raise HarnessError(f"cannot read the OpenSSH version from {binary} -V: {proc.stderr!r}")
        _VERSION_CACHE[binary] = (int(match.group(1)), int(match.group(2)))
    return _VERSION_CACHE[binary]


def _world_reachable(path: str) -> bool:
    """Whether another (unprivileged) user can execute ``path``: every directory on the way
    must be traversable by others (e.g. interpreters under a 0700 home are not)."""
    real = os.path.realpath(path)
    try:
        if not os.stat(real).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(real)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == os.path.dirname(parent):
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


def target_python() -> str:
    """The interpreter the test user runs modules with (``ansible_python_interpreter``).

    ``/usr/bin/python3`` is preferred: the controller's interpreter often lives under a 0700
    home (e.g. pyenv in root's home) that the test user cannot reach. As root we install python3 when
    it is missing; as non-root the current interpreter works since the test user is us.
    """
    system = "/usr/bin/python3"
    if os.access(system, os.X_OK) and (not is_root() or _world_reachable(system)):
        return system
    if is_root():
        if not os.access(system, os.X_OK):
            _apt_install("python3")
        if os.access(system, os.X_OK) and _world_reachable(system):
            return system
        if _world_reachable(sys.executable):
            return sys.executable
        raise HarnessError(f"no python3 that the user {TEST_USER} can execute was found")
    return sys.executable


def ensure_test_user() -> str:
    """The login user of every fleet host: ``healer-test`` when root (created once, reused,
    never deleted), otherwise the current user (a non-root sshd can only log in as itself)."""
    if not is_root():
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    import pwd

    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        proc = subprocess.run(
            ["useradd", "-m", "-s", "/bin/bash", TEST_USER], capture_output=True, text=True, timeout=60, check=False
        )
        # exit 9: created concurrently by another test process.
        if proc.returncode not in (0, 9):
            raise HarnessError(f"useradd {TEST_USER} failed: {proc.stderr.strip()}") from None
    _unlock_account(TEST_USER)
    return TEST_USER


def _unlock_account(user: str) -> None:
    """With ``UsePAM no`` sshd refuses *every* login to a locked account ('!' in shadow), and
    useradd creates accounts locked: replace '!' by '*' (no usable password, but not locked)."""
    try:
        with open("/etc/shadow", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split(":")
                if fields[0] == user:
                    if fields[1].startswith("!"):
                        subprocess.run(["usermod", "-p", "*", user], check=True, timeout=60, capture_output=True)
                    return
    except OSError as exc:  # pragma: no cover - unusual systems without /etc/shadow
        raise HarnessError(f"cannot read /etc/shadow to unlock {user}: {exc}") from exc


def set_password(user: str, password: str) -> None:
    """Set a login password (for password-auth tests); root only."""
    needs_root("setting a login password needs chpasswd")
    subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True, timeout=60, capture_output=True)


def short_tempdir(prefix: str) -> Path:
    """A fresh, world-traversable (0755) directory with a short path.

    Short: UNIX socket paths are limited to 107 bytes. World-traversable: as root, sshd reads
    authorized_keys with the test user's identity, and pytest's own tmp dirs are 0700.
    """
    base = "/tmp" if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK) else tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o755)
    return path


def generate_key(path: Path, passphrase: str = "", comment: str = "healer-test") -> Path:
    """Generate an ed25519 key pair with ssh-keygen (private key 0600, public key 0644)."""
    if path.exists():
        path.unlink()
    pub = path.with_name(path.name + ".pub")
    if pub.exists():
        pub.unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f", str(path)],
        check=True,
        timeout=60,
        capture_output=True,
    )
    pub.chmod(0o644)
    return path


# --------------------------------------------------------------------------- /proc helpers


def _proc_stat(pid: int) -> Optional[Tuple[str, int, int]]:
    """(state, ppid, starttime) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            data = fh.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[19])


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    st = _proc_stat(pid)
    return st is not None and st[0] != "Z"


def _proc_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def children_of(pid: int) -> List[int]:
    """Direct children of ``pid`` (from /proc; no psutil needed)."""
    result = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _proc_stat(int(entry))
        if st is not None and st[1] == pid:
            result.append(int(entry))
    return result


def descendants_of(pid: int) -> List[int]:
    """All descendants of ``pid``, parents before children."""
    result: List[int] = []
    frontier = [pid]
    seen = {pid}
    for _round in range(64):  # bounded depth
        if not frontier:
            break
        nxt = []
        for parent in frontier:
            for child in children_of(parent):
                if child not in seen:
                    seen.add(child)
                    result.append(child)
                    nxt.append(child)
        frontier = nxt
    return result


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02, what: str = "condition") -> None:
    """Poll ``predicate`` until true or raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- a private home


def private_mounts(binds: Sequence[Tuple[Path, str]], hide: Sequence[str] = ()) -> List[str]:
    """An argv prefix that runs a command in its own mount namespace (root only) with ``binds``
    (source directory, mount point) bind-mounted and the directories in ``hide`` covered by an
    empty tmpfs. The server's sessions inherit the namespace, so a host can have a home of its
    own (its own ``.bashrc``, its own ``~/.ssh``) or no sftp-server, and nothing changes for
    the rest of the machine; the mounts vanish with the namespace's last process."""
    needs_root("a private mount namespace (unshare --mount)")
    script = ["set -e"]
    args: List[str] = []
    for source, target in binds:
        args += [str(source), target]
        script.append(f'mount --bind "${{{len(args) - 1}}}" "${{{len(args)}}}"')
    for directory in hide:
        args.append(directory)
        script.append(f'mount -t tmpfs -o size=64k,mode=755 none "${{{len(args)}}}"')
    script.append(f"shift {len(args)}")
    script.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script), "sh", *args]


def make_home(directory: Path, user: str, shell_rc: str = "") -> Path:
    """A home directory for ``user`` (owned by it, 0755, as servers require) with ``shell_rc``
    as its ``.bashrc`` (e.g. a line that prints: the noisy shells of real fleets)."""
    import pwd

    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".bashrc").write_text(shell_rc, encoding="utf-8")
    entry = pwd.getpwnam(user)
    for path in (directory, directory / ".bashrc"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    directory.chmod(0o755)
    return directory


def home_of(user: str) -> str:
    import pwd

    return pwd.getpwnam(user).pw_dir


# --------------------------------------------------------------------------- sshd_config


def _config_key(line: str) -> str:
    words = line.split()
    if not words:
        return ""
    key = words[0].lower()
    if key == "subsystem" and len(words) > 1:
        return f"subsystem {words[1]}"
    return key


def merge_config(*layers: Sequence[str]) -> List[str]:
    """Merge sshd_config layers, later layers winning per keyword.

    sshd keeps the *first* value it reads for most keywords, so overriding means dropping the
    earlier line, not appending. ``Match`` blocks (everything from a Match line on) go last.
    """
    order: List[str] = []
    values: Dict[str, str] = {}
    matches: List[str] = []
    for layer in layers:
        in_match = False
        for raw in layer:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if in_match or line.lower().startswith("match "):
                in_match = True
                matches.append(line)
                continue
            key = _config_key(line)
            if key not in values:
                order.append(key)
            values[key] = line
    return [values[k] for k in order] + matches


# --------------------------------------------------------------------------- one host


class SshdHost:
    """One real sshd on ``address:port`` with its own config, host key, pid file and log."""

    #: The process name of the server's per-connection processes (what kill_sessions kills).
    SESSION_COMM = "sshd"
    #: Names in the host's workdir: config, log, stderr, pid file, host key.
    FILES = ("sshd_config", "sshd.log", "sshd.stderr", "sshd.pid", "ssh_host_ed25519_key")

    def __init__(
        self,
        name: str,
        address: str,
        workdir: Path,
        user: str,
        authorized_keys: Path,
        extra_config: Sequence[str] = (),
        sftp: bool = True,
        port: Optional[int] = None,
        shell_rc: Optional[str] = None,
    ) -> None:
        self.name = name
        self.address = address
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.user = user
        self.authorized_keys = Path(authorized_keys)
        self.extra_config: List[str] = list(extra_config)
        self.sftp = sftp
        self.port: int = port or 0
        config, log, stderr, pid, host_key = (self.workdir / name for name in self.FILES)
        self.config_path, self.log_path, self.stderr_path, self.pid_path = config, log, stderr, pid
        self.host_key_paths: List[Path] = [host_key]
        #: With ``shell_rc``, the user's home on this host is a private one with that ``.bashrc``.
        self.home: Optional[Path] = None if shell_rc is None else make_home(self.workdir / "home", user, shell_rc)
        self.binary = self.server_binary()
        self._proc: Optional[subprocess.Popen] = None
        # (pid, starttime) of session processes orphaned by kill_listener: stop() still reaps them.
        self._orphans: List[Tuple[int, int]] = []
        self._paused: List[int] = []
        for key in self.host_key_paths:
            if not key.exists():
                self.generate_host_key(key, f"{name}-hostkey")

    def server_binary(self) -> str:
        return ensure_openssh_server()

    def generate_host_key(self, path: Path, comment: str) -> None:
        generate_key(path, comment=comment)

    # ----------------------------------------------------------------- config

    def default_config(self) -> List[str]:
        """The harness's baseline: key auth only, no PAM, every file in the host's workdir."""
        lines = [
            f"ListenAddress {self.address}:{self.port}",
            *(f"HostKey {p}" for p in self.host_key_paths),
            f"PidFile {self.pid_path}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin no",
            "LogLevel VERBOSE",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "UseDNS no",
        ]
        if self.sftp:
            lines.append("Subsystem sftp internal-sftp")
        if sshd_version(self.binary) >= (9, 8):
            # Our own tests provoke failures on purpose: penalties would lock the loopback out.
            lines.append("PerSourcePenalties no")
        return lines

    def write_config(self) -> Path:
        """(Re)write sshd_config: defaults overridden by ``extra_config`` keyword by keyword."""
        text = "\n".join(merge_config(self.default_config(), self.extra_config)) + "\n"
        self.config_path.write_text(text, encoding="utf-8")
        self.config_path.chmod(0o644)
        return self.config_path

    def set_config(self, extra_config: Sequence[str], restart: bool = True) -> None:
        """Replace the extra config lines (and restart, the usual need of a test)."""
        self.extra_config = list(extra_config)
        self.write_config()
        if restart and self.running:
            self.restart()

    # ----------------------------------------------------------------- lifecycle

    @property
    def pid(self) -> Optional[int]:
        """The listener's pid while it runs."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the listener and wait until it answers with an SSH banner."""
        if self.running:
            return
        fixed_port = self.port != 0
        attempts = 5
        last_error = ""
        for _round in range(attempts):
            if not fixed_port:
                self.port = free_port(self.address)
            self.write_config()
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(f"### harness: starting sshd on {self.address}:{self.port}\n")
            self._log_offset_at_start = self.log_path.stat().st_size
            with self.stderr_path.open("ab") as err:
                self._proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    start_new_session=True,
                )
            try:
                self._wait_ready(timeout)
                return
            except _BindFailed as exc:
                last_error = str(exc)
                self._reap()
                if fixed_port:
                    # The port is in inventories and known_hosts: wait for it instead of changing it.
                    with contextlib.suppress(TimeoutError):
                        wait_until(lambda: _port_bindable(self.address, self.port), 5.0, what="port free")
        raise HarnessError(f"sshd {self.name} could not bind after {attempts} attempts: {last_error}")

    def command(self) -> List[str]:
        """The server's argv (in a mount namespace of its own when the host has a private home)."""
        argv = [self.binary, "-D", "-E", str(self.log_path), "-f", str(self.config_path)]
        if self.home is None:
            return argv
        return private_mounts([(self.home, home_of(self.user))]) + argv

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                tail = self.log_tail()
                if "Bind to port" in tail or "Address already in use" in tail:
                    raise _BindFailed(tail)
                raise HarnessError(f"sshd {self.name} exited with {self._proc.returncode}:\n{tail}")
            if _banner(self.address, self.port, 0.5):
                break
            if time.monotonic() >= deadline:
                tail = self.log_tail()
                self._reap()
                raise HarnessError(f"sshd {self.name} did not answer within {timeout}s:\n{tail}")
            time.sleep(0.02)
        # The probe's pre-auth child must be gone before a test counts startups or sessions.
        pid = self.pid
        if pid is not None:
            wait_until(lambda: not [c for c in children_of(pid) if pid_alive(c)], 10.0, what="probe child exit")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the listener and every process its sessions left behind (SIGTERM, then SIGKILL):
        session sshds, orphans of kill_listener, and commands whose session was killed."""
        if self._paused:
            self.resume()
        pid = self.pid
        sessions: List[int] = descendants_of(pid) if pid else []
        self._reap(timeout)
        for opid, start in self._orphans:
            st = _proc_stat(opid)
            if st is not None and st[2] == start:
                sessions.append(opid)
        self._orphans = []
        sessions.extend(self.leftover_commands())
        sessions = list(dict.fromkeys(sessions))
        for p in sessions:
            _signal(p, signal.SIGCONT)
            _signal(p, signal.SIGTERM)
        try:
            wait_until(lambda: not any(pid_alive(p) for p in sessions), timeout, what="session exit")
        except TimeoutError:
            for p in sessions:
                _signal(p, signal.SIGKILL)

    def _reap(self, timeout: float = STOP_TIMEOUT) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        else:
            proc.wait()

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop the listener (sessions included) and start it again on the same port."""
        self.stop()
        self.start(timeout)

    def leftover_commands(self) -> List[int]:
        """Processes started by a login to this host (their ``SSH_CONNECTION`` names our
        address and port), even when their session is gone and they were reparented."""
        suffix = [self.address, str(self.port)]
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    environ = fh.read()
            except OSError:
                continue
            for var in environ.split(b"\0"):
                if var.startswith(b"SSH_CONNECTION="):
                    if var[len(b"SSH_CONNECTION=") :].decode("ascii", "replace").split()[2:4] == suffix:
                        found.append(int(entry))
                    break
        return [p for p in found if pid_alive(p)]

    # ----------------------------------------------------------------- faults

    def session_pids(self) -> List[int]:
        """Per-connection sshd processes (children of the listener)."""
        pid = self.pid
        return [c for c in children_of(pid) if pid_alive(c)] if pid else []

    def kill_listener(self, sig: int = signal.SIGTERM) -> None:
        """Kill only the listener; sessions keep running, as with a real sshd restart."""
        pid = self.pid
        if pid is None:
            return
        for child in descendants_of(pid):
            st = _proc_stat(child)
            if st is not None:
                self._orphans.append((child, st[2]))
        proc, self._proc = self._proc, None
        assert proc is not None
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def kill_sessions(self, sig: int = signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> int:
        """Kill the per-connection sshd processes (not the listener, not the user's commands).

        A killed session makes the client's ``recv_exit_status()`` return -1. Returns how many
        connections were hit."""
        pid = self.pid
        if pid is None:
            return 0
        roots = self.session_pids()
        targets = [p for root in roots for p in [root, *descendants_of(root)] if _proc_comm(p) == self.SESSION_COMM]
        for p in targets:
            _signal(p, sig)
        wait_until(lambda: not any(pid_alive(p) for p in targets), timeout, what="sessions killed")
        return len(roots)

    def pause(self) -> None:
        """SIGSTOP the listener and all its descendants: a silent peer (TCP stays up)."""
        pid = self.pid
        if pid is None:
            return
        _signal(pid, signal.SIGSTOP)
        targets = [pid, *descendants_of(pid)]
        for p in targets[1:]:
            _signal(p, signal.SIGSTOP)
        self._paused = targets

    def resume(self) -> None:
        """SIGCONT everything pause() stopped (and any descendant since)."""
        pid = self.pid
        targets = list(self._paused)
        if pid is not None:
            targets += [pid, *descendants_of(pid)]
        for p in dict.fromkeys(targets):
            _signal(p, signal.SIGCONT)
        self._paused = []

    def replace_host_key(self, restart: bool = True) -> str:
        """Generate a new host key (a "changed host key" scenario); returns the new known_hosts
        line. The fleet's known_hosts keeps the old key on purpose."""
        for key in self.host_key_paths:
            self.generate_host_key(key, f"{self.name}-hostkey-replaced")
        if restart and self.running:
            self.restart()
        return self.host_key_line()

    # ----------------------------------------------------------------- observation

    def host_key_line(self) -> str:
        """known_hosts line: ``[127.0.0.N]:port ssh-ed25519 AAAA...``."""
        lines = []
        for key in self.host_key_paths:
            keytype, blob = key.with_name(key.name + ".pub").read_text(encoding="utf-8").split()[:2]
            lines.append(f"[{self.address}]:{self.port} {keytype} {blob}")
        return "\n".join(lines)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_text().splitlines()[-lines:]
        try:
            err = self.stderr_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            err = []
        return "\n".join(text + (["--- stderr ---", *err] if err else []))

    def accepted_count(self, method: Optional[str] = None) -> int:
        """How many logins sshd accepted (``Accepted <method> for``), e.g. 'publickey', 'password'."""
        pattern = re.compile(r"Accepted (\S+) for ")
        return sum(1 for m in pattern.finditer(self.log_text()) if method is None or m.group(1) == method)

    def wait_for_log(self, regex: str, timeout: float = 10.0, count: int = 1) -> re.Match:
        """Poll the log until ``regex`` matched ``count`` times; returns the last match."""
        pattern = re.compile(regex)
        found: List[re.Match] = []

        def check() -> bool:
            found[:] = list(pattern.finditer(self.log_text()))
            return len(found) >= count

        try:
            wait_until(check, timeout, what=f"{regex!r} in {self.log_path}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail()}") from None
        return found[-1]

    def __repr__(self) -> str:
        return f"SshdHost({self.name!r}, {self.address}:{self.port}, running={self.running})"


class _BindFailed(HarnessError):
    pass


def free_port(address: str) -> int:
    """A free high port on ``address`` (bind port 0, read it, close). Racy by nature: the
    caller retries when sshd fails to bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _port_bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
        return True


def _banner(address: str, port: int, timeout: float) -> bool:
    """Whether ``address:port`` answers with an SSH-2.0 identification line."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            data = b""
            deadline = time.monotonic() + timeout
            while b"\n" not in data and time.monotonic() < deadline:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"SSH-2.0-")
    except OSError:
        return False


# --------------------------------------------------------------------------- a fleet


class Fleet:
    """N sshd hosts on 127.0.0.2, 127.0.0.3, ... sharing one client key and known_hosts.

    Use as a context manager (or call start()/stop()); stop() always stops every daemon.
    """

    def __init__(
        self,
        tmp_path: Optional[Path] = None,
        count: int = 5,
        extra_config: Sequence[str] = (),
        per_host_config: Optional[Dict[str, Sequence[str]]] = None,
        password: Optional[str] = None,
        encrypted_key_passphrase: Optional[str] = None,
        sftp: bool = True,
        name_prefix: str = "host",
        shell_rc: Optional[str] = None,
    ) -> None:
        if not 1 <= count <= 250:
            raise ValueError("count must be between 1 and 250 (127.0.0.2 .. 127.0.0.251)")
        ensure_openssh_server()
        self.user = ensure_test_user()
        self.python = target_python()
        self.password = password
        if password is not None:
            set_password(self.user, password)  # skips (needs root) before anything is created
            extra_config = ["PasswordAuthentication yes", *extra_config]
        # Files sshd reads as the test user must be reachable by it: pytest's tmp dirs are
        # 0700, so the fleet keeps its own short 0755 directory (tmp_path only gets a pointer).
        self.dir = short_tempdir("hf-")
        self._tmp_path = Path(tmp_path) if tmp_path is not None else None
        self.hosts: List[SshdHost] = []
        self.shell_rc = shell_rc
        try:
            self._setup(count, extra_config, per_host_config, encrypted_key_passphrase, sftp, name_prefix)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self._started = False

    def _setup(
        self,
        count: int,
        extra_config: Sequence[str],
        per_host_config: Optional[Dict[str, Sequence[str]]],
        encrypted_key_passphrase: Optional[str],
        sftp: bool,
        name_prefix: str,
    ) -> None:
        if self._tmp_path is not None:
            self._tmp_path.mkdir(parents=True, exist_ok=True)
            (self._tmp_path / "fleet-dir.txt").write_text(str(self.dir) + "\n", encoding="utf-8")
        self.client_key: Path = generate_key(self.dir / "id_ed25519", comment="healer-client")
        self.encrypted_key: Optional[Path] = None
        self.encrypted_key_passphrase = encrypted_key_passphrase
        pubkeys = [self.client_key.with_name("id_ed25519.pub").read_text(encoding="utf-8").strip()]
        if encrypted_key_passphrase is not None:
            self.encrypted_key = generate_key(
                self.dir / "id_ed25519_enc", passphrase=encrypted_key_passphrase, comment="healer-client-enc"
            )
            pubkeys.append(self.encrypted_key.with_name("id_ed25519_enc.pub").read_text(encoding="utf-8").strip())
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text("\n".join(pubkeys) + "\n", encoding="utf-8")
        self.authorized_keys.chmod(0o644)
        self.known_hosts = self.dir / "known_hosts"
        per_host_config = dict(per_host_config or {})
        for i in range(count):
            name = f"{name_prefix}{i + 1}"
            self.hosts.append(
                self.new_host(
                    name=name,
                    address=f"127.0.0.{i + 2}",
                    workdir=self.dir / name,
                    user=self.user,
                    authorized_keys=self.authorized_keys,
                    extra_config=merge_config(extra_config, per_host_config.pop(name, ())),
                    sftp=sftp,
                    shell_rc=self.shell_rc,
                )
            )
        if per_host_config:
            raise ValueError(f"per_host_config names unknown hosts: {sorted(per_host_config)}")

    def new_host(self, **kwargs: object) -> SshdHost:
        """One host of the fleet (a subclass may serve it with another SSH server)."""
        return SshdHost(**kwargs)  # type: ignore[arg-type]

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __iter__(self) -> Iterator[SshdHost]:
        return iter(self.hosts)

    def start(self) -> Fleet:
        """Start every host (stopping those already started if one fails) and write known_hosts."""
        try:
            for host in self.hosts:
                host.start()
        except BaseException:
            self.stop()
            raise
        self._started = True
        self.write_known_hosts()
        return self

    def stop(self) -> None:
        """Stop every daemon (errors of one host do not prevent stopping the others)."""
        errors = []
        for host in self.hosts:
            try:
                host.stop()
            except Exception as exc:
                errors.append(f"{host.name}: {exc}")
        if errors:
            raise HarnessError("failed to stop: " + "; ".join(errors))

    def cleanup(self) -> None:
        """Stop, keep the sshd logs next to the test (``tmp_path``) and remove the fleet dir."""
        try:
            self.stop()
        finally:
            if self._tmp_path is not None:
                for host in self.hosts:
                    with contextlib.suppress(OSError):
                        shutil.copyfile(host.log_path, self._tmp_path / f"{host.name}-sshd.log")
            shutil.rmtree(self.dir, ignore_errors=True)

    def host(self, name: str) -> SshdHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def write_known_hosts(self, path: Optional[Path] = None, hosts: Optional[Iterable[SshdHost]] = None) -> Path:
        """Write ``[addr]:port`` host key lines of ``hosts`` (default: all) to ``path``."""
        path = Path(path) if path is not None else self.known_hosts
        selected = self.hosts if hosts is None else list(hosts)
        path.write_text("".join(h.host_key_line() + "\n" for h in selected), encoding="utf-8")
        return path

    def write_inventory(
        self,
        path: Path,
        connection: str = "healer.pooled_ssh.pooled_ssh",
        host_vars: Optional[Dict[str, Dict[str, object]]] = None,
        group_vars: Optional[Dict[str, object]] = None,
        key: Optional[Path] = None,
        use_key: bool = True,
        hosts: Optional[Iterable[SshdHost]] = None,
        group: str = "fleet",
    ) -> Path:
        """A YAML inventory with every host in group ``group`` (and ``all``).

        ``key`` defaults to the fleet's client key; ``use_key=False`` omits
        ``ansible_ssh_private_key_file`` (password tests). ``host_vars`` are merged per host.
        """
        path = Path(path)
        key = key if key is not None else self.client_key
        selected = self.hosts if hosts is None else list(hosts)
        host_vars = host_vars or {}
        entries: Dict[str, Dict[str, object]] = {}
        for host in selected:
            hv: Dict[str, object] = {
                "ansible_host": host.address,
                "ansible_port": host.port,
                "ansible_user": host.user,
                "ansible_python_interpreter": self.python,
            }
            if use_key:
                hv["ansible_ssh_private_key_file"] = str(key)
            hv.update(host_vars.get(host.name, {}))
            entries[host.name] = hv
        group_body: Dict[str, object] = {"hosts": entries}
        all_vars: Dict[str, object] = {"ansible_connection": connection}
        all_vars.update(group_vars or {})
        data = {"all": {"vars": all_vars, "children": {group: group_body}}}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return f"Fleet({[h.name for h in self.hosts]}, dir={self.dir})"


def started_fleets(
    tmp_path: Path, fleet_class: Callable[..., Fleet] = Fleet, prefix: str = "fleet", **defaults: object
) -> Iterator[Callable[..., Fleet]]:
    """Body of a fleet-factory fixture: ``factory(count=5, **kwargs)`` starts a fleet of
    ``fleet_class`` (``defaults`` under ``kwargs``); teardown stops and removes every one,
    keeping their logs in ``tmp_path``."""
    import pytest

    fleets: List[Fleet] = []

    def factory(**kwargs: object) -> Fleet:
        fleet = fleet_class(tmp_path / f"{prefix}{len(fleets)}", **{"count": 5, **defaults, **kwargs})
        fleets.append(fleet)
        fleet.start()
        return fleet

    try:
        yield factory
    finally:
        errors = []
        for fleet in reversed(fleets):
            try:
                fleet.cleanup()
            except Exception as exc:
                errors.append(repr(exc))
        if errors:
            pytest.fail(f"{prefix} teardown failed: " + "; ".join(errors))
