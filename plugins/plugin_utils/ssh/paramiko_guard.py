# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Paramiko for the daemon's modules, imported in one guarded place.

Only the pool daemon uses Paramiko, but Ansible's tooling (``ansible-test sanity``'s import test,
``ansible-doc``) loads every file under ``plugins/`` on a Python that may lack it. Without Paramiko
the daemon's modules still import; the ImportError is kept and raised on first use, and the
daemon's entry point exits at once with ``missing_text``, one line that says what to install.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING, NoReturn

__all__ = ["IMPORT_ERROR", "missing_text", "paramiko"]


class _Missing(ModuleType):
    """Stands for Paramiko when it is not installed: any use raises the original ImportError."""

    def __init__(self, error: ImportError) -> None:
        super().__init__("paramiko")
        self._error = error

    def __getattr__(self, name: str) -> NoReturn:
        raise ImportError(f"{missing_text(self._error)} (needed for paramiko.{name})") from self._error


def missing_text(error: ImportError) -> str:
    """What the user reads: which Python lacks Paramiko and how to install it."""
    return f"the pooled_ssh daemon needs Paramiko on {sys.executable}: pip install 'paramiko>=3.4' ({error})"


IMPORT_ERROR: ImportError | None
if TYPE_CHECKING:
    import paramiko
else:
    try:
        import paramiko
    except ImportError as e:
        IMPORT_ERROR = e
        paramiko = _Missing(e)
    else:
        IMPORT_ERROR = None
