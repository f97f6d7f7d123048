"""Write docs/options.md from the connection plugin's DOCUMENTATION (through ansible-doc).

    python scripts/gen_options_doc.py           # rewrite docs/options.md
    python scripts/gen_options_doc.py --check   # exit 1 if docs/options.md is stale (a test runs this)

Needs ``ansible-doc`` to find the collection (ANSIBLE_COLLECTIONS_PATH).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "options.md"
PLUGIN = "healer.pooled_ssh.pooled_ssh"


def _text(value: object) -> str:
    parts = value if isinstance(value, list) else [value]
    text = " ".join(str(p) for p in parts)
    text = re.sub(r"[COVEI]\(([^)]*)\)", r"`\1`", text)
    return text.replace("|", "\\|").replace("\n", " ")


def render(options: dict) -> str:
    lines = [
        "# pooled_ssh options",
        "",
        "Generated from the plugin's documentation by `scripts/gen_options_doc.py`; "
        "`ansible-doc -t connection healer.pooled_ssh.pooled_ssh` shows the same.",
        "",
        "| option | type | default | variables | environment | ansible.cfg | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(options):
        o = options[name]
        variables = ", ".join(f"`{v['name']}`" for v in o.get("vars", []))
        env = ", ".join(f"`{e['name']}`" for e in o.get("env", []))
        ini = ", ".join(f"`[{i['section']}] {i['key']}`" for i in o.get("ini", []))
        default = "" if o.get("default") is None else f"`{o['default']}`"
        lines.append(
            f"| `{name}` | {o.get('type', 'str')} | {default} | {variables} | {env} | {ini} | "
            f"{_text(o.get('description', ''))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--ansible-doc", default=str(Path(sys.executable).parent / "ansible-doc"))
    args = parser.parse_args()
    data = json.loads(
        subprocess.run(
            [args.ansible_doc, "-t", "connection", "--json", PLUGIN], check=True, capture_output=True, text=True
        ).stdout
    )
    text = render(data[PLUGIN]["doc"]["options"])
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python scripts/gen_options_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
