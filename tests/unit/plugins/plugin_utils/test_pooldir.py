"""The pool directory, opened by descriptor: every ancestor checked as OpenSSH's safe_path() does."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterator

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import pooldir

OTHER_UID = 54321  # no account needed: ownership is all that is checked

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root: files owned by another uid")


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    """A private tree under pytest's (safe) temporary directory."""
    root = tmp_path / "b"
    root.mkdir(mode=0o755)
    yield root


def _open(path: Path, **kw) -> int:
    return pooldir.open_pool_dir(str(path), **kw)


def _mkdir(path: Path, mode: int, owner: int = -1) -> Path:
    """A directory with exactly ``mode`` (mkdir's is masked by the umask), optionally another uid's."""
    path.mkdir()
    path.chmod(mode)
    if owner != -1:
        os.chown(path, owner, owner)
    return path


def test_creates_the_missing_directories_0700_and_returns_a_descriptor(base: Path) -> None:
    pool = base / "a" / "pool"
    fd = _open(pool)
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(pool))
        assert (pool.stat().st_mode & 0o777, (base / "a").stat().st_mode & 0o777) == (0o700, 0o700)
    finally:
        os.close(fd)


def test_missing_without_create_is_file_not_found(base: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _open(base / "nope", create=False)
    assert not (base / "nope").exists()


@needs_root
def test_an_ancestor_owned_by_another_uid_is_refused(base: Path) -> None:
    shared = _mkdir(base / "shared", 0o755, OTHER_UID)
    pool = _mkdir(shared / "pool", 0o700)
    with pytest.raises(pooldir.PoolDirError) as info:
        _open(pool)
    message = str(info.value)
    assert message.startswith(f"pool directory {pool}: {shared} is owned by uid {OTHER_UID}"), message
    assert "\n" not in message


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_an_ancestor_writable_by_others_is_refused(base: Path, mode: int) -> None:
    shared = _mkdir(base / "shared", mode)
    with pytest.raises(pooldir.PoolDirError, match=rf"{shared} \(mode {mode:04o}\) is writable by"):
        _open(shared / "pool")
    assert not (shared / "pool").exists(), "nothing is created under an unsafe ancestor"


def test_a_sticky_directory_is_allowed_when_the_next_component_is_ours(base: Path) -> None:
    tmp = _mkdir(base / "tmp", 0o1777)
    os.close(_open(tmp / "mine" / "pool"))


@needs_root
def test_a_sticky_directory_is_refused_when_the_next_component_is_not_ours(base: Path) -> None:
    theirs = _mkdir(_mkdir(base / "tmp", 0o1777) / "theirs", 0o755, OTHER_UID)
    with pytest.raises(pooldir.PoolDirError, match=r"is writable by its group and others"):
        _open(theirs / "pool")


def test_a_symbolic_link_in_a_safe_place_is_followed(base: Path) -> None:
    real = _mkdir(base / "real", 0o700)
    (base / "link").symlink_to(real)
    fd = _open(base / "link" / "pool")
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(real / "pool"))
    finally:
        os.close(fd)


def test_a_symbolic_link_in_an_unsafe_directory_is_refused(base: Path) -> None:
    real = _mkdir(base / "real", 0o700)
    shared = _mkdir(base / "shared", 0o777)
    (shared / "link").symlink_to(real)
    with pytest.raises(pooldir.PoolDirError, match=rf"{shared} \(mode 0777\)"):
        _open(shared / "link" / "pool")


def test_the_real_path_behind_a_link_is_checked_too(base: Path) -> None:
    open_dir = _mkdir(base / "open", 0o777)
    (base / "link").symlink_to(open_dir)
    with pytest.raises(pooldir.PoolDirError, match=r"is writable by"):
        _open(base / "link" / "pool")


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o755])
def test_a_pool_dir_others_can_enter_is_refused(base: Path, mode: int) -> None:
    pool = _mkdir(base / "pool", mode)
    with pytest.raises(pooldir.PoolDirError, match=rf"has mode {mode:04o}, which lets others in"):
        _open(pool)


@needs_root
def test_a_pool_dir_of_another_uid_is_refused(base: Path) -> None:
    pool = _mkdir(base / "pool", 0o700, OTHER_UID)
    with pytest.raises(pooldir.PoolDirError, match=rf"is owned by uid {OTHER_UID}"):
        _open(pool)


def test_a_pool_dir_that_is_a_file_is_refused(base: Path) -> None:
    (base / "pool").write_text("")
    with pytest.raises(pooldir.PoolDirError, match="is not a directory"):
        _open(base / "pool")


def test_relative_paths_are_refused() -> None:
    with pytest.raises(pooldir.PoolDirError, match="is not an absolute path"):
        pooldir.open_pool_dir("relative/pool")


def test_a_swap_after_the_walk_is_noticed_and_cannot_redirect(base: Path) -> None:
    pool = base / "pool"
    fd = _open(pool)
    try:
        pooldir.still_there(fd, str(pool))
        pool.rename(base / "moved")
        (base / "pool").mkdir(mode=0o700)
        with pytest.raises(pooldir.PoolDirError, match="was replaced by another directory"):
            pooldir.still_there(fd, str(pool))
        # Names resolved through the descriptor still reach the directory we checked.
        os.close(pooldir.open_file(fd, "probe", os.O_WRONLY | os.O_CREAT))
        assert (base / "moved" / "probe").exists() and not (base / "pool" / "probe").exists()
    finally:
        os.close(fd)


def test_a_socket_is_reached_through_the_descriptor(base: Path) -> None:
    fd = _open(base / "pool")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(base / "pool" / "s.sock"))
        listener.listen(1)
        client.connect(pooldir.fd_path(fd, "s.sock"))
        peer, _addr = listener.accept()
        peer.close()
    finally:
        client.close()
        listener.close()
        os.close(fd)


def test_open_file_never_follows_a_link(base: Path) -> None:
    fd = _open(base / "pool")
    try:
        (base / "pool" / "spawn.lock").symlink_to(base / "elsewhere")
        with pytest.raises(OSError):
            pooldir.open_file(fd, "spawn.lock", os.O_WRONLY | os.O_CREAT)
        assert not (base / "elsewhere").exists()
    finally:
        os.close(fd)


def test_resolve_prefers_the_option_then_the_environment() -> None:
    assert pooldir.resolve("/x/p", {pooldir.ENV_VAR: "/y"}) == "/x/p"
    assert pooldir.resolve(None, {pooldir.ENV_VAR: "/y/p"}) == "/y/p"
    assert pooldir.resolve(None, {}) == os.path.expanduser(pooldir.DEFAULT)
