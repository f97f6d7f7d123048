"""The ecosystem's gates over this checkout: ansible-test sanity, mypy, the docs lint and build.

``./run sanity``, ``./run lint`` and ``./run docs`` call this with the venvs they made. The tools
need the collection at ``.../ansible_collections/healer/pooled_ssh`` and ansible-test resolves
symlinks, so each run works on a fresh copy of the files git knows (tracked and untracked, not
ignored) in a temporary directory, removed afterwards. Paths in findings are the checkout's.

    gates.py sanity VENV [VENV...] [-- ANSIBLE_TEST_ARGS]   # exit 1 on any finding
    gates.py mypy
    gates.py ansible-lint
    gates.py docs-lint
    gates.py docs DEST_DIR --docs-venv VENV                 # DEST_DIR/html/index.html
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMESPACE, NAME = "healer", "pooled_ssh"
GET_PIP_STANDIN = REPO / "scripts" / "ansible_test_get_pip.py"
LOG_DIR = REPO / ".tmp"

# ansible-test's own pip/bootstrap chatter; everything else it prints is shown.
_NOISE = re.compile(
    r"^(WARNING: Location |Looking in |Collecting |Downloading |Processing |Installing collected |"
    r"Successfully installed |Requirement already |Using cached |Installing requirements |\s+━|\s*$|"
    r"  (Downloading|Using cached|Preparing|Building|Created|Stored|Installing|Getting|Attempting|"
    r"Found existing|Uninstalling|Successfully))"
)
_RUNNING = re.compile(r'^Running sanity test "([^"]+)"(?: on Python (\S+))?')


def _files() -> list[str]:
    """The checkout's files as git sees them (what a clean clone plus local edits holds)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        stdout=subprocess.PIPE,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and not f.startswith(".venv") and (REPO / f).is_file()]


@contextmanager
def collection_copy() -> Iterator[Path]:
    """A temporary ``ansible_collections/healer/pooled_ssh`` holding a copy of the checkout."""
    base = Path(tempfile.mkdtemp(prefix="gates-"))
    dest = base / "ansible_collections" / NAMESPACE / NAME
    try:
        for rel in _files():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, target, follow_symlinks=False)
        yield dest
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _venv_python(venv: Path) -> tuple[Path, str]:
    python = venv / "bin" / "python"
    version = subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()
    return python, version


