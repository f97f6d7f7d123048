"""Keys load as OpenSSH loads them: without a passphrase first; the messages say what happened."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.errors import PoolError
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh import auth
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire.spec import ConnectionSpec

SPEC = ConnectionSpec(host="web1", addr="web1", port=22, user="deploy")


def _keygen(path: Path, passphrase: str = "", fmt: str = "") -> str:
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519" if not fmt else "ecdsa",
            "-N",
            passphrase,
            "-f",
            str(path),
            *(["-m", fmt] if fmt else []),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(path)


@pytest.mark.parametrize("fmt", ["", "PEM"], ids=["openssh", "pem"])
def test_an_unencrypted_key_loads_whatever_password_is_set(tmp_path: Path, fmt: str) -> None:
    path = _keygen(tmp_path / "id", fmt=fmt)
    assert auth.load_key(path, None, SPEC, password="login-pw") is not None
    assert auth.load_key(path, "some-passphrase", SPEC, password="login-pw") is not None


@pytest.mark.parametrize("fmt", ["", "PEM"], ids=["openssh", "pem"])
def test_an_encrypted_key_takes_the_passphrase_then_the_password(tmp_path: Path, fmt: str) -> None:
    path = _keygen(tmp_path / "id", "secret-pp", fmt)
    assert auth.load_key(path, "secret-pp", SPEC) is not None
    assert auth.load_key(path, None, SPEC, password="secret-pp") is not None
    assert auth.load_key(path, "wrong", SPEC, password="secret-pp") is not None


def test_messages_say_what_happened(tmp_path: Path) -> None:
    path = _keygen(tmp_path / "id", "secret-pp")
    cases = [
        ((None, None), "is encrypted; set its passphrase with private_key_passphrase (no passphrase was given)"),
        (("wrong", None), "is encrypted and private_key_passphrase does not decrypt it"),
        (("wrong", "also-wrong"), "neither private_key_passphrase nor ansible_password decrypts it"),
    ]
    for (passphrase, password), expected in cases:
        with pytest.raises(PoolError) as info:
            auth.load_key(path, passphrase, SPEC, password=password)
        assert expected in str(info.value) and str(info.value).startswith("web1:22: "), info.value
    with pytest.raises(PoolError, match="does not exist"):
        auth.load_key(str(tmp_path / "missing"), None, SPEC)


def test_default_keys_load_with_a_password_set(tmp_path: Path) -> None:
    plain = _keygen(tmp_path / "plain")
    locked = _keygen(tmp_path / "locked", "pp")
    assert auth._default_key(plain, "login-pw") is not None
    assert auth._default_key(locked, None) is None
    assert auth._default_key(locked, "pp") is not None
    assert auth._default_key(str(tmp_path / "missing"), None) is None
