# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place that reads Paramiko's exception texts.

Paramiko raises a bare ``SSHException`` for several situations the daemon must tell apart;
only the message says which. Everything else is matched by exception type. When a Paramiko
release rewords one of these, its unit test (one per supported version's wording) fails here,
not somewhere in the daemon's control flow.
"""

from __future__ import annotations

from enum import Enum


class ParamikoText(Enum):
    """What a Paramiko exception means, when only its text says so."""

    #: ``open_session`` refused (MaxSessions) and another thread took the ChannelException:
    #: Paramiko keeps one saved exception per transport, not one per channel.
    CHANNEL_REFUSED = "Unable to open channel."
    #: No answer to a channel open within the transport's channel timeout.
    CHANNEL_TIMEOUT = "Timeout opening channel."
    #: No (or a broken) SSH banner: "Error reading SSH protocol banner".
    NO_BANNER = "protocol banner"
    #: The transport closed under an authentication attempt: nothing to add to the message.
    NO_SESSION = "No existing session"
    #: cryptography's "Key is password-protected, but password was not provided" (a TypeError).
    KEY_NEEDS_PASSPHRASE = "password"
    OTHER = ""


_EXACT = (ParamikoText.CHANNEL_REFUSED, ParamikoText.CHANNEL_TIMEOUT)
_CONTAINED = (ParamikoText.NO_BANNER, ParamikoText.NO_SESSION)


def classify(error: BaseException) -> ParamikoText:
    """The meaning of ``error``'s text (``OTHER`` when the text says nothing we act on)."""
    text = str(error)
    if isinstance(error, TypeError):
        return ParamikoText.KEY_NEEDS_PASSPHRASE if "password" in text.lower() else ParamikoText.OTHER
    for meaning in _EXACT:
        if text == meaning.value:
            return meaning
    for meaning in _CONTAINED:
        if meaning.value in text:
            return meaning
    return ParamikoText.OTHER
