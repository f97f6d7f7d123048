"""The one function that reads Paramiko's exception texts, against the installed Paramiko.

Each text the daemon acts on must still be in the Paramiko that runs it: a release that
rewords one fails here (CI runs this with every Paramiko it installs), not in the daemon.
"""

from __future__ import annotations

import inspect

import paramiko
import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh.paramiko_text import ParamikoText, classify

#: Where the installed Paramiko raises each text.
SOURCES = {
    ParamikoText.CHANNEL_REFUSED: paramiko.transport,
    ParamikoText.CHANNEL_TIMEOUT: paramiko.transport,
    ParamikoText.NO_BANNER: paramiko.transport,
    ParamikoText.NO_SESSION: paramiko.transport,
}


@pytest.mark.parametrize("meaning", list(SOURCES), ids=lambda m: m.name)
def test_the_installed_paramiko_still_raises_this_text(meaning: ParamikoText) -> None:
    assert meaning.value in inspect.getsource(SOURCES[meaning]), (paramiko.__version__, meaning)


@pytest.mark.parametrize(
    ("error", "meaning"),
    [
        (paramiko.SSHException("Unable to open channel."), ParamikoText.CHANNEL_REFUSED),
        (paramiko.SSHException("Timeout opening channel."), ParamikoText.CHANNEL_TIMEOUT),
        (
            paramiko.SSHException("Error reading SSH protocol banner[Errno 104] Connection reset by peer"),
            ParamikoText.NO_BANNER,
        ),
        (paramiko.SSHException("No existing session"), ParamikoText.NO_SESSION),
        (TypeError("Key is password-protected, but password was not provided."), ParamikoText.KEY_NEEDS_PASSPHRASE),
        (TypeError("expected bytes"), ParamikoText.OTHER),
        (paramiko.SSHException("Unable to open channel. (more)"), ParamikoText.OTHER),
        (paramiko.SSHException("Incompatible ssh peer (no acceptable kex algorithm)"), ParamikoText.OTHER),
        (EOFError(), ParamikoText.OTHER),
    ],
)
def test_classify(error: BaseException, meaning: ParamikoText) -> None:
    assert classify(error) is meaning
