"""Real Dropbear servers on loopback, as the harness runs real sshd.

Dropbear (OpenWrt, many appliances and containers) behaves differently from OpenSSH where the
pool cares: it closes channels early, runs SFTP through the user's shell (so a shell that
prints breaks it), and Debian 12's 2022.83 kills the whole connection when a pre-opened channel
is used after a child exited. Tests must meet the real server, so this is Debian's
``dropbear-bin``, started and stopped like :class:`~harness.sshd.SshdHost`.

Dropbear has no config file: it reads ``~/.ssh/authorized_keys`` of the login user and runs
SFTP as ``/usr/lib/sftp-server``. Each host therefore runs in a mount namespace of its own
(root only, as in CI) with a private home for the test user (its own ``authorized_keys`` and
``.bashrc``) and, for a host without SFTP, an empty directory over sftp-server's directory:
what a system without ``openssh-sftp-server`` looks like. Nothing changes outside it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

from .sshd import (
    Fleet,
    HarnessError,
    SshdHost,
    _apt_install,
    home_of,
    is_root,
    needs_root,
    private_mounts,
    started_fleets,
)

DROPBEAR_CANDIDATES = ("/usr/sbin/dropbear", "/usr/local/sbin/dropbear")
#: Where Debian's dropbear runs its SFTP subsystem from (a link into openssh's sftp-server).
SFTP_SERVER = "/usr/lib/sftp-server"


def dropbear_binary() -> Optional[str]:
    for candidate in DROPBEAR_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("dropbear")
    return os.path.abspath(found) if found else None


def ensure_dropbear() -> str:
    """The dropbear path, installing dropbear-bin when root; every host needs root (namespaces)."""
    needs_root("Dropbear hosts run in a mount namespace of their own")
    binary = dropbear_binary()
    if binary is None:
        _apt_install("dropbear-bin")
        binary = dropbear_binary()
        if binary is None:
            raise HarnessError("dropbear-bin was installed but no dropbear binary was found")
    return binary


def dropbear_version(binary: Optional[str] = None) -> str:
    """``2022.83``: decides which upstream bugs the server has."""
    proc = subprocess.run([binary or ensure_dropbear(), "-V"], capture_output=True, text=True, timeout=30, check=False)
    match = re.search(r"Dropbear v(\S+)", proc.stderr + proc.stdout)
    if not match:
        raise HarnessError(f"cannot read the Dropbear version: {proc.stderr!r}")
    return match.group(1)


def _sftp_directory() -> str:
    """The directory that holds the real sftp-server (hidden for hosts without SFTP)."""
    real = os.path.realpath(SFTP_SERVER)
    if not os.access(real, os.X_OK):
        if not is_root():
            raise HarnessError(f"{SFTP_SERVER} is missing: install openssh-sftp-server")
        _apt_install("openssh-sftp-server")
        real = os.path.realpath(SFTP_SERVER)
    return os.path.dirname(real)


class DropbearHost(SshdHost):
    """One real Dropbear on ``address:port`` with its own host key, log, home and SFTP choice.

    ``extra_config`` takes sshd-style lines so that :class:`~harness.sshd.Fleet` can drive it;
    only ``PasswordAuthentication yes`` means anything to Dropbear (anything else is an error:
    a test must not believe it configured what Dropbear ignores). ``args`` are more dropbear
    options (``-K 5``, ``-I 30``...).
    """

    SESSION_COMM = "dropbear"
    # Dropbear logs to stderr (-E): one file is both the log and the stderr.
    FILES = ("dropbear.args", "dropbear.log", "dropbear.log", "dropbear.pid", "dropbear_ed25519_host_key")

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
        args: Sequence[str] = (),
    ) -> None:
        self.password_auth = False
        for line in extra_config:
            if " ".join(line.split()).lower() == "passwordauthentication yes":
                self.password_auth = True
            else:
                raise ValueError(f"Dropbear has no equivalent of the sshd line {line!r}: pass dropbear options")
        self.args: List[str] = list(args)
        self.sftp_directory = _sftp_directory()
        super().__init__(name, address, workdir, user, authorized_keys, extra_config, sftp, port, shell_rc or "")
        self.private_home: Path = self.workdir / "home"  # made by SshdHost: shell_rc is never None here
        self._install_authorized_keys()

    def server_binary(self) -> str:
        return ensure_dropbear()

    def _install_authorized_keys(self) -> None:
        """``~/.ssh/authorized_keys`` in the private home, with the modes Dropbear insists on."""
        ssh_dir = self.private_home / ".ssh"
        ssh_dir.mkdir(exist_ok=True)
        shutil.copyfile(self.authorized_keys, ssh_dir / "authorized_keys")
        stat = self.private_home.stat()
        for path in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, stat.st_uid, stat.st_gid)
        ssh_dir.chmod(0o700)
        (ssh_dir / "authorized_keys").chmod(0o600)

    def generate_host_key(self, path: Path, comment: str) -> None:
        """An ed25519 host key in Dropbear's format, and its public half as ``<key>.pub``."""
        if path.exists():
            path.unlink()
        subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(path)], check=True, timeout=60, capture_output=True)
        proc = subprocess.run(
            ["dropbearkey", "-y", "-f", str(path)], check=True, timeout=60, capture_output=True, text=True
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ssh-")), None)
        if line is None:
            raise HarnessError(f"dropbearkey -y printed no public key: {proc.stdout!r}")
        pub = path.with_name(path.name + ".pub")
        pub.write_text(" ".join([*line.split()[:2], comment]) + "\n", encoding="utf-8")
        pub.chmod(0o644)

    # ----------------------------------------------------------------- config and lifecycle

    def default_config(self) -> List[str]:
        return self.dropbear_args()

    def dropbear_args(self) -> List[str]:
        """Foreground, log to stderr, no root, no forwarding, no motd; key auth unless asked."""
        argv = ["-F", "-E", "-w", "-j", "-k", "-m", "-p", f"{self.address}:{self.port}", "-P", str(self.pid_path)]
        for key in self.host_key_paths:
            argv += ["-r", str(key)]
        if not self.password_auth:
            argv.append("-s")
        return argv + self.args

    def write_config(self) -> Path:
        """Dropbear has no config file: the options are written down for the reader of a failure."""
        self.config_path.write_text(" ".join(self.dropbear_args()) + "\n", encoding="utf-8")
        return self.config_path

    def set_config(self, extra_config: Sequence[str], restart: bool = True) -> None:
        raise NotImplementedError("Dropbear has no config file: make a host with other args")

    def command(self) -> List[str]:
        hide = [] if self.sftp else [self.sftp_directory]
        return [*private_mounts([(self.private_home, home_of(self.user))], hide), self.binary, *self.dropbear_args()]

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ----------------------------------------------------------------- observation

    def accepted_count(self, method: Optional[str] = None) -> int:
        """How many logins Dropbear accepted (``Pubkey auth succeeded for``), by sshd's method
        names: 'publickey', 'password'."""
        names = {"pubkey": "publickey", "password": "password"}
        pattern = re.compile(r"(\w+) auth succeeded for ")
        found = (names.get(m.group(1).lower(), m.group(1).lower()) for m in pattern.finditer(self.log_text()))
        return sum(1 for name in found if method is None or name == method)

    def __repr__(self) -> str:
        return f"DropbearHost({self.name!r}, {self.address}:{self.port}, running={self.running})"


class DropbearFleet(Fleet):
    """A :class:`~harness.sshd.Fleet` whose hosts are Dropbear servers (``args`` for each)."""

    def __init__(self, *fleet_args: object, args: Sequence[str] = (), **kwargs: object) -> None:
        self.dropbear_args = list(args)
        super().__init__(*fleet_args, **kwargs)  # type: ignore[arg-type]

    def new_host(self, **kwargs: object) -> SshdHost:
        return DropbearHost(args=self.dropbear_args, **kwargs)  # type: ignore[arg-type]


def fleets(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Body of a ``make_dropbear`` fixture: ``factory(count=1, sftp=, shell_rc=, args=, password=)``
    starts a Dropbear fleet, stopped at teardown. Request the fixture before
    ``make_runner``/``pool_dir`` so that the pool daemon stops first."""
    yield from started_fleets(tmp_path, DropbearFleet, "dropbear", count=1, name_prefix="db")
