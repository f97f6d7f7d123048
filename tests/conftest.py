"""Shared fixtures: real sshd fleets, a per-test pool directory and an Ansible runner.

Every process a fixture starts (sshd daemons, the pool daemon of the test's pool dir) is
stopped in the fixture's teardown, also when the test fails.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from harness.ansible import AnsibleRunner, stop_pool  # noqa: E402
from harness.ansible import collections_root as _make_collections_root  # noqa: E402
from harness.sshd import Fleet, short_tempdir, started_fleets  # noqa: E402

# The checkout, seen as ansible_collections/healer/pooled_ssh, importable by unit tests as
# ``ansible_collections.healer.pooled_ssh.plugins...`` and used by ansible as the installed
# collection. Created at import (before any test module is imported), removed at exit.
_COLLECTIONS_BASE = Path(tempfile.mkdtemp(prefix="hc-"))
COLLECTIONS_ROOT = _make_collections_root(_COLLECTIONS_BASE)
if str(COLLECTIONS_ROOT) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_ROOT))

# Run the integration tests with another ansible-core (e.g. an older line's venv bin dir).
ANSIBLE_BIN_ENV = "HEALER_TEST_ANSIBLE_BIN"


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_COLLECTIONS_BASE, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Everything under tests/integration is an integration test."""
    integration_dir = TESTS_DIR / "integration"
    for item in items:
        if integration_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def collections_root() -> Path:
    """Directory for ANSIBLE_COLLECTIONS_PATH holding the checkout as healer.pooled_ssh."""
    return COLLECTIONS_ROOT


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Factory of started fleets: ``make_fleet(count=5, extra_config=[...],
    per_host_config={...}, password=None, encrypted_key_passphrase=None, sftp=True)``.
    All fleets are stopped and removed at teardown (logs are copied into tmp_path)."""
    yield from started_fleets(tmp_path)


@pytest.fixture
def fleet(make_fleet: Callable[..., Fleet]) -> Fleet:
    """A started fleet of 5 default hosts (host1..host5 on 127.0.0.2..6)."""
    return make_fleet()


@pytest.fixture
def pool_dir(make_fleet: Callable[..., Fleet]) -> Iterator[Path]:
    """A private (0700), short pool directory: UNIX socket paths must stay under 107 bytes.
    Teardown stops the pool daemon that a test started in it - before the fleets stop
    (hence the dependency on make_fleet), so the daemon closes live transports."""
    path = short_tempdir("hp-")
    path.chmod(0o700)
    try:
        yield path
    finally:
        try:
            stop_pool(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_runner(tmp_path: Path, collections_root: Path, pool_dir: Path) -> Callable[..., AnsibleRunner]:
    """Factory: ``make_runner(fleet_or_known_hosts, pipelining=True, python_bin_dir=None,
    pool_dir=None, extra_env=None)`` - several runners may share the test's pool dir."""
    counter = [0]

    def factory(
        target: object,
        pipelining: bool = True,
        python_bin_dir: Optional[str] = None,
        pool: Optional[Path] = None,
        extra_env: Optional[dict] = None,
    ) -> AnsibleRunner:
        known_hosts = target.known_hosts if isinstance(target, Fleet) else Path(str(target))
        counter[0] += 1
        return AnsibleRunner(
            workdir=tmp_path / f"ansible{counter[0]}",
            collections_root=collections_root,
            pool_dir=pool if pool is not None else pool_dir,
            known_hosts=known_hosts,
            python_bin_dir=python_bin_dir or os.environ.get(ANSIBLE_BIN_ENV) or None,
            pipelining=pipelining,
            extra_env=extra_env,
        )

    return factory


@pytest.fixture
def runner(make_runner: Callable[..., AnsibleRunner], fleet: Fleet) -> AnsibleRunner:
    """An AnsibleRunner for the default ``fleet`` and the test's ``pool_dir``."""
    return make_runner(fleet)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the login user can write to (sshd runs commands as another user when root)."""
    path = short_tempdir("hw-")
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
