# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Import this directory as a plain Python package under a private name.

Two users, one way:

* the pool daemon, a fresh interpreter that must find its code whatever the collection's
  install layout is (``_client.spawn_daemon`` runs this file's ``boot``);
* the connection plugin in every task's worker. Ansible's collection loader compiles a
  collection's modules from source in every process, and each task runs in a new worker
  process: about 12 ms of CPU per task for the controller code alone, more than a command
  through a warm pool costs. Python's own path finder keeps bytecode caches instead.

The modules here import only each other (relatively) and the standard library or Paramiko,
so they run the same under either name.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

PACKAGE = "_pooled_ssh_pool"
DIRECTORY = os.path.dirname(os.path.abspath(__file__))


def load(module: str) -> ModuleType:
    """``plugin_utils.<module>`` imported as ``_pooled_ssh_pool.<module>``."""
    if PACKAGE not in sys.modules:
        spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [DIRECTORY]
        sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"{PACKAGE}.{module}")


def boot(argv: list[str]) -> int:
    """The daemon's entry point. paramiko imports ``invoke`` only for ssh_config's ``Match exec``,
    which the daemon never evaluates (the workers read ssh_config): hiding it saves ~0.1 s per start."""
    sys.modules.setdefault("invoke", None)  # type: ignore[assignment]
    return load("_daemon").main(argv)
