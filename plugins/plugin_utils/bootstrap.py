# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Register this directory as the package ``healer_pooled_ssh``: the controller code's one import name.

Three users, one name, so that a class such as ``PoolFailure`` is the same class everywhere:

* the pool daemon, a fresh interpreter that must find its code whatever the collection's
  install layout is (``_client_connect.spawn_daemon`` runs this file's ``boot``);
* the plugins (connection, action, callback) in Ansible's processes. Ansible's collection
  loader compiles a collection's modules from source in every process, and each task runs in
  a new worker process: about 12 ms of CPU per task for the controller code alone, more than a
  command through a warm pool costs. Python's own path finder keeps bytecode caches instead;
* ``pip install`` of the project, whose package of the same name is this directory.

The modules here import only each other (relatively) and the standard library or Paramiko.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

PACKAGE = "healer_pooled_ssh"
DIRECTORY = os.path.dirname(os.path.abspath(__file__))


def load(module: str) -> ModuleType:
    """``plugin_utils.<module>`` imported as ``healer_pooled_ssh.<module>`` (dotted names for subpackages).

    When the package is already imported (by pip's install, or an earlier call), that one is used.
    """
    if PACKAGE not in sys.modules:
        spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [DIRECTORY]
        package = importlib.util.module_from_spec(spec)
        package.__file__ = os.path.join(DIRECTORY, "__init__.py")
        sys.modules[PACKAGE] = package
    return importlib.import_module(f"{PACKAGE}.{module}")


def boot(argv: list[str]) -> int:
    """The daemon's entry point. paramiko imports ``invoke`` only for ssh_config's ``Match exec``,
    which the daemon never evaluates (the workers read ssh_config): hiding it saves ~0.1 s per start."""
    # None in sys.modules makes the import fail (documented Python); typeshed types the values as modules only.
    sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]
    return int(load("daemon.server").main(argv))