def install_get_pip(python: Path, python_version: str) -> Path:
    """Put the stand-in where ansible-test looks for its cached ``get_pip_<pip version>.py``."""
    pip_version = subprocess.run(
        [
            str(python),
            "-c",
            "import types; from ansible_test._internal.python_requirements import get_venv_packages as g; "
            f"print(g(types.SimpleNamespace(version={python_version!r}))['pip'])",
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()
    cache = Path.home() / ".ansible" / "test" / "cache" / f"get_pip_{pip_version.replace('.', '_')}.py"
    cache.parent.mkdir(parents=True, exist_ok=True)
    text = GET_PIP_STANDIN.read_text(encoding="utf-8")
    if not cache.is_file() or cache.read_text(encoding="utf-8") != text:
        cache.write_text(text, encoding="utf-8")
    return cache


@dataclass
class SanityRun:
    """One ``ansible-test sanity`` run: each test's name and the findings printed for it."""

    core: str
    python: str
    tests: dict[str, list[str]] = field(default_factory=dict)
    rc: int = 0

    @property
    def failed(self) -> list[str]:
        return [name for name, errors in self.tests.items() if errors]


def _core_version(venv: Path) -> str:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", "from ansible.release import __version__; print(__version__)"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()


def sanity(venv: Path, extra: Sequence[str]) -> SanityRun:
    venv = venv.absolute()
    python, version = _venv_python(venv)
    install_get_pip(python, version)
    run = SanityRun(core=_core_version(venv), python=version)
    LOG_DIR.mkdir(exist_ok=True)
    log_path = LOG_DIR / f"sanity-{run.core}.log"
    print(f"\n-- ansible-test sanity: ansible-core {run.core}, Python {version} (full log: {log_path})", flush=True)
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    current = ""
    with collection_copy() as tree, log_path.open("w", encoding="utf-8") as log:
        cmd = [str(venv / "bin" / "ansible-test"), "sanity", "--python", version, "--color", "no", *extra]
        proc = subprocess.Popen(
            cmd, cwd=tree, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        if proc.stdout is None:
            raise RuntimeError("no stdout pipe")
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            log.write(line + "\n")
            m = _RUNNING.match(line)
            if m:
                current = m.group(1)
                run.tests.setdefault(current, [])
                continue
            if _NOISE.match(line):
                continue
            if line.startswith("ERROR: ") and current and not line.startswith(("ERROR: Found ", "ERROR: The ")):
                run.tests[current].append(line[len("ERROR: ") :])
            print(line.replace(str(tree), "."), flush=True)
        run.rc = proc.wait()
    for name, errors in run.tests.items():
        print(f"  {'FAIL' if errors else 'ok  '} {name}" + (f" ({len(errors)} findings)" if errors else ""))
    verdict = "passed" if run.rc == 0 and not run.failed else f"FAILED (exit {run.rc})"
    print(f"-- sanity on ansible-core {run.core} / Python {version}: {len(run.tests)} tests, {verdict}")
    return run


def mypy() -> int:
    """mypy over plugins/ as the collection's own packages (settings in pyproject.toml)."""
    with collection_copy() as tree:
        base = tree.parents[2]
        prefix = f"{tree.relative_to(base)}/"
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(tree / "pyproject.toml"), prefix + "plugins"]
        # From the tree's root, module names follow the path (ansible_collections.healer...).
        proc = subprocess.run(cmd, cwd=base, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        print(proc.stdout.replace(prefix, ""), end="")
        return proc.returncode


def ansible_lint() -> int:
    """ansible-lint, production profile, offline: the collection found as itself through a symlink."""
    base = Path(tempfile.mkdtemp(prefix="gates-lint-"))
    try:
        link = base / "ansible_collections" / NAMESPACE / NAME
        link.parent.mkdir(parents=True)
        link.symlink_to(REPO, target_is_directory=True)
        bin_dir = Path(sys.executable).parent
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(base), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        cmd = [str(bin_dir / "ansible-lint"), "--profile", "production", "--offline", "--nocolor"]
        return subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode
    finally:
        shutil.rmtree(base, ignore_errors=True)


def docs_lint() -> int:
    """``antsibull-docs lint-collection-docs --plugin-docs``: the check community collections run."""
    with collection_copy() as tree:
        bin_dir = Path(sys.executable).parent
        env = dict(
            os.environ, ANSIBLE_COLLECTIONS_PATH=str(tree.parents[2]), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
        )
        cmd = [str(bin_dir / "antsibull-docs"), "lint-collection-docs", "--plugin-docs", "."]
        return subprocess.run(cmd, cwd=tree, env=env, check=False).returncode


ANSIBLE_DOCS = "https://docs.ansible.com/projects/ansible/devel/"
# The ansible-core docs labels antsibull-docs' pages refer to, and where they are.
_ANSIBLE_LABELS = {
    "action_plugins": ("plugins/action.html#action-plugins", "Action plugins"),
    "callback_plugins": ("plugins/callback.html#callback-plugins", "Callback plugins"),
    "ansible_configuration_settings": ("reference_appendices/config.html", "Ansible Configuration Settings"),
    "common_return_values": ("reference_appendices/common_return_values.html", "Return Values"),
}
_ENVVARS = (
    "import sys, yaml, ansible.config, os; "
    "base = yaml.safe_load(open(os.path.join(os.path.dirname(ansible.config.__file__), 'base.yml'))); "
    "print('\\n'.join(sorted({e['name'] for d in base.values() if isinstance(d, dict) for e in d.get('env') or []})))"
)


def write_ansible_inventory(python: Path, path: Path) -> None:
    """An intersphinx inventory of ansible-core's docs, made here instead of fetched.

    It holds what the collection's pages link to: every ``ANSIBLE_*`` variable of ansible-core's
    configuration (from its own ``base.yml``, on the configuration page) and a few labels.
    """
    names = subprocess.run([str(python), "-c", _ENVVARS], check=True, stdout=subprocess.PIPE, text=True).stdout
    lines = [f"{name} std:envvar 1 reference_appendices/config.html#envvar-$ -" for name in names.split()]
    lines += [f"{label} std:label -1 {uri} {title}" for label, (uri, title) in _ANSIBLE_LABELS.items()]
    header = "# Sphinx inventory version 2\n# Project: Ansible\n# Version: devel\n"
    header += "# The remainder of this file is compressed using zlib.\n"
    path.write_bytes(header.encode() + zlib.compress(("\n".join(lines) + "\n").encode()))


def docs(dest: Path, docs_venv: Path) -> int:
    """The collection's HTML docs into ``dest``: antsibull-docs' own Sphinx site, warnings as errors.

    The site is what ``antsibull-docs sphinx-init`` writes (the layout docs.ansible.com uses), built
    by its ``build.sh``. Its links into ansible-core's docs resolve through a local inventory
    (``write_ansible_inventory``): the published ones are on hosts other than the package index.
    """
    bin_dir = docs_venv.resolve() / "bin"
    with collection_copy() as tree:
        base = tree.parents[2]
        site = base / "site"
        site.mkdir(mode=0o700)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(base), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        init = [
            str(bin_dir / "antsibull-docs"), "sphinx-init", "--use-current", "--squash-hierarchy", "--fail-on-error",
            "--dest-dir", str(site), "--project", "healer.pooled_ssh", "--copyright", "healer.pooled_ssh maintainers",
            "--title", "healer.pooled_ssh", "--html-short-title", "healer.pooled_ssh", f"{NAMESPACE}.{NAME}",
        ]  # fmt: skip
        rc = subprocess.run(init, env=env, check=False, stdout=subprocess.DEVNULL).returncode
        if rc:
            return rc
        conf = site / "conf.py"
        mapping = f"intersphinx_mapping = {{'ansible_devel': ({ANSIBLE_DOCS!r}, ('../ansible_devel.inv',))}}\n"
        text = re.sub(r"(?ms)^intersphinx_mapping = \{.*?^\}\n", lambda _m: mapping, conf.read_text("utf-8"))
        conf.write_text(text, encoding="utf-8")
        write_ansible_inventory(bin_dir / "python", site / "ansible_devel.inv")
        rc = subprocess.run(["bash", str(site / "build.sh")], cwd=site, env=env, check=False).returncode
        if rc:
            return rc
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(site / "build" / "html", dest / "html")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, extra = args[:at], args[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sanity")
    p.add_argument("venvs", nargs="+", type=Path)
    sub.add_parser("mypy")
    sub.add_parser("ansible-lint")
    sub.add_parser("docs-lint")
    p = sub.add_parser("docs")
    p.add_argument("dest", type=Path)
    p.add_argument("--docs-venv", type=Path, required=True)
    opts = parser.parse_args(args)
    if opts.cmd == "sanity":
        runs = [sanity(venv, extra) for venv in opts.venvs]
        bad = [r for r in runs if r.rc or r.failed]
        print()
        for r in runs:
            print(
                f"sanity ansible-core {r.core} / Python {r.python}: "
                + ("every test passed" if r not in bad else "failed: " + ", ".join(r.failed or ["see log"]))
            )
        return 1 if bad else 0
    if opts.cmd == "mypy":
        return mypy()
    if opts.cmd == "ansible-lint":
        return ansible_lint()
    if opts.cmd == "docs-lint":
        return docs_lint()
    return docs(opts.dest, opts.docs_venv)


if __name__ == "__main__":
    sys.exit(main())
