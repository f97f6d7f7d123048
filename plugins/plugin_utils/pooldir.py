# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool directory: where it is, what it holds, and how a worker opens it safely.

Everything the pool keeps on disk is named here. A worker resolves the directory once,
walks to it one component at a time by descriptor (as OpenSSH's ``safe_path()`` checks a
key file's ancestors), and then does everything relative to that descriptor: the socket is
reached through ``/proc/self/fd/N``, locks and logs are opened with ``dir_fd``. A local user
who can write to an ancestor could otherwise swap the directory between our check and our
use and listen on the socket's name; here that directory is refused before anything is
opened in it, and a swap after the walk cannot redirect us.

Does not import Ansible or Paramiko.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from typing import List, Mapping, Optional

#: Where the pool lives unless configured otherwise, and the variable that overrides it.
DEFAULT = "~/.ansible/pooled_ssh"
ENV_VAR = "ANSIBLE_POOLED_SSH_POOL_DIR"

SPAWN_LOCK = "spawn.lock"
LOG_FILE = "daemon.log"
STDERR_FILE = "daemon.stderr"
#: Longest path a UNIX socket address can hold on Linux (108 bytes with the NUL).
MAX_SOCKET_PATH = 107
#: Symbolic links followed on the way to the directory before we give up (Linux's own limit).
MAX_SYMLINKS = 40

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def socket_name(version: int) -> str:
    return f"pool-v{version}.sock"


def daemon_lock(version: int) -> str:
    return f"daemon-v{version}.lock"


class PoolDirError(Exception):
    """The pool directory is unsafe or unusable; the message names it, says why and what to do."""


def resolve(configured: Optional[str], environ: Optional[Mapping[str, str]] = None) -> str:
    """The pool directory's absolute path: the option, else the environment variable, else the default."""
    environ = os.environ if environ is None else environ
    return os.path.abspath(os.path.expanduser(configured or environ.get(ENV_VAR) or DEFAULT))


def _who(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid {uid}"


@dataclass
class _Walk:
    pool_dir: str
    uid: int

    def refuse(self, reason: str, hint: str = "") -> PoolDirError:
        hint = hint or "set pool_dir to a directory whose every parent only you and root can write to"
        return PoolDirError(f"pool directory {self.pool_dir}: {reason}; {hint}")

    def check_parent(self, fd: int, shown: str, next_owner: Optional[int]) -> None:
        """A directory on the way: root's or ours, and writable by no one else (sticky: see below)."""
        st = os.fstat(fd)
        if st.st_uid not in (0, self.uid):
            raise self.refuse(f"{shown} is owned by {_who(st.st_uid)}, who could replace the pool directory")
        if st.st_mode & 0o022:
            # A sticky directory (/tmp) lets others add entries but not rename or remove ours.
            if st.st_mode & stat.S_ISVTX and next_owner == self.uid:
                return
            writers = (
                "its group and others"
                if st.st_mode & 0o022 == 0o022
                else ("its group" if st.st_mode & 0o020 else "others")
            )
            raise self.refuse(
                f"{shown} (mode {st.st_mode & 0o7777:04o}) is writable by {writers}, who could "
                "replace the pool directory"
            )


def _lstat_at(fd: int, name: str) -> Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_pool_dir(path: str, create: bool = True, uid: Optional[int] = None) -> int:
    """Walk to ``path`` by descriptor, checking every directory on the way; return the pool dir's fd.

    Refuses (:class:`PoolDirError`) an ancestor owned by another uid or writable by others (a
    sticky one only when the next component is ours), a symbolic link whose directory is
    unsafe, and a pool directory that is not ours with mode 0700 (or stricter). Missing
    components are created 0700 when ``create``; without it a missing directory raises
    FileNotFoundError. The caller owns the returned descriptor.
    """
    uid = os.getuid() if uid is None else uid
    walk = _Walk(path, uid)
    if not os.path.isabs(path):
        raise walk.refuse("is not an absolute path", "set pool_dir to an absolute path")
    todo: List[str] = [c for c in path.split("/") if c and c != "."]
    todo.reverse()
    fd = os.open("/", _DIR_FLAGS)
    shown = "/"
    links = 0
    try:
        while todo:
            name = todo.pop()
            if name == "..":
                parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd, shown = parent, os.path.dirname(shown.rstrip("/")) or "/"
                continue
            st = _lstat_at(fd, name)
            if st is None:
                if not create:
                    raise FileNotFoundError(errno.ENOENT, "no such directory", os.path.join(shown, name))
                walk.check_parent(fd, shown, uid)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fd)
                st = _lstat_at(fd, name)
                if st is None:
                    raise walk.refuse(f"{os.path.join(shown, name)} vanished while it was created")
            if not todo and not stat.S_ISLNK(st.st_mode) and st.st_uid != uid:
                # The pool directory itself is another user's: say that, before what its parent allows.
                raise PoolDirError(
                    f"pool directory {path} is owned by {_who(st.st_uid)}, not you ({uid}): "
                    "set pool_dir to a directory of your own"
                )
            walk.check_parent(fd, shown, st.st_uid)
            here = os.path.join(shown, name)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise walk.refuse(f"more than {MAX_SYMLINKS} symbolic links on the way")
                target = os.readlink(name, dir_fd=fd)
                if st.st_uid not in (0, uid):
                    raise walk.refuse(f"the symbolic link {here} is owned by {_who(st.st_uid)}")
                todo.extend(reversed([c for c in target.split("/") if c and c != "."]))
                if target.startswith("/"):
                    os.close(fd)
                    fd, shown = os.open("/", _DIR_FLAGS), "/"
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise walk.refuse(f"{here} is not a directory", "remove it or set pool_dir")
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd, shown = child, here
        check_pool_fd(fd, path, uid)
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_pool_fd(fd: int, path: str, uid: Optional[int] = None) -> None:
    """The pool directory itself: ours, and only we can enter it."""
    uid = os.getuid() if uid is None else uid
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise PoolDirError(f"pool directory {path} is not a directory: remove it or set pool_dir")
    if st.st_uid != uid:
        raise PoolDirError(
            f"pool directory {path} is owned by {_who(st.st_uid)}, not you ({uid}): "
            "set pool_dir to a directory of your own"
        )
    if st.st_mode & 0o077:
        raise PoolDirError(
            f"pool directory {path} has mode {st.st_mode & 0o777:04o}, which lets others in: "
            f"run 'chmod 700 {path}' or set pool_dir"
        )


def still_there(fd: int, path: str) -> None:
    """Re-check while we wait on the directory: the walk is still safe and ends at this same directory."""
    again = open_pool_dir(path, create=False)
    try:
        a, b = os.fstat(fd), os.fstat(again)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            raise PoolDirError(
                f"pool directory {path} was replaced by another directory while we used it; "
                "find out who did it, or set pool_dir"
            )
    finally:
        os.close(again)


def fd_path(fd: int, name: str, path: str = "") -> str:
    """A name inside the directory open as ``fd``, as a path that cannot be redirected by a swap.

    Without ``/proc`` (not Linux) it is ``path``/``name``: the peer's uid check still holds.
    """
    through_fd = f"/proc/self/fd/{fd}"
    return f"{through_fd}/{name}" if os.path.isdir(through_fd) or not path else os.path.join(path, name)


def open_file(fd: int, name: str, flags: int, mode: int = 0o600) -> int:
    """Open (or create) a regular file in the pool directory: never through a symbolic link."""
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
