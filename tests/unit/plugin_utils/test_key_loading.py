"""Keys load as OpenSSH loads them: without a passphrase first; the messages say what happened."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _ssh
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._pool import PoolError

SPEC = {"addr": "web1", "port": 22}


def _keygen(path: Path, passphrase: str = "", fmt: str = "") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519" if not fmt else "ecdsa", "-N", passphrase, "-f", str(path),
                    *(["-m", fmt] if fmt else [])], check=True, capture_output=True, timeout=60)
    return str(path)


@pytest.mark.parametrize("fmt", ["", "PEM"], ids=["openssh", "pem"])
def test_an_unencrypted_key_loads_whatever_password_is_set(tmp_path: Path, fmt: str) -> None:
    path = _keygen(tmp_path / "id", fmt=fmt)
    assert _ssh._load_key(path, None, SPEC, password="login-pw") is not None
    assert _ssh._load_key(path, "some-passphrase", SPEC, password="login-pw") is not None


@pytest.mark.parametrize("fmt", ["", "PEM"], ids=["openssh", "pem"])
def test_an_encrypted_key_takes_the_passphrase_then_the_password(tmp_path: Path, fmt: str) -> None:
    path = _keygen(tmp_path / "id", "secret-pp", fmt)
    assert _ssh._load_key(path, "secret-pp", SPEC) is not None
    assert _ssh._load_key(path, None, SPEC, password="secret-pp") is not None
    assert _ssh._load_key(path, "wrong", SPEC, password="secret-pp") is not None


def test_messages_say_what_happened(tmp_path: Path) -> None:
    path = _keygen(tmp_path / "id", "secret-pp")
    cases = [((None, None), "is encrypted and no passphrase was given"),
             (("wrong", None), "is encrypted and private_key_passphrase does not decrypt it"),
             (("wrong", "also-wrong"), "neither private_key_passphrase nor ansible_password decrypts it")]
    for (passphrase, password), expected in cases:
        with pytest.raises(PoolError) as info:
            _ssh._load_key(path, passphrase, SPEC, password=password)
        assert expected in str(info.value) and str(info.value).startswith("web1:22: "), info.value
    with pytest.raises(PoolError, match="does not exist"):
        _ssh._load_key(str(tmp_path / "missing"), None, SPEC)


def test_default_keys_load_with_a_password_set(tmp_path: Path) -> None:
    plain = _keygen(tmp_path / "plain")
    locked = _keygen(tmp_path / "locked", "pp")
    assert _ssh._default_key(plain, "login-pw") is not None
    assert _ssh._default_key(locked, None) is None
    assert _ssh._default_key(locked, "pp") is not None
    assert _ssh._default_key(str(tmp_path / "missing"), None) is None
