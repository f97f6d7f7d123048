"""The version matrix: the integration core (tests marked ``compat``) on every ansible-core line.

``./run matrix`` (and ``./run test``) make one venv per line ``meta/runtime.yml`` claims and call

    matrix.py [--write] LINE=VENV [LINE=VENV...]

Each row runs ``pytest -m compat tests/integration`` from this checkout's ``.venv`` with that
venv's ``ansible-playbook`` (the workers, hence the pool daemon, run on its Python and Paramiko).
Prints the table (ansible-core x Python x Paramiko -> result); ``--write`` puts it into
docs/compatibility.md between the matrix markers. ``--only LINE`` runs one row (the others are read
from their last results), so that the lines can run one at a time. Exit 1 when a row fails, runs no test, or a
claimed line has no row.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "compatibility.md"
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"
LOG_DIR = REPO / ".tmp"
_VERSIONS = (
    "import sys, ansible.release, paramiko, cryptography; "
    "print(ansible.release.__version__, '%d.%d.%d' % sys.version_info[:3], "
    "paramiko.__version__, cryptography.__version__)"
)


@dataclass
class Row:
    line: str
    venv: Path
    core: str = ""
    python: str = ""
    paramiko: str = ""
    cryptography: str = ""
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    rc: int = 0
    seconds: float = 0.0
    #: When the row's tests ran (UTC, from its JUnit report): rows can come from different runs.
    ran: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.passed > 0 and self.failed == 0

    @property
    def result(self) -> str:
        if self.rc == 5 or (self.rc == 0 and self.passed == 0):
            return "FAIL: no test ran"
        text = f"{self.passed} passed" + (f", {self.failed} failed" if self.failed else "")
        text += f", {self.skipped} skipped" if self.skipped else ""
        return ("pass: " if self.ok else "FAIL: ") + text


def claimed_lines(newest: str) -> list[str]:
    """Every ansible-core minor line from meta/runtime.yml's ``requires_ansible`` to ``newest``."""
    text = (REPO / "meta" / "runtime.yml").read_text(encoding="utf-8")
    m = re.search(r"requires_ansible:\s*['\"]?>=\s*(\d+)\.(\d+)", text)
    if not m:
        raise SystemExit("meta/runtime.yml: no requires_ansible '>=X.Y' found")
    major, low = int(m.group(1)), int(m.group(2))
    high = int(newest.split(".")[1])
    return [f"{major}.{minor}" for minor in range(low, high + 1)]


def read_versions(row: Row) -> None:
    out = subprocess.run(
        [str(row.venv / "bin" / "python"), "-c", _VERSIONS], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.split()
    row.core, row.python, row.paramiko, row.cryptography = out
    if not row.core.startswith(row.line + "."):
        raise SystemExit(f"{row.venv} has ansible-core {row.core}, not the {row.line} line")


def junit_path(row: Row) -> Path:
    return LOG_DIR / f"matrix-{row.line}.xml"


def read_junit(row: Row) -> None:
    path = junit_path(row)
    if not path.is_file():
        return
    for suite in ET.parse(path).getroot().iter("testsuite"):
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        row.failed += failed
        row.skipped += skipped
        row.passed += int(suite.get("tests", 0)) - failed - skipped
        row.seconds += float(suite.get("time", 0))
        row.ran = (suite.get("timestamp") or "")[:16].replace("T", " ")


def run_row(row: Row, pytest_args: Sequence[str]) -> None:
    LOG_DIR.mkdir(exist_ok=True)
    junit = junit_path(row)
    junit.unlink(missing_ok=True)
    print(
        f"\n== matrix: ansible-core {row.core}, Python {row.python}, Paramiko {row.paramiko} "
        f"(cryptography {row.cryptography})",
        flush=True,
    )
    env = dict(os.environ, HEALER_TEST_ANSIBLE_BIN=str(row.venv.resolve() / "bin"))
    cmd = [
        str(REPO / ".venv" / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "compat",
        f"--junitxml={junit}", *pytest_args, "tests/integration",
    ]  # fmt: skip
    row.rc = subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode
    read_junit(row)


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| ansible-core | Python | Paramiko | cryptography | integration core (`pytest -m compat`) | ran (UTC) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.core} | {r.python} | {r.paramiko} | {r.cryptography} | {r.result} | {r.ran or '-'} |" for r in rows
    ]
    return "\n".join(lines)


def write_doc(rows: Sequence[Row]) -> None:
    block = (
        f"{BEGIN}\n"
        "Written by `./run matrix` (the tests marked `compat`: the shared connection test, pool reuse, become,\n"
        "errors, the daemon and sshd restarts, the diagnose role); each row says when it ran.\n\n"
        f"{table(rows)}\n{END}"
    )
    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else "# Compatibility\n\n## Versions tested\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote the table into {DOC.relative_to(REPO)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    parser.add_argument("--write", action="store_true", help="update docs/compatibility.md")
    parser.add_argument(
        "--last-results", action="store_true", help="report the last run's results (.tmp/matrix-*.xml), run nothing"
    )
    parser.add_argument(
        "--only", metavar="LINE", action="append", default=[],
        help="run only this line (repeatable); the other rows come from their last results",
    )  # fmt: skip
    parser.add_argument("rows", nargs="+", metavar="LINE=VENV")
    args = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in args:  # the rest goes to pytest (e.g. -x, -k NAME)
        at = args.index("--")
        args, pytest_args = args[:at], args[at + 1 :]
    opts = parser.parse_args(args)
    rows = []
    for spec in opts.rows:
        line, _sep, venv = spec.partition("=")
        rows.append(Row(line=line, venv=Path(venv)))
    missing = sorted(
        set(claimed_lines(max((r.line for r in rows), key=lambda v: tuple(map(int, v.split("."))))))
        - {r.line for r in rows}
    )
    if missing:
        print(f"meta/runtime.yml claims ansible-core {', '.join(missing)} but the matrix has no row for it")
        return 1
    for row in rows:
        read_versions(row)
        if opts.last_results or (opts.only and row.line not in opts.only):
            read_junit(row)
            row.rc = 0 if junit_path(row).is_file() else 5
        else:
            run_row(row, pytest_args)
    print("\n" + table(rows))
    for row in rows:
        print(f"  {row.line}: {row.seconds:.0f} s")
    if opts.write:
        write_doc(rows)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
