"""Make ansible-core load this checkout as the ``healer.pooled_ssh`` collection.

The plugin is loaded as Ansible loads it (``connection_loader.get`` with the FQCN), which
needs Ansible's collection finder to be installed with a collections path that holds the
checkout as ``ansible_collections/healer/pooled_ssh``. The root ``tests/conftest.py`` puts
such a tree on ``sys.path``; when run without it, we make our own in a temporary
directory. Nothing here depends on where the checkout lives.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[4]


def _existing_root() -> Optional[Path]:
    """A sys.path entry whose ansible_collections/healer/pooled_ssh is this checkout."""
    for entry in sys.path:
        candidate = Path(entry or ".") / "ansible_collections" / "healer" / "pooled_ssh"
        try:
            if candidate.resolve() == REPO_ROOT:
                return Path(entry)
        except OSError:
            continue
    return None


def _make_root() -> Path:
    base = Path(tempfile.mkdtemp(prefix="hps-coll-"))
    atexit.register(shutil.rmtree, base, True)
    namespace = base / "ansible_collections" / "healer"
    namespace.mkdir(parents=True)
    (namespace / "pooled_ssh").symlink_to(REPO_ROOT, target_is_directory=True)
    return base


def _install_collection_loader() -> Path:
    from ansible.utils.collection_loader import AnsibleCollectionConfig

    root = _existing_root() or _make_root()
    finder = AnsibleCollectionConfig.collection_finder
    if finder is not None and str(root) in getattr(finder, "_n_collection_paths", ()):
        return root
    # Modules imported as a plain namespace package (before the finder existed) would stop
    # the finder from loading the collection's metadata: let it import them afresh.
    for name in [m for m in sys.modules if m == "ansible_collections" or m.startswith("ansible_collections.")]:
        del sys.modules[name]
    from ansible.plugins.loader import init_plugin_loader

    init_plugin_loader([str(root)])
    return root


COLLECTIONS_ROOT = _install_collection_loader()
