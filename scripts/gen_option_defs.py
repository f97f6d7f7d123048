"""Write plugins/plugin_utils/_connection_options.py: the connection plugin's option definitions, parsed.

    python scripts/gen_option_defs.py           # rewrite it
    python scripts/gen_option_defs.py --check   # exit 1 if it is stale (a unit test runs this)

Every task's worker registers the plugin's option definitions afresh (ansible-playbook does not
cache those of collection plugins before it forks). Parsing DOCUMENTATION and its doc fragment as
YAML costs each worker ~9 ms of CPU; reading the same definitions as JSON costs 0.3 ms. The file
holds the digest of the two texts it was parsed from: the plugin uses it only while they match.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Dict

import yaml

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "connection" / "pooled_ssh.py"
FRAGMENT = ROOT / "plugins" / "doc_fragments" / "pool.py"
TARGET = ROOT / "plugins" / "plugin_utils" / "_connection_options.py"
#: Characters of JSON per line of the generated file.
WIDTH = 100

HEADER = '''# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The connection plugin's option definitions, parsed: written by scripts/gen_option_defs.py, never by hand.

Private to this collection. A task's worker reads these (JSON) instead of parsing the plugin's
DOCUMENTATION and doc fragment as YAML, while DIGEST is that of those two texts
(``connection/pooled_ssh.py``, ``_preload_option_definitions``).
"""

from __future__ import annotations
'''


def _documentation(path: Path, cls: str = "") -> str:
    """A file's DOCUMENTATION string (a class attribute when ``cls`` is given), read without importing it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = next(n.body for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls) if cls else tree.body
    for node in body:
        names = [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else []
        if "DOCUMENTATION" in names:
            value = ast.literal_eval(node.value)  # type: ignore[attr-defined]
            assert isinstance(value, str)
            return value
    raise SystemExit(f"no DOCUMENTATION in {path}")


def digest(documentation: str, fragment: str) -> str:
    return hashlib.sha256(documentation.encode() + b"\0" + fragment.encode()).hexdigest()


def render() -> str:
    documentation, fragment = _documentation(PLUGIN), _documentation(FRAGMENT, "ModuleDocFragment")
    parsed: Dict[str, Any] = {
        "options": yaml.safe_load(documentation)["options"],
        "fragment": yaml.safe_load(fragment),
    }
    text = json.dumps(parsed, sort_keys=True, separators=(",", ":"))
    # One string in lines short enough for the linters: adjacent literals, each as repr() writes it.
    chunks = "\n".join(f"    {text[i : i + WIDTH]!r}" for i in range(0, len(text), WIDTH))
    return f'{HEADER}\nDIGEST = "{digest(documentation, fragment)}"\nPARSED = (\n{chunks}\n)\n'


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python scripts/gen_option_defs.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
