"""The option definitions a task's worker registers from ``plugin_utils/_connection_options.py``
are exactly those Ansible's own parse of the plugin's documentation gives, and that file is current.

Each case runs in a fresh interpreter: Ansible keeps the definitions in its global configuration.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import COLLECTIONS_ROOT, REPO_ROOT

PROBE = """
import json, sys
from ansible import constants as C
from ansible.plugins.loader import connection_loader, fragment_loader, init_plugin_loader
from ansible.utils.plugin_docs import get_docstring
init_plugin_loader([sys.argv[1]])
path = connection_loader.find_plugin("healer.pooled_ssh.pooled_ssh")
doc = get_docstring(path, fragment_loader, collection_name="healer.pooled_ssh", is_module=False)[0]
import ansible_collections.healer.pooled_ssh.plugins.connection.pooled_ssh as plugin
registered = C.config.get_configuration_definitions("connection", plugin.__name__)
print(json.dumps({"registered": registered, "ansible": doc["options"]}, sort_keys=True, default=str))
"""


def test_the_generated_definitions_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_option_defs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_the_worker_registers_what_ansibles_own_parse_gives(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(COLLECTIONS_ROOT)], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["registered"], "nothing was registered when the plugin was imported"
    assert data["registered"] == data["ansible"]
